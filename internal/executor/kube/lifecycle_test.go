package kube_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/executortest"
	"github.com/horde-compute/horde/internal/executor/kube"
	"github.com/horde-compute/horde/internal/miner"
	"github.com/horde-compute/horde/protocol"
)

// A miner's reaper finds the Pods of a miner that died by their labels and
// removes them; a live job's Pod is spared.
func TestReapDeadMinersPods(t *testing.T) {
	c, image := testCluster(t)
	rt := runtime(t, c, nil)
	own := owner(t, c)
	ctx := t.Context()
	spec := miner.DefaultClasses()[protocol.ClassTest]
	spec.NanoCPUs = 5e8 // two job Pods, each with its keeper, on the test node's two CPUs
	for _, id := range []string{"dead-1", "live-1"} {
		req := &protocol.V0JobRequest{JobUUID: id, DockerImage: image, DockerRunCmd: []string{"sleep", "600"}}
		cfg := executor.ContainerConfig(req, spec, executor.Paths{Volume: t.TempDir(), Output: t.TempDir()}, own)
		name, err := rt.ContainerCreate(ctx, "horde-job-"+id, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := rt.ContainerStart(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	r := &miner.Reaper{Runtime: rt, Owner: own, MinAge: -1, Log: slog.New(slog.DiscardHandler)}
	r.Reap(ctx, map[string]bool{"live-1": true})
	cs, err := rt.ContainerList(ctx, executor.LabelOwner+"="+own)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 || cs[0].Labels[executor.LabelJob] != "live-1" {
		t.Errorf("after reaping: %+v, want only live-1's Pod", cs)
	}
	r.Reap(ctx, nil)
	if cs, _ := rt.ContainerList(ctx, executor.LabelOwner+"="+own); len(cs) != 0 {
		t.Errorf("after the miner's last job: %+v", cs)
	}
}

// A Pod evicted mid-job (here through the eviction API, as a drain does)
// ends the job with pod_evicted; a Pod whose node is lost (here marked as
// the taint manager marks it before deleting it) ends it as the system's
// failure, node_lost.
func TestPodTakenAway(t *testing.T) {
	c, image := testCluster(t)
	cs := c.Client()
	for _, tt := range []struct {
		name   string
		takeIt func(ctx context.Context, pod string) error
		check  func(t *testing.T, m protocol.Message)
	}{
		{"evicted", func(ctx context.Context, pod string) error {
			return cs.PolicyV1().Evictions("default").Evict(ctx, &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: pod, Namespace: "default"}})
		}, func(t *testing.T, m protocol.Message) {
			f, ok := m.(*protocol.V0JobFailedRequest)
			if !ok || f.Context["horde_reason"] != "pod_evicted" || f.Stage != protocol.StageExecution || !strings.Contains(f.Message, "EvictionByEvictionAPI") {
				t.Errorf("got %#v, want a job failure pod_evicted", m)
			}
		}},
		{"node lost", func(ctx context.Context, pod string) error {
			p, err := cs.CoreV1().Pods("default").Get(ctx, pod, metav1.GetOptions{})
			if err != nil {
				return err
			}
			p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue,
				Reason: "DeletionByTaintManager", Message: "Taint manager: deleting due to NoExecute taint", LastTransitionTime: metav1.Now()})
			_, err = cs.CoreV1().Pods("default").UpdateStatus(ctx, p, metav1.UpdateOptions{})
			return err
		}, func(t *testing.T, m protocol.Message) {
			f, ok := m.(*protocol.V0HordeFailedRequest)
			if !ok || !strings.Contains(f.Message, "node_lost") {
				t.Errorf("got %#v, want a horde failure node_lost", m)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			running := make(chan string, 1)
			trace := func(pod, step string) {
				if step == "running" {
					running <- pod
				}
			}
			h := executortest.NewHarness(t, executortest.Target{Runtime: runtime(t, c, trace), Image: image, Owner: owner(t, c), DataDir: t.TempDir()})
			id := "taken-" + strings.ReplaceAll(tt.name, " ", "-")
			j := h.Start(t)
			j.Send(h.Initial(id, executortest.Timing))
			if m := j.Recv(); m.MessageType() != "V0ExecutorReadyRequest" {
				t.Fatalf("after the initial request: %#v", m)
			}
			j.Send(h.Request(id, "sleep", "600"))
			var pod string
			select {
			case pod = <-running:
			case <-time.After(2 * time.Minute):
				t.Fatal("the job's Pod never ran")
			}
			if err := tt.takeIt(t.Context(), pod); err != nil {
				t.Fatal(err)
			}
			tt.check(t, j.Until())
			if err := j.End(); err != nil {
				t.Fatal(err)
			}
			h.AssertClean(t)
		})
	}
}

// The cluster's one node offers what it has, less what others asked.
func TestCapacity(t *testing.T) {
	c, _ := testCluster(t)
	free, err := runtime(t, c, nil).Capacity(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(free) != 1 || free[0].MilliCPU <= 0 || free[0].MemoryBytes <= 0 || free[0].GPUs != 0 {
		t.Fatalf("free %+v", free)
	}
	fit := kube.Fit(free, miner.DefaultClasses(), map[string]int{protocol.ClassTest: 100, protocol.ClassGPU24: 1})
	t.Logf("free %+v: fit %v", free, fit)
	if fit[protocol.ClassGPU24] != 0 || fit[protocol.ClassTest] < 1 || int64(fit[protocol.ClassTest]) > free[0].MilliCPU/1000 {
		t.Errorf("fit %v", fit)
	}
}
