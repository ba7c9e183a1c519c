package kube_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/executor/docker/dockertest"
	"github.com/horde-compute/horde/internal/executor/kube"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/internal/kubecluster"
)

// The Kubernetes back-end against a real single-node cluster (package
// kubecluster), started by the first test that needs it and stopped by
// TestMain. Gate: HORDE_KUBE_TESTS=off skips; anything missing fails.

// IsolateImage is the tag under which the tests build ./isolate.
const isolateImage = "horde/isolate:dev"

var shared struct {
	mu      sync.Mutex
	c       *kubecluster.Cluster
	err     error
	jobTag  string
	llmTag  string
	cleanup []func()
}

func TestMain(m *testing.M) {
	code := m.Run()
	shared.mu.Lock()
	if shared.c != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if err := shared.c.Stop(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "stop the cluster:", err)
			code = 1
		}
		cancel()
	}
	for _, f := range shared.cleanup {
		f()
	}
	shared.mu.Unlock()
	os.Exit(code)
}

func gate(tb testing.TB) {
	tb.Helper()
	switch v := os.Getenv("HORDE_KUBE_TESTS"); v {
	case "off":
		tb.Skip("HORDE_KUBE_TESTS=off: the Kubernetes tests are skipped")
	case "", "on":
	default:
		tb.Fatalf("HORDE_KUBE_TESTS=%q: want off, on or unset", v)
	}
}

// testCluster returns the shared cluster, with the job image (under a tag
// of this test binary's own) and the isolate image imported and listed by
// the node.
func testCluster(tb testing.TB) (*kubecluster.Cluster, string) {
	tb.Helper()
	gate(tb)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.c != nil || shared.err != nil {
		if shared.err != nil {
			tb.Fatal(shared.err)
		}
		return shared.c, shared.jobTag
	}
	cli := dockertest.Engine(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := kubecluster.Start(ctx, kubecluster.Options{Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		shared.err = fmt.Errorf("%v\n(HORDE_KUBE_TESTS=off skips the Kubernetes tests)", err)
		tb.Fatal(shared.err)
	}
	shared.c = c
	tb.Logf("cluster started in %s", time.Since(start).Round(time.Millisecond))
	b := make([]byte, 6)
	rand.Read(b)
	shared.jobTag = "horde/job:kube-test-" + hex.EncodeToString(b)
	shared.llmTag = "horde/llm:kube-test-" + hex.EncodeToString(b)
	for ref, pkg := range map[string]string{
		shared.jobTag: "github.com/horde-compute/horde/internal/images/jobimage",
		shared.llmTag: "github.com/horde-compute/horde/internal/images/llmimage",
		isolateImage:  "github.com/horde-compute/horde/internal/executor/kube/isolate",
	} {
		if err := images.Build(ctx, cli, pkg, ref); err != nil {
			shared.err = err
			tb.Fatal(err)
		}
		if ref != isolateImage {
			shared.cleanup = append(shared.cleanup, func() { cli.ImageRemove(context.Background(), ref) })
		}
		if err := c.ImportImage(ctx, ref); err != nil {
			shared.err = err
			tb.Fatal(err)
		}
	}
	// The node lists its images some seconds after an import: wait for it.
	if err := waitNode(ctx, c.Client(), func(n *corev1.Node) bool {
		return hasImage(n, shared.jobTag) && hasImage(n, shared.llmTag) && hasImage(n, isolateImage)
	}); err != nil {
		shared.err = fmt.Errorf("the node never listed the imported images: %w", err)
		tb.Fatal(shared.err)
	}
	tb.Logf("cluster ready with images in %s", time.Since(start).Round(time.Millisecond))
	return c, shared.jobTag
}

func hasImage(n *corev1.Node, ref string) bool {
	for _, img := range n.Status.Images {
		for _, name := range img.Names {
			if kube.NormalizeRef(name) == kube.NormalizeRef(ref) {
				return true
			}
		}
	}
	return false
}

// waitNode watches the cluster's node until cond holds.
func waitNode(ctx context.Context, cs kubernetes.Interface, cond func(*corev1.Node) bool) error {
	nodes := cs.CoreV1().Nodes()
	sel := fields.OneTermEqualSelector("metadata.name", kubecluster.NodeName).String()
	for {
		l, err := nodes.List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			return err
		}
		if len(l.Items) == 1 && cond(&l.Items[0]) {
			return nil
		}
		w, err := nodes.Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: l.ResourceVersion})
		if err != nil {
			return err
		}
		for ev := range w.ResultChan() {
			if n, ok := ev.Object.(*corev1.Node); ok && cond(n) {
				w.Stop()
				return nil
			}
		}
		w.Stop()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// runtime is a Runtime on the shared cluster's default namespace.
func runtime(tb testing.TB, c *kubecluster.Cluster, trace func(pod, step string)) *kube.Runtime {
	tb.Helper()
	rt, err := kube.New(kube.Config{Client: c.Client(), REST: c.RESTConfig(), Namespace: "default", IsolateImage: isolateImage, IsolateEntrypoint: []string{"/app"},
		StartTimeout: 2 * time.Minute, Trace: trace, ImageID: dockerImageID})
	if err != nil {
		tb.Fatal(err)
	}
	return rt
}

// owner is an owner label unique to the test; the test's Pods are removed
// when it ends, whatever happened.
func owner(tb testing.TB, c *kubecluster.Cluster) string {
	b := make([]byte, 6)
	rand.Read(b)
	o := "kube-test-" + hex.EncodeToString(b)
	tb.Cleanup(func() {
		zero := int64(0)
		c.Client().CoreV1().Pods("default").DeleteCollection(context.Background(), metav1.DeleteOptions{GracePeriodSeconds: &zero},
			metav1.ListOptions{LabelSelector: "horde.owner=" + o})
	})
	return o
}

// llmImage is the demo streaming service's tag in the cluster and the
// digest the node reports for it (a repo digest: what a whitelist pins on
// Kubernetes, where nodes do not report image ids).
func llmImage(tb testing.TB, rt *kube.Runtime) (string, string) {
	tb.Helper()
	img, err := rt.ImageInspect(tb.Context(), shared.llmTag)
	if err != nil {
		tb.Fatal(err)
	}
	if img.ID == "" {
		tb.Fatalf("no id of %s (the runtime needs Config.ImageID): %+v", shared.llmTag, img)
	}
	return shared.llmTag, img.ID
}

// dockerImageID is the id of an image the tests built in Docker and
// imported into the cluster: the same config digest containerd holds.
func dockerImageID(ctx context.Context, ref string) (string, error) {
	cli, err := docker.New("")
	if err != nil {
		return "", err
	}
	img, err := cli.ImageInspect(ctx, ref)
	if err != nil {
		return "", err
	}
	return img.ID, nil
}
