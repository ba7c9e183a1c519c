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
