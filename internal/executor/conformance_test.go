package executor_test

import (
	"testing"

	"github.com/horde-compute/horde/internal/executor/docker/dockertest"
	"github.com/horde-compute/horde/internal/executor/executortest"
	"github.com/horde-compute/horde/internal/executor/fakert"
	"github.com/horde-compute/horde/internal/images"
)

// The conformance suite of executor back-ends on the in-process fake and
// on the Docker Engine (package kube runs it on Kubernetes).

func TestConformanceFake(t *testing.T) {
	t.Parallel() // containers of its own (owner label, data directory, tags)
	rt := fakert.New()
	images.RegisterFake(rt)
	t.Cleanup(func() {
		if err := rt.Close(t.Context()); err != nil {
			t.Error(err)
		}
	})
	llm, err := rt.ImageInspect(t.Context(), images.LLMImage)
	if err != nil {
		t.Fatal(err)
	}
	executortest.Run(t, executortest.Target{Runtime: rt, Image: images.JobImage, Owner: "conformance-fake", DataDir: t.TempDir(), HostIP: "127.0.0.1",
		LLMImage: images.LLMImage, LLMDigest: llm.ID})
}

func TestConformanceDocker(t *testing.T) {
	t.Parallel() // containers of its own (owner label, data directory, tags)
	h, image := dockerHarness(t)
	llm, digest := llmImage(t, dockertest.Engine(t))
	executortest.Run(t, executortest.Target{Runtime: h.runtime, Image: image, Owner: h.owner, DataDir: t.TempDir(), HostIP: executortest.HostIP(t),
		LLMImage: llm, LLMDigest: digest})
}
