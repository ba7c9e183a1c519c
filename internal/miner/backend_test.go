package miner

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/executor/fakert"
)

// The reaper removes what crashed executors of this miner left: containers
// (running or not), networks and job directories of jobs that no longer
// run, once old enough; nothing of running jobs, young leftovers or other
// owners.
func TestReaper(t *testing.T) {
	rt := fakert.New()
	rt.Register("img", func(ctx context.Context, c *fakert.Container) int { <-ctx.Done(); return 0 })
	ctx := t.Context()
	defer rt.Close(context.Background())
	old := time.Now().Add(-time.Minute)
	leftover := func(job, owner string, created time.Time, run bool) {
		rt.Now = func() time.Time { return created }
		labels := map[string]string{executor.LabelJob: job, executor.LabelOwner: owner}
		id, err := rt.ContainerCreate(ctx, "", &docker.ContainerConfig{Image: "img", Labels: labels, HostConfig: docker.HostConfig{NetworkMode: "none"}})
		if err != nil {
			t.Fatal(err)
		}
		if run {
			if err := rt.ContainerStart(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := rt.NetworkCreate(ctx, "net-"+job+"-"+owner, true, labels); err != nil {
			t.Fatal(err)
		}
	}
	leftover("crashed", "me", old, true)
	leftover("stopped", "me", old, false)
	leftover("running", "me", old, true)
	leftover("young", "me", time.Now(), true)
	leftover("theirs", "other", old, true)
	dir := t.TempDir()
	for _, d := range []string{"job-crashed-123", "job-running-456", "unrelated"} {
		os.Mkdir(filepath.Join(dir, d), 0o755)
		os.Chtimes(filepath.Join(dir, d), old, old)
	}

	r := &Reaper{Runtime: rt, Owner: "me", DataDir: dir, Log: slog.New(slog.DiscardHandler)}
	r.Reap(ctx, map[string]bool{"running": true})

	var left []string
	for _, c := range rt.Containers() {
		left = append(left, c.Labels[executor.LabelJob])
	}
	sort.Strings(left)
	if got := strings.Join(left, " "); got != "running theirs young" {
		t.Errorf("containers left: %s", got)
	}
	ns, _ := rt.NetworkList(ctx, "")
	left = left[:0]
	for _, n := range ns {
		left = append(left, n.Labels[executor.LabelJob])
	}
	sort.Strings(left)
	if got := strings.Join(left, " "); got != "running theirs young" {
		t.Errorf("networks left: %s", got)
	}
	ents, _ := os.ReadDir(dir)
	left = left[:0]
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if got := strings.Join(left, " "); got != "job-running-456 unrelated" {
		t.Errorf("directories left: %s", got)
	}
}

// A miner running in a container joins its streaming jobs' networks;
// killed and restarted, its container is attached to them again. The
// reaper leaves a crashed job's network before removing it (else the
// engine refuses: active endpoints) and keeps a running job's.
func TestReaperLeavesNetworksItJoined(t *testing.T) {
	rt := fakert.New()
	ctx := t.Context()
	defer rt.Close(context.Background())
	rt.Now = func() time.Time { return time.Now().Add(-time.Minute) }
	for _, job := range []string{"crashed", "running"} {
		labels := map[string]string{executor.LabelJob: job, executor.LabelOwner: "me"}
		if _, err := rt.NetworkCreate(ctx, "horde-job-"+job, true, labels); err != nil {
			t.Fatal(err)
		}
		if err := rt.NetworkConnect(ctx, "horde-job-"+job, "miner-self"); err != nil {
			t.Fatal(err)
		}
	}
	(&Reaper{Runtime: rt, Owner: "me", Log: slog.New(slog.DiscardHandler)}).Reap(ctx, map[string]bool{"running": true})
	if ns, _ := rt.NetworkList(ctx, ""); len(ns) != 2 {
		t.Fatalf("without its own container named, the reaper removed %d of 2 networks (the engine refuses)", 2-len(ns))
	}
	(&Reaper{Runtime: rt, Owner: "me", SelfContainer: "miner-self", Log: slog.New(slog.DiscardHandler)}).Reap(ctx, map[string]bool{"running": true})
	ns, _ := rt.NetworkList(ctx, "")
	if len(ns) != 1 || ns[0].Labels[executor.LabelJob] != "running" {
		t.Errorf("networks left: %+v", ns)
	}
	if err := rt.NetworkRemove(ctx, "horde-job-running"); err == nil {
		t.Error("the running job's network lost the process's endpoint")
	}
}

// holds is a live pool's set of sandboxes, for the reaper.
type holds map[string]bool

func (h holds) Holds(name string) bool { return h[name] }

// Streaming sandboxes (made ahead, no job label) survive the reaper while
// a live pool of this process holds them; those of a crashed process's pool
// (held by none now) are removed once old enough, and a young one is spared.
func TestReaperSandboxes(t *testing.T) {
	rt := fakert.New()
	rt.Register("img", func(ctx context.Context, c *fakert.Container) int { <-ctx.Done(); return 0 })
	ctx := t.Context()
	defer rt.Close(context.Background())
	old := time.Now().Add(-time.Minute)
	sandbox := func(name, owner string, created time.Time) {
		rt.Now = func() time.Time { return created }
		labels := map[string]string{executor.LabelSandbox: name, executor.LabelOwner: owner}
		if _, err := rt.NetworkCreate(ctx, name, true, labels); err != nil {
			t.Fatal(err)
		}
		id, err := rt.ContainerCreate(ctx, name, &docker.ContainerConfig{Image: "img", Labels: labels, HostConfig: docker.HostConfig{NetworkMode: name}})
		if err != nil {
			t.Fatal(err)
		}
		if err := rt.ContainerStart(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	sandbox("live", "me", old)
	sandbox("crashed", "me", old)
	sandbox("young", "me", time.Now())
	sandbox("theirs", "other", old)
	left := func() string {
		var names []string
		for _, c := range rt.Containers() {
			names = append(names, "c:"+c.Labels[executor.LabelSandbox])
		}
		ns, _ := rt.NetworkList(ctx, "")
		for _, n := range ns {
			names = append(names, "n:"+n.Labels[executor.LabelSandbox])
		}
		sort.Strings(names)
		return strings.Join(names, " ")
	}
	r := &Reaper{Runtime: rt, Owner: "me", Sandboxes: holds{"live": true, "crashed": false}, Log: slog.New(slog.DiscardHandler)}
	r.Reap(ctx, nil)
	if got := left(); got != "c:live c:theirs c:young n:live n:theirs n:young" {
		t.Errorf("left: %s", got)
	}
	// The process is gone: a restarted miner's pool holds none of them.
	r.Sandboxes = holds{}
	r.Reap(ctx, nil)
	if got := left(); got != "c:theirs c:young n:theirs n:young" {
		t.Errorf("left after a restart: %s", got)
	}
}
