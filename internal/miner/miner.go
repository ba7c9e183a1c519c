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
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/httpserve"
	"github.com/horde-compute/horde/internal/metrics"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
	"github.com/horde-compute/horde/sig"
)

// Config configures a miner.
type Config struct {
	Hotkey *sig.Hotkey
	// Listener, if set, is used instead of listening on Listen; with
	// neither, Run serves nothing and Handler is served by the caller.
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
	// UpstreamOnly makes the miner look exactly like upstream's to every
	// validator: it advertises no horde extension (so horde validators send
	// upstream's messages) and serves receipts only as upstream's pages.
	UpstreamOnly bool
	// SpinUpTimeout bounds the wait for a started executor to connect.
	SpinUpTimeout time.Duration
	// SendTimeout bounds each message sent to a validator or an executor
	// (default 10s): a peer that does not read is not waited for longer.
	SendTimeout time.Duration
	// StopTimeout bounds how long Run waits for jobs to end after its
	// context ends (default 10s).
	StopTimeout time.Duration
	Log         *slog.Logger
	// Metrics is where the miner's metrics are registered (nil: nowhere);
	// when it is a prometheus.Gatherer too, GET /metrics serves it.
	Metrics prometheus.Registerer
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

// Miner is a miner: build it with New, serve Handler (or let Run listen)
// and Run it.
type Miner struct {
	cfg    Config
	log    *slog.Logger
	tokens *wsconn.Tokens
	guard  *wsconn.ReplayGuard
	// base is the miner's life: jobs' and sessions' contexts derive from
	// it; it ends when Run's context does.
	base     context.Context
	stopBase context.CancelFunc
	running  atomic.Bool
	baseURL  atomic.Pointer[string] // how executors reach this miner
	handler  http.Handler

	watchers sync.WaitGroup // one per accepted job
	sessions sync.WaitGroup // one per validator or executor connection
	mu       sync.Mutex
	closed   bool            // Run is stopping: no new connections
	jobs     map[string]*job // by uuid
	reserved map[string]int  // by class
	meta     *chain.Metagraph
	metrics  *metrics.Miner
}

// New checks cfg, fills in its defaults and returns a miner that is not yet
// running: it starts no goroutine and opens no socket.
func New(cfg Config) (*Miner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	base, stop := context.WithCancel(context.Background())
	m := &Miner{cfg: cfg, log: cfg.Log.With("role", "miner"), tokens: wsconn.NewTokens(), guard: wsconn.NewReplayGuard(),
		base: base, stopBase: stop, jobs: map[string]*job{}, reserved: map[string]int{}}
	m.handler = m.newHandler()
	switch {
	case cfg.ExecutorBaseURL != "":
		m.setBaseURL(cfg.ExecutorBaseURL)
	case cfg.Listener != nil:
		m.setBaseURL("ws://" + cfg.Listener.Addr().String())
	}
	return m, nil
}

func (c *Config) setDefaults() {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.ReapEvery == 0 {
		c.ReapEvery = 30 * time.Second
	}
	if c.SpinUpTimeout == 0 {
		c.SpinUpTimeout = 30 * time.Second
	}
	if c.SendTimeout == 0 {
		c.SendTimeout = 10 * time.Second
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = 10 * time.Second
	}
}

func (m *Miner) setBaseURL(u string) { m.baseURL.Store(&u) }

// executorURL is the route an executor with token connects to; "" when
// the miner does not know its own address yet.
func (m *Miner) executorURL(token string) string {
	u := m.baseURL.Load()
	if u == nil {
		return ""
	}
	return *u + protocol.ExecutorPath + token
}

// Handler serves validators (GET /v0.1/validator_interface/{hotkey}),
// executors (GET /v0.1/executor_interface/{token}) and the receipts
// (GET /receipts). Connections it serves end when Run returns.
func (m *Miner) Handler() http.Handler { return m.handler }

func (m *Miner) newHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+protocol.ValidatorAuthPath+"{hotkey}", m.serveValidator)
	mux.HandleFunc("GET "+protocol.ExecutorPath+"{token}", m.serveExecutor)
	if !m.cfg.UpstreamOnly {
		mux.HandleFunc("GET /receipts", m.serveReceipts)
	}
	mux.Handle("GET "+receipt.PagePrefix+"{page}", receiptPages{store: m.cfg.Store, log: m.log, cache: newPageCache()})
	m.instrument(mux)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			http.Error(w, "the miner is shutting down", http.StatusServiceUnavailable)
			return
		}
		m.sessions.Add(1)
		m.mu.Unlock()
		defer m.sessions.Done()
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		defer context.AfterFunc(m.base, cancel)()
		mux.ServeHTTP(w, r.WithContext(ctx))
	})
}

// ErrStopTimeout is returned by Run when jobs were still ending
// Config.StopTimeout after its context ended: they are abandoned.
var ErrStopTimeout = errors.New("jobs did not end in time")

// Run serves until ctx ends, on the configured listener when there is one
// (else Handler must be served elsewhere, and Config.ExecutorBaseURL say
// where). Once ctx ends, Run stops its jobs and returns within
// Config.StopTimeout (plus at most 5 s for plain HTTP requests), whatever
// the jobs are doing: what has not ended by then is abandoned, and Run
// returns ErrStopTimeout. Run may be called once.
func (m *Miner) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("miner: Run called twice")
	}
	defer m.stopBase()
	var ln net.Listener
	if m.cfg.Listener != nil || m.cfg.Listen != "" {
		var err error
		if ln, err = httpserve.Listen(m.cfg.Listener, m.cfg.Listen); err != nil {
			return fmt.Errorf("miner: %w", err)
		}
		if m.baseURL.Load() == nil {
			m.setBaseURL("ws://" + ln.Addr().String())
		}
	} else if m.baseURL.Load() == nil {
		return errors.New("miner: ExecutorBaseURL is required without a listener")
	}
	defer context.AfterFunc(ctx, m.stopBase)()
	if m.cfg.Metagraph != nil {
		if err := m.refreshMetagraph(ctx); err != nil {
			m.log.Warn("metagraph not loaded yet", "err", err)
		}
	}
	var wg sync.WaitGroup
	bctx, stop := context.WithCancel(ctx)
	wg.Go(func() { m.background(bctx) })
	var err error
	if ln != nil {
		m.log.Info("miner listening", "addr", ln.Addr().String(), "hotkey", m.cfg.Hotkey.SS58(), "manifest", m.cfg.Manifest)
		if err = httpserve.Serve(ctx, ln, m.Handler()); err != nil {
			err = fmt.Errorf("miner: %w", err)
		}
	} else {
		<-ctx.Done()
	}
	stop()
	m.stopBase()
	wg.Wait()
	return errors.Join(err, m.waitJobs())
}

// waitJobs waits for the jobs, their executors and the connections to end,
// at most Config.StopTimeout.
func (m *Miner) waitJobs() error {
	m.mu.Lock()
	m.closed = true // no new connections: sessions.Wait may begin
	m.mu.Unlock()
	ended := make(chan struct{})
	// Owned by Run: it waits for ended below, or abandons what is stuck.
	go func() {
		m.sessions.Wait()
		m.watchers.Wait()
		m.cfg.Backend.Wait()
		close(ended)
	}()
	t := time.NewTimer(m.cfg.StopTimeout)
	defer t.Stop()
	select {
	case <-ended:
		return nil
	case <-t.C:
		jobs := m.activeJobs()
		m.log.Error("miner stopped with jobs still ending; abandoning them", "jobs", len(jobs), "after", m.cfg.StopTimeout)
		return fmt.Errorf("miner: %w after %s (%d still active)", ErrStopTimeout, m.cfg.StopTimeout, len(jobs))
	}
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
