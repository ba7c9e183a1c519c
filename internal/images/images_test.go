package images_test

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/executor/docker/dockertest"
	"github.com/horde-compute/horde/internal/executor/fakert"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/internal/miner"
	"github.com/horde-compute/horde/internal/synthetic"
	"github.com/horde-compute/horde/protocol"
)

var (
	buildOnce sync.Once
	buildErr  error
)

// onRuntimes runs f on the fake runtime and on the Docker Engine (behind
// the Docker gate, with the images built from this source).
func onRuntimes(t *testing.T, f func(t *testing.T, rt executor.Runtime)) {
	t.Run("fake", func(t *testing.T) {
		rt := fakert.New()
		images.RegisterFake(rt)
		t.Cleanup(func() {
			if err := rt.Close(context.Background()); err != nil {
				t.Error(err)
			}
		})
		f(t, rt)
	})
	t.Run("docker", func(t *testing.T) {
		cli := dockertest.Engine(t)
		buildOnce.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			if buildErr = images.EnsureJobImage(ctx, cli); buildErr == nil {
				_, buildErr = images.EnsureLLMImage(ctx, cli)
			}
		})
		if buildErr != nil {
			t.Fatal(buildErr)
		}
		f(t, cli)
	})
}

type dirs struct{ volume, output, artifacts string }

// runJob runs the job image with args in the very container an executor
// makes for a job, and returns its exit code and logs.
func runJob(t *testing.T, rt executor.Runtime, d dirs, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	ctx := t.Context()
	req := &protocol.V0JobRequest{JobUUID: "images-test", DockerImage: images.JobImage, DockerRunCmd: args, Env: env, ArtifactsDir: "/artifacts"}
	cfg := executor.ContainerConfig(req, miner.DefaultClasses()[protocol.ClassTest],
		executor.Paths{Volume: d.volume, Output: d.output, Artifacts: d.artifacts}, "images-test")
	id, err := rt.ContainerCreate(ctx, "", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.ContainerRemove(context.WithoutCancel(ctx), id)
	if err := rt.ContainerStart(ctx, id); err != nil {
		t.Fatal(err)
	}
	code, err := rt.ContainerWait(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if err := rt.ContainerLogs(ctx, id, &out, &errb); err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

// The job image's modes behave alike on Docker and in-process.
func TestJobImage(t *testing.T) {
	salt := "salt:"
	hash := synthetic.SearchHash(salt, 1234)
	onRuntimes(t, func(t *testing.T, rt executor.Runtime) {
		tests := []struct {
			name      string
			args      []string
			code      int
			out, err  string
			check     func(t *testing.T, d dirs)
			prepare   func(t *testing.T, d dirs)
			checkOnly bool
		}{
			{name: "echo", args: []string{"echo", "hello", "world"}, out: "hello world\n"},
			{name: "exit", args: []string{"exit", "3"}, code: 3, err: "exiting with 3\n"},
			{name: "env", args: []string{"env", "GREETING"}, out: "hi there\n"},
			{name: "unknown mode", args: []string{"fly"}, code: 2, err: "unknown mode \"fly\"\n"},
			{name: "net", args: []string{"net"}, code: 7, out: "network unreachable", checkOnly: true},
			{name: "search", args: []string{"search", salt, hash, "5000"}, out: "1234\n"},
			{name: "write", args: []string{"write", "out.bin", "10"}, out: "wrote 10\n", check: func(t *testing.T, d dirs) {
				if st, err := os.Stat(filepath.Join(d.output, "out.bin")); err != nil || st.Size() != 10 {
					t.Errorf("out.bin: %v %v", st, err)
				}
			}},
			{name: "random", args: []string{"random", "r.bin", "3000000"}, out: "wrote 3000000\n", check: func(t *testing.T, d dirs) {
				b, err := os.ReadFile(filepath.Join(d.output, "r.bin"))
				if err != nil || len(b) != 3000000 {
					t.Fatalf("r.bin: %d bytes, %v", len(b), err)
				}
				var z bytes.Buffer
				w, _ := flate.NewWriter(&z, flate.BestCompression)
				w.Write(b)
				w.Close()
				if z.Len() < len(b) {
					t.Errorf("random output compresses from %d to %d bytes", len(b), z.Len())
				}
			}},
			{name: "symlink", args: []string{"symlink", "link", "/etc/hostname"}, out: "linked link to /etc/hostname\n", check: func(t *testing.T, d dirs) {
				if target, err := os.Readlink(filepath.Join(d.output, "link")); err != nil || target != "/etc/hostname" {
					t.Errorf("link: %q, %v", target, err)
				}
			}},
			{name: "fifo", args: []string{"fifo", "pipe"}, out: "made FIFO pipe\n", check: func(t *testing.T, d dirs) {
				if st, err := os.Lstat(filepath.Join(d.output, "pipe")); err != nil || st.Mode().Type() != os.ModeNamedPipe {
					t.Errorf("pipe: %v, %v", st, err)
				}
			}},
			{name: "write outside outputs", args: []string{"write", "../../etc/x", "1"}, code: 1, checkOnly: true},
			{name: "matmul", args: []string{"matmul", "7", "16"}, out: "multiplied 16x16\n", check: func(t *testing.T, d dirs) {
				b, err := os.ReadFile(filepath.Join(d.artifacts, "c-000.bin"))
				c, ok := synthetic.DecodeMatrix(b, 16)
				if err != nil || !ok {
					t.Fatalf("product: %d bytes, %v", len(b), err)
				}
				if a, bm := synthetic.Inputs(7, 16); !synthetic.Freivalds(a, bm, c, 1, 2) {
					t.Error("wrong product")
				}
			}},
			{name: "demo", args: []string{"demo"}, out: "a.txt: 17 bytes, 3 words", checkOnly: true,
				prepare: func(t *testing.T, d dirs) {
					os.WriteFile(filepath.Join(d.volume, "a.txt"), []byte("hello horde world"), 0o644)
				},
				check: func(t *testing.T, d dirs) {
					var res struct {
						Files []struct{ Path string }
						Host  string
					}
					b, _ := os.ReadFile(filepath.Join(d.output, "result.json"))
					if err := json.Unmarshal(b, &res); err != nil || len(res.Files) != 1 || res.Files[0].Path != "a.txt" || res.Host == "" {
						t.Errorf("result.json = %s (%v)", b, err)
					}
				}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				d := dirs{volume: t.TempDir(), output: t.TempDir(), artifacts: t.TempDir()}
				for _, dir := range []string{d.volume, d.output, d.artifacts} {
					os.Chmod(dir, 0o777) // the image's user may not be ours
				}
				if tt.prepare != nil {
					tt.prepare(t, d)
				}
				code, out, errOut := runJob(t, rt, d, map[string]string{"GREETING": "hi there"}, tt.args...)
				if code != tt.code {
					t.Errorf("exit code %d, want %d (stdout %q, stderr %q)", code, tt.code, out, errOut)
				}
				if tt.checkOnly {
					if !strings.Contains(out, tt.out) {
						t.Errorf("stdout %q, want it to contain %q", out, tt.out)
					}
				} else if out != tt.out || errOut != tt.err {
					t.Errorf("stdout %q stderr %q, want %q and %q", out, errOut, tt.out, tt.err)
				}
				if tt.check != nil {
					tt.check(t, d)
				}
			})
		}
	})
}

// A killed job container ends at once with 137, whatever it was doing.
func TestJobImageKilled(t *testing.T) {
	onRuntimes(t, func(t *testing.T, rt executor.Runtime) {
		ctx := t.Context()
		for _, args := range [][]string{{"sleep", "300"}, {"search", "s", strings.Repeat("0", 64), "100000000000"}} {
			req := &protocol.V0JobRequest{JobUUID: "images-test", DockerImage: images.JobImage, DockerRunCmd: args}
			d := t.TempDir()
			id, err := rt.ContainerCreate(ctx, "", executor.ContainerConfig(req, executor.ClassSpec{}, executor.Paths{Volume: d, Output: d, Artifacts: d}, "images-test"))
			if err != nil {
				t.Fatal(err)
			}
			if err := rt.ContainerStart(ctx, id); err != nil {
				t.Fatal(err)
			}
			if err := rt.ContainerKill(ctx, id); err != nil {
				t.Fatal(err)
			}
			if code, err := rt.ContainerWait(ctx, id); err != nil || code != 137 {
				t.Errorf("%s: exit %d, %v", args[0], code, err)
			}
			if err := rt.ContainerRemove(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// The LLM image serves on an internal network, reached at ServiceAddr.
func TestLLMImage(t *testing.T) {
	onRuntimes(t, func(t *testing.T, rt executor.Runtime) {
		ctx := t.Context()
		name := "horde-images-test-" + strings.ReplaceAll(t.Name(), "/", "-")
		if _, err := rt.NetworkCreate(ctx, name, true, map[string]string{executor.LabelOwner: "images-test"}); err != nil {
			t.Fatal(err)
		}
		defer rt.NetworkRemove(context.WithoutCancel(ctx), name)
		d := t.TempDir()
		os.WriteFile(filepath.Join(d, "in.txt"), []byte("input"), 0o644)
		req := &protocol.V0JobRequest{JobUUID: "images-test", DockerImage: images.LLMImage}
		cfg := executor.ContainerConfig(req, executor.ClassSpec{}, executor.Paths{Volume: d, Output: d}, "images-test")
		cfg.NetworkDisabled, cfg.HostConfig.NetworkMode = false, name
		id, err := rt.ContainerCreate(ctx, name, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer rt.ContainerRemove(context.WithoutCancel(ctx), id)
		if err := rt.ContainerStart(ctx, id); err != nil {
			t.Fatal(err)
		}
		addr, err := rt.ServiceAddr(ctx, id, name, executor.ServicePort)
		if err != nil {
			t.Fatal(err)
		}
		get := func(path string) (int, string) {
			c := &http.Client{Timeout: 2 * time.Second}
			for {
				resp, err := c.Get("http://" + addr + path)
				if err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					return resp.StatusCode, string(b)
				}
				select {
				case <-ctx.Done():
					t.Fatalf("GET %s: %v", path, err)
				case <-time.After(100 * time.Millisecond): // the service is starting
				}
			}
		}
		if code, body := get("/health"); code != 200 || body != "ok\n" {
			t.Fatalf("health: %d %q", code, body)
		}
		if code, body := get("/v1/models"); code != 200 || !strings.Contains(body, "horde-trigram-full") {
			t.Errorf("models: %d %q", code, body)
		}
		if code, body := get("/volume/in.txt"); code != 200 || body != "input" {
			t.Errorf("volume file: %d %q", code, body)
		}
		if err := rt.ContainerKill(ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, err := rt.ContainerWait(ctx, id); err != nil {
			t.Fatal(err)
		}
		var out, errb bytes.Buffer
		rt.ContainerLogs(ctx, id, &out, &errb)
		if !strings.Contains(errb.String(), "model horde-trigram-full trained") {
			t.Errorf("stderr = %q", errb.String())
		}
	})
}

// Builds the job image and runs it with the Docker Engine: the whole image path, no registry.
func TestBuildAndRunJobImage(t *testing.T) {
	cli := dockertest.Engine(t)
	ctx := t.Context()
	if err := images.Build(ctx, cli, "github.com/horde-compute/horde/internal/images/jobimage", images.JobImage); err != nil {
		t.Fatal(err)
	}
	id, err := cli.ContainerCreate(ctx, "", &docker.ContainerConfig{Image: images.JobImage, Cmd: []string{"echo", "hello", "world"},
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
