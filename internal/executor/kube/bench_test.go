package kube_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/executor/docker/dockertest"
	"github.com/horde-compute/horde/internal/executor/executortest"
	"github.com/horde-compute/horde/internal/executor/kube"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/internal/kubecluster"
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

// CopyIn and CopyOut pass copies of binds on (a BindCopier's); on a
// Runtime that mounts binds there is nothing to copy.
func (r *timedRuntime) CopyIn(ctx context.Context, id, hostDir string) error {
	if bc, ok := r.Runtime.(executor.BindCopier); ok {
		return bc.CopyIn(ctx, id, hostDir)
	}
	return nil
}

func (r *timedRuntime) CopyOut(ctx context.Context, id string, dirs map[string]int64) error {
	if bc, ok := r.Runtime.(executor.BindCopier); ok {
		return bc.CopyOut(ctx, id, dirs)
	}
	return nil
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
// (initial request → finished), with Pods on any node (binds copied) and
// pinned to the node (binds mounted). On Kubernetes, also the p50 of each step
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
		for _, step := range []string{"created", "scheduled", "files", "pushed", "initialized", "running"} {
			if len(steps[step]) > 0 {
				b.ReportMetric(p50(steps[step]), "ms-pod-"+step+"-p50")
			}
		}
	})
	// Job directories mounted from the node the Pods are pinned to (as
	// before Pods could run on any node).
	b.Run("kubernetes-hostpath", func(b *testing.B) {
		c, image := testCluster(b)
		rt, err := kube.New(kube.Config{Client: c.Client(), Namespace: "default", IsolateImage: isolateImage, Files: kube.FilesHostPath,
			NodeName: kubecluster.NodeName, StartTimeout: 2 * time.Minute})
		if err != nil {
			b.Fatal(err)
		}
		benchJobs(b, rt, image, owner(b, c))
	})
}

// benchIO makes each benchmark job read a volume and upload an output
// (go test -bench JobStart -args -bench-io).
var benchIO = flag.Bool("bench-io", false, "benchmark jobs with a volume and an output")

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
		req := h.Request(id, "echo", "hi")
		if *benchIO {
			// A volume in, an output out: what copies of binds cost.
			_, req = ioJob(h, id)
		}
		j.Send(req)
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
