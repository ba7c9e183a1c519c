package hordetest

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/internal/store/backend"
	"github.com/horde-compute/horde/internal/store/postgres"
	"github.com/horde-compute/horde/internal/store/postgres/pgtest"
	"github.com/horde-compute/horde/protocol"
)

// submitted is one job of a benchmark run: when its client submitted it,
// when the job was accepted by the miner (had its executor), and when the
// client saw it end.
type submitted struct {
	uuid     string
	at       time.Time
	accepted time.Time
	took     time.Duration
}

// runClients runs n jobs from clients concurrent clients, each submitting
// its next job when its last one ended, and returns what happened to each
// job and the wall time of the run.
func runClients(b *testing.B, h *Horde, clients, n int) ([]submitted, time.Duration) {
	ctx := b.Context()
	var mu sync.Mutex
	var out []submitted
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	for range clients {
		wg.Go(func() {
			for range jobs {
				t := time.Now()
				job, err := h.Client.CreateJob(ctx, Spec("echo", "hi"))
				if err != nil {
					b.Errorf("create job: %v", err)
					continue
				}
				j, err := h.Client.Watch(ctx, job.UUID, func(protocol.StatusEntry) {})
				d := time.Since(t)
				if err != nil {
					b.Errorf("watch job %s: %v", job.UUID, err)
					continue
				}
				if j.Status != protocol.StatusCompleted {
					b.Errorf("job %s: %s", j.UUID, j.Status)
				}
				s := submitted{uuid: j.UUID, at: t, took: d}
				for _, e := range j.StatusHistory {
					if e.Status == protocol.StatusAccepted && s.accepted.IsZero() {
						s.accepted = e.CreatedAt
					}
				}
				mu.Lock()
				out = append(out, s)
				mu.Unlock()
			}
		})
	}
	for range n {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	return out, time.Since(start)
}

// overtaken counts the jobs that reached their executor after a job
// submitted more than margin later than they were: first come, first
// served allows none. The margin absorbs what is not the queue's order:
// two clients' submissions racing to the validator, and the jitter of the
// stages between the lease and the "accepted" status (the miner's answer,
// the status's way to the facilitator), tens of milliseconds on a loaded
// machine.
func overtaken(js []submitted, margin time.Duration) int {
	js = slices.Clone(js)
	slices.SortFunc(js, func(a, b submitted) int { return a.at.Compare(b.at) })
	n := 0
	for i, a := range js {
		for _, c := range js[i+1:] {
			if c.at.Sub(a.at) > margin && c.accepted.Before(a.accepted) {
				n++
				break
			}
		}
	}
	return n
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// cpuTime is the CPU time (user and system) the process has used: on a
// shared machine, CPU per job says more than jobs per second.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkQueue8Clients2Executors runs short jobs from 8 concurrent
// clients on one miner with 2 executors (the in-process fake runtime), so
// 6 jobs at a time wait for an executor, and reports the p50 and p99 of
// submit→completed, CPU per job, and how many jobs were overtaken by one
// submitted more than 5 ms (or 50 ms) later.
// Waiting jobs are served first come, first served, woken when an
// executor frees: the p99 should stay within 2× the p50.
func BenchmarkQueue8Clients2Executors(b *testing.B) {
	h := StartFake(b, devstack.Config{Manifest: map[string]int{protocol.ClassTest: 2}, Log: slog.New(slog.DiscardHandler)})
	h.Run(b, Spec("echo", "warm")) // connect sessions
	n := max(b.N, 16)              // enough jobs for the queue to form, even at -benchtime 1x
	b.ResetTimer()
	cpu := cpuTime()
	js, wall := runClients(b, h, 8, n)
	cpu = cpuTime() - cpu
	b.StopTimer()
	var lat []time.Duration
	for _, j := range js {
		lat = append(lat, j.took)
	}
	if len(lat) == 0 {
		b.Fatal("no job completed")
	}
	b.ReportMetric(ms(pct(lat, 0.5)), "p50-ms")
	b.ReportMetric(ms(pct(lat, 0.99)), "p99-ms")
	b.ReportMetric(ms(pct(lat, 0.99))/ms(pct(lat, 0.5)), "p99/p50")
	b.ReportMetric(float64(overtaken(js, 5*time.Millisecond)), "overtaken-5ms")
	b.ReportMetric(float64(overtaken(js, 50*time.Millisecond)), "overtaken-50ms")
	b.ReportMetric(float64(len(js))/wall.Seconds(), "jobs/s")
	b.ReportMetric(ms(cpu)/float64(len(js)), "cpu-ms/job")
}

// BenchmarkRouting reports jobs per second through facilitator → validator
// → miner → executor on the fake runtime (executors run the image's echo
// in-process: nearly nothing), with 1, 8 and 64 clients, on SQLite and on
// PostgreSQL (behind the gate of package pgtest). The miner has an
// executor per client, so no job waits for one: the figure is the control
// plane's.
func BenchmarkRouting(b *testing.B) {
	stores := []struct {
		name string
		open func(b *testing.B) func(ctx context.Context, name string) (backend.Store, error)
	}{
		{"sqlite", func(*testing.B) func(context.Context, string) (backend.Store, error) { return nil }},
		{"postgres", func(b *testing.B) func(context.Context, string) (backend.Store, error) {
			urls := map[string]string{}
			for _, role := range []string{"facilitator", "validator", "miner0"} {
				urls[role] = pgtest.Schema(b)
			}
			return func(ctx context.Context, name string) (backend.Store, error) {
				u, ok := urls[name]
				if !ok {
					return nil, fmt.Errorf("no schema for %s", name)
				}
				return postgres.Open(ctx, u)
			}
		}},
	}
	for _, st := range stores {
		for _, clients := range []int{1, 8, 64} {
			b.Run(fmt.Sprintf("%s/clients=%d", st.name, clients), func(b *testing.B) {
				h := StartFake(b, devstack.Config{Manifest: map[string]int{protocol.ClassTest: clients},
					OpenStore: st.open(b), Log: slog.New(slog.DiscardHandler)})
				h.Run(b, Spec("echo", "warm"))
				b.ResetTimer()
				cpu := cpuTime()
				js, wall := runClients(b, h, clients, b.N)
				cpu = cpuTime() - cpu
				b.StopTimer()
				var lat []time.Duration
				for _, j := range js {
					lat = append(lat, j.took)
				}
				if len(lat) == 0 {
					b.Fatal("no job completed")
				}
				b.ReportMetric(float64(len(js))/wall.Seconds(), "jobs/s")
				b.ReportMetric(ms(pct(lat, 0.5)), "p50-ms")
				b.ReportMetric(ms(pct(lat, 0.99)), "p99-ms")
				b.ReportMetric(ms(cpu)/float64(len(js)), "cpu-ms/job")
			})
		}
	}
}
