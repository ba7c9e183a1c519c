// Package facilitator is the front door: clients submit, watch, list and
// cancel jobs over HTTP (signed with their hotkeys); validators dial in over
// WebSocket, receive jobs and report status. Every job's status history is
// kept, and a job accepted is stored before it is acknowledged.
//
// A Facilitator is a value like http.Server: New checks its Config, Handler
// serves the client API and the validator link, and Run drives what goes on
// in the background (dispatching jobs, forwarding reported pairs) and, when
// the Config names a listener, serves on it.
//
// Inside, transport is kept apart from logic: api.go and auth.go turn HTTP
// requests into calls of the logic in jobs.go; link.go turns a validator's
// WebSocket frames into calls of the same logic; dispatch.go decides which
// validator gets which job; errors.go alone maps errors to HTTP statuses.
package facilitator

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

	"github.com/horde-compute/horde/internal/httpserve"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
)

// Store is what the facilitator keeps.
type Store interface {
	store.Jobs
	store.Reports
	store.Pairs
}

// Config configures a facilitator.
type Config struct {
	// Listener, or else Listen (an address), is where Run serves Handler.
	// With neither, Run serves nothing: the caller serves Handler itself.
	Listener net.Listener
	Listen   string
	Store    Store
	// AllowValidator decides which validator hotkeys may connect.
	AllowValidator func(hotkey string) bool
	// MaxSkew bounds the age of a client's request signature (default 5m).
	MaxSkew time.Duration
	// Redispatch is how long a job given to a validator may go unacknowledged
	// before it is given again, to the same validator (default 30s).
	Redispatch time.Duration
	// DispatchEvery is how often waiting jobs and pairs are looked at besides
	// the moments something happens (a job arrives, a validator connects)
	// (default 5s).
	DispatchEvery time.Duration
	// VolumeTimeout bounds the wait for a streaming job to acknowledge a
	// client's volume message (default 15m).
	VolumeTimeout time.Duration
	// MaxBody bounds a client's request body (default MaxBody).
	MaxBody int64
	Log     *slog.Logger
}

// Validate checks the config and names the first bad field.
func (c *Config) Validate() error {
	switch {
	case c.Store == nil:
		return errors.New("facilitator config: Store is required")
	case c.AllowValidator == nil:
		return errors.New("facilitator config: AllowValidator is required")
	case c.MaxSkew < 0:
		return fmt.Errorf("facilitator config: MaxSkew %s is negative", c.MaxSkew)
	case c.Redispatch < 0:
		return fmt.Errorf("facilitator config: Redispatch %s is negative", c.Redispatch)
	case c.DispatchEvery < 0:
		return fmt.Errorf("facilitator config: DispatchEvery %s is negative", c.DispatchEvery)
	case c.VolumeTimeout < 0:
		return fmt.Errorf("facilitator config: VolumeTimeout %s is negative", c.VolumeTimeout)
	case c.MaxBody < 0:
		return fmt.Errorf("facilitator config: MaxBody %d is negative", c.MaxBody)
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.MaxSkew == 0 {
		c.MaxSkew = 5 * time.Minute
	}
	if c.Redispatch == 0 {
		c.Redispatch = 30 * time.Second
	}
	if c.DispatchEvery == 0 {
		c.DispatchEvery = 5 * time.Second
	}
	if c.VolumeTimeout == 0 {
		c.VolumeTimeout = 15 * time.Minute
	}
	if c.MaxBody == 0 {
		c.MaxBody = MaxBody
	}
}

// Facilitator is the front door of a horde. Make one with New.
type Facilitator struct {
	cfg   Config
	log   *slog.Logger
	guard *wsconn.ReplayGuard

	// base ends the requests being served (validator sessions, event
	// streams) when Run returns.
	base     context.Context
	stopBase context.CancelFunc
	running  atomic.Bool

	mu         sync.Mutex
	closed     bool           // Run has returned: no new requests
	active     sync.WaitGroup // requests being served
	validators map[string]*session
	watchers   map[string]map[chan struct{}]struct{}
	pending    map[string]chan *protocol.V0JobVolumeResult // volume messages awaiting their ack
	dispatch   chan struct{}
}

// New checks cfg, fills in its defaults and returns a facilitator that is
// not yet running: it starts no goroutine.
func New(cfg Config) (*Facilitator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	base, stop := context.WithCancel(context.Background())
	return &Facilitator{cfg: cfg, log: cfg.Log.With("role", "facilitator"), guard: wsconn.NewReplayGuard(),
		base: base, stopBase: stop,
		validators: map[string]*session{}, watchers: map[string]map[chan struct{}]struct{}{},
		pending: map[string]chan *protocol.V0JobVolumeResult{}, dispatch: make(chan struct{}, 1)}, nil
}

// Handler returns the client API and the validator link. Requests it serves
// end when Run returns; after that it answers 503.
func (f *Facilitator) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET "+protocol.FacilitatorPath, f.serveValidator)
	mux.HandleFunc("POST "+protocol.RouteCreateJob, f.authed(f.handleCreate))
	mux.HandleFunc("GET "+protocol.RouteJobs, f.authed(f.handleList))
	mux.HandleFunc("GET "+protocol.RouteJobs+"{uuid}/", f.authed(f.handleGet))
	mux.HandleFunc("POST "+protocol.RouteJobs+"{uuid}/cancel/", f.authed(f.handleCancel))
	mux.HandleFunc("POST "+protocol.RouteJobs+"{uuid}/stop/", f.authed(f.handleStop))
	mux.HandleFunc("POST "+protocol.RouteJobs+"{uuid}/volumes/", f.authed(f.handleVolume))
	mux.HandleFunc("POST "+protocol.RouteJobs+"{uuid}/pairs/", f.authed(f.handlePair))
	mux.HandleFunc("GET "+protocol.RouteJobs+"{uuid}/events", f.authed(f.handleEvents))
	mux.HandleFunc("GET "+protocol.RouteScores, f.authed(f.handleScores))
	return f.track(mux)
}

// track counts the requests being served, so Run can wait for them, and
// ends them when Run returns.
func (f *Facilitator) track(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			writeError(w, fmt.Errorf("%w: the facilitator is shutting down", ErrUnavailable))
			return
		}
		f.active.Add(1)
		f.mu.Unlock()
		defer f.active.Done()
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		stop := context.AfterFunc(f.base, cancel)
		defer stop()
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

// Run dispatches jobs to validators and forwards reported pairs until ctx
// ends, serving Handler on the configured listener when there is one. It
// returns after every goroutine it started has ended and every request it
// was serving has returned. Run may be called once.
func (f *Facilitator) Run(ctx context.Context) error {
	if !f.running.CompareAndSwap(false, true) {
		return errors.New("facilitator: Run called twice")
	}
	defer f.shutdown()
	var ln net.Listener
	if f.cfg.Listener != nil || f.cfg.Listen != "" {
		var err error
		if ln, err = httpserve.Listen(f.cfg.Listener, f.cfg.Listen); err != nil {
			return fmt.Errorf("facilitator: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Hijacked connections (validator sessions) outlive a server's
	// shutdown: end them as soon as ctx ends.
	defer context.AfterFunc(ctx, f.stopBase)()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { f.dispatchLoop(ctx) })
	if ln == nil {
		<-ctx.Done()
		return nil
	}
	f.log.Info("facilitator listening", "addr", ln.Addr().String())
	err := httpserve.Serve(ctx, ln, f.Handler())
	cancel() // the server failed, or ctx ended: either way the loops stop
	if err != nil {
		return fmt.Errorf("facilitator: %w", err)
	}
	return nil
}

// shutdown ends the requests being served and waits for them.
func (f *Facilitator) shutdown() {
	f.stopBase()
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.active.Wait()
}
