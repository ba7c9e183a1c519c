package miner

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/horde-compute/horde/internal/blob"
	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/jobdisk"
	"github.com/horde-compute/horde/internal/metrics"
	"github.com/horde-compute/horde/protocol"
)

// ExecutorSpec is what a back-end needs to start an executor for one job.
type ExecutorSpec struct {
	JobUUID string
	Class   string
	// MinerURL is the executor route including its one-time token.
	MinerURL string
	Limits   executor.ClassSpec
}

// Backend starts executors. Start must not block for the job's duration;
// the returned channel closes once the executor has ended and cleaned up.
type Backend interface {
	Start(ctx context.Context, spec ExecutorSpec) (done <-chan struct{}, err error)
	// Wait blocks until every started executor has ended.
	Wait()
}

// Local runs executors in this process on a container runtime (the Docker
// Engine, or a fake in tests).
type Local struct {
	Runtime             executor.Runtime
	DataDir             string
	Owner               string
	Limits              blob.Limits
	HuggingFaceEndpoint string
	// Sandboxes hands streaming jobs networks made ahead (see
	// executor.Config); nil: each makes its own.
	Sandboxes executor.Sandboxes
	// Net and BoundDisks are passed to executors (see executor.Config):
	// where client URLs may lead (nil: public addresses only), and whether
	// job directories are bounded file systems.
	Net        *blob.DialGuard
	BoundDisks bool
	// StreamingListen, StreamingHost and StreamingSkew configure streaming
	// jobs' proxies (see executor.Config).
	StreamingListen, StreamingHost string
	StreamingSkew                  time.Duration
	// StreamingMetrics counts what the executors' signing proxies do (nil: not counted).
	StreamingMetrics *metrics.Streaming
	// SelfContainer is passed to executors (see executor.Config).
	SelfContainer string
	// Rewrite is passed to executors (see executor.Config); nil for real miners.
	Rewrite func(*protocol.V0JobRequest)
	Log     *slog.Logger
	wg      sync.WaitGroup
}

var _ Backend = (*Local)(nil)

// Start implements Backend.
func (l *Local) Start(ctx context.Context, spec ExecutorSpec) (<-chan struct{}, error) {
	if err := os.MkdirAll(l.DataDir, 0o755); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	l.wg.Go(func() {
		defer close(done)
		err := executor.Run(ctx, executor.Config{
			MinerURL: spec.MinerURL, DataDir: l.DataDir, Runtime: l.Runtime, Class: spec.Limits,
			Limits: l.Limits, Net: l.Net, BoundDisks: l.BoundDisks, Owner: l.Owner, HuggingFaceEndpoint: l.HuggingFaceEndpoint,
			StreamingListen: l.StreamingListen, StreamingHost: l.StreamingHost, StreamingSkew: l.StreamingSkew, SelfContainer: l.SelfContainer, Rewrite: l.Rewrite,
			StreamingMetrics: l.StreamingMetrics, Sandboxes: l.Sandboxes,
			Log: l.Log.With("role", "executor"),
		})
		if err != nil && ctx.Err() == nil {
			l.Log.Warn("executor ended with error", "job", spec.JobUUID, "err", err)
		}
	})
	return done, nil
}

// Wait implements Backend.
func (l *Local) Wait() { l.wg.Wait() }

// Reaper removes containers, networks and job directories (with the
// bounded disks mounted in them) that no running job owns: what an executor
// left behind when it crashed. Every Docker object a job makes carries the
// owner and job labels it looks for.
type Reaper struct {
	// Runtime is where the containers and networks are; nil: reap only directories.
	Runtime executor.Runtime
	Owner   string
	DataDir string
	// MinAge spares leftovers younger than it (zero: leftoverAge; negative:
	// none): an executor creates them before the miner knows the job runs.
	MinAge time.Duration
	// Sandboxes says which streaming sandboxes (by name, see
	// executor.LabelSandbox) a live pool of this process holds: they are
	// spared, any other of this owner's is a crash's leftover. Nil: none.
	Sandboxes interface{ Holds(name string) bool }
	// SelfContainer is this process's own container on the same engine, if
	// it runs in one: it joined its streaming jobs' networks, and after a
	// crash and restart it is attached to them again, so a leftover network
	// is left by it before it is removed.
	SelfContainer string
	Log           *slog.Logger
}

// spare says whether a container or network with labels belongs to a job
// in active, or to a sandbox a live pool holds, or is too young to judge.
func (r *Reaper) spare(labels map[string]string, age, minAge time.Duration, active map[string]bool) bool {
	if sb := labels[executor.LabelSandbox]; sb != "" && r.Sandboxes != nil && r.Sandboxes.Holds(sb) {
		return true
	}
	return active[labels[executor.LabelJob]] || age <= minAge
}

// leftoverAge is how old an unowned container, network or directory must be
// to be reaped, by default.
const leftoverAge = 5 * time.Second

// Reap removes leftovers of jobs not in active.
func (r *Reaper) Reap(ctx context.Context, active map[string]bool) {
	leftoverAge := leftoverAge
	if r.MinAge != 0 {
		leftoverAge = r.MinAge
	}
	if r.Runtime != nil {
		label := executor.LabelOwner + "=" + r.Owner
		cs, err := r.Runtime.ContainerList(ctx, label)
		if err != nil {
			r.Log.Warn("reaper: list containers", "err", err)
		}
		for _, c := range cs {
			if !r.spare(c.Labels, c.Since(time.Now()), leftoverAge, active) {
				id := c.Labels[executor.LabelJob]
				r.Log.Info("reaper: removing leftover container", "job", id, "sandbox", c.Labels[executor.LabelSandbox], "container", c.ID[:min(12, len(c.ID))])
				if err := r.Runtime.ContainerRemove(ctx, c.ID); err != nil {
					r.Log.Warn("reaper: remove container", "job", id, "err", err)
				}
			}
		}
		// Networks after containers: a network with a container attached cannot go.
		ns, err := r.Runtime.NetworkList(ctx, label)
		if err != nil {
			r.Log.Warn("reaper: list networks", "err", err)
		}
		for _, n := range ns {
			if !r.spare(n.Labels, n.Since(time.Now()), leftoverAge, active) {
				id := n.Labels[executor.LabelJob]
				r.Log.Info("reaper: removing leftover network", "job", id, "network", n.Name)
				if nj, ok := r.Runtime.(executor.NetworkJoiner); ok && r.SelfContainer != "" {
					if err := nj.NetworkDisconnect(ctx, n.ID, r.SelfContainer); err != nil {
						r.Log.Debug("reaper: leave network", "network", n.Name, "err", err) // most were never joined
					}
				}
				if err := r.Runtime.NetworkRemove(ctx, n.ID); err != nil {
					r.Log.Warn("reaper: remove network", "job", id, "err", err)
				}
			}
		}
	}
	if r.DataDir != "" {
		ents, _ := os.ReadDir(r.DataDir)
		for _, e := range ents {
			name := e.Name()
			if !e.IsDir() || !strings.HasPrefix(name, "job-") {
				continue
			}
			id := strings.TrimPrefix(name, "job-")
			if i := strings.LastIndex(id, "-"); i > 0 {
				id = id[:i]
			}
			info, err := e.Info()
			if err == nil && !active[id] && time.Since(info.ModTime()) > leftoverAge {
				r.Log.Info("reaper: removing leftover job directory", "job", id)
				dir := filepath.Join(r.DataDir, name)
				// Its bounded disks first (containers using them are gone):
				// removing files through a mount frees no mount.
				if err := jobdisk.UnmountBeneath(dir); err != nil {
					r.Log.Warn("reaper: unmount job disks", "job", id, "err", err)
					continue
				}
				if err := os.RemoveAll(dir); err != nil {
					r.Log.Warn("reaper: remove job directory", "job", id, "err", err)
				}
			}
		}
	}
}
