package cli

import (
	"slices"
	"testing"

	"github.com/horde-compute/horde/internal/executor/kube"
	"github.com/horde-compute/horde/internal/images"
)

// The Kubernetes back-end execs the isolate image's program by the entry
// point horde gives the image it makes: the two must not drift apart.
func TestIsolateEntrypointsAgree(t *testing.T) {
	if !slices.Equal(kube.DefaultIsolateEntrypoint, images.IsolateEntrypoint) {
		t.Fatalf("kube execs %q, the image runs %q", kube.DefaultIsolateEntrypoint, images.IsolateEntrypoint)
	}
}
