package kube_test

import (
	"testing"

	"github.com/horde-compute/horde/internal/executor/executortest"
)

// The executor back-ends' conformance suite on Kubernetes.
func TestConformanceKubernetes(t *testing.T) {
	c, image := testCluster(t)
	executortest.Run(t, executortest.Target{Runtime: runtime(t, c, nil), Image: image, Owner: owner(t, c),
		DataDir: t.TempDir(), HostIP: c.NodeIP().String(), MergedLogs: true})
}
