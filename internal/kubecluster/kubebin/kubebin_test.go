package kubebin

import (
	"os"
	"strings"
	"testing"
)

func TestRequires(t *testing.T) {
	gomod := []byte("module m\n\nrequire k8s.io/kubernetes v1.37.2\n\nrequire (\n\tgo.etcd.io/etcd/server/v3 v3.7.3 // indirect\n\tother v1\n)\n")
	for req, want := range map[string]bool{
		"k8s.io/kubernetes v1.37.2":        true,
		"go.etcd.io/etcd/server/v3 v3.7.3": true,
		"k8s.io/kubernetes v1.37.1":        false,
		"go.etcd.io/etcd/server/v3 v3.7":   false,
	} {
		if got := requires(gomod, req); got != want {
			t.Errorf("requires(%q) = %v", req, got)
		}
	}
}

// The recipe of this repository reads, agrees with tools/kube, and its key
// is stable and names the versions.
func TestRecipeKey(t *testing.T) {
	wd, _ := os.Getwd()
	root, err := RepoRoot(wd)
	if err != nil {
		t.Fatal(err)
	}
	r1, err := ReadRecipe(t.Context(), root)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := ReadRecipe(t.Context(), root)
	if err != nil {
		t.Fatal(err)
	}
	if r1.Key() != r2.Key() || !strings.HasPrefix(r1.Key(), KubernetesVersion+"-etcd"+EtcdVersion+"-") {
		t.Errorf("keys %q, %q", r1.Key(), r2.Key())
	}
	r2.Go = "go0.0"
	if r1.Key() == r2.Key() {
		t.Error("the key ignores the Go version")
	}
	if len(r1.Files) != 4 {
		t.Errorf("files %v, want the go.mod and go.sum of tools/kube/kubernetes and tools/kube/etcd", r1.Files)
	}
}
