package fakert

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/horde-compute/horde/internal/executor/docker"
)

// programs used by the tests: "echo" prints its args and exits with the
// number of them; "block" waits for its context; "panic" panics.
func testRuntime() *Runtime {
	r := New()
	r.Register("test/echo:1", func(ctx context.Context, c *Container) int {
		fmt.Fprintln(c.Stdout, strings.Join(c.Args, " "))
		fmt.Fprintln(c.Stderr, "env A="+c.Env["A"])
		return len(c.Args)
	})
	r.Register("test/block:1", func(ctx context.Context, c *Container) int {
		fmt.Fprintln(c.Stdout, "blocking")
		<-ctx.Done()
		return 0
	})
	r.Register("test/panic:1", func(ctx context.Context, c *Container) int { panic("boom") })
	r.RegisterPullable("test/pull", func(ctx context.Context, c *Container) int { return 0 })
	return r
}

func config(image string, args ...string) *docker.ContainerConfig {
	return &docker.ContainerConfig{Image: image, Cmd: args, Env: []string{"A=1"}, Labels: map[string]string{"horde.job": "j"},
		HostConfig: docker.HostConfig{NetworkMode: "none"}}
}

func run(t *testing.T, r *Runtime, name string, cfg *docker.ContainerConfig) string {
	t.Helper()
	ctx := context.Background()
	id, err := r.ContainerCreate(ctx, name, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.ContainerStart(ctx, id); err != nil {
		t.Fatal(err)
	}
	return id
}

func logs(t *testing.T, r *Runtime, id string) (string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	if err := r.ContainerLogs(context.Background(), id, &out, &errb); err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String()
}

func TestImages(t *testing.T) {
	r := testRuntime()
	ctx := t.Context()
	img, err := r.ImageInspect(ctx, "test/echo:1")
	if err != nil || img.ID != ImageID("test/echo:1") {
		t.Fatalf("inspect: %+v %v", img, err)
	}
	if img2, err := r.ImageInspect(ctx, img.ID); err != nil || img2.ID != img.ID {
		t.Errorf("inspect by id: %+v %v", img2, err)
	}
	if _, err := r.ImageInspect(ctx, "test/none:1"); !errors.Is(err, docker.ErrNotFound) {
		t.Errorf("missing image: %v", err)
	}
	// A pullable image is absent until pulled; "test/pull" means "test/pull:latest".
	if _, err := r.ImageInspect(ctx, "test/pull:latest"); !errors.Is(err, docker.ErrNotFound) {
		t.Errorf("pullable image before pull: %v", err)
	}
	if _, err := r.ContainerCreate(ctx, "", config("test/pull")); !errors.Is(err, docker.ErrNotFound) {
		t.Errorf("create from an image not pulled: %v", err)
	}
	var progress []string
	if err := r.ImagePull(ctx, "test/pull", func(s string) { progress = append(progress, s) }); err != nil || len(progress) == 0 {
		t.Fatalf("pull: %v %v", progress, err)
	}
	if _, err := r.ImageInspect(ctx, "test/pull:latest"); err != nil {
		t.Errorf("after pull: %v", err)
	}
	if err := r.ImagePull(ctx, "test/none:1", nil); !errors.Is(err, docker.ErrNotFound) {
		t.Errorf("pull of an unknown image: %v", err)
	}
}

func TestContainerLifecycle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := testRuntime()
		ctx := t.Context()
		id := run(t, r, "job-1", config("test/echo:1", "a", "b"))
		code, err := r.ContainerWait(ctx, id)
		if err != nil || code != 2 {
			t.Fatalf("wait: %d %v", code, err)
		}
		out, errOut := logs(t, r, id)
		if out != "a b\n" || errOut != "env A=1\n" {
			t.Errorf("logs: %q %q", out, errOut)
		}
		if st, err := r.ContainerInspect(ctx, id); err != nil || st.Running || st.ExitCode != 2 || st.OOMKilled {
			t.Errorf("inspect: %+v %v", st, err)
		}
		// Names are unique while the container exists.
		var apiErr *docker.APIError
		if _, err := r.ContainerCreate(ctx, "job-1", config("test/echo:1")); !errors.As(err, &apiErr) || apiErr.Status != 409 {
			t.Errorf("duplicate name: %v", err)
		}
		if err := r.ContainerKill(ctx, id); !errors.As(err, &apiErr) || apiErr.Status != 409 {
			t.Errorf("kill of an exited container: %v", err)
		}
		// Removal by name; removing twice is fine; then it is gone.
		if err := r.ContainerRemove(ctx, "job-1"); err != nil {
			t.Fatal(err)
		}
		if err := r.ContainerRemove(ctx, id); err != nil {
			t.Errorf("second remove: %v", err)
		}
		if _, err := r.ContainerWait(ctx, id); !errors.Is(err, docker.ErrNotFound) {
			t.Errorf("wait after remove: %v", err)
		}
		if _, err := r.ContainerInspect(ctx, id); !errors.Is(err, docker.ErrNotFound) {
			t.Errorf("inspect after remove: %v", err)
		}
		if err := r.ContainerLogs(ctx, id, io.Discard, io.Discard); !errors.Is(err, docker.ErrNotFound) {
			t.Errorf("logs after remove: %v", err)
		}
		if _, err := r.ContainerCreate(ctx, "job-1", config("test/echo:1")); err != nil {
			t.Errorf("name not free after remove: %v", err)
		}
		if err := r.Close(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// Kill ends the program's context and the container exits with 137 at once;
// a panic is exit code 2 with the panic on stderr.
func TestKillAndPanic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := testRuntime()
		ctx := t.Context()
		id := run(t, r, "", config("test/block:1"))
		waited := make(chan int)
		go func() {
			code, _ := r.ContainerWait(context.Background(), id)
			waited <- code
		}()
		synctest.Wait()
		select {
		case <-waited:
			t.Fatal("wait returned while the container runs")
		default:
		}
		if st, _ := r.ContainerInspect(ctx, id); !st.Running {
			t.Error("not running")
		}
		if err := r.ContainerKill(ctx, id); err != nil {
			t.Fatal(err)
		}
		if code := <-waited; code != KilledExitCode {
			t.Errorf("exit code after kill = %d", code)
		}
		if out, _ := logs(t, r, id); out != "blocking\n" {
			t.Errorf("logs kept after kill: %q", out)
		}

		p := run(t, r, "", config("test/panic:1"))
		if code, _ := r.ContainerWait(ctx, p); code != 2 {
			t.Errorf("panic exit code = %d", code)
		}
		if _, errOut := logs(t, r, p); !strings.Contains(errOut, "panic: boom") {
			t.Errorf("panic stderr = %q", errOut)
		}
		if err := r.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if n := len(r.Containers()); n != 0 {
			t.Errorf("%d containers after Close", n)
		}
	})
}

// Removing a running container kills it and waits for its program; a
// program that ignores its context makes Remove fail when ctx ends.
func TestRemoveWaitsForProgram(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := New()
		release := make(chan struct{})
		r.Register("stubborn", func(ctx context.Context, c *Container) int { <-release; return 0 })
		id := run(t, r, "", config("stubborn"))
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		if err := r.ContainerRemove(ctx, id); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("remove of a program that does not return: %v", err)
		}
		if code, err := r.ContainerWait(t.Context(), id); err != nil || code != KilledExitCode {
			t.Errorf("after kill: %d %v", code, err)
		}
		close(release)
		if err := r.ContainerRemove(t.Context(), id); err != nil {
			t.Fatal(err)
		}
		if len(r.Containers()) != 0 {
			t.Error("container left")
		}
	})
}

func TestCreateRefusals(t *testing.T) {
	r := testRuntime()
	ctx := t.Context()
	for name, cfg := range map[string]*docker.ContainerConfig{
		"unknown network": {Image: "test/echo:1", HostConfig: docker.HostConfig{NetworkMode: "nope"}},
		"bridge":          {Image: "test/echo:1"},
		"relative bind":   {Image: "test/echo:1", HostConfig: docker.HostConfig{NetworkMode: "none", Binds: []string{"rel:/volume"}}},
		"entrypoint":      {Image: "test/echo:1", Entrypoint: []string{"/bin/sh"}, HostConfig: docker.HostConfig{NetworkMode: "none"}},
	} {
		if _, err := r.ContainerCreate(ctx, "", cfg); err == nil {
			t.Errorf("%s: created", name)
		}
	}
	if len(r.Containers()) != 0 {
		t.Error("a refused create left a container")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := r.ContainerCreate(cctx, "", config("test/echo:1")); !errors.Is(err, context.Canceled) {
		t.Errorf("create with a cancelled context: %v", err)
	}
}

// Binds and tmpfs mounts map container paths to host paths; nothing else exists.
func TestPaths(t *testing.T) {
	r := New()
	got := make(chan error, 1)
	vol, out := t.TempDir(), filepath.Join(t.TempDir(), "made")
	r.Register("files", func(ctx context.Context, c *Container) int {
		got <- func() error {
			p, err := c.Path("/output/sub/../r.txt")
			if err != nil {
				return err
			}
			if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
				return err
			}
			if p, err := c.Path("/volume"); err != nil || p != vol {
				return fmt.Errorf("/volume is %q, %v", p, err)
			}
			if p, err := c.Path("/tmp/scratch"); err != nil || !strings.HasPrefix(p, os.TempDir()) {
				return fmt.Errorf("/tmp/scratch is %q, %v", p, err)
			}
			for _, bad := range []string{"/etc/passwd", "/volumes", "/output/../etc", "relative"} {
				if p, err := c.Path(bad); err == nil {
					return fmt.Errorf("%s resolves to %s", bad, p)
				}
			}
			if _, err := c.Dial(ctx, "udp", "192.0.2.1:9"); err == nil || !strings.Contains(err.Error(), "unreachable") {
				return fmt.Errorf("dial: %v", err)
			}
			if c.Hostname() != c.ID[:12] {
				return fmt.Errorf("hostname %q", c.Hostname())
			}
			return nil
		}()
		return 0
	})
	cfg := config("files")
	cfg.HostConfig.Binds = []string{vol + ":/volume", out + ":/output:rw"}
	cfg.HostConfig.Tmpfs = map[string]string{"/tmp": "rw"}
	id := run(t, r, "", cfg)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(out, "r.txt")); err != nil || string(b) != "x" {
		t.Errorf("output written: %q %v", b, err)
	}
	if err := r.ContainerRemove(t.Context(), id); err != nil {
		t.Fatal(err)
	}
}

// A service on a network is reached at ServiceAddr; its ports close when it stops.
func TestServiceOnNetwork(t *testing.T) {
	r := New()
	r.Register("svc", func(ctx context.Context, c *Container) int {
		ln, err := c.Listen(8000)
		if err != nil {
			fmt.Fprintln(c.Stderr, err)
			return 1
		}
		if _, err := c.Listen(8000); err == nil {
			fmt.Fprintln(c.Stderr, "listened twice on 8000")
			return 1
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok "+c.Env["A"]) })}
		go func() { <-ctx.Done(); srv.Close() }()
		srv.Serve(ln)
		return 0
	})
	ctx := t.Context()
	netID, err := r.NetworkCreate(ctx, "net-1", true, map[string]string{"horde.owner": "me"})
	if err != nil {
		t.Fatal(err)
	}
	var apiErr *docker.APIError
	if _, err := r.NetworkCreate(ctx, "net-1", true, nil); !errors.As(err, &apiErr) || apiErr.Status != 409 {
		t.Errorf("duplicate network: %v", err)
	}
	cfg := config("svc")
	cfg.HostConfig.NetworkMode = "net-1"
	id := run(t, r, "", cfg)
	if _, err := r.ServiceAddr(ctx, id, "other", 8000); err == nil {
		t.Error("address on a network the container is not on")
	}
	addr, err := r.ServiceAddr(ctx, id, netID, 8000)
	if err != nil || !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("service addr %q, %v", addr, err)
	}
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "ok 1" {
		t.Errorf("service answered %q", body)
	}
	if err := r.NetworkRemove(ctx, "net-1"); !errors.As(err, &apiErr) || apiErr.Status != 403 {
		t.Errorf("remove of a network in use: %v", err)
	}
	if ns, _ := r.NetworkList(ctx, "horde.owner=me"); len(ns) != 1 || ns[0].Name != "net-1" {
		t.Errorf("networks = %+v", ns)
	}
	if err := r.ContainerKill(ctx, id); err != nil {
		t.Fatal(err)
	}
	// A kept connection could still reach the server until the program's
	// own shutdown; a new one must not.
	http.DefaultClient.CloseIdleConnections()
	if _, err := http.Get("http://" + addr + "/"); err == nil {
		t.Error("the service answers after its container was killed")
	}
	if err := r.ContainerRemove(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := r.NetworkRemove(ctx, netID); err != nil {
		t.Fatal(err)
	}
	if ns, _ := r.NetworkList(ctx, ""); len(ns) != 0 {
		t.Errorf("networks after remove = %+v", ns)
	}
}

func TestListByLabel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := testRuntime()
		then := time.Now().Add(-time.Hour)
		r.Now = func() time.Time { return then }
		ctx := t.Context()
		a := config("test/echo:1")
		a.Labels = map[string]string{"horde.owner": "me", "horde.job": "1"}
		b := config("test/echo:1")
		b.Labels = map[string]string{"horde.owner": "you"}
		ida, _ := r.ContainerCreate(ctx, "", a)
		r.ContainerCreate(ctx, "", b)
		for filter, want := range map[string]int{"horde.owner=me": 1, "horde.owner": 2, "horde.owner=them": 0, "horde.job=1": 1, "": 2} {
			cs, err := r.ContainerList(ctx, filter)
			if err != nil || len(cs) != want {
				t.Errorf("%q: %d containers, want %d (%v)", filter, len(cs), want, err)
			}
		}
		cs, _ := r.ContainerList(ctx, "horde.owner=me")
		if cs[0].ID != ida || cs[0].State != "created" || cs[0].Since(time.Now()) < 59*time.Minute {
			t.Errorf("listed %+v", cs[0])
		}
		if err := r.Close(ctx); err != nil {
			t.Fatal(err)
		}
	})
}
