// Package sandbox makes streaming jobs' networks ahead of time. A sandbox
// is an internal Docker network (no route outside) with a small holder
// container on it; a streaming job's service joins the holder's network
// namespace (NetworkMode "container:<holder>") instead of getting one of
// its own, so the service is reachable at the holder's address on that
// network, by the signing proxy only, as before. Making the network and
// attaching a container to it is most of what starting a service on its
// own network costs the engine; a Pool does it before a job asks and makes
// a new sandbox in the background for each one taken. A sandbox serves one
// job and is then removed, never reused.
//
// A sandbox's network and holder carry the owner label and
// executor.LabelSandbox (its name); a miner's reaper removes those no live
// pool holds (Pool.Holds): what a crash left behind.
package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/images"
)

// HolderCmd is what the holder runs in the job image (images.JobImage): a
// wait of ten years, ended by the removal that ends every sandbox.
var HolderCmd = []string{"sleep", "315360000"}

// Pool keeps Size sandboxes ready. Run makes them; Take and Release are
// safe to call from any goroutine, before, during and after Run.
type Pool struct {
	Runtime executor.Runtime
	// Owner is the owner label (the miner's hotkey), as executors set it.
	Owner string
	// Size is how many sandboxes are kept ready (default 1).
	Size int
	// Image and Cmd run the holder (default images.JobImage, HolderCmd).
	// The image must be present: it is never pulled.
	Image string
	Cmd   []string
	// SelfContainer, if set, is this process's own container (see
	// executor.Config): it joins each sandbox's network to reach the
	// service. The Runtime must then implement executor.NetworkJoiner.
	SelfContainer string
	Log           *slog.Logger

	mu    sync.Mutex
	ready []*executor.Sandbox
	// held names the sandboxes made (or being made) and not yet removed.
	held map[string]bool
	wake chan struct{}
	// changed is closed (and replaced) whenever a sandbox becomes ready.
	changed chan struct{}
}

var _ executor.Sandboxes = (*Pool)(nil)

func (p *Pool) init() {
	if p.held == nil {
		p.held = map[string]bool{}
		p.wake = make(chan struct{}, 1)
		p.changed = make(chan struct{})
	}
}

func (p *Pool) log() *slog.Logger {
	if p.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return p.Log
}

// Take implements executor.Sandboxes: a ready sandbox, or nil; a new one is
// made in the background.
func (p *Pool) Take() *executor.Sandbox {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.init()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	if len(p.ready) == 0 {
		return nil
	}
	s := p.ready[0]
	p.ready = p.ready[1:]
	return s
}

// Release implements executor.Sandboxes: it removes the sandbox (its
// holder, then its network).
func (p *Pool) Release(ctx context.Context, s *executor.Sandbox) error {
	return p.remove(ctx, s.Network)
}

// Holds says whether the sandbox called name is this pool's and not yet
// removed (ready, being made, or serving a job).
func (p *Pool) Holds(name string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.held[name]
}

// Ready is how many sandboxes are ready now.
func (p *Pool) Ready() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ready)
}

// WaitReady waits until n sandboxes are ready, or ctx ends.
func (p *Pool) WaitReady(ctx context.Context, n int) error {
	for {
		p.mu.Lock()
		p.init()
		ready, changed := len(p.ready), p.changed
		p.mu.Unlock()
		if ready >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-changed:
		}
	}
}

// Run keeps the pool filled until ctx ends, then removes the sandboxes
// still ready (those taken are removed by Release). After a failure it
// tries again, waiting a second at first and up to 30 s.
func (p *Pool) Run(ctx context.Context) {
	p.mu.Lock()
	p.init()
	p.mu.Unlock()
	defer p.drain()
	size := max(p.Size, 1)
	backoff := time.Duration(0)
	for {
		for ctx.Err() == nil && p.Ready() < size {
			s, err := p.make(ctx)
			if err != nil {
				backoff = min(max(2*backoff, time.Second), 30*time.Second)
				p.log().Warn("streaming sandbox not made", "err", err, "retry_in", backoff)
				select {
				case <-ctx.Done():
				case <-time.After(backoff):
				}
				continue
			}
			backoff = 0
			p.mu.Lock()
			p.ready = append(p.ready, s)
			close(p.changed)
			p.changed = make(chan struct{})
			p.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		}
	}
}

// drain removes the sandboxes still ready.
func (p *Pool) drain() {
	p.mu.Lock()
	ready := p.ready
	p.ready = nil
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, s := range ready {
		if err := p.remove(ctx, s.Network); err != nil {
			p.log().Warn("remove streaming sandbox", "sandbox", s.Network, "err", err)
		}
	}
}

// make makes one sandbox; whatever it made of one it could not finish, it
// removes.
func (p *Pool) make(ctx context.Context) (*executor.Sandbox, error) {
	b := make([]byte, 8)
	rand.Read(b)
	name := "horde-sandbox-" + hex.EncodeToString(b)
	p.mu.Lock()
	p.held[name] = true // before the engine has any of it: the reaper spares it
	p.mu.Unlock()
	s, err := p.build(ctx, name)
	if err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		return nil, errors.Join(err, p.remove(rctx, name))
	}
	return s, nil
}

func (p *Pool) build(ctx context.Context, name string) (*executor.Sandbox, error) {
	labels := map[string]string{executor.LabelOwner: p.Owner, executor.LabelSandbox: name}
	// Creations run to their end even when the pool is closing: a create
	// cut short may still make its network or container in the engine
	// after make has removed what it found.
	cctx, cancel := executor.Uncancelled(ctx)
	defer cancel()
	if _, err := p.Runtime.NetworkCreate(cctx, name, true, labels); err != nil {
		return nil, err
	}
	image, cmd := p.Image, p.Cmd
	if image == "" {
		image, cmd = images.JobImage, HolderCmd
	}
	pids := int64(16)
	cfg := &docker.ContainerConfig{Image: image, Cmd: cmd, Labels: labels, HostConfig: docker.HostConfig{
		NetworkMode: name, ReadonlyRootfs: true, SecurityOpt: []string{"no-new-privileges"}, CapDrop: []string{"ALL"},
		Memory: 64 << 20, MemorySwap: 64 << 20, PidsLimit: &pids, LogConfig: executor.JobLogs(),
	}}
	id, err := p.Runtime.ContainerCreate(cctx, name, cfg)
	if err != nil {
		return nil, fmt.Errorf("sandbox holder: %w", err)
	}
	if err := p.Runtime.ContainerStart(ctx, id); err != nil {
		return nil, fmt.Errorf("sandbox holder: %w", err)
	}
	if p.SelfContainer != "" {
		nj, ok := p.Runtime.(executor.NetworkJoiner)
		if !ok {
			return nil, errors.New("this runtime cannot join its own container to a sandbox's network")
		}
		if err := nj.NetworkConnect(ctx, name, p.SelfContainer); err != nil {
			return nil, err
		}
	}
	addr, err := p.Runtime.ServiceAddr(ctx, id, name, executor.ServicePort)
	if err != nil {
		return nil, err
	}
	return &executor.Sandbox{Network: name, Holder: id, Addr: addr}, nil
}

// remove removes the sandbox called name: its holder (and with it any
// container still in its namespace must be gone already), this process's
// container from its network, then the network.
func (p *Pool) remove(ctx context.Context, name string) error {
	err := p.Runtime.ContainerRemove(ctx, name)
	if nj, ok := p.Runtime.(executor.NetworkJoiner); ok && p.SelfContainer != "" && err == nil {
		err = nj.NetworkDisconnect(ctx, name, p.SelfContainer)
	}
	if err == nil {
		err = p.Runtime.NetworkRemove(ctx, name)
	}
	// Held no more, whatever happened: what is left of it is the reaper's
	// to remove, as a crash's leftover.
	p.mu.Lock()
	delete(p.held, name)
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("remove sandbox %s: %w", name, err)
	}
	return nil
}
