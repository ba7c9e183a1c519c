package facilitator

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/store/postgres"
	"github.com/horde-compute/horde/internal/store/postgres/pgtest"
	"github.com/horde-compute/horde/internal/store/storetest"
)

// BenchmarkIntake measures job intake through the facilitator: clients
// submit signed jobs over HTTP, a validator connected over WebSocket is
// given each and reports it accepted and completed. An op is one job, from
// its submission until its completion is stored; so many clients submit
// at once, on SQLite and on PostgreSQL (one replica). It reports jobs/s.
func BenchmarkIntake(b *testing.B) {
	for _, backend := range []string{"sqlite", "postgres"} {
		for _, clients := range storetest.Clients {
			b.Run(fmt.Sprintf("%s/clients=%d", backend, clients), func(b *testing.B) {
				cfg := Config{Log: slog.New(slog.DiscardHandler)}
				var h *harness
				if backend == "sqlite" {
					h = newHarness(b, cfg)
				} else {
					db, err := postgres.Open(b.Context(), pgtest.Schema(b))
					if err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { db.Close() })
					h = newHarnessOn(b, cfg, db)
				}
				benchIntake(b, h, clients)
			})
		}
	}
}

func benchIntake(b *testing.B, h *harness, clients int) {
	w := newWorker(b, h)
	w.answers = make(chan struct{}, 2*b.N)
	ctx, cancel := context.WithTimeout(b.Context(), 10*failsafe)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	up := make(chan struct{})
	wg.Go(func() {
		if err := w.serve(ctx, h, up); err != nil {
			b.Error(err)
		}
	})
	select {
	case <-up:
	case <-ctx.Done():
		b.Fatal("the validator never connected")
	}
	b.ResetTimer()
	start := time.Now()
	var next atomic.Int64
	var cg sync.WaitGroup
	for range clients {
		cg.Go(func() {
			for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
				if _, err := h.client.CreateJob(ctx, spec(strconv.FormatInt(i, 10))); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	cg.Wait()
	for range 2 * b.N {
		select {
		case <-w.answers:
		case <-ctx.Done():
			b.Fatal("statuses stopped being answered")
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "jobs/s")
}
