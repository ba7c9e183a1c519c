package kube_test

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/kubecluster"
	"github.com/horde-compute/horde/internal/miner"
	"github.com/horde-compute/horde/protocol"
)

// A streaming job's service is reachable by the signing proxy alone: the
// proxy's place (this process, on the node) connects to it, while an
// ordinary Pod on the same subnet, which reaches the node, cannot; and the
// service's Pod reaches nothing but the proxy.
func TestStreamingServiceOnlyForTheProxy(t *testing.T) {
	c, image := testCluster(t)
	rt := runtime(t, c, nil)
	own := owner(t, c)
	ctx := t.Context()
	spec := miner.DefaultClasses()[protocol.ClassTest]
	spec.NanoCPUs = 5e8 // two job Pods, each with its keeper, on the test node's two CPUs

	// What every Pod should reach: a listener on the node.
	ln, err := net.Listen("tcp", net.JoinHostPort(c.NodeIP().String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // owned: ends when ln closes
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()

	// The service (the demo LLM): a job on a named network, as the
	// executor's stream() makes it, listening on executor.ServicePort.
	req := &protocol.V0JobRequest{JobUUID: "svc-1", DockerImage: shared.llmTag}
	cfg := executor.ContainerConfig(req, spec, executor.Paths{Volume: t.TempDir(), Output: t.TempDir()}, own)
	cfg.NetworkDisabled = false
	cfg.HostConfig.NetworkMode = "horde-job-svc-1"
	id, err := rt.ContainerCreate(ctx, "horde-job-svc-1", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.ContainerStart(ctx, id); err != nil {
		t.Fatal(err)
	}
	addr, err := rt.ServiceAddr(ctx, id, "", executor.ServicePort)
	if err != nil {
		t.Fatal(err)
	}
	// The proxy's place connects (the service may take a moment to listen).
	deadline := time.Now().Add(time.Minute)
	for {
		conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxy's place cannot reach the service at %s: %v", addr, err)
		}
		time.Sleep(200 * time.Millisecond) // the service's start, not a timing assumption
	}

	// Ordinary Pods on the subnet: one reaches the node (they have a
	// network), the other is refused the service.
	nodeAddr := ln.Addr().String()
	if out := plainPod(t, c, own, image, "dial", nodeAddr); !strings.Contains(out, "dial connected") {
		t.Fatalf("an ordinary Pod could not reach the node at all (%s): %q", nodeAddr, out)
	}
	if out := plainPod(t, c, own, image, "dial", addr); !strings.Contains(out, "dial failed") {
		t.Errorf("an ordinary Pod on the subnet reached the streaming service at %s: %q", addr, out)
	}
	// And the service reaches nothing but the proxy: a second job with
	// the same isolation tries the node's listener.
	req2 := &protocol.V0JobRequest{JobUUID: "svc-2", DockerImage: image, DockerRunCmd: []string{"dial", nodeAddr}}
	cfg2 := executor.ContainerConfig(req2, spec, executor.Paths{Volume: t.TempDir(), Output: t.TempDir()}, own)
	cfg2.NetworkDisabled = false
	cfg2.HostConfig.NetworkMode = "horde-job-svc-2"
	id2, err := rt.ContainerCreate(ctx, "horde-job-svc-2", cfg2)
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.ContainerStart(ctx, id2); err != nil {
		t.Fatal(err)
	}
	code, err := rt.ContainerWait(ctx, id2)
	var logs strings.Builder
	rt.ContainerLogs(ctx, id2, &logs, &logs)
	if err != nil || code == 0 || !strings.Contains(logs.String(), "dial failed") {
		t.Errorf("a service's Pod dialled the node's %s: exit %d %v %q", nodeAddr, code, err, logs.String())
	}
	for _, id := range []string{id, id2} {
		if err := rt.ContainerRemove(ctx, id); err != nil {
			t.Error(err)
		}
	}
}

// plainPod runs the job image with args in an ordinary Pod (no isolation:
// any Pod of the cluster) and returns its log.
func plainPod(t *testing.T, c *kubecluster.Cluster, own, image string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	pods := c.Client().CoreV1().Pods("default")
	p, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "plain-", Labels: map[string]string{executor.LabelOwner: own}},
		Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{
			Name: "plain", Image: image, Args: args, ImagePullPolicy: corev1.PullNever}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sel := fields.OneTermEqualSelector("metadata.name", p.Name).String()
	for p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
		w, err := pods.Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: p.ResourceVersion})
		if err != nil {
			t.Fatal(err)
		}
		for ev := range w.ResultChan() {
			if q, ok := ev.Object.(*corev1.Pod); ok {
				p = q
				if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
					break
				}
			}
		}
		w.Stop()
		if ctx.Err() != nil {
			t.Fatalf("pod %s never ended: %s", p.Name, p.Status.Phase)
		}
	}
	rc, err := pods.GetLogs(p.Name, &corev1.PodLogOptions{}).Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return string(b)
}
