package kube_test

import (
	"testing"

	"github.com/horde-compute/horde/internal/executor/executortest"
)

// The executor back-ends' conformance suite on Kubernetes.
func TestConformanceKubernetes(t *testing.T) {
	c, image := testCluster(t)
	rt := runtime(t, c, nil)
	llm, digest := llmImage(t, rt)
	executortest.Run(t, executortest.Target{Runtime: rt, Image: image, Owner: owner(t, c),
		DataDir: t.TempDir(), HostIP: c.NodeIP().String(), MergedLogs: true, LLMImage: llm, LLMDigest: digest})
}
