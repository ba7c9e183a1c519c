// Package kubebin builds and finds the Kubernetes and etcd binaries that
// horde's Kubernetes tests run: kube-apiserver, kube-controller-manager,
// kube-scheduler and kubelet from k8s.io/kubernetes, and etcd, compiled from
// the Go module proxy by the nested modules in tools/kube (kept out of
// horde's go.mod) with a fixed recipe.
//
// The binaries live outside the repository, in
// ${XDG_CACHE_HOME:-$HOME/.cache}/horde/kube/<key>/, where the key hashes
// everything that decides their bytes: the versions, the nested modules'
// go.mod and go.sum, the Go toolchain, and the build commands. They are built
// only when missing; a cold build takes about 13 minutes on 2 cores.
package kubebin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// Versions of what is built. tools/kube's go.mod files must require exactly
// these; Find and Build refuse a mismatch.
const (
	KubernetesVersion = "v1.37.2"
	EtcdVersion       = "v3.7.3"
)

// Names of the binaries in a Dir.
const (
	APIServer         = "kube-apiserver"
	ControllerManager = "kube-controller-manager"
	Scheduler         = "kube-scheduler"
	Kubelet           = "kubelet"
	Etcd              = "etcd"
)

// BuildCommand is what a person or CI runs, from the repository root, to
// build the binaries.
const BuildCommand = ".ci/kube"

// ErrNotBuilt means the binaries for the current recipe are not in the cache.
var ErrNotBuilt = errors.New("kubernetes binaries not built")

// module is one nested module of tools/kube and what it builds.
type module struct {
	dir     string   // under tools/kube
	require string   // "path version" its go.mod must require
	ldflags string   // -ldflags
	pkgs    []string // main packages
	out     string   // -o: a directory (ends in /) or a file
}

func modules() []module {
	var ld []string
	ld = append(ld, "-s", "-w")
	// As Kubernetes' own build sets them (hack/lib/version.sh): without
	// them the binaries report v0.0.0-master and the kubelet and apiserver
	// disagree about skew.
	major, minor, _ := strings.Cut(strings.TrimPrefix(KubernetesVersion, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	for _, p := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		ld = append(ld, "-X", p+".gitVersion="+KubernetesVersion, "-X", p+".gitMajor="+major, "-X", p+".gitMinor="+minor)
	}
	return []module{
		{
			dir:     "kubernetes",
			require: "k8s.io/kubernetes " + KubernetesVersion,
			ldflags: strings.Join(ld, " "),
			pkgs: []string{"k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager",
				"k8s.io/kubernetes/cmd/kube-scheduler", "k8s.io/kubernetes/cmd/kubelet"},
			out: "./",
		},
		{
			dir:     "etcd",
			require: "go.etcd.io/etcd/server/v3 " + EtcdVersion,
			ldflags: "-s -w",
			pkgs:    []string{"go.etcd.io/etcd/server/v3"},
			out:     Etcd,
		},
	}
}

// buildEnv is the environment of every go build, on top of the caller's
// with any GOFLAGS, GOWORK, GOOS, GOARCH, CGO_ENABLED and GOTOOLCHAIN removed.
var buildEnv = []string{"CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-mod=readonly", "GOTOOLCHAIN=local"}

func (m module) args(outDir string) []string {
	out := filepath.Join(outDir, m.out)
	if strings.HasSuffix(m.out, "/") {
		out += string(filepath.Separator)
	}
	return append([]string{"build", "-trimpath", "-ldflags", m.ldflags, "-o", out}, m.pkgs...)
}

// Recipe is everything that decides the binaries' bytes. Its hash is the
// cache key.
type Recipe struct {
	Kubernetes string            `json:"kubernetes"`
	Etcd       string            `json:"etcd"`
	Go         string            `json:"go"` // go env GOVERSION
	Platform   string            `json:"platform"`
	Env        []string          `json:"env"`
	Commands   map[string]string `json:"commands"` // module dir → go build argv
	Files      map[string]string `json:"files"`    // tools/kube/... → sha256
}

// Key is the cache key: the versions and a hash of the recipe.
func (r *Recipe) Key() string {
	b, _ := json.Marshal(r)
	h := sha256.Sum256(b)
	return fmt.Sprintf("%s-etcd%s-%s", r.Kubernetes, r.Etcd, hex.EncodeToString(h[:8]))
}

// RepoRoot finds horde's repository root from dir or one of its parents: the
// directory that holds tools/kube.
func RepoRoot(dir string) (string, error) {
	for d := dir; ; {
		if st, err := os.Stat(filepath.Join(d, "tools", "kube", "kubernetes", "go.mod")); err == nil && !st.IsDir() {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("no tools/kube in %s or its parents: run from a checkout of the horde repository", dir)
		}
		d = parent
	}
}

// ReadRecipe reads the recipe from the repository at root, asking the go
// command on PATH for its version.
func ReadRecipe(ctx context.Context, root string) (*Recipe, error) {
	goVersion, err := exec.CommandContext(ctx, "go", "env", "GOVERSION").Output()
	if err != nil {
		return nil, fmt.Errorf("go env GOVERSION: %w", err)
	}
	r := &Recipe{
		Kubernetes: KubernetesVersion,
		Etcd:       EtcdVersion,
		Go:         strings.TrimSpace(string(goVersion)),
		Platform:   runtime.GOOS + "/" + runtime.GOARCH,
		Env:        buildEnv,
		Commands:   map[string]string{},
		Files:      map[string]string{},
	}
	for _, m := range modules() {
		for _, f := range []string{"go.mod", "go.sum"} {
			rel := filepath.Join("tools", "kube", m.dir, f)
			b, err := os.ReadFile(filepath.Join(root, rel))
			if err != nil {
				return nil, fmt.Errorf("read build recipe: %w", err)
			}
			if f == "go.mod" && !requires(b, m.require) {
				return nil, fmt.Errorf("read build recipe: %s does not require %s: kubebin's versions and tools/kube disagree", rel, m.require)
			}
			h := sha256.Sum256(b)
			r.Files[filepath.ToSlash(rel)] = hex.EncodeToString(h[:])
		}
		r.Commands[m.dir] = strings.Join(m.args("$OUT"), " ")
	}
	return r, nil
}

// requires reports whether a go.mod requires "path version", on its own
// line or in a require block.
func requires(gomod []byte, req string) bool {
	for _, line := range strings.Split(string(gomod), "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "require "))
		line, _, _ = strings.Cut(line, "//")
		if strings.Join(strings.Fields(line), " ") == req {
			return true
		}
	}
	return false
}

// CacheRoot is ${XDG_CACHE_HOME:-$HOME/.cache}/horde/kube.
func CacheRoot() (string, error) {
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("kube binary cache: %w", err)
		}
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "horde", "kube"), nil
}

// binaries are the files a complete Dir holds.
var binaries = []string{APIServer, ControllerManager, Scheduler, Kubelet, Etcd}

// recipeFile is written last into a Dir: its presence means the Dir is complete.
const recipeFile = "recipe.json"

// Find returns the directory that holds the binaries of the recipe of the
// repository at root, or an error wrapping ErrNotBuilt that names the
// command that builds them.
func Find(ctx context.Context, root string) (string, error) {
	r, err := ReadRecipe(ctx, root)
	if err != nil {
		return "", err
	}
	cache, err := CacheRoot()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, r.Key())
	if !complete(dir) {
		return "", fmt.Errorf("%w in %s: build them with `%s` from the repository root %s (cold: about 13 minutes on an idle 2-core machine, 47 measured under load; seconds when cached)",
			ErrNotBuilt, dir, BuildCommand, root)
	}
	return dir, nil
}

func complete(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, recipeFile)); err != nil {
		return false
	}
	for _, b := range binaries {
		if st, err := os.Stat(filepath.Join(dir, b)); err != nil || st.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// Result says what Ensure did.
type Result struct {
	Dir   string
	Built bool          // false: found in the cache
	Took  time.Duration // of the build, when Built
}

// Ensure returns the binaries' directory, building them first when they are
// missing. Two Ensure calls on one machine never build at once: the second
// waits for the first and then finds its result. The go commands' output
// goes to out.
func Ensure(ctx context.Context, root string, log *slog.Logger, out io.Writer) (Result, error) {
	r, err := ReadRecipe(ctx, root)
	if err != nil {
		return Result{}, err
	}
	cache, err := CacheRoot()
	if err != nil {
		return Result{}, err
	}
	dir := filepath.Join(cache, r.Key())
	if complete(dir) {
		return Result{Dir: dir}, nil
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return Result{}, fmt.Errorf("kube binary cache: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(cache, ".lock"), log)
	if err != nil {
		return Result{}, err
	}
	defer unlock()
	if complete(dir) { // built by whoever held the lock
		return Result{Dir: dir}, nil
	}

	start := time.Now()
	tmp, err := os.MkdirTemp(cache, ".build-")
	if err != nil {
		return Result{}, fmt.Errorf("kube binary cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	for _, m := range modules() {
		args := m.args(tmp)
		log.Info("building", "module", "tools/kube/"+m.dir, "packages", strings.Join(m.pkgs, " "))
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = filepath.Join(root, "tools", "kube", m.dir)
		cmd.Env = append(cleanEnv(os.Environ()), buildEnv...)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Run(); err != nil {
			return Result{}, fmt.Errorf("build tools/kube/%s: go %s: %w", m.dir, strings.Join(args, " "), err)
		}
	}
	b, _ := json.MarshalIndent(r, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, recipeFile), append(b, '\n'), 0o644); err != nil {
		return Result{}, err
	}
	if err := os.RemoveAll(dir); err != nil { // an incomplete leftover
		return Result{}, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return Result{}, fmt.Errorf("kube binary cache: %w", err)
	}
	return Result{Dir: dir, Built: true, Took: time.Since(start)}, nil
}

func cleanEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "GOFLAGS", "GOWORK", "GOOS", "GOARCH", "CGO_ENABLED", "GOTOOLCHAIN":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// lockFile takes an exclusive flock on path, waiting (and saying so) while
// another process holds it, until ctx ends.
func lockFile(ctx context.Context, path string, log *slog.Logger) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for said := false; ; {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if !said {
			log.Info("waiting for another build of the kube binaries", "lock", path)
			said = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, ctx.Err())
		case <-tick.C:
		}
	}
}

// Version runs a binary with --version and returns what it prints.
func Version(ctx context.Context, dir, name string) (string, error) {
	var b bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(dir, name), "--version")
	cmd.Stdout, cmd.Stderr = &b, &b
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s --version: %w: %s", name, err, b.Bytes())
	}
	first, _, _ := strings.Cut(strings.TrimSpace(b.String()), "\n")
	return first, nil
}
