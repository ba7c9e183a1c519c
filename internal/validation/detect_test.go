package validation

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/horde-compute/horde/internal/llm"
)

// requests makes client requests from the corpus: a few words of a sentence
// as the prompt, greedy decoding.
func requests(n int, rng *rand.Rand) [][]byte {
	words := strings.Fields(llm.Corpus())
	out := make([][]byte, n)
	for i := range out {
		at := rng.IntN(len(words) - 6)
		k := 2 + rng.IntN(4)
		prompt := strings.Join(words[at:at+k], " ")
		if rng.IntN(3) == 0 { // words the model never saw, too
			prompt += fmt.Sprintf(" zq%d", rng.IntN(1000))
		}
		out[i] = fmt.Appendf(nil, `{"prompt": %q, "max_tokens": 10, "temperature": 0, "seed": %d}`, prompt, i)
	}
	return out
}

func post(url string, body []byte) []byte {
	resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(string(body)))
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return b
}

// simulate serves requests from a miner cheating on fraction f, samples
// each for replay with probability s, and returns how many requests passed
// before the first failed comparison (or -1 if none within the requests).
func simulate(t testing.TB, f, s float64, reqs [][]byte, rng *rand.Rand, ref Reference) int {
	full, small := llm.Train(llm.Corpus()), llm.Train(llm.Corpus()[:len(llm.Corpus())/2])
	srv := httptest.NewServer(llm.NewCheatingServer(full, small, f, "miner"))
	defer srv.Close()
	for i, req := range reqs {
		resp := post(srv.URL, req)
		if rng.Float64() >= s {
			continue
		}
		v, err := (LLM{}).Compare(context.Background(), ref, Pair{Method: "POST", Path: "/v1/completions", Request: req, Response: resp})
		if err != nil {
			t.Fatal(err)
		}
		if !v.Pass {
			return i + 1
		}
	}
	return -1
}

// No false positives over many honest pairs; cheaters at 100 %, 10 % and
// 1 % are caught; the requests it takes match ln(1−P)/ln(1−f·s·d), where d
// is the share of the cheaper model's answers that differ detectably.
func TestDetection(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	ref := HTTPReference{BaseURL: httptest.NewServer(llm.NewServer(llm.Train(llm.Corpus()), "ref")).URL}
	// False positives over 1,000 honest pairs.
	honest := requests(1000, rng)
	if n := simulate(t, 0, 1, honest, rng, ref); n != -1 {
		t.Fatalf("an honest miner was flagged at request %d", n)
	}
	// d: how often a cheap answer is detectable at all.
	probe := requests(1000, rng)
	caughtAll := 0
	full, small := llm.Train(llm.Corpus()), llm.Train(llm.Corpus()[:len(llm.Corpus())/2])
	cheapSrv := httptest.NewServer(llm.NewServer(small, "small"))
	defer cheapSrv.Close()
	_ = full
	for _, req := range probe {
		v, _ := (LLM{}).Compare(context.Background(), ref, Pair{Method: "POST", Path: "/v1/completions", Request: req, Response: post(cheapSrv.URL, req)})
		if !v.Pass {
			caughtAll++
		}
	}
	d := float64(caughtAll) / float64(len(probe))
	t.Logf("share of the cheaper model's answers the llm comparator flags: d = %.2f", d)
	for _, f := range []float64{1, 0.1, 0.01} {
		const s = 1.0 // every pair replayed, to keep the test short; the theory scales with s
		trials, total, misses := 20, 0, 0
		budget := int(math.Ceil(RequestsUntilDetection(0.999, f*d, s)))
		for range trials {
			n := simulate(t, f, s, requests(budget, rng), rng, ref)
			if n < 0 {
				misses++
				continue
			}
			total += n
		}
		mean := float64(total) / float64(trials-misses)
		expect := 1 / (f * d * s)
		t.Logf("f = %4.0f%%: caught in %d of %d trials, after %.1f requests on average (theory %.1f; P=99%% within %.0f)",
			100*f, trials-misses, trials, mean, expect, RequestsUntilDetection(0.99, f*d, s))
		if misses > 1 {
			t.Errorf("f = %v: %d of %d trials missed within %d requests", f, misses, trials, budget)
		}
		if mean > 3*expect+2 {
			t.Errorf("f = %v: %.1f requests on average, theory %.1f", f, mean, expect)
		}
	}
}
