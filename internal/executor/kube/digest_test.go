package kube_test

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/kube"
	"github.com/horde-compute/horde/internal/miner"
	"github.com/horde-compute/horde/protocol"
)

var (
	digestA = "sha256:" + strings.Repeat("a", 64)
	digestB = "sha256:" + strings.Repeat("b", 64)
)

// node is a node that reports the image horde/llm:dev by repo digest d
// (none: it holds no such image).
func node(name, d string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if d != "" {
		n.Status.Images = []corev1.ContainerImage{{Names: []string{"docker.io/horde/llm@" + d, "docker.io/horde/llm:dev"}}}
	}
	return n
}

// A streaming image pinned by digest is checked against what the nodes
// report, and its Pod names the image by that digest and runs only where
// a node holds it: a node whose tag means other content never runs it.
func TestPinImage(t *testing.T) {
	cs := fake.NewClientset(node("n1", digestB), node("n2", digestA), node("n3", ""))
	created := make(chan string, 1)
	rt, err := kube.New(kube.Config{Files: kube.FilesHostPath, Client: cs, Namespace: "jobs", IsolateImage: "horde/isolate:dev", StartTimeout: time.Minute,
		Trace: func(pod, step string) {
			if step == "created" {
				created <- pod
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := rt.PinImage(t.Context(), "horde/llm:dev", digestA)
	if err != nil || ref != "docker.io/horde/llm@"+digestA {
		t.Fatalf("pin: %q %v", ref, err)
	}
	cfg := executor.ContainerConfig(&protocol.V0JobRequest{JobUUID: "p", DockerImage: ref}, miner.DefaultClasses()[protocol.ClassTest],
		executor.Paths{Volume: "/v", Output: "/o"}, "me")
	id, err := rt.ContainerCreate(t.Context(), "horde-job-p", cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); kubelet(t, cs, <-created, running) }() // owned: waited for below
	if err := rt.ContainerStart(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	<-done
	pod, err := cs.CoreV1().Pods("jobs").Get(t.Context(), "horde-job-p", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if img := pod.Spec.Containers[0].Image; img != ref {
		t.Errorf("the pod runs %s, want %s", img, ref)
	}
	a := pod.Spec.Affinity
	if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		t.Fatalf("no node affinity: %+v", a)
	}
	terms := a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	if len(terms) != 1 || len(terms[0].MatchFields) != 1 || strings.Join(terms[0].MatchFields[0].Values, ",") != "n2" {
		t.Errorf("affinity %+v, want node n2 only", terms)
	}

	for _, tt := range []struct {
		ref, digest, want string
	}{
		{"horde/llm:dev", "sha256:" + strings.Repeat("c", 64), "n1: " + digestB + "; n2: " + digestA + "; n3: not present"},
		{"horde/other:dev", digestA, "n1: not present"},
		{"horde/llm:dev", "sha256:short", "not sha256:<64 hex>"},
	} {
		if _, err := rt.PinImage(t.Context(), tt.ref, tt.digest); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("pin %s to %s: %v, want an error naming %q", tt.ref, tt.digest, err, tt.want)
		}
	}
	// An image named by a digest no node holds is refused at creation.
	cfg.Image = "docker.io/horde/llm@" + "sha256:" + strings.Repeat("c", 64)
	if _, err := rt.ContainerCreate(t.Context(), "horde-job-q", cfg); err == nil || !strings.Contains(err.Error(), "on no node") {
		t.Errorf("create with an absent digest: %v", err)
	}
}
