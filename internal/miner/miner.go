// Package miner runs a miner: it authenticates validators, offers its
// executor manifest, accepts or declines jobs, starts one executor per job
// through a back-end, relays messages between validator and executor,
// countersigns and keeps receipts, and reaps what crashed executors left.
package miner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/httpserve"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// Config configures a miner.
type Config struct {
	Hotkey *sig.Hotkey
	// Listener, if set, is used instead of listening on Listen.
	Listener net.Listener
	Listen   string
	// ExecutorBaseURL is how executors reach this miner ("ws://host:port");
	// derived from the listener when empty.
	ExecutorBaseURL string
	// Manifest is the number of executors per class.
	Manifest map[string]int
	// Classes gives each class's container limits.
	Classes   map[string]executor.ClassSpec
	Metagraph chain.Source
	// TrustedValidator, if set, makes this a trusted miner serving only that validator.
	TrustedValidator string
	Backend          Backend
	Store            store.Receipts
	// Reaper removes leftovers of crashed executors; may be nil.
	Reaper *Reaper
	// ReapEvery is how often leftovers are looked for (default 30s).
	ReapEvery time.Duration
	// ImagePull says when executors may pull a job's image (default
	// protocol.PullIfValidatorAllows: only when a horde validator allows it).
	ImagePull protocol.ImagePullPolicy
	// StreamingImages lists the images streaming jobs may run when the
	// validator pins no digest (upstream validators), by name or digest.
	StreamingImages []string
	// SpinUpTimeout bounds the wait for a started executor to connect.
	SpinUpTimeout time.Duration
	Log           *slog.Logger
	// Ready, if set, is called with the listening address.
	Ready func(addr string)
}

// Validate checks the config, naming the bad field.
func (c *Config) Validate() error {
	switch {
	case c.Hotkey == nil:
		return errors.New("miner config: Hotkey is required")
	case len(c.Manifest) == 0:
		return errors.New("miner config: Manifest is empty (no executor classes offered)")
	case c.Backend == nil:
		return errors.New("miner config: Backend is required")
	case c.Store == nil:
		return errors.New("miner config: Store is required")
	case c.Metagraph == nil && c.TrustedValidator == "":
		return errors.New("miner config: Metagraph or TrustedValidator is required")
	case !c.ImagePull.Valid():
		return fmt.Errorf("miner config: ImagePull %q is not validator, always or never", c.ImagePull)
	}
	for class, n := range c.Manifest {
		if n < 0 {
			return fmt.Errorf("miner config: Manifest[%s] is negative", class)
		}
		if !protocol.IsUpstreamExecutorClass(class) {
			// Upstream validators refuse a whole manifest with another class.
			return fmt.Errorf("miner config: Manifest[%s]: not an executor class upstream validators know", class)
		}
	}
	return nil
}

// Miner is a running miner.
type Miner struct {
	cfg    Config
	ctx    context.Context // the miner's life; jobs' contexts derive from it
	log    *slog.Logger
	tokens *wsconn.Tokens
	guard  *wsconn.ReplayGuard

	watchers sync.WaitGroup // one per accepted job
	mu       sync.Mutex
	jobs     map[string]*job // by uuid
	reserved map[string]int  // by class
	meta     *chain.Metagraph
}

// Run serves until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.ReapEvery == 0 {
		cfg.ReapEvery = 30 * time.Second
	}
	if cfg.SpinUpTimeout == 0 {
		cfg.SpinUpTimeout = 30 * time.Second
	}
	ln, err := httpserve.Listen(cfg.Listener, cfg.Listen)
	if err != nil {
		return fmt.Errorf("miner: %w", err)
	}
	if cfg.ExecutorBaseURL == "" {
		cfg.ExecutorBaseURL = "ws://" + ln.Addr().String()
	}
	m := &Miner{cfg: cfg, ctx: ctx, log: cfg.Log.With("role", "miner"), tokens: wsconn.NewTokens(), guard: wsconn.NewReplayGuard(),
		jobs: map[string]*job{}, reserved: map[string]int{}}
	if cfg.Metagraph != nil {
		if err := m.refreshMetagraph(ctx); err != nil {
			m.log.Warn("metagraph not loaded yet", "err", err)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+protocol.ValidatorAuthPath+"{hotkey}", m.serveValidator)
	mux.HandleFunc("GET "+protocol.ExecutorPath+"{token}", m.serveExecutor)
	mux.HandleFunc("GET /receipts", m.serveReceipts)
	mux.Handle("GET "+receiptPagePrefix+"{page}", receiptPages{store: cfg.Store, log: m.log, cache: newPageCache()})
	var wg sync.WaitGroup
	bctx, stop := context.WithCancel(ctx)
	wg.Go(func() { m.background(bctx) })
	m.log.Info("miner listening", "addr", ln.Addr().String(), "hotkey", cfg.Hotkey.SS58(), "manifest", cfg.Manifest)
	if cfg.Ready != nil {
		cfg.Ready(ln.Addr().String())
	}
	err = httpserve.Serve(ctx, ln, mux)
	stop()
	wg.Wait()
	cfg.Backend.Wait()
	m.watchers.Wait()
	return err
}

func (m *Miner) background(ctx context.Context) {
	reap := time.NewTicker(m.cfg.ReapEvery)
	defer reap.Stop()
	refresh := time.NewTicker(30 * time.Second)
	defer refresh.Stop()
	for {
		if m.cfg.Reaper != nil {
			m.cfg.Reaper.Reap(ctx, m.activeJobs())
		}
		select {
		case <-ctx.Done():
			return
		case <-reap.C:
		case <-refresh.C:
			if m.cfg.Metagraph != nil {
				if err := m.refreshMetagraph(ctx); err != nil {
					m.log.Warn("metagraph refresh failed", "err", err)
				}
			}
		}
	}
}

func (m *Miner) refreshMetagraph(ctx context.Context) error {
	mg, err := m.cfg.Metagraph.Metagraph(ctx)
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.meta = mg
	m.mu.Unlock()
	return nil
}

// allowed reports whether a validator may connect.
func (m *Miner) allowed(hotkey string) bool {
	if m.cfg.TrustedValidator != "" {
		return hotkey == m.cfg.TrustedValidator
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.meta == nil {
		return false
	}
	return m.meta.IsValidator(hotkey)
}

func (m *Miner) activeJobs() map[string]bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]bool, len(m.jobs))
	for id := range m.jobs {
		out[id] = true
	}
	return out
}

// reserve takes an executor of class, if one is free.
func (m *Miner) reserve(class string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.reserved[class] >= m.cfg.Manifest[class] {
		return false
	}
	m.reserved[class]++
	return true
}

func (m *Miner) release(j *job) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.jobs[j.uuid]; ok {
		delete(m.jobs, j.uuid)
		m.reserved[j.class]--
	}
}
