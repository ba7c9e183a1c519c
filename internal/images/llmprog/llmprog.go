// Package llmprog is the demo streaming service: the program of the LLM image
// (images.LLMImage), which the fake runtime also runs in-process. It serves an
// OpenAI-compatible /v1/completions and /v1/chat/completions API (streaming by
// server-sent events, logprobs on request) backed by a small word-level
// trigram model trained at start on a text shipped with it (package llm); it
// also serves the job's files (GET /volume/…) and writes results (PUT
// /output/NAME). Generation is deterministic: temperature 0 takes the most
// likely word; otherwise the seed decides.
//
//	[--port 8000] [--variant NAME] [--cheat-fraction F]
//
// The variant "small" trains on half the text: a different, cheaper model,
// the kind a cheating miner might serve instead; --cheat-fraction serves it
// on a fraction of requests only.
package llmprog

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/horde-compute/horde/internal/images/prog"
	"github.com/horde-compute/horde/internal/llm"
)

// Main serves until ctx ends or serving fails, and returns the exit code.
func Main(ctx context.Context, e *prog.Env) int {
	fs := flag.NewFlagSet("llmimage", flag.ContinueOnError)
	fs.SetOutput(e.Stderr)
	port := fs.Int("port", 8000, "port to serve on")
	variant := fs.String("variant", "full", "model variant: full or small")
	cheat := fs.Float64("cheat-fraction", 0, "answer this fraction of requests with the small model (demo and tests of validation)")
	if err := fs.Parse(e.Args); err != nil {
		return 2
	}
	logger := log.New(e.Stderr, "", log.LstdFlags)
	if err := serve(ctx, e, logger, *port, *variant, *cheat); err != nil {
		logger.Print(err)
		return 1
	}
	return 0
}

func serve(ctx context.Context, e *prog.Env, logger *log.Logger, port int, variant string, cheat float64) error {
	var files llm.Files
	var err error
	if files.Volume, err = e.Path("/volume"); err != nil {
		return err
	}
	if files.Output, err = e.Path("/output"); err != nil {
		return err
	}
	text := llm.Corpus()
	if variant == "small" {
		text = text[:len(text)/2]
	}
	name := "horde-trigram-" + variant
	logger.Printf("model %s trained on %d bytes", name, len(text))
	var other *llm.Model
	if cheat > 0 {
		small := llm.Corpus()
		other = llm.Train(small[:len(small)/2])
	}
	ln, err := e.Listen(port)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{Handler: llm.NewServerFiles(llm.Train(text), other, cheat, name, files), ErrorLog: logger,
		ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }() // owned: Shutdown below, then <-served
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
