package llm

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// Server is the OpenAI-compatible HTTP API over a model. Responses are
// deterministic: ids derive from the request and "created" is 0, so the same
// request gives the same bytes (what an exact comparator needs).
type Server struct {
	m, other *Model
	fraction float64
	name     string
}

// model picks the model that answers a request.
func (s *Server) model(body []byte) *Model {
	if s.other == nil {
		return s.m
	}
	sum := sha256.Sum256(body)
	if float64(uint16(sum[0])<<8|uint16(sum[1]))/65536 < s.fraction {
		return s.other
	}
	return s.m
}

// Files says where the job's files are: inputs under Volume, results
// under Output.
type Files struct{ Volume, Output string }

// ContainerFiles are where a job container has them.
var ContainerFiles = Files{Volume: "/volume", Output: "/output"}

// NewServer returns the API handler, with the job's files where a container has them.
func NewServer(m *Model, name string) http.Handler { return newServer(m, nil, 0, name, ContainerFiles) }

// NewCheatingServer answers a fraction of requests (chosen by a hash of the
// request, so replays of them get the same answer) with the model other: a
// stand-in for a miner that serves a cheaper model some of the time.
func NewCheatingServer(m, other *Model, fraction float64, name string) http.Handler {
	return newServer(m, other, fraction, name, ContainerFiles)
}

// NewServerFiles is NewServer, or NewCheatingServer when other is set, with
// the job's files in files.
func NewServerFiles(m, other *Model, fraction float64, name string, files Files) http.Handler {
	return newServer(m, other, fraction, name, files)
}

func newServer(m, other *Model, fraction float64, name string, files Files) http.Handler {
	s := &Server{m: m, other: other, fraction: fraction, name: name}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"object": "list", "data": []any{map[string]any{"id": name, "object": "model", "owned_by": "horde"}}})
	})
	// The job's files: inputs in /volume (volume messages add to them) and
	// results in /output (uploaded at the end, or on request).
	mux.Handle("GET /volume/", http.StripPrefix("/volume/", http.FileServer(http.Dir(files.Volume))))
	mux.HandleFunc("PUT /output/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if name == "" || strings.ContainsAny(name, "/\\") || strings.HasPrefix(name, ".") {
			httpError(w, http.StatusBadRequest, "bad file name")
			return
		}
		b, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
		if err == nil {
			err = os.WriteFile(filepath.Join(files.Output, name), b, 0o644)
		}
		if err != nil {
			httpError(w, http.StatusInternalServerError, err.Error())
			return
		}
		writeJSON(w, map[string]any{"written": name, "bytes": len(b)})
	})
	mux.HandleFunc("POST /v1/completions", s.completions)
	mux.HandleFunc("POST /v1/chat/completions", s.chat)
	return mux
}

type request struct {
	Model       string    `json:"model"`
	Prompt      string    `json:"prompt"`
	Messages    []message `json:"messages"`
	MaxTokens   *int      `json:"max_tokens"`
	Temperature *float64  `json:"temperature"`
	Seed        uint64    `json:"seed"`
	Stream      bool      `json:"stream"`
	Echo        bool      `json:"echo"`
	// Logprobs is an int for completions (top alternatives) and a bool for chat.
	Logprobs    json.RawMessage `json:"logprobs"`
	TopLogprobs int             `json:"top_logprobs"`
}

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func (q *request) params() (n int, temp float64) {
	n, temp = 16, 1
	if q.MaxTokens != nil {
		n = *q.MaxTokens
	}
	if q.Temperature != nil {
		temp = *q.Temperature
	}
	return min(max(n, 0), 4096), temp
}

func decode(w http.ResponseWriter, r *http.Request) (*request, []byte, bool) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return nil, nil, false
	}
	var q request
	if err := json.Unmarshal(body, &q); err != nil {
		httpError(w, http.StatusBadRequest, "invalid JSON: "+err.Error())
		return nil, nil, false
	}
	return &q, body, true
}

func httpError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"message": msg, "type": "invalid_request_error"}})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func requestID(prefix string, body []byte) string {
	sum := sha256.Sum256(body)
	return prefix + hex.EncodeToString(sum[:12])
}

// text renders the i-th generated token as it appears in the output.
func text(t Token, first bool) string {
	if first || strings.ContainsAny(t.Text, ".,;:!?") {
		return t.Text
	}
	return " " + t.Text
}

func (s *Server) completions(w http.ResponseWriter, r *http.Request) {
	q, body, ok := decode(w, r)
	if !ok {
		return
	}
	n, temp := q.params()
	var top int
	wantLogprobs := len(q.Logprobs) > 0 && string(q.Logprobs) != "null"
	if wantLogprobs {
		json.Unmarshal(q.Logprobs, &top)
	}
	m := s.model(body)
	toks := m.Generate(q.Prompt, n, temp, q.Seed, top)
	if q.Echo { // the prompt's own tokens, scored: teacher forcing
		toks = append(m.Score("", q.Prompt, top), toks...)
	}
	id := requestID("cmpl-", body)
	if q.Stream {
		sse(w, func(emit func(any)) {
			for i, t := range toks {
				c := map[string]any{"text": text(t, i == 0), "index": 0, "finish_reason": nil}
				if wantLogprobs {
					c["logprobs"] = map[string]any{"tokens": []string{t.Text}, "token_logprobs": []float64{t.Logprob}, "top_logprobs": []any{t.Top}}
				}
				emit(map[string]any{"id": id, "object": "text_completion", "created": 0, "model": s.name, "choices": []any{c}})
			}
			emit(map[string]any{"id": id, "object": "text_completion", "created": 0, "model": s.name,
				"choices": []any{map[string]any{"text": "", "index": 0, "finish_reason": "length"}}})
		})
		return
	}
	var sb strings.Builder
	lp := map[string]any{"tokens": []string{}, "token_logprobs": []float64{}, "top_logprobs": []any{}}
	for i, t := range toks {
		sb.WriteString(text(t, i == 0))
		lp["tokens"] = append(lp["tokens"].([]string), t.Text)
		lp["token_logprobs"] = append(lp["token_logprobs"].([]float64), t.Logprob)
		lp["top_logprobs"] = append(lp["top_logprobs"].([]any), t.Top)
	}
	choice := map[string]any{"text": sb.String(), "index": 0, "finish_reason": "length"}
	if wantLogprobs {
		choice["logprobs"] = lp
	}
	writeJSON(w, map[string]any{"id": id, "object": "text_completion", "created": 0, "model": s.name, "choices": []any{choice},
		"usage": map[string]int{"prompt_tokens": len(Tokenize(q.Prompt)), "completion_tokens": n, "total_tokens": len(Tokenize(q.Prompt)) + n}})
}

func (s *Server) chat(w http.ResponseWriter, r *http.Request) {
	q, body, ok := decode(w, r)
	if !ok {
		return
	}
	if len(q.Messages) == 0 {
		httpError(w, http.StatusBadRequest, "messages is empty")
		return
	}
	var prompt []string
	for _, m := range q.Messages {
		prompt = append(prompt, m.Content)
	}
	n, temp := q.params()
	wantLogprobs := string(q.Logprobs) == "true"
	toks := s.model(body).Generate(strings.Join(prompt, "\n"), n, temp, q.Seed, q.TopLogprobs)
	id := requestID("chatcmpl-", body)
	lpEntry := func(t Token) map[string]any {
		var tops []any
		for tok, lp := range t.Top {
			tops = append(tops, map[string]any{"token": tok, "logprob": lp})
		}
		return map[string]any{"token": t.Text, "logprob": t.Logprob, "top_logprobs": tops}
	}
	if q.Stream {
		sse(w, func(emit func(any)) {
			emit(map[string]any{"id": id, "object": "chat.completion.chunk", "created": 0, "model": s.name,
				"choices": []any{map[string]any{"index": 0, "delta": map[string]any{"role": "assistant", "content": ""}, "finish_reason": nil}}})
			for i, t := range toks {
				c := map[string]any{"index": 0, "delta": map[string]any{"content": text(t, i == 0)}, "finish_reason": nil}
				if wantLogprobs {
					c["logprobs"] = map[string]any{"content": []any{lpEntry(t)}}
				}
				emit(map[string]any{"id": id, "object": "chat.completion.chunk", "created": 0, "model": s.name, "choices": []any{c}})
			}
			emit(map[string]any{"id": id, "object": "chat.completion.chunk", "created": 0, "model": s.name,
				"choices": []any{map[string]any{"index": 0, "delta": map[string]any{}, "finish_reason": "length"}}})
		})
		return
	}
	var sb strings.Builder
	var content []any
	for i, t := range toks {
		sb.WriteString(text(t, i == 0))
		content = append(content, lpEntry(t))
	}
	choice := map[string]any{"index": 0, "message": map[string]any{"role": "assistant", "content": sb.String()}, "finish_reason": "length"}
	if wantLogprobs {
		choice["logprobs"] = map[string]any{"content": content}
	}
	writeJSON(w, map[string]any{"id": id, "object": "chat.completion", "created": 0, "model": s.name, "choices": []any{choice}})
}

// sse streams events, flushing each: one token per event.
func sse(w http.ResponseWriter, gen func(emit func(any))) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	fl, _ := w.(http.Flusher)
	gen(func(v any) {
		b, _ := json.Marshal(v)
		fmt.Fprintf(w, "data: %s\n\n", b)
		if fl != nil {
			fl.Flush()
		}
	})
	io.WriteString(w, "data: [DONE]\n\n")
}
