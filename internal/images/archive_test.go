package images

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/horde-compute/horde/internal/executor/docker/dockertest"
)

// An image archive written without any engine is one the Docker Engine
// loads, under its tag, with the id Archive computed and the entrypoint
// asked for; the same binary gives the same archive.
func TestArchiveLoads(t *testing.T) {
	cli := dockertest.Engine(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "isolate")
	cmd := exec.CommandContext(t.Context(), "go", "build", "-trimpath", "-o", bin, "github.com/horde-compute/horde/internal/executor/kube/isolate")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	tag := "horde/isolate:archive-test"
	var a, b bytes.Buffer
	id, err := Archive(&a, bin, tag, IsolateEntrypoint)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Archive(&b, bin, tag, IsolateEntrypoint); err != nil || !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Errorf("two archives of one binary differ (%v)", err)
	}
	load := exec.CommandContext(t.Context(), "docker", "load")
	load.Stdin = &a
	if out, err := load.CombinedOutput(); err != nil {
		t.Fatalf("docker load: %v\n%s", err, out)
	}
	t.Cleanup(func() { cli.ImageRemove(t.Context(), tag) })
	img, err := cli.ImageInspect(t.Context(), tag)
	if err != nil {
		t.Fatal(err)
	}
	if img.ID != id || img.Config.Labels[LabelBinary] == "" {
		t.Errorf("loaded %s labels %v, want %s labelled with the binary", img.ID, img.Config.Labels, id)
	}
	// Its entrypoint is the isolate program: without arguments, its usage.
	out, err := exec.CommandContext(t.Context(), "docker", "run", "--rm", "--network", "none", tag).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !bytes.Contains(out, []byte("usage: isolate")) {
		t.Errorf("docker run %s: %v\n%s", tag, err, out)
	}
	if _, err := Archive(&b, "/bin/sh", tag, IsolateEntrypoint); err == nil {
		t.Error("an archive of a dynamic binary was written")
	}
}
