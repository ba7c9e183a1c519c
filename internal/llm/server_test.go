package llm

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func post(t *testing.T, url, body string) []byte {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("%s: %d %s", url, resp.StatusCode, b)
	}
	return b
}

func TestDeterministicCompletions(t *testing.T) {
	srv := httptest.NewServer(NewServer(Train(Corpus()), "full"))
	defer srv.Close()
	req := `{"prompt": "A validator sends work", "max_tokens": 12, "temperature": 0, "logprobs": 2}`
	a, b := post(t, srv.URL+"/v1/completions", req), post(t, srv.URL+"/v1/completions", req)
	if !bytes.Equal(a, b) {
		t.Error("temperature 0 is not deterministic")
	}
	var out struct {
		Choices []struct {
			Text     string
			Logprobs struct {
				TokenLogprobs []float64 `json:"token_logprobs"`
			}
		}
	}
	json.Unmarshal(a, &out)
	if len(out.Choices) != 1 || len(out.Choices[0].Logprobs.TokenLogprobs) != 12 || out.Choices[0].Text == "" {
		t.Fatalf("completion = %s", a)
	}
	seeded := `{"prompt": "the miner", "max_tokens": 8, "temperature": 0.8, "seed": 7}`
	if !bytes.Equal(post(t, srv.URL+"/v1/completions", seeded), post(t, srv.URL+"/v1/completions", seeded)) {
		t.Error("same seed, different output")
	}
	// The small variant is a different model.
	small := httptest.NewServer(NewServer(Train(Corpus()[:len(Corpus())/2]), "small"))
	defer small.Close()
	if bytes.Equal(post(t, small.URL+"/v1/completions", req), a) {
		t.Error("the small model answers like the full one")
	}
}

func TestStreamingChat(t *testing.T) {
	srv := httptest.NewServer(NewServer(Train(Corpus()), "full"))
	defer srv.Close()
	b := post(t, srv.URL+"/v1/chat/completions", `{"messages": [{"role": "user", "content": "what do validators do"}], "max_tokens": 5, "temperature": 0, "stream": true, "logprobs": true, "top_logprobs": 1}`)
	events := strings.Count(string(b), "data: ")
	if events != 5+3 || !strings.HasSuffix(string(b), "data: [DONE]\n\n") {
		t.Errorf("%d events:\n%s", events, b)
	}
	if !strings.Contains(string(b), `"logprob"`) {
		t.Error("no logprobs in the stream")
	}
}

func TestScoreTeacherForcing(t *testing.T) {
	m := Train(Corpus())
	likely := m.Score("a validator sends", "work whose answer it already knows", 0)
	unlikely := m.Score("a validator sends", "purple elephants dance quietly", 0)
	sum := func(ts []Token) (s float64) {
		for _, x := range ts {
			s += x.Logprob
		}
		return s / float64(len(ts))
	}
	if sum(likely) <= sum(unlikely) {
		t.Errorf("text from the corpus (%.2f) is not likelier than nonsense (%.2f)", sum(likely), sum(unlikely))
	}
}
