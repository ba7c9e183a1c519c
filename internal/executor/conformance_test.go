package executor_test

import (
	"testing"

	"github.com/horde-compute/horde/internal/executor/executortest"
	"github.com/horde-compute/horde/internal/executor/fakert"
	"github.com/horde-compute/horde/internal/images"
)

// The conformance suite of executor back-ends on the in-process fake and
// on the Docker Engine (package kube runs it on Kubernetes).

func TestConformanceFake(t *testing.T) {
	rt := fakert.New()
	images.RegisterFake(rt)
	t.Cleanup(func() {
		if err := rt.Close(t.Context()); err != nil {
			t.Error(err)
		}
	})
	executortest.Run(t, executortest.Target{Runtime: rt, Image: images.JobImage, Owner: "conformance-fake", DataDir: t.TempDir(), HostIP: "127.0.0.1"})
}

func TestConformanceDocker(t *testing.T) {
	h, image := dockerHarness(t)
	executortest.Run(t, executortest.Target{Runtime: h.runtime, Image: image, Owner: h.owner, DataDir: t.TempDir(), HostIP: executortest.HostIP(t)})
}
