package validation

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
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

// The detection statistics need tens of thousands of answers and
// replays: they are served in-process (the handlers called directly, no
// sockets), which gives the very bytes the HTTP servers would. The
// comparators over real HTTP are TestComparators'.

// post is the answer of handler h to a completions request.
func post(h http.Handler, body []byte) []byte {
	return serveDirect(h, http.MethodPost, "/v1/completions", "application/json", body).Body.Bytes()
}

func serveDirect(h http.Handler, method, path, contentType string, body []byte) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// handlerReference is a Reference served by an in-process handler, with
// HTTPReference's rules (an answer of 300 or more is an error).
type handlerReference struct{ h http.Handler }

func (r handlerReference) Do(_ context.Context, method, path, contentType string, body []byte) ([]byte, error) {
	rec := serveDirect(r.h, method, path, contentType, body)
	if rec.Code >= 300 {
		return nil, fmt.Errorf("reference: HTTP %d: %.200s", rec.Code, rec.Body.Bytes())
	}
	return rec.Body.Bytes(), nil
}

// models are the full model and the cheaper one (half the corpus), trained once.
var models = sync.OnceValues(func() (full, small *llm.Model) {
	return llm.Train(llm.Corpus()), llm.Train(llm.Corpus()[:len(llm.Corpus())/2])
})

// simulate serves requests from a miner cheating on fraction f, samples
// each for replay with probability s, and returns how many requests passed
// before the first failed comparison (or -1 if none within the requests).
func simulate(f, s float64, reqs [][]byte, rng *rand.Rand, ref Reference) (int, error) {
	full, small := models()
	srv := llm.NewCheatingServer(full, small, f, "miner")
	for i, req := range reqs {
		resp := post(srv, req)
		if rng.Float64() >= s {
			continue
		}
		v, err := (LLM{}).Compare(context.Background(), ref, Pair{Method: "POST", Path: "/v1/completions", Request: req, Response: resp})
		if err != nil {
			return 0, err
		}
		if !v.Pass {
			return i + 1, nil
		}
	}
	return -1, nil
}

// No false positives over many honest pairs; cheaters at 100 %, 10 % and
// 1 % are caught; the requests it takes match ln(1−P)/ln(1−f·s·d), where d
// is the share of the cheaper model's answers that differ detectably.
func TestDetection(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	ref := handlerReference{llm.NewServer(llm.Train(llm.Corpus()), "ref")}
	// False positives over 1,000 honest pairs.
	honest := requests(1000, rng)
	if n, err := simulate(0, 1, honest, rng, ref); err != nil || n != -1 {
		t.Fatalf("an honest miner was flagged at request %d (%v)", n, err)
	}
	// d: how often a cheap answer is detectable at all.
	probe := requests(1000, rng)
	caughtAll := 0
	_, small := models()
	cheapSrv := llm.NewServer(small, "small")
	for _, req := range probe {
		v, _ := (LLM{}).Compare(context.Background(), ref, Pair{Method: "POST", Path: "/v1/completions", Request: req, Response: post(cheapSrv, req)})
		if !v.Pass {
			caughtAll++
		}
	}
	d := float64(caughtAll) / float64(len(probe))
	t.Logf("share of the cheaper model's answers the llm comparator flags: d = %.2f", d)
	for fi, f := range []float64{1, 0.1, 0.01} {
		const s = 1.0 // every pair replayed, to keep the test short; the theory scales with s
		trials, total, misses := 20, 0, 0
		budget := int(math.Ceil(RequestsUntilDetection(0.999, f*d, s)))
		// The trials are independent (each its own seeded generator): they
		// run side by side on the machine's cores.
		ns, errs := make([]int, trials), make([]error, trials)
		var wg sync.WaitGroup
		sem := make(chan struct{}, runtime.GOMAXPROCS(0))
		for i := range trials {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				rng := rand.New(rand.NewPCG(uint64(10+fi), uint64(i)))
				ns[i], errs[i] = simulate(f, s, requests(budget, rng), rng, ref)
			})
		}
		wg.Wait()
		for i, n := range ns {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
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
