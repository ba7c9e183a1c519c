// Package llm is the demo language model: a word-level trigram model trained
// on a text shipped with it, deterministic for a seed and at temperature 0,
// and its OpenAI-compatible HTTP API (completions, chat completions, SSE
// streaming, logprobs). The demo streaming image serves it; validators'
// comparators are tested against it.
package llm

import (
	_ "embed"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"unicode"
)

//go:embed corpus.txt
var corpus string

// Corpus is the text the model is trained on.
func Corpus() string { return corpus }

// Model is a word-level trigram model with add-k smoothing over its vocabulary.
type Model struct {
	vocab []string
	index map[string]int
	next  map[[2]int]map[int]int // (w−2, w−1) → counts of w
	uni   map[int]int
	total int
}

const bos = "<s>"

// Tokenize splits text into words and punctuation marks.
func Tokenize(s string) []string {
	var out []string
	var cur strings.Builder
	flush := func() {
		if cur.Len() > 0 {
			out = append(out, cur.String())
			cur.Reset()
		}
	}
	for _, r := range s {
		switch {
		case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '\'' || r == '-':
			cur.WriteRune(unicode.ToLower(r))
		case unicode.IsSpace(r):
			flush()
		default:
			flush()
			out = append(out, string(r))
		}
	}
	flush()
	return out
}

// Detokenize joins tokens back into text.
func Detokenize(toks []string) string {
	var b strings.Builder
	for i, t := range toks {
		if i > 0 && !strings.ContainsAny(t, ".,;:!?") {
			b.WriteByte(' ')
		}
		b.WriteString(t)
	}
	return b.String()
}

// Train builds the model from text.
func Train(text string) *Model {
	m := &Model{index: map[string]int{}, next: map[[2]int]map[int]int{}, uni: map[int]int{}}
	m.id(bos)
	for _, line := range strings.Split(text, "\n") {
		toks := Tokenize(line)
		if len(toks) == 0 {
			continue
		}
		ctx := [2]int{m.id(bos), m.id(bos)}
		for _, t := range toks {
			w := m.id(t)
			if m.next[ctx] == nil {
				m.next[ctx] = map[int]int{}
			}
			m.next[ctx][w]++
			m.uni[w]++
			m.total++
			ctx = [2]int{ctx[1], w}
		}
	}
	return m
}

func (m *Model) id(w string) int {
	if i, ok := m.index[w]; ok {
		return i
	}
	m.index[w] = len(m.vocab)
	m.vocab = append(m.vocab, w)
	return m.index[w]
}

const addK = 0.01

// dist is the next-word distribution after ctx: trigram counts, falling back
// to unigrams for unseen contexts, smoothed.
func (m *Model) dist(ctx [2]int) []float64 {
	p := make([]float64, len(m.vocab))
	counts, n := m.next[ctx], 0
	if len(counts) == 0 {
		counts, n = m.uni, m.total
	} else {
		for _, c := range counts {
			n += c
		}
	}
	denom := float64(n) + addK*float64(len(m.vocab)-1)
	for i := 1; i < len(m.vocab); i++ { // never generate <s>
		p[i] = (float64(counts[i]) + addK) / denom
	}
	return p
}

// context returns the last two known words of prompt (unknown words reset it).
func (m *Model) context(prompt []string) [2]int {
	ctx := [2]int{m.index[bos], m.index[bos]}
	for _, t := range prompt {
		w, ok := m.index[t]
		if !ok {
			ctx = [2]int{m.index[bos], m.index[bos]}
			continue
		}
		ctx = [2]int{ctx[1], w}
	}
	return ctx
}

// Token is one generated token with its log-probability and the top alternatives.
type Token struct {
	Text    string
	Logprob float64
	Top     map[string]float64
}

// Generate continues prompt by n tokens. Temperature 0 is greedy; otherwise
// words are sampled at the temperature from a generator seeded by seed.
func (m *Model) Generate(prompt string, n int, temperature float64, seed uint64, top int) []Token {
	toks := Tokenize(prompt)
	ctx := m.context(toks)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var out []Token
	for range n {
		p := m.dist(ctx)
		w := 0
		if temperature <= 0 {
			for i := 1; i < len(p); i++ {
				if p[i] > p[w] {
					w = i
				}
			}
		} else {
			var sum float64
			q := make([]float64, len(p))
			for i, v := range p {
				if v > 0 {
					q[i] = math.Pow(v, 1/temperature)
					sum += q[i]
				}
			}
			r := rng.Float64() * sum
			for i, v := range q {
				if r -= v; r <= 0 && v > 0 {
					w = i
					break
				}
			}
		}
		out = append(out, Token{Text: m.vocab[w], Logprob: math.Log(p[w]), Top: m.topK(p, top)})
		ctx = [2]int{ctx[1], w}
	}
	return out
}

// Score returns the log-probability of each token of text after prompt, and
// the top alternatives at each position (teacher forcing): what a
// validator's comparator asks of a reference model.
func (m *Model) Score(prompt, text string, top int) []Token {
	ctx := m.context(Tokenize(prompt))
	var out []Token
	for _, t := range Tokenize(text) {
		p := m.dist(ctx)
		// A word the model never saw: as unlikely as an unseen word after the
		// most common context.
		lp := math.Log(addK / (float64(m.total) + addK*float64(len(m.vocab))))
		if w, ok := m.index[t]; ok {
			lp = math.Log(p[w])
			ctx = [2]int{ctx[1], w}
		} else {
			// As in generation, an unknown word starts the context afresh.
			ctx = [2]int{m.index[bos], m.index[bos]}
		}
		out = append(out, Token{Text: t, Logprob: lp, Top: m.topK(p, top)})
	}
	return out
}

func (m *Model) topK(p []float64, k int) map[string]float64 {
	if k <= 0 {
		return nil
	}
	idx := make([]int, 0, len(p))
	for i := 1; i < len(p); i++ {
		idx = append(idx, i)
	}
	sort.Slice(idx, func(a, b int) bool { return p[idx[a]] > p[idx[b]] || (p[idx[a]] == p[idx[b]] && idx[a] < idx[b]) })
	out := map[string]float64{}
	for _, i := range idx[:min(k, len(idx))] {
		out[m.vocab[i]] = math.Log(p[i])
	}
	return out
}
