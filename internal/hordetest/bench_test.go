package hordetest

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/internal/miner"
	"github.com/horde-compute/horde/internal/synthetic"
	"github.com/horde-compute/horde/internal/validation"
	"github.com/horde-compute/horde/internal/validator"
	"github.com/horde-compute/horde/protocol"
)

// dockerAlone is the time `docker run` of the trivial job container takes
// without horde: create, start, wait, read logs. Removal is left out of the
// timing, as horde reports a job finished before it removes the container.
func dockerAlone(b *testing.B, cli *docker.Client, image string) time.Duration {
	ctx := context.Background()
	// The very container an executor makes for the job.
	cfg := executor.ContainerConfig(&protocol.V0JobRequest{JobUUID: "bench", DockerImage: image, DockerRunCmd: []string{"echo", "hi"}},
		miner.DefaultClasses()[protocol.ClassTest], executor.Paths{Volume: b.TempDir(), Output: b.TempDir()}, "bench")
	var ds []time.Duration
	for range 10 {
		start := time.Now()
		id, err := cli.ContainerCreate(ctx, "", cfg)
		if err != nil {
			b.Fatal(err)
		}
		if err := cli.ContainerStart(ctx, id); err != nil {
			b.Fatal(err)
		}
		cli.ContainerWait(ctx, id)
		var out bytes.Buffer
		cli.ContainerLogs(ctx, id, &out, &out)
		ds = append(ds, time.Since(start))
		cli.ContainerRemove(ctx, id)
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

func pct(ds []time.Duration, p float64) time.Duration {
	slices.Sort(ds)
	i := int(float64(len(ds)-1) * p)
	return ds[i]
}

// benchJobs runs b.N trivial jobs from `clients` concurrent clients and
// reports the control-plane overhead (submit→finished minus docker alone).
func benchJobs(b *testing.B, clients int) {
	h := Start(b, devstack.Config{Manifest: map[string]int{protocol.ClassTest: 8}})
	base := dockerAlone(b, h.Docker, JobImage(b, h.Docker))
	h.Run(b, Spec("echo", "warm")) // connect sessions
	var mu sync.Mutex
	var lat []time.Duration
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range clients {
		wg.Go(func() {
			for range jobs {
				t := time.Now()
				j := h.Run(b, Spec("echo", "hi"))
				d := time.Since(t)
				if j.Status != protocol.StatusCompleted {
					b.Errorf("job %s: %s", j.UUID, j.Status)
				}
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		})
	}
	for range b.N {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	wall := time.Since(start)
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(base), "docker-alone-ms")
	b.ReportMetric(ms(pct(lat, 0.5)), "p50-ms")
	b.ReportMetric(ms(pct(lat, 0.5)-base), "p50-overhead-ms")
	b.ReportMetric(ms(pct(lat, 0.99)-base), "p99-overhead-ms")
	b.ReportMetric(float64(b.N)/wall.Seconds(), "jobs/s")
}

func BenchmarkJobSequential(b *testing.B)  { benchJobs(b, 1) }
func BenchmarkJobConcurrent8(b *testing.B) { benchJobs(b, 8) }

// BenchmarkRound100Miners runs synthetic rounds against 100 simulated miners
// (in-process fake executors that compute the answers) with 2 executors each,
// and reports the round's wall time beyond the jobs' own work.
func BenchmarkRound100Miners(b *testing.B) {
	params := synthetic.Params{SearchSpace: 2000, MatrixN: 32, Expected: 10 * time.Second, Weight: 1}
	var neurons []chain.Neuron
	for range 100 {
		f := StartFakeMiner(b, &FakeMiner{Mode: "honest", Manifest: map[string]int{protocol.ClassTest: 2}})
		neurons = append(neurons, f.Neuron)
	}
	h := Start(b, devstack.Config{ExtraNeurons: neurons, Manifest: map[string]int{protocol.ClassCPU8c16gb: 1},
		Log: slog.New(slog.DiscardHandler),
		Synthetic: validator.SyntheticConfig{Params: map[string]synthetic.Params{protocol.ClassTest: params},
			Generators: []synthetic.Generator{synthetic.Matmul{}}}})
	// The jobs' own work: what one fake executor spends on one answer.
	start := time.Now()
	answer([]string{"matmul", "1", "32"})
	work := time.Since(start)
	var total time.Duration
	b.ResetTimer()
	for range b.N {
		rep, err := h.Round(b.Context())
		if err != nil {
			b.Fatal(err)
		}
		passed := 0
		for _, r := range rep.Results {
			if r.Passed {
				passed++
			}
		}
		if len(rep.Results) != 200 || passed != 200 {
			b.Fatalf("%d jobs, %d passed", len(rep.Results), passed)
		}
		total += rep.Took
	}
	b.ReportMetric(float64((total/time.Duration(b.N))-work)/float64(time.Millisecond), "round-beyond-jobs-ms")
}

// BenchmarkValidationWindow reports 250 pairs of the demo LLM and replays all
// of them in one validation window on the trusted miner, and reports the
// trusted executor-seconds it takes per 1,000 validated pairs.
func BenchmarkValidationWindow(b *testing.B) {
	digest := LLMImage(b, Docker(b))
	h := Start(b, devstack.Config{StreamingWhitelist: map[string]string{images.LLMImage: digest}, TrustedMiner: true,
		Log:        slog.New(slog.DiscardHandler),
		Validation: validator.ValidationConfig{Sample: 1, Comparators: map[string]validation.Comparator{images.LLMImage: validation.LLM{}}}})
	ctx := b.Context()
	for range b.N {
		st, err := h.Client.StartStreaming(ctx, streamSpec(), nil)
		if err != nil {
			b.Fatal(err)
		}
		hc, _ := st.HTTPClient()
		const pairs = 250
		for i := range pairs {
			req := []byte(fmt.Sprintf(`{"prompt": "the miner %d", "max_tokens": 12, "temperature": 0}`, i))
			var out bytes.Buffer
			res, err := st.Call(ctx, hc, "POST", "/v1/completions", req, &out)
			if err != nil {
				b.Fatal(err)
			}
			if err := h.Client.ReportPair(ctx, st.JobUUID, client.Pair("POST", "/v1/completions", req, out.Bytes(), res)); err != nil {
				b.Fatal(err)
			}
		}
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if n, _ := h.PairsWaiting(ctx, images.LLMImage); n >= pairs {
				break
			}
			if time.Now().After(deadline) {
				b.Fatal("pairs did not reach the validator")
			}
		}
		rep, err := h.Validate(ctx, images.LLMImage)
		if err != nil {
			b.Fatal(err)
		}
		if rep.Checked != pairs || rep.Failed != 0 {
			b.Fatalf("%d checked, %d failed", rep.Checked, rep.Failed)
		}
		b.ReportMetric(rep.TrustedSeconds*1000/pairs, "trusted-s-per-1000-pairs")
		h.Client.Stop(ctx, st.JobUUID)
		h.Client.Watch(ctx, st.JobUUID, func(protocol.StatusEntry) {})
	}
}
