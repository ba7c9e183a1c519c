package main

import (
	"context"
	"net/url"
	"sync"
	"testing"
	"time"
)

// BenchmarkProxyInProcess is the bench's horde rows in one process, without
// nginx, taskset or child processes: cheap enough for CI
// (-benchtime 1x), and it keeps the bench's parts compiling and working.
// The figures to quote come from `go run ./bench/proxy`.
func BenchmarkProxyInProcess(b *testing.B) {
	k, err := makeKeys(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(b.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	start := func(serve func(ready func(string)) error) string {
		addr := make(chan string, 1)
		wg.Go(func() {
			if err := serve(func(a string) { addr <- a }); err != nil {
				b.Error(err)
			}
		})
		return <-addr
	}
	echo := start(func(ready func(string)) error { return serveEcho(ctx, "127.0.0.1:0", 20, 0, ready) })
	up, _ := url.Parse("http://" + echo)
	horde := start(func(ready func(string)) error { return serveHorde(ctx, k, "127.0.0.1:0", up, ready) })
	for _, tc := range []struct {
		name string
		spec loadSpec
	}{
		{"1KiB-h1", loadSpec{Size: 1024}},
		{"1KiB-h2", loadSpec{Size: 1024, HTTP2: true}},
		{"64KiB-h1", loadSpec{Size: 64 << 10}},
		{"sse-h1", loadSpec{Size: 1024, SSE: true}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s := tc.spec
			s.URL, s.TLS, s.Conns, s.Duration, s.Warmup, s.Requests = "https://"+horde, true, 4, time.Minute, 10*time.Millisecond, 50*b.N
			res, err := runLoad(ctx, k, s)
			if err != nil {
				b.Fatal(err)
			}
			if res.Errors > 0 || res.Receipts != res.Requests || (s.HTTP2 && res.HTTP2 != res.Requests) {
				b.Fatalf("%+v", res)
			}
			b.ReportMetric(float64(res.Requests)/res.Elapsed.Seconds(), "req/s")
			b.ReportMetric(float64(res.P50.Microseconds())/1000, "p50-ms")
		})
	}
}
