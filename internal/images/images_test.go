package images

import (
	"bytes"
	"testing"

	"github.com/horde-compute/horde/internal/executor/docker"
)

// Builds the job image and runs it with the Docker Engine: the whole image path, no registry.
func TestBuildAndRunJobImage(t *testing.T) {
	cli, err := docker.New("")
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := cli.Ping(ctx); err != nil {
		t.Skipf("no Docker Engine: %v", err)
	}
	if err := Build(ctx, cli, "github.com/horde-compute/horde/internal/images/jobimage", JobImage); err != nil {
		t.Fatal(err)
	}
	id, err := cli.ContainerCreate(ctx, "", &docker.ContainerConfig{Image: JobImage, Cmd: []string{"echo", "hello", "world"},
		HostConfig: docker.HostConfig{NetworkMode: "none"}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.ContainerRemove(ctx, id)
	if err := cli.ContainerStart(ctx, id); err != nil {
		t.Fatal(err)
	}
	code, err := cli.ContainerWait(ctx, id)
	if err != nil || code != 0 {
		t.Fatalf("exit %d, %v", code, err)
	}
	var out, errb bytes.Buffer
	if err := cli.ContainerLogs(ctx, id, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if out.String() != "hello world\n" {
		t.Errorf("stdout = %q", out.String())
	}
}
