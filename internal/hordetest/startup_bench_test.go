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
// image on Docker, one after another, and reports the time from the miner's
// acceptance to the first request served through the signing proxy (p50 and
// p95), and where it goes: the executor's stages (network, container
// create and start, the service's health, the proxy's key, TLS and listener)
// and the rest (messages between the roles, the client's first call).
// b.N starts (-benchtime 20x for the figures; 1x in CI).
func BenchmarkStreamingStartup(b *testing.B) {
	h := OnDocker.Start(b, devstack.Config{StreamingWhitelist: map[string]string{images.LLMImage: OnDocker.LLMDigest(b)}})
	body := []byte(`{"prompt": "hi", "max_tokens": 1, "temperature": 0}`)
	var total, toReady, toServed []time.Duration
	stages := map[string][]int64{}
	for range b.N {
		ctx, cancel := context.WithTimeout(b.Context(), 2*time.Minute)
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
		total, toReady, toServed = append(total, served.Sub(accepted)), append(toReady, ready.Sub(accepted)), append(toServed, served.Sub(ready))
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
				stages[k] = append(stages[k], ms)
			}
		}
		cancel()
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(pct(total, 0.5)), "accepted-to-served-p50-ms")
	b.ReportMetric(ms(pct(total, 0.95)), "accepted-to-served-p95-ms")
	b.ReportMetric(ms(pct(toReady, 0.5)), "accepted-to-ready-p50-ms")
	b.ReportMetric(ms(pct(toServed, 0.5)), "ready-to-served-p50-ms")
	keys := make([]string, 0, len(stages))
	for k := range stages {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := stages[k]
		sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
		b.ReportMetric(float64(v[len(v)/2]), k+"-p50-ms")
	}
}
