package kube_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/executor/docker/dockertest"
	"github.com/horde-compute/horde/internal/executor/executortest"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/protocol"
)

// timedRuntime records when a job's container was asked for and when it
// ran (ContainerStart returned: on Kubernetes, the job container runs).
type timedRuntime struct {
	executor.Runtime
	mu             sync.Mutex
	create, active time.Time
}

func (r *timedRuntime) ContainerCreate(ctx context.Context, name string, cfg *docker.ContainerConfig) (string, error) {
	r.mu.Lock()
	r.create = time.Now()
	r.mu.Unlock()
	return r.Runtime.ContainerCreate(ctx, name, cfg)
}

func (r *timedRuntime) ContainerStart(ctx context.Context, id string) error {
	err := r.Runtime.ContainerStart(ctx, id)
	r.mu.Lock()
	r.active = time.Now()
	r.mu.Unlock()
	return err
}

// BenchmarkJobStart runs b.N echo jobs one after another on Docker and on
// Kubernetes and reports the p50 of: the executor connected → executor
// ready (accepted → ready: the image checked), job request → job
// container running (container created and started; on Kubernetes the Pod
// created, scheduled, its isolate init container run), and the whole job
// (initial request → finished). On Kubernetes, also the p50 of each step
// of the Pod's start (kube.Config.Trace).
func BenchmarkJobStart(b *testing.B) {
	b.Run("docker", func(b *testing.B) {
		cli := dockertest.Engine(b)
		ctx := context.Background()
		tag := "horde/job:kube-bench-" + hex.EncodeToString(randBytes(6))
		if err := images.Build(ctx, cli, "github.com/horde-compute/horde/internal/images/jobimage", tag); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cli.ImageRemove(context.Background(), tag) })
		benchJobs(b, cli, tag, "bench-docker-"+hex.EncodeToString(randBytes(6)))
	})
	b.Run("kubernetes", func(b *testing.B) {
		c, image := testCluster(b)
		var mu sync.Mutex
		steps := map[string][]time.Duration{}
		var first time.Time
		trace := func(pod, step string) {
			mu.Lock()
			defer mu.Unlock()
			if step == "create" {
				first = time.Now()
				return
			}
			steps[step] = append(steps[step], time.Since(first))
		}
		benchJobs(b, runtime(b, c, trace), image, owner(b, c))
		for _, step := range []string{"created", "scheduled", "initialized", "running"} {
			b.ReportMetric(p50(steps[step]), "ms-pod-"+step+"-p50")
		}
	})
}

func benchJobs(b *testing.B, rt executor.Runtime, image, owner string) {
	tr := &timedRuntime{Runtime: rt}
	h := executortest.NewHarness(b, executortest.Target{Runtime: tr, Image: image, Owner: owner, DataDir: b.TempDir()})
	var ready, running, whole []time.Duration
	b.ResetTimer()
	for i := range b.N {
		id := fmt.Sprintf("bench-%s-%d", hex.EncodeToString(randBytes(4)), i)
		start := time.Now()
		j := h.Start(b)
		connected := time.Now()
		j.Send(h.Initial(id, executortest.Timing))
		if m := j.Recv(); m.MessageType() != "V0ExecutorReadyRequest" {
			b.Fatalf("after the initial request: %#v", m)
		}
		ready = append(ready, time.Since(connected))
		sent := time.Now()
		j.Send(h.Request(id, "echo", "hi"))
		if _, ok := j.Until().(*protocol.V0JobFinishedRequest); !ok {
			b.Fatalf("job %s did not finish: %v", id, j.Messages)
		}
		if err := j.End(); err != nil {
			b.Fatal(err)
		}
		tr.mu.Lock()
		running = append(running, tr.active.Sub(sent))
		tr.mu.Unlock()
		whole = append(whole, time.Since(start))
	}
	b.StopTimer()
	b.ReportMetric(p50(ready), "ms-ready-p50")
	b.ReportMetric(p50(running), "ms-running-p50")
	b.ReportMetric(p50(whole), "ms-job-p50")
}

func p50(ds []time.Duration) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return float64(s[len(s)/2].Microseconds()) / 1000
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}
