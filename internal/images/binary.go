package images

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/horde-compute/horde/internal/executor/docker"
)

// HordeImage is the tag of the role image: the horde binary as its entry
// point, so 'docker run horde/horde:dev miner …' runs a miner (deploy/compose.yaml).
const HordeImage = "horde/horde:dev"

// LabelBinary is the image label holding the sha256 of the horde binary an
// image was made from; an image whose label matches is not rebuilt.
const LabelBinary = "horde.binary.sha256"

// SelfExe is the running executable, as the kernel shows it.
const SelfExe = "/proc/self/exe"

// Made names the images made from one horde binary.
type Made struct {
	// Binary is the sha256 of the binary (hex).
	Binary string
	// LLMDigest is the id of LLMImage, which streaming whitelists pin.
	LLMDigest string
	// Built lists the images built now (the others were up to date).
	Built []string
}

// ErrNotStatic is returned for a binary that needs a dynamic loader: it
// cannot run in a FROM-scratch image.
var ErrNotStatic = errors.New("not a static binary")

// imageSpec is one image made from the binary: its tag and entry point.
type imageSpec struct {
	tag        string
	entrypoint string
}

// FromBinary makes horde's images from the horde executable exe (SelfExe
// for the running one): HordeImage runs horde itself, JobImage runs 'horde
// program job', LLMImage 'horde program llm' and IsolateImage 'horde
// program isolate'. Each is a FROM-scratch image
// holding the binary alone, labelled with its sha256 (LabelBinary) and built
// only if no image of that tag carries the same label. No Go toolchain or
// source is needed; the binary must be static (built with CGO_ENABLED=0).
func FromBinary(ctx context.Context, cli *docker.Client, exe string) (*Made, error) {
	return FromBinaryAs(ctx, cli, exe, Tags{Horde: HordeImage, Job: JobImage, LLM: LLMImage, Isolate: IsolateImage})
}

// IsolateImage is the tag of the init container of Kubernetes job Pods
// ('horde program isolate'; package kube's DefaultIsolateImage).
const IsolateImage = "horde/isolate:dev"

// IsolateEntrypoint runs 'horde program isolate' in an image of the binary.
var IsolateEntrypoint = []string{"/horde", "program", "isolate"}

// Tags name the images made from a binary; an empty Isolate makes none.
type Tags struct{ Horde, Job, LLM, Isolate string }

// FromBinaryAs is FromBinary under other tags (a test's own, which other
// tests do not rebuild meanwhile).
func FromBinaryAs(ctx context.Context, cli *docker.Client, exe string, tags Tags) (*Made, error) {
	bin, err := os.ReadFile(exe)
	if err != nil {
		return nil, fmt.Errorf("read the horde binary: %w", err)
	}
	if err := checkStatic(bin); err != nil {
		return nil, fmt.Errorf("make images from %s: %w (build horde with CGO_ENABLED=0: CGO_ENABLED=0 go build ./cmd/horde)", exe, err)
	}
	sum := sha256.Sum256(bin)
	m := &Made{Binary: hex.EncodeToString(sum[:])}
	specs := []imageSpec{
		{tags.Horde, `["/horde"]`},
		{tags.Job, `["/horde", "program", "job"]`},
		{tags.LLM, `["/horde", "program", "llm"]`},
	}
	if tags.Isolate != "" {
		specs = append(specs, imageSpec{tags.Isolate, `["/horde", "program", "isolate"]`})
	}
	for _, s := range specs {
		img, err := cli.ImageInspect(ctx, s.tag)
		if err == nil && img.Config.Labels[LabelBinary] == m.Binary {
			continue
		}
		if err != nil && !errors.Is(err, docker.ErrNotFound) {
			return nil, fmt.Errorf("inspect %s: %w", s.tag, err)
		}
		dockerfile := fmt.Sprintf("FROM scratch\nCOPY horde /horde\nLABEL %s=%q\nENTRYPOINT %s\n", LabelBinary, m.Binary, s.entrypoint)
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		if err := addFile(tw, "Dockerfile", 0o644, []byte(dockerfile)); err != nil {
			return nil, err
		}
		if err := addFile(tw, "horde", 0o755, bin); err != nil {
			return nil, err
		}
		if err := tw.Close(); err != nil {
			return nil, err
		}
		if err := cli.ImageBuild(ctx, &buf, s.tag, nil); err != nil {
			return nil, err
		}
		m.Built = append(m.Built, s.tag)
	}
	img, err := cli.ImageInspect(ctx, tags.LLM)
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", tags.LLM, err)
	}
	m.LLMDigest = img.ID
	return m, nil
}

func addFile(tw *tar.Writer, name string, mode int64, data []byte) error {
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data))}); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

// checkStatic reports whether an ELF executable runs without a dynamic
// loader or shared libraries.
func checkStatic(bin []byte) error {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return fmt.Errorf("%w: not an ELF executable: %v", ErrNotStatic, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			interp, _ := io.ReadAll(p.Open())
			return fmt.Errorf("%w: it needs the dynamic loader %s", ErrNotStatic, bytes.TrimRight(interp, "\x00"))
		}
	}
	return nil
}

// HordePackage is the import path of the horde command.
const HordePackage = "github.com/horde-compute/horde/cmd/horde"

// FromSelf makes the images from the running horde binary. A binary that
// is not static (what 'go run' and a plain 'go build' make where cgo is on)
// cannot go into a FROM-scratch image: then a static copy is built from
// source if this is a checkout with the Go toolchain, and the error says
// how to build horde otherwise.
func FromSelf(ctx context.Context, cli *docker.Client) (*Made, error) {
	m, err := FromBinary(ctx, cli, SelfExe)
	if !errors.Is(err, ErrNotStatic) {
		return m, err
	}
	dir, derr := os.MkdirTemp("", "horde-static-")
	if derr != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	bin, berr := BuildStatic(ctx, dir)
	if berr != nil {
		return nil, fmt.Errorf("%w\n(no static copy could be built from source here either: %v)", err, berr)
	}
	return FromBinary(ctx, cli, bin)
}

// BuildStatic builds a static horde binary (CGO_ENABLED=0) into dir from
// the module the working directory is in, and returns its path. It needs
// the Go toolchain and horde's source: 'go run' and tests use it.
func BuildStatic(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "horde")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, HordePackage)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", HordePackage, err, out)
	}
	return bin, nil
}
