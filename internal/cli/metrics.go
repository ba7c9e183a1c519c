package cli

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/horde-compute/horde/internal/httpserve"
	"github.com/horde-compute/horde/internal/metrics"
)

// metricsFlag registers --metrics: where a role serves its Prometheus
// metrics besides its own listener (where it has one).
func metricsFlag(fs *flag.FlagSet, where string) *string {
	return fs.String("metrics", "", "address to serve Prometheus metrics on at /metrics ("+where+")")
}

// withMetrics runs run with a new registry (Go runtime and process
// collectors in it), served as withMetricsOn does.
func (e *env) withMetrics(addr string, extra http.Handler, run func(ctx context.Context, reg *prometheus.Registry) error) error {
	reg := metrics.NewRegistry()
	return e.withMetricsOn(addr, reg, extra, func(ctx context.Context) error { return run(ctx, reg) })
}

// withMetricsOn runs run and, when addr is set, serves reg's /metrics (and
// what extra serves) on addr until run returns.
func (e *env) withMetricsOn(addr string, reg *prometheus.Registry, extra http.Handler, run func(ctx context.Context) error) error {
	if addr == "" {
		return run(e.ctx)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(reg))
	if extra != nil {
		mux.Handle("/", extra)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	var wg sync.WaitGroup
	var serveErr error
	wg.Go(func() {
		serveErr = httpserve.Serve(ctx, ln, mux)
		cancel() // a metrics server that fails stops the role: it is asked for
	})
	err = run(ctx)
	cancel()
	wg.Wait()
	if err == nil && serveErr != nil {
		err = fmt.Errorf("--metrics: %w", serveErr)
	}
	return err
}
