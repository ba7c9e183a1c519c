// Command llmimage is the demo streaming service: an OpenAI-compatible
// /v1/completions and /v1/chat/completions server (streaming by server-sent
// events, logprobs on request) backed by a small word-level trigram model
// trained at start on a text shipped with it; it also serves the job's files
// (GET /volume/…) and writes results (PUT /output/NAME). Generation is deterministic:
// temperature 0 takes the most likely word; otherwise the seed decides.
//
//	llmimage [--port 8000] [--variant NAME]
//
// The variant "small" trains on half the text: a different, cheaper model,
// the kind a cheating miner might serve instead; --cheat-fraction serves it
// on a fraction of requests only.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"

	"github.com/horde-compute/horde/internal/llm"
)

func main() {
	port := flag.Int("port", 8000, "port to serve on")
	variant := flag.String("variant", "full", "model variant: full or small")
	cheat := flag.Float64("cheat-fraction", 0, "answer this fraction of requests with the small model (demo and tests of validation)")
	flag.Parse()
	text := llm.Corpus()
	if *variant == "small" {
		text = text[:len(text)/2]
	}
	name := "horde-trigram-" + *variant
	log.Printf("model %s trained on %d bytes", name, len(text))
	h := llm.NewServer(llm.Train(text), name)
	if *cheat > 0 {
		small := llm.Corpus()
		h = llm.NewCheatingServer(llm.Train(text), llm.Train(small[:len(small)/2]), *cheat, name)
	}
	log.Fatal(http.ListenAndServe(fmt.Sprintf(":%d", *port), h))
}
