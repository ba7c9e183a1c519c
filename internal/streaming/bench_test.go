package streaming

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sr "github.com/horde-compute/horde/streamreceipt"
)

var kib = bytes.Repeat([]byte("x"), 1024)

// BenchmarkProxy1KiB compares 1 KiB requests straight to the service with the
// same through the proxy (mutual TLS, hashing, signing), and reports
// requests/s and p50 latency for each, plus the ratio and the added p50.
func BenchmarkProxy1KiB(b *testing.B) { benchProxy(b, echo()) }

// BenchmarkProxy1KiBWork1ms is the same against a service that computes for
// 1 ms per request (a very small model): the proxy's cost against real work.
func BenchmarkProxy1KiBWork1ms(b *testing.B) {
	benchProxy(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		sum := sha256.Sum256(body)
		for end := time.Now().Add(time.Millisecond); time.Now().Before(end); {
			sum = sha256.Sum256(sum[:])
		}
		w.Write(sum[:])
	}))
}

func benchProxy(b *testing.B, service http.Handler) {
	r := newRig(b, service)
	direct := httptest.NewServer(service)
	defer direct.Close()
	plain := &http.Client{}
	var seq atomic.Int64
	measure := func(do func() error) (float64, time.Duration) {
		var mu sync.Mutex
		var lat []time.Duration
		start := time.Now()
		var wg sync.WaitGroup
		per := max(b.N, 200) / 4
		for range 4 {
			wg.Go(func() {
				for range per {
					t := time.Now()
					if err := do(); err != nil {
						b.Error(err)
						return
					}
					mu.Lock()
					lat = append(lat, time.Since(t))
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		slices.Sort(lat)
		return float64(len(lat)) / time.Since(start).Seconds(), lat[len(lat)/2]
	}
	directRPS, directP50 := measure(func() error {
		resp, err := plain.Post(direct.URL, "text/plain", bytes.NewReader(kib))
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		return resp.Body.Close()
	})
	proxyRPS, proxyP50 := measure(func() error {
		req, _ := http.NewRequest(http.MethodPost, r.url+"/v1/completions", bytes.NewReader(kib))
		req.Header.Set(sr.HeaderTimestamp, time.Now().UTC().Format(sr.TimeFormat))
		req.Header.Set(sr.HeaderRequestID, fmt.Sprintf("b%d", seq.Add(1)))
		resp, err := r.client.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.Trailer.Get(sr.TrailerReceipt) == "" {
			return fmt.Errorf("no receipt")
		}
		return nil
	})
	b.ReportMetric(directRPS, "direct-req/s")
	b.ReportMetric(proxyRPS, "proxy-req/s")
	b.ReportMetric(100*proxyRPS/directRPS, "proxy-%-of-direct")
	b.ReportMetric(float64((proxyP50-directP50).Microseconds())/1000, "added-p50-ms")
}

// BenchmarkStream1GiB streams a 1 GiB response through the proxy and reports
// the peak heap growth while it flows: flat, since nothing is buffered whole.
func BenchmarkStream1GiB(b *testing.B) {
	const total = 1 << 30
	chunk := bytes.Repeat([]byte("y"), 64<<10)
	r := newRig(b, http.HandlerFunc(func(w http.ResponseWriter, q *http.Request) {
		for sent := 0; sent < total; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	for i := range b.N {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		base := ms.HeapInuse
		var peak atomic.Uint64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			t := time.NewTicker(20 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					var m runtime.MemStats
					runtime.ReadMemStats(&m)
					if m.HeapInuse > peak.Load() {
						peak.Store(m.HeapInuse)
					}
				}
			}
		})
		req, _ := http.NewRequest(http.MethodGet, r.url+"/big", nil)
		req.Header.Set(sr.HeaderTimestamp, time.Now().UTC().Format(sr.TimeFormat))
		req.Header.Set(sr.HeaderRequestID, fmt.Sprintf("big%d", i))
		start := time.Now()
		resp, err := r.client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		close(stop)
		wg.Wait()
		if err != nil || n != total || resp.Trailer.Get(sr.TrailerReceipt) == "" {
			b.Fatalf("streamed %d bytes, %v, trailer %q", n, err, resp.Trailer.Get(sr.TrailerReceipt))
		}
		b.ReportMetric(float64(peak.Load()-min(base, peak.Load()))/(1<<20), "peak-heap-growth-MiB")
		b.ReportMetric(float64(total)/(1<<20)/time.Since(start).Seconds(), "MiB/s")
	}
}
