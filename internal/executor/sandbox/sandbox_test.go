package sandbox_test

import (
	"context"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/executor/docker/dockertest"
	"github.com/horde-compute/horde/internal/executor/sandbox"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/internal/miner"
)

// pool runs a pool of size for owner until the test ends, and builds the
// images it and the tests need.
func pool(t *testing.T, cli *docker.Client, owner string, size int) *sandbox.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	if err := images.EnsureJobImage(ctx, cli); err != nil {
		t.Fatal(err)
	}
	p := &sandbox.Pool{Runtime: cli, Owner: owner, Size: size, Log: slog.New(slog.NewTextHandler(testLog{t}, nil))}
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.Run(rctx) }() // owned: the cleanup waits on done
	t.Cleanup(func() { stop(); <-done })
	if err := p.WaitReady(ctx, size); err != nil {
		t.Fatal(err)
	}
	return p
}

// leftovers counts the containers and networks labelled with owner.
func leftovers(t *testing.T, cli *docker.Client, owner string) (int, int) {
	cs, err := cli.ContainerList(context.Background(), executor.LabelOwner+"="+owner)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := cli.NetworkList(context.Background(), executor.LabelOwner+"="+owner)
	if err != nil {
		t.Fatal(err)
	}
	return len(cs), len(ns)
}

// run runs image with cmd in sandbox s's namespace, isolated as a job is,
// and returns its exit code; with wait false it returns at once (-1) and
// the container runs until the test ends.
func run(t *testing.T, cli *docker.Client, s *executor.Sandbox, owner, image string, cmd []string, wait bool) int {
	t.Helper()
	ctx := t.Context()
	cfg := &docker.ContainerConfig{Image: image, Cmd: cmd, Labels: map[string]string{executor.LabelOwner: owner, executor.LabelJob: "t"},
		HostConfig: docker.HostConfig{NetworkMode: "container:" + s.Holder, ReadonlyRootfs: true, CapDrop: []string{"ALL"}, SecurityOpt: []string{"no-new-privileges"}}}
	id, err := cli.ContainerCreate(ctx, "", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.ContainerRemove(context.Background(), id) })
	if err := cli.ContainerStart(ctx, id); err != nil {
		t.Fatal(err)
	}
	if !wait {
		return -1
	}
	code, err := cli.ContainerWait(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

// A sandbox isolates as a job's own internal network did: the service in
// it is reached from this process (the proxy's side) at the sandbox's
// address, a job in another sandbox cannot reach it, and nothing in it
// reaches outside. Released and drained sandboxes leave nothing behind.
func TestDockerSandboxIsolation(t *testing.T) {
	cli := dockertest.Engine(t)
	owner := "sandbox-test-" + time.Now().Format("150405.000000")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	if _, err := images.EnsureLLMImage(ctx, cli); err != nil {
		t.Fatal(err)
	}
	p := pool(t, cli, owner, 2)
	s1, s2 := p.Take(), p.Take()
	if s1 == nil || s2 == nil || s1.Network == s2.Network {
		t.Fatalf("two ready sandboxes, got %+v and %+v", s1, s2)
	}
	if p.Take() != nil {
		t.Fatal("a third sandbox out of a pool of two, before any was made again")
	}

	// The service of job 1, reached from here.
	run(t, cli, s1, owner, images.LLMImage, nil, false)
	hc := &http.Client{Timeout: time.Second}
	for {
		resp, err := hc.Get("http://" + s1.Addr + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the service in sandbox %s never answered at %s: %v", s1.Network, s1.Addr, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	// Job 2 cannot reach it; neither job reaches outside.
	if code := run(t, cli, s2, owner, images.JobImage, []string{"dial", s1.Addr}, true); code != 7 {
		t.Errorf("a job in another sandbox dialled the service at %s: exit %d, want 7 (refused)", s1.Addr, code)
	}
	for _, s := range []*executor.Sandbox{s1, s2} {
		if code := run(t, cli, s, owner, images.JobImage, []string{"dial", "1.1.1.1:53"}, true); code != 7 {
			t.Errorf("a job in sandbox %s dialled 1.1.1.1:53: exit %d, want 7 (no route)", s.Network, code)
		}
	}

	// Jobs end: their containers go, then their sandboxes.
	cs, _ := cli.ContainerList(ctx, executor.LabelOwner+"="+owner)
	for _, c := range cs {
		if c.Labels[executor.LabelJob] == "t" {
			cli.ContainerRemove(ctx, c.ID)
		}
	}
	for _, s := range []*executor.Sandbox{s1, s2} {
		if err := p.Release(ctx, s); err != nil {
			t.Fatal(err)
		}
		if p.Holds(s.Network) {
			t.Errorf("released sandbox %s still held", s.Network)
		}
	}
	if err := p.WaitReady(ctx, 2); err != nil { // made again in the background
		t.Fatal(err)
	}
}

// After a crash of the process whose pool made them (simulated: the pool
// is simply abandoned, neither drained nor released), a restarted miner's
// reaper removes the sandboxes, ready or serving a job, and the job's
// container; while the pool lives, the reaper spares them.
func TestDockerSandboxesReapedAfterCrash(t *testing.T) {
	cli := dockertest.Engine(t)
	owner := "sandbox-crash-" + time.Now().Format("150405.000000")
	ctx := t.Context()
	crashed := &sandbox.Pool{Runtime: cli, Owner: owner, Size: 2}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	if err := images.EnsureJobImage(ctx, cli); err != nil {
		t.Fatal(err)
	}
	go func() { defer close(done); crashed.Run(rctx) }() // owned: waited on below
	if err := crashed.WaitReady(ctx, 2); err != nil {
		t.Fatal(err)
	}
	s := crashed.Take() // a job is served in it
	run(t, cli, s, owner, images.JobImage, []string{"sleep", "600"}, false)
	if err := crashed.WaitReady(ctx, 2); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testLog{t}, nil))

	live := &miner.Reaper{Runtime: cli, Owner: owner, MinAge: -1, Sandboxes: crashed, Log: log}
	live.Reap(ctx, map[string]bool{"t": true})
	if cs, ns := leftovers(t, cli, owner); cs != 4 || ns != 3 {
		t.Fatalf("the reaper of the live pool's process removed some: %d containers, %d networks left, want 4 and 3", cs, ns)
	}

	// The crash: what the pool made stays in the engine; the restarted
	// miner has a pool of its own, holding none of it.
	restarted := &miner.Reaper{Runtime: cli, Owner: owner, MinAge: -1, Sandboxes: &sandbox.Pool{Runtime: cli, Owner: owner}, Log: log}
	restarted.Reap(ctx, nil)
	if cs, ns := leftovers(t, cli, owner); cs != 0 || ns != 0 {
		t.Errorf("after the restarted miner's reaper: %d containers, %d networks left", cs, ns)
	}
	stop()
	<-done // its drain finds nothing left to remove
	if cs, ns := leftovers(t, cli, owner); cs != 0 || ns != 0 {
		t.Errorf("at the end: %d containers, %d networks left", cs, ns)
	}
}

// TestDockerPoolDrains: a pool that stops removes what it holds ready.
func TestDockerPoolDrains(t *testing.T) {
	cli := dockertest.Engine(t)
	owner := "sandbox-drain-" + time.Now().Format("150405.000000")
	p := &sandbox.Pool{Runtime: cli, Owner: owner, Size: 1}
	if err := images.EnsureJobImage(t.Context(), cli); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); p.Run(ctx) }() // owned: waited on below
	if err := p.WaitReady(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	if cs, ns := leftovers(t, cli, owner); cs != 1 || ns != 1 {
		t.Fatalf("a ready sandbox is %d containers and %d networks, want 1 and 1", cs, ns)
	}
	stop()
	<-done
	if cs, ns := leftovers(t, cli, owner); cs != 0 || ns != 0 {
		t.Errorf("after the pool stopped: %d containers, %d networks left", cs, ns)
	}
}

// testLog writes log lines to the test's log.
type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
