// Package facilitator is the front door: clients submit, watch, list and
// cancel jobs over HTTP (upstream ComputeHorde's SDK API, signed and bearer
// authenticated, and horde's richer one); validators dial in over
// WebSocket, receive jobs and report status (upstream's protocol, or horde's
// extensions when both ends advertise them). Every job's status history is
// kept, and a job accepted is stored before it is acknowledged.
//
// A Facilitator is a value like http.Server: New checks its Config, Handler
// serves the client API and the validator link, and Run drives what goes on
// in the background (dispatching jobs, forwarding reported pairs) and, when
// the Config names a listener, serves on it.
//
// Inside, transport is kept apart from logic: api.go, auth.go and login.go
// turn HTTP requests into calls of the logic in jobs.go (view.go shapes the
// answers); link.go turns a validator's WebSocket frames into calls of the
// same logic; dispatch.go decides which validator gets which job; errors.go
// alone maps errors to HTTP statuses.
package facilitator

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/horde-compute/horde/internal/dashboard"
	"github.com/horde-compute/horde/internal/httpserve"
	"github.com/horde-compute/horde/internal/metrics"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
)

// Store is what the facilitator keeps. A Store that is also a Bus (the
// PostgreSQL one) makes the facilitator one of the replicas over its
// database (see replicas.go).
type Store interface {
	store.Jobs
	store.Reports
	store.Pairs
	store.CheatReports
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
	// AllowUpstreamAuth lets validators authenticate with upstream's
	// V0AuthenticationRequest, which unmodified upstream validators send.
	// Its signature covers the public key alone, so a captured one can be
	// replayed: the facilitator refuses a signature it has seen (for
	// wsconn.UpstreamAuthMemory, not across restarts) and never lets a
	// second session take a connected validator's place, but a replayed
	// auth can still connect as a validator that is away. Off, only horde's
	// timestamped, one-time auth (protocol.CapAuthV1) is taken.
	AllowUpstreamAuth bool
	// AllowClient decides which client hotkeys may log in and submit
	// (nil: any hotkey; upstream keeps a whitelist).
	AllowClient func(hotkey string) bool
	// TokenKey is the HMAC key of login nonces and bearer tokens (at least
	// 32 bytes). Empty: a random key per process, so tokens end with the
	// process and upstream's SDK logs in again.
	TokenKey []byte
	// TokenLifetime bounds a bearer token (default 1h, as upstream);
	// NonceLifetime a login nonce (default 5m, as upstream).
	TokenLifetime time.Duration
	NonceLifetime time.Duration
	// MaxSkew bounds the age of a client's request signature, either way
	// (default 5m).
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
	// PingTimeout bounds the wait for a connected validator's pong when
	// another session authenticates as it: a validator that answers keeps
	// its place and the newcomer is refused (default 10s).
	PingTimeout time.Duration
	// MaxBody bounds the body of a job creation or a volume message, where
	// inline volumes travel (default MaxBody); MaxSmallBody every other
	// request's (default MaxSmallBody). Bodies are read only after the
	// request's credentials have passed every check that needs no body.
	MaxBody      int64
	MaxSmallBody int64
	Log          *slog.Logger
	// Metrics is where the facilitator's metrics are registered (nil:
	// nowhere). When it is also a prometheus.Gatherer (a
	// *prometheus.Registry), Handler serves it at GET /metrics.
	Metrics prometheus.Registerer
	// DashboardToken is the operator token of the dashboard Handler
	// serves at /dashboard/ (package dashboard); empty, the dashboard
	// serves loopback requests only.
	DashboardToken string
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
	case c.MaxSmallBody < 0:
		return fmt.Errorf("facilitator config: MaxSmallBody %d is negative", c.MaxSmallBody)
	case c.PingTimeout < 0:
		return fmt.Errorf("facilitator config: PingTimeout %s is negative", c.PingTimeout)
	case c.TokenLifetime < 0 || c.NonceLifetime < 0:
		return errors.New("facilitator config: TokenLifetime and NonceLifetime must not be negative")
	case len(c.TokenKey) > 0 && len(c.TokenKey) < 32:
		return fmt.Errorf("facilitator config: TokenKey has %d bytes, want at least 32", len(c.TokenKey))
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
	if c.MaxSmallBody == 0 {
		c.MaxSmallBody = MaxSmallBody
	}
	if c.PingTimeout == 0 {
		c.PingTimeout = 10 * time.Second
	}
	if c.TokenLifetime == 0 {
		c.TokenLifetime = time.Hour
	}
	if c.NonceLifetime == 0 {
		c.NonceLifetime = 5 * time.Minute
	}
	if c.AllowClient == nil {
		c.AllowClient = func(string) bool { return true }
	}
	if len(c.TokenKey) == 0 {
		c.TokenKey = make([]byte, 32)
		if _, err := rand.Read(c.TokenKey); err != nil {
			panic(err) // crypto/rand does not fail
		}
	}
}

// Facilitator is the front door of a horde. Make one with New.
type Facilitator struct {
	cfg      Config
	log      *slog.Logger
	guard    *wsconn.ReplayGuard // validator auths
	requests *replayGuard        // client request signatures
	logins   *logins
	metrics  *metrics.Facilitator

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
	asked      map[string]chan struct{}                    // cancels and stops another replica passes on
	dispatch   chan struct{}

	// bus links the replicas over one database (nil: alone); replica
	// names this one on it.
	bus     Bus
	replica string
}

// New checks cfg, fills in its defaults and returns a facilitator that is
// not yet running: it starts no goroutine.
func New(cfg Config) (*Facilitator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	base, stop := context.WithCancel(context.Background())
	f := &Facilitator{cfg: cfg, log: cfg.Log.With("role", "facilitator"), guard: wsconn.NewReplayGuard(),
		requests: newReplayGuard(maxRemembered), logins: newLogins(cfg.TokenKey, cfg.NonceLifetime, cfg.TokenLifetime),
		metrics: metrics.NewFacilitator(cfg.Metrics),
		base:    base, stopBase: stop,
		validators: map[string]*session{}, watchers: map[string]map[chan struct{}]struct{}{},
		pending: map[string]chan *protocol.V0JobVolumeResult{}, asked: map[string]chan struct{}{},
		dispatch: make(chan struct{}, 1), replica: newReplicaID()}
	f.bus, _ = cfg.Store.(Bus)
	return f, nil
}

// Handler returns the client API and the validator link. Requests it serves
// end when Run returns; after that it answers 503.
func (f *Facilitator) Handler() http.Handler {
	small, big := f.cfg.MaxSmallBody, f.cfg.MaxBody
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET "+protocol.FacilitatorPath, f.serveValidator)
	// upstream's SDK API (and horde's client)
	mux.HandleFunc("GET "+protocol.RouteNonce, f.handleNonce)
	mux.HandleFunc("POST "+protocol.RouteNonce, f.handleNonce)
	mux.HandleFunc("POST "+protocol.RouteLogin, f.handleLogin)
	mux.HandleFunc("POST "+protocol.RouteCreateJob, f.authed(route{scope: protocol.ScopeSignedFields, maxBody: big}, f.handleCreate))
	mux.HandleFunc("GET "+protocol.RouteJobs, f.authed(route{maxBody: small}, f.handleList))
	mux.HandleFunc("GET "+protocol.RouteJobs+"{uuid}/", f.authed(route{maxBody: small}, f.handleGet))
	mux.HandleFunc("POST "+protocol.RouteCheatedJob, f.authed(route{scope: protocol.ScopeFullRequest, maxBody: small}, f.handleCheated))
	// horde's own
	mux.HandleFunc("GET "+protocol.RouteCapabilities, f.handleCapabilities)
	mux.HandleFunc("POST "+protocol.RouteJobs+"{uuid}/cancel/", f.authed(route{maxBody: small}, f.handleCancel))
	mux.HandleFunc("POST "+protocol.RouteJobs+"{uuid}/stop/", f.authed(route{maxBody: small}, f.handleStop))
	mux.HandleFunc("POST "+protocol.RouteJobs+"{uuid}/volumes/", f.authed(route{maxBody: big}, f.handleVolume))
	mux.HandleFunc("POST "+protocol.RouteJobs+"{uuid}/pairs/", f.authed(route{maxBody: small}, f.handlePair))
	mux.HandleFunc("GET "+protocol.RouteJobs+"{uuid}/events", f.authed(route{maxBody: small}, f.handleEvents))
	mux.HandleFunc("GET "+protocol.RouteScores, f.authed(route{maxBody: small}, f.handleScores))
	if g, ok := f.cfg.Metrics.(prometheus.Gatherer); ok {
		mux.Handle("GET /metrics", metrics.Handler(g))
	}
	if d, err := dashboard.New(dashboard.Config{Source: f, Token: f.cfg.DashboardToken, Log: f.log,
		Streams: f.metrics.DashboardStreams}); err == nil {
		mux.Handle(dashboard.Path, d)
	}
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
		w.Header().Set(protocol.HeaderCapabilities, apiCapabilities)
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
	if f.bus != nil {
		wg.Go(func() { f.listenLoop(ctx) })
	}
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
