// Package images makes the container images horde ships (the role image,
// the demo/test job and the demo LLM service) as FROM-scratch images holding
// one static binary, so nothing is ever pulled from a registry. At run time
// they are made from the running horde binary itself (FromBinary), whose
// 'horde program' subcommands are the images' programs; tests may also build
// single programs from this module's source (Build). RegisterFake gives the
// fake runtime the same programs under the same names.
package images

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/horde-compute/horde/internal/executor/docker"
)

// JobImage is the tag of the demo/test job image.
const JobImage = "horde/job:dev"

// LLMImage is the tag of the demo streaming service: an OpenAI-compatible
// server over a small deterministic language model.
const LLMImage = "horde/llm:dev"

// Build compiles the Go command pkg (an import path in this module) as a
// static binary and builds it into a FROM-scratch image tagged tag. It needs
// the Go toolchain and this module's source: tests use it; horde itself makes
// its images with FromBinary.
func Build(ctx context.Context, cli *docker.Client, pkg, tag string) error {
	dir, err := os.MkdirTemp("", "horde-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "app")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build image %s: go build %s: %v\n%s\n(Build compiles from source: it needs a checkout of horde and the Go toolchain)", tag, pkg, err, out)
	}
	app, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	dockerfile := []byte("FROM scratch\nCOPY app /app\nENTRYPOINT [\"/app\"]\n")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		name string
		mode int64
		data []byte
	}{{"Dockerfile", 0o644, dockerfile}, {"app", 0o755, app}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data))}); err != nil {
			return err
		}
		tw.Write(f.data)
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return cli.ImageBuild(ctx, &buf, tag, nil)
}

// EnsureJobImage builds the job image from this module's source. Go's build
// cache and the engine's layer cache make a rebuild of unchanged source quick,
// and an image never lags behind its source.
func EnsureJobImage(ctx context.Context, cli *docker.Client) error {
	return Build(ctx, cli, "github.com/horde-compute/horde/internal/images/jobimage", JobImage)
}

// EnsureLLMImage builds the demo streaming service image from source and
// returns its digest (the image id), which whitelists pin.
func EnsureLLMImage(ctx context.Context, cli *docker.Client) (string, error) {
	if err := Build(ctx, cli, "github.com/horde-compute/horde/internal/images/llmimage", LLMImage); err != nil {
		return "", err
	}
	img, err := cli.ImageInspect(ctx, LLMImage)
	if err != nil {
		return "", err
	}
	return img.ID, nil
}
