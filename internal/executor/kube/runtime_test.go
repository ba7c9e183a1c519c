package kube_test

import (
	"context"
	"errors"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/executor/kube"
	"github.com/horde-compute/horde/internal/miner"
	"github.com/horde-compute/horde/protocol"
)

// The Runtime's reading of Pod states, on client-go's fake clientset: the
// test plays the kubelet by writing the Pod's status.

// fakeRuntime is a Runtime on a fake clientset; created receives the
// name of each Pod once the runtime has created it.
func fakeRuntime(t *testing.T) (rt *kube.Runtime, cs *fake.Clientset, created chan string) {
	t.Helper()
	cs = fake.NewClientset()
	created = make(chan string, 4)
	rt, err := kube.New(kube.Config{Client: cs, Namespace: "jobs", IsolateImage: "horde/isolate:dev", StartTimeout: time.Minute, Files: kube.FilesHostPath,
		Trace: func(pod, step string) {
			if step == "created" {
				created <- pod
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	return rt, cs, created
}

// kubelet edits the Pod's status, as a kubelet would.
func kubelet(t *testing.T, cs *fake.Clientset, name string, edit func(*corev1.Pod)) {
	t.Helper()
	p, err := cs.CoreV1().Pods("jobs").Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Error(err)
		return
	}
	edit(p)
	if _, err := cs.CoreV1().Pods("jobs").UpdateStatus(t.Context(), p, metav1.UpdateOptions{}); err != nil {
		t.Error(err)
	}
}

func running(p *corev1.Pod) {
	p.Spec.NodeName = "node-1"
	p.Status.Phase = corev1.PodRunning
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: kube.JobContainer, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}}
}

func startPod(t *testing.T, rt *kube.Runtime, cs *fake.Clientset, created <-chan string, id string) {
	t.Helper()
	cfg := executor.ContainerConfig(&protocol.V0JobRequest{JobUUID: id, DockerImage: "horde/job:dev"}, miner.DefaultClasses()[protocol.ClassTest],
		executor.Paths{Volume: "/v", Output: "/o"}, "me")
	name, err := rt.ContainerCreate(t.Context(), "horde-job-"+id, cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); kubelet(t, cs, <-created, running) }() // owned: waited for below
	if err := rt.ContainerStart(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	<-done
}

func TestWaitExitCode(t *testing.T) {
	rt, cs, created := fakeRuntime(t)
	startPod(t, rt, cs, created, "a")
	done := make(chan struct{})
	go func() { // owned: waited for below
		defer close(done)
		kubelet(t, cs, "horde-job-a", func(p *corev1.Pod) {
			p.Status.Phase = corev1.PodFailed
			p.Status.ContainerStatuses[0].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 3, Reason: "OOMKilled"}}
		})
	}()
	code, err := rt.ContainerWait(t.Context(), "horde-job-a")
	<-done
	if err != nil || code != 3 {
		t.Fatalf("wait: %d %v", code, err)
	}
	st, err := rt.ContainerInspect(t.Context(), "horde-job-a")
	if err != nil || !st.OOMKilled || st.ExitCode != 3 || st.Running {
		t.Errorf("inspect: %+v %v", st, err)
	}
	cs2, err := rt.ContainerList(t.Context(), executor.LabelOwner+"=me")
	if err != nil || len(cs2) != 1 || cs2[0].Labels[executor.LabelJob] != "a" {
		t.Errorf("list: %+v %v", cs2, err)
	}
	if err := rt.ContainerRemove(t.Context(), "horde-job-a"); err != nil {
		t.Fatal(err)
	}
	if err := rt.ContainerRemove(t.Context(), "horde-job-a"); err != nil {
		t.Errorf("removing twice: %v", err)
	}
	if _, err := rt.ContainerInspect(t.Context(), "horde-job-a"); !errors.Is(err, docker.ErrNotFound) {
		t.Errorf("inspect after remove: %v", err)
	}
}

func TestWaitLost(t *testing.T) {
	tests := []struct {
		name   string
		edit   func(*corev1.Pod)
		reason string
		system bool
	}{
		{"kubelet eviction", func(p *corev1.Pod) {
			p.Status.Phase, p.Status.Reason, p.Status.Message = corev1.PodFailed, "Evicted", "Pod ephemeral local storage usage exceeds the total limit of containers 1Gi."
		}, "pod_evicted", false},
		{"eviction API", func(p *corev1.Pod) {
			p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue, Reason: "EvictionByEvictionAPI"})
		}, "pod_evicted", false},
		{"taint manager", func(p *corev1.Pod) {
			p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue, Reason: "DeletionByTaintManager"})
		}, "node_lost", true},
		{"unknown phase", func(p *corev1.Pod) { p.Status.Phase = corev1.PodUnknown }, "node_lost", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt, cs, created := fakeRuntime(t)
			startPod(t, rt, cs, created, "b")
			done := make(chan struct{})
			go func() { defer close(done); kubelet(t, cs, "horde-job-b", tt.edit) }() // owned: waited for below
			_, err := rt.ContainerWait(t.Context(), "horde-job-b")
			<-done
			var lost executor.LostContainer
			if !errors.As(err, &lost) {
				t.Fatalf("wait: %v, want a lost container", err)
			}
			if reason, system := lost.Reason(); reason != tt.reason || system != tt.system {
				t.Errorf("reason %s (system fault %v), want %s (%v): %v", reason, system, tt.reason, tt.system, err)
			}
		})
	}
	t.Run("deleted", func(t *testing.T) {
		rt, cs, created := fakeRuntime(t)
		startPod(t, rt, cs, created, "c")
		errc := make(chan error, 1)
		go func() { _, err := rt.ContainerWait(t.Context(), "horde-job-c"); errc <- err }() // owned: read below
		// Deleted by someone else (a lost node's Pods are deleted by the
		// control plane): the wait must see it, whenever it started watching.
		if err := cs.CoreV1().Pods("jobs").Delete(context.Background(), "horde-job-c", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		err := <-errc
		var lost *kube.LostError
		if !errors.As(err, &lost) || lost.Code != "node_lost" {
			t.Errorf("wait: %v, want node_lost", err)
		}
	})
}

func TestStartRefused(t *testing.T) {
	for name, edit := range map[string]func(*corev1.Pod){
		"image never pulled": func(p *corev1.Pod) {
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: kube.JobContainer, State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ErrImageNeverPull", Message: "not present"}}}}
		},
		"isolation failed": func(p *corev1.Pod) {
			p.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: kube.IsolateContainer, State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1, Reason: "Error"}}}}
			p.Status.Phase = corev1.PodFailed
		},
	} {
		t.Run(name, func(t *testing.T) {
			rt, cs, created := fakeRuntime(t)
			cfg := executor.ContainerConfig(&protocol.V0JobRequest{JobUUID: "d", DockerImage: "horde/job:dev"}, miner.DefaultClasses()[protocol.ClassTest],
				executor.Paths{Volume: "/v", Output: "/o"}, "me")
			id, err := rt.ContainerCreate(t.Context(), "horde-job-d", cfg)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() { defer close(done); kubelet(t, cs, <-created, edit) }() // owned: waited for below
			err = rt.ContainerStart(t.Context(), id)
			<-done
			if !errors.Is(err, kube.ErrNotStarted) {
				t.Errorf("start: %v, want ErrNotStarted", err)
			}
		})
	}
}
