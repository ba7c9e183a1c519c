package hordetest

import (
	"bytes"
	"context"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/protocol"
)

// BenchmarkStreamingStartup starts streaming jobs of the pre-loaded demo LLM
// image on Docker and reports the time from the miner's acceptance to the
// first request served through the signing proxy (p50 and p95), and where
// it goes: the executor's stages (network, container create and start, the
// service's health, the proxy's key, TLS and listener) and the rest
// (messages between the roles, the client's first call).
//
// Two hordes run side by side, their starts alternating (so that both see
// the same load): "own-network", whose miner makes each job's network when
// it starts (what a miner without a sandbox pool does), and "sandbox",
// whose miner keeps two streaming sandboxes ready (package sandbox).
// "sandbox-ready" counts the starts that found one ready. b.N starts of
// each (-benchtime 20x for the figures; 1x in CI).
func BenchmarkStreamingStartup(b *testing.B) {
	wl := map[string]string{images.LLMImage: OnDocker.LLMDigest(b)}
	hs := []*Horde{
		OnDocker.Start(b, devstack.Config{StreamingWhitelist: wl}),
		OnDocker.Start(b, devstack.Config{StreamingWhitelist: wl, StreamingSandboxes: 2}),
	}
	names := []string{"own-network", "sandbox"}
	body := []byte(`{"prompt": "hi", "max_tokens": 1, "temperature": 0}`)
	type figures struct {
		total, toReady, toServed []time.Duration
		stages                   map[string][]int64
		ready                    int
	}
	fs := []*figures{{stages: map[string][]int64{}}, {stages: map[string][]int64{}}}
	start := func(h *Horde, f *figures) {
		if len(h.Sandboxes) > 0 && h.Sandboxes[0].Ready() > 0 {
			f.ready++
		}
		ctx, cancel := context.WithTimeout(b.Context(), 2*time.Minute)
		defer cancel()
		var mu sync.Mutex
		var accepted, ready time.Time
		st, err := h.Client.StartStreaming(ctx, streamSpec(), func(e protocol.StatusEntry) {
			mu.Lock()
			defer mu.Unlock()
			switch {
			case e.Status == protocol.StatusAccepted && accepted.IsZero():
				accepted = time.Now()
			case e.Status == protocol.StatusStreaming && ready.IsZero():
				ready = time.Now()
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		hc, err := st.HTTPClient()
		if err != nil {
			b.Fatal(err)
		}
		var out bytes.Buffer
		if _, err := st.Call(ctx, hc, "POST", "/v1/completions", body, &out); err != nil {
			b.Fatalf("first call: %v", err)
		}
		served := time.Now()
		mu.Lock()
		if accepted.IsZero() || ready.IsZero() {
			b.Fatalf("no accepted (%v) or streaming_ready (%v) status seen", accepted, ready)
		}
		f.total, f.toReady, f.toServed = append(f.total, served.Sub(accepted)), append(f.toReady, ready.Sub(accepted)), append(f.toServed, served.Sub(ready))
		mu.Unlock()
		if _, err := h.Client.Stop(ctx, st.JobUUID); err != nil {
			b.Fatal(err)
		}
		done, err := h.Client.Watch(ctx, st.JobUUID, func(protocol.StatusEntry) {})
		if err != nil {
			b.Fatal(err)
		}
		if md := Last(done).Metadata; md != nil {
			for k, ms := range md.Timings {
				f.stages[k] = append(f.stages[k], ms)
			}
		}
	}
	for i := range b.N {
		for k := range hs { // alternate which goes first
			k = (k + i) % len(hs)
			start(hs[k], fs[k])
		}
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	for k, f := range fs {
		n := names[k] + "-"
		b.ReportMetric(ms(pct(f.total, 0.5)), n+"accepted-to-served-p50-ms")
		b.ReportMetric(ms(pct(f.total, 0.95)), n+"accepted-to-served-p95-ms")
		b.ReportMetric(ms(pct(f.toReady, 0.5)), n+"accepted-to-ready-p50-ms")
		b.ReportMetric(ms(pct(f.toServed, 0.5)), n+"ready-to-served-p50-ms")
		keys := make([]string, 0, len(f.stages))
		for k := range f.stages {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, key := range keys {
			v := f.stages[key]
			sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
			b.ReportMetric(float64(v[len(v)/2]), n+key+"-p50-ms")
		}
		b.Logf("%s: %d starts, %d found a sandbox ready; accepted to served p50 %.0f ms, p95 %.0f ms", names[k], len(f.total), f.ready, ms(pct(f.total, 0.5)), ms(pct(f.total, 0.95)))
	}
	b.ReportMetric(float64(fs[1].ready), "sandbox-ready-starts")
	b.ReportMetric(ms(pct(fs[1].total, 0.95))/ms(pct(fs[0].total, 0.95)), "p95-ratio")
}
