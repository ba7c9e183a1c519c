package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/horde-compute/horde/internal/executor/docker/dockertest"
	"github.com/horde-compute/horde/internal/images"
)

// TestDemoFromBinaryAlone runs 'horde dev demo' as a user who has only the
// binary and a Docker Engine: a static horde built to a temporary directory,
// run from another, empty one, with no Go toolchain on its PATH. The demo
// makes its images from the binary itself and leaves the directory empty; a
// second run finds the images up to date.
//
// CPU-timing-sensitive: the demo's synthetic round must score its cheating
// miner (two executors pinned to one core) zero, which rests on the demo
// calibrating one core against two on this machine; other work on the
// cores at the same time can take that separation away.
func TestDemoFromBinaryAlone(t *testing.T) {
	dockertest.Engine(t)
	bin, err := images.BuildStatic(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), bin, args...)
		cmd.Dir = work
		// No go on the PATH; the engine as the tests see it.
		cmd.Env = []string{"PATH=/nonexistent", "HOME=" + work, "TMPDIR=" + t.TempDir()}
		if h := os.Getenv("DOCKER_HOST"); h != "" {
			cmd.Env = append(cmd.Env, "DOCKER_HOST="+h)
		}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		if err != nil {
			t.Fatalf("horde %s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
		return out.String()
	}
	out := run("dev", "demo")
	for _, want := range []string{"processed 2 input files", "poem.txt", "scored zero"} {
		if !strings.Contains(out, want) {
			t.Errorf("the demo's output lacks %q:\n%s", want, out)
		}
	}
	left, err := os.ReadDir(work)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range left {
		t.Errorf("the demo left %s in the working directory", e.Name())
	}

	// The images carry this binary's hash: made again, nothing is rebuilt.
	cli := dockertest.Engine(t)
	made, err := images.FromBinary(context.WithoutCancel(t.Context()), cli, bin)
	if err != nil {
		t.Fatal(err)
	}
	if len(made.Built) != 0 {
		t.Errorf("images rebuilt for an unchanged binary: %v", made.Built)
	}
	for _, tag := range []string{images.HordeImage, images.JobImage, images.LLMImage} {
		img, err := cli.ImageInspect(t.Context(), tag)
		if err != nil || img.Config.Labels[images.LabelBinary] != made.Binary {
			t.Errorf("%s: label %q, want the binary's sha256 %s (%v)", tag, img.Config.Labels[images.LabelBinary], made.Binary, err)
		}
	}
}
