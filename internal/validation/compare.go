// Package validation judges streaming jobs' answers: comparators replay a
// request/response pair against a trusted reference instance of the same
// image and say whether the claimed response could have come from it.
package validation

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
)

// Pair is one request and the response a miner's job returned for it: the
// request as its receipt binds it (Path is the target, with the query).
type Pair struct {
	Method, Path, ContentType string
	Request, Response         []byte
}

// Verdict is a comparator's judgement of one pair.
type Verdict struct {
	Pass   bool    `json:"pass"`
	Detail string  `json:"detail"`
	Score  float64 `json:"score"`
}

// Reference is a trusted instance of the job's image. Do sends one request
// (contentType "" sends no Content-Type) and returns the body of a
// successful answer.
type Reference interface {
	Do(ctx context.Context, method, path, contentType string, body []byte) ([]byte, error)
}

// HTTPReference reaches a reference instance over HTTP.
type HTTPReference struct {
	BaseURL string
	Client  *http.Client
}

// Do implements Reference.
func (r HTTPReference) Do(ctx context.Context, method, path, contentType string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(r.BaseURL, "/")+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	c := r.Client
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reference: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("reference: %w", err)
	}
	if resp.StatusCode >= 300 {
		return nil, fmt.Errorf("reference: HTTP %d: %.200s", resp.StatusCode, b)
	}
	return b, nil
}

// Comparator judges a pair against a reference.
type Comparator interface {
	Name() string
	Compare(ctx context.Context, ref Reference, p Pair) (Verdict, error)
}

// Exact replays the very request (method, target, content type, body) and
// requires the very same response bytes: for deterministic services.
type Exact struct{}

// Name implements Comparator.
func (Exact) Name() string { return "exact" }

// Compare implements Comparator.
func (Exact) Compare(ctx context.Context, ref Reference, p Pair) (Verdict, error) {
	want, err := ref.Do(ctx, p.Method, p.Path, p.ContentType, p.Request)
	if err != nil {
		return Verdict{}, err
	}
	got, exp := sha256.Sum256(p.Response), sha256.Sum256(want)
	if got != exp {
		return Verdict{Detail: fmt.Sprintf("response sha256 %x differs from the reference's %x", got[:8], exp[:8])}, nil
	}
	return Verdict{Pass: true, Detail: "identical to the reference", Score: 1}, nil
}

// LLM checks a language model's answer by teacher forcing: the reference
// scores the claimed tokens after the prompt through the OpenAI-compatible
// completions API (echo with logprobs). At temperature 0 a claimed token
// agrees when its log-probability is within Margin of the reference's best
// at that position, which tolerates near-ties flipping on other hardware;
// the answer passes when at least MinAgreement of its tokens agree. Sampled
// answers (temperature above 0) pass when their mean log-probability is at
// least MinMeanLogprob.
type LLM struct {
	Margin         float64 // nats; default 0.5
	MinAgreement   float64 // default 0.9
	MinMeanLogprob float64 // default −6
}

// Name implements Comparator.
func (LLM) Name() string { return "llm" }

func (c LLM) defaults() LLM {
	if c.Margin == 0 {
		c.Margin = 0.5
	}
	if c.MinAgreement == 0 {
		c.MinAgreement = 0.9
	}
	if c.MinMeanLogprob == 0 {
		c.MinMeanLogprob = -6
	}
	return c
}

type scored struct {
	Choices []struct {
		Logprobs struct {
			Tokens        []string             `json:"tokens"`
			TokenLogprobs []float64            `json:"token_logprobs"`
			TopLogprobs   []map[string]float64 `json:"top_logprobs"`
		} `json:"logprobs"`
	} `json:"choices"`
}

func score(ctx context.Context, ref Reference, text string, top int) (*scored, error) {
	body, _ := json.Marshal(map[string]any{"prompt": text, "max_tokens": 0, "echo": true, "logprobs": top, "temperature": 0})
	b, err := ref.Do(ctx, http.MethodPost, "/v1/completions", "application/json", body)
	if err != nil {
		return nil, err
	}
	var s scored
	if err := json.Unmarshal(b, &s); err != nil || len(s.Choices) == 0 {
		return nil, fmt.Errorf("reference: unexpected completions answer: %.200s", b)
	}
	return &s, nil
}

// Compare implements Comparator.
func (c LLM) Compare(ctx context.Context, ref Reference, p Pair) (Verdict, error) {
	c = c.defaults()
	prompt, temp, err := requestPrompt(p)
	if err != nil {
		return Verdict{}, err
	}
	claimed, err := responseText(p.Response)
	if err != nil {
		return Verdict{Detail: "the response is not an OpenAI-compatible completion: " + err.Error()}, nil
	}
	base, err := score(ctx, ref, prompt, 0)
	if err != nil {
		return Verdict{}, err
	}
	all, err := score(ctx, ref, prompt+" "+claimed, 5)
	if err != nil {
		return Verdict{}, err
	}
	n := len(base.Choices[0].Logprobs.Tokens)
	lp := all.Choices[0].Logprobs
	if len(lp.TokenLogprobs) < n || len(lp.TopLogprobs) != len(lp.TokenLogprobs) {
		return Verdict{}, fmt.Errorf("reference: scored %d tokens for a prompt of %d", len(lp.TokenLogprobs), n)
	}
	toks := lp.TokenLogprobs[n:]
	if len(toks) == 0 {
		return Verdict{Pass: true, Detail: "no tokens claimed", Score: 1}, nil
	}
	var sum float64
	agree := 0
	for i, l := range toks {
		sum += l
		best := math.Inf(-1)
		for _, v := range lp.TopLogprobs[n+i] {
			best = max(best, v)
		}
		if l >= best-c.Margin {
			agree++
		}
	}
	mean, frac := sum/float64(len(toks)), float64(agree)/float64(len(toks))
	if temp > 0 {
		v := Verdict{Pass: mean >= c.MinMeanLogprob, Score: mean,
			Detail: fmt.Sprintf("sampled at temperature %g: mean log-probability %.2f over %d tokens (floor %.2f)", temp, mean, len(toks), c.MinMeanLogprob)}
		return v, nil
	}
	return Verdict{Pass: frac >= c.MinAgreement, Score: frac,
		Detail: fmt.Sprintf("%d of %d tokens within %.2f nats of the reference's best (need %.0f%%); mean log-probability %.2f",
			agree, len(toks), c.Margin, 100*c.MinAgreement, mean)}, nil
}

// requestPrompt returns the prompt the service generated from, and the temperature.
func requestPrompt(p Pair) (string, float64, error) {
	var q struct {
		Prompt      string   `json:"prompt"`
		Temperature *float64 `json:"temperature"`
		Messages    []struct {
			Content string `json:"content"`
		} `json:"messages"`
	}
	if err := json.Unmarshal(p.Request, &q); err != nil {
		return "", 0, fmt.Errorf("request is not JSON: %w", err)
	}
	temp := 1.0 // the OpenAI default
	if q.Temperature != nil {
		temp = *q.Temperature
	}
	if path, _, _ := strings.Cut(p.Path, "?"); strings.HasSuffix(path, "/chat/completions") {
		var parts []string
		for _, m := range q.Messages {
			parts = append(parts, m.Content)
		}
		return strings.Join(parts, "\n"), temp, nil
	}
	return q.Prompt, temp, nil
}

// responseText extracts the generated text of a completion or chat
// completion, streamed (server-sent events) or not.
func responseText(b []byte) (string, error) {
	type choice struct {
		Text    string `json:"text"`
		Message struct {
			Content string `json:"content"`
		} `json:"message"`
		Delta struct {
			Content string `json:"content"`
		} `json:"delta"`
	}
	type body struct {
		Choices []choice `json:"choices"`
	}
	pick := func(c choice) string { return c.Text + c.Message.Content + c.Delta.Content }
	if !bytes.HasPrefix(bytes.TrimSpace(b), []byte("data:")) {
		var r body
		if err := json.Unmarshal(b, &r); err != nil || len(r.Choices) == 0 {
			return "", fmt.Errorf("no choices")
		}
		return pick(r.Choices[0]), nil
	}
	var out strings.Builder
	for _, ev := range strings.Split(string(b), "\n\n") {
		data, ok := strings.CutPrefix(strings.TrimSpace(ev), "data:")
		data = strings.TrimSpace(data)
		if !ok || data == "[DONE]" || data == "" {
			continue
		}
		var r body
		if err := json.Unmarshal([]byte(data), &r); err != nil {
			return "", fmt.Errorf("event is not JSON: %w", err)
		}
		if len(r.Choices) > 0 {
			out.WriteString(pick(r.Choices[0]))
		}
	}
	return out.String(), nil
}
