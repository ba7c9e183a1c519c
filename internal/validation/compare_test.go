package validation

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/horde-compute/horde/internal/llm"
)

func serve(t *testing.T, small bool) string {
	text := llm.Corpus()
	name := "full"
	if small {
		text, name = text[:len(text)/2], "small"
	}
	srv := httptest.NewServer(llm.NewServer(llm.Train(text), name))
	t.Cleanup(srv.Close)
	return srv.URL
}

func ask(t *testing.T, url, path, body string) []byte {
	resp, err := http.Post(url+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return b
}

var prompts = []string{
	"a client that keeps its receipts", "every answer carries a receipt", "the network is small and",
	"good systems are boring", "the market grows when", "a validator that gathers receipts",
	"if the trusted machine disagrees", "miners compete on", "when a machine fails", "clients come back when",
}

func TestComparators(t *testing.T) {
	full, small := serve(t, false), serve(t, true)
	ref := HTTPReference{BaseURL: serve(t, false)}
	ctx := context.Background()
	caught := 0
	for i, p := range prompts {
		for _, path := range []string{"/v1/completions", "/v1/chat/completions"} {
			for _, stream := range []bool{false, true} {
				var req string
				if path == "/v1/completions" {
					req = fmt.Sprintf(`{"prompt": %q, "max_tokens": 12, "temperature": 0, "stream": %v}`, p, stream)
				} else {
					req = fmt.Sprintf(`{"messages": [{"role": "user", "content": %q}], "max_tokens": 12, "temperature": 0, "stream": %v}`, p, stream)
				}
				honest := Pair{Method: "POST", Path: path, Request: []byte(req), Response: ask(t, full, path, req)}
				for _, c := range []Comparator{Exact{}, LLM{}} {
					v, err := c.Compare(ctx, ref, honest)
					if err != nil || !v.Pass {
						t.Errorf("%s %s %d stream=%v: honest answer failed: %+v %v", c.Name(), path, i, stream, v, err)
					}
				}
				cheat := Pair{Method: "POST", Path: path, Request: []byte(req), Response: ask(t, small, path, req)}
				v, err := LLM{}.Compare(ctx, ref, cheat)
				if err != nil {
					t.Fatal(err)
				}
				if !v.Pass {
					caught++
				}
				if ev, _ := (Exact{}).Compare(ctx, ref, cheat); ev.Pass && !v.Pass {
					t.Errorf("exact passed what llm caught")
				}
			}
		}
	}
	t.Logf("the swapped model was caught on %d of %d answers", caught, 4*len(prompts))
	if caught < 2*len(prompts) {
		t.Errorf("the llm comparator caught the swapped model on only %d of %d answers", caught, 4*len(prompts))
	}
}

func TestSampledAnswers(t *testing.T) {
	full := serve(t, false)
	ref := HTTPReference{BaseURL: serve(t, false)}
	req := `{"prompt": "the miner", "max_tokens": 10, "temperature": 0.8, "seed": 3}`
	v, err := LLM{}.Compare(context.Background(), ref, Pair{Method: "POST", Path: "/v1/completions", Request: []byte(req), Response: ask(t, full, "/v1/completions", req)})
	if err != nil || !v.Pass {
		t.Errorf("sampled honest answer: %+v %v", v, err)
	}
	junk := []byte(`{"choices": [{"text": "zebra quantum marmalade xylophone"}]}`)
	v, err = LLM{}.Compare(context.Background(), ref, Pair{Method: "POST", Path: "/v1/completions", Request: []byte(req), Response: junk})
	if err != nil || v.Pass {
		t.Errorf("nonsense passed: %+v %v", v, err)
	}
}
