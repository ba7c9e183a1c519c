// Package facilitator runs the front door: clients submit, watch, list and
// cancel jobs over HTTP (signed with their hotkeys); validators dial in over
// WebSocket, receive jobs and report status. Every job's status history is
// kept, and a job accepted is stored before it is acknowledged.
package facilitator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
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
	Listener net.Listener
	Listen   string
	Store    Store
	// AllowValidator decides which validator hotkeys may connect.
	AllowValidator func(hotkey string) bool
	// MaxSkew bounds the age of a client's request signature.
	MaxSkew time.Duration
	// Redispatch is how long a job given to a validator may go unacknowledged
	// before it is given again (default 30s).
	Redispatch time.Duration
	Log        *slog.Logger
	Ready      func(addr string)
}

// Validate checks the config.
func (c *Config) Validate() error {
	switch {
	case c.Store == nil:
		return errors.New("facilitator config: Store is required")
	case c.AllowValidator == nil:
		return errors.New("facilitator config: AllowValidator is required")
	}
	return nil
}

// Facilitator is a running facilitator.
type Facilitator struct {
	cfg   Config
	log   *slog.Logger
	guard *wsconn.ReplayGuard

	mu         sync.Mutex
	validators map[string]*validatorConn
	watchers   map[string]map[chan protocol.StatusEntry]struct{}
	pending    map[string]chan *protocol.V0JobVolumeResult // volume messages awaiting their ack
	dispatch   chan struct{}
}

type validatorConn struct {
	hotkey string
	conn   *wsconn.Conn
}

// Run serves until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxSkew == 0 {
		cfg.MaxSkew = 5 * time.Minute
	}
	if cfg.Redispatch == 0 {
		cfg.Redispatch = 30 * time.Second
	}
	ln, err := httpserve.Listen(cfg.Listener, cfg.Listen)
	if err != nil {
		return fmt.Errorf("facilitator: %w", err)
	}
	f := &Facilitator{cfg: cfg, log: cfg.Log.With("role", "facilitator"), guard: wsconn.NewReplayGuard(),
		validators: map[string]*validatorConn{}, watchers: map[string]map[chan protocol.StatusEntry]struct{}{},
		pending:  map[string]chan *protocol.V0JobVolumeResult{},
		dispatch: make(chan struct{}, 1)}
	var wg sync.WaitGroup
	defer wg.Wait()
	dctx, stop := context.WithCancel(ctx)
	defer stop()
	wg.Go(func() { f.dispatchLoop(dctx) })
	f.log.Info("facilitator listening", "addr", ln.Addr().String())
	if cfg.Ready != nil {
		cfg.Ready(ln.Addr().String())
	}
	return httpserve.Serve(ctx, ln, f.routes())
}

func (f *Facilitator) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET "+protocol.FacilitatorPath, f.serveValidator)
	mux.HandleFunc("POST "+protocol.RouteCreateJob, f.authed(f.createJob))
	mux.HandleFunc("GET "+protocol.RouteJobs, f.authed(f.listJobs))
	mux.HandleFunc("GET "+protocol.RouteJobs+"{uuid}/", f.authed(f.getJob))
	mux.HandleFunc("POST "+protocol.RouteJobs+"{uuid}/cancel/", f.authed(f.cancelJob))
	mux.HandleFunc("POST "+protocol.RouteJobs+"{uuid}/stop/", f.authed(f.stopJob))
	mux.HandleFunc("POST "+protocol.RouteJobs+"{uuid}/volumes/", f.authed(f.volumeMessage))
	mux.HandleFunc("POST "+protocol.RouteJobs+"{uuid}/pairs/", f.authed(f.reportPair))
	mux.HandleFunc("GET "+protocol.RouteJobs+"{uuid}/events", f.authed(f.jobEvents))
	mux.HandleFunc("GET "+protocol.RouteScores, f.authed(f.scores))
	return mux
}

// serveValidator handles a validator's session.
func (f *Facilitator) serveValidator(w http.ResponseWriter, r *http.Request) {
	conn, first, err := wsconn.AcceptAuth(w, r, f.log)
	if err != nil {
		return
	}
	ctx := r.Context()
	auth, ok := first.(*protocol.V0AuthenticationRequest)
	var hotkey string
	if !ok {
		err = fmt.Errorf("first message must be V0AuthenticationRequest, got %s", first.MessageType())
	} else {
		hotkey, err = wsconn.CheckFacilitatorAuth(auth, f.cfg.AllowValidator, f.guard, time.Now())
	}
	if err != nil {
		f.log.Warn("validator refused", "err", err)
		conn.Send(ctx, &protocol.Response{Status: "error", Errors: []protocol.ResponseError{{Msg: err.Error(), Type: "authentication"}}})
		conn.CloseWith("unauthorized")
		return
	}
	if err := conn.Send(ctx, &protocol.Response{Status: "success"}); err != nil {
		return
	}
	vc := &validatorConn{hotkey: hotkey, conn: conn}
	f.mu.Lock()
	f.validators[hotkey] = vc
	f.mu.Unlock()
	f.log.Info("validator connected", "validator", hotkey)
	f.kick()
	defer func() {
		f.mu.Lock()
		if f.validators[hotkey] == vc {
			delete(f.validators, hotkey)
		}
		f.mu.Unlock()
		f.log.Info("validator disconnected", "validator", hotkey)
	}()
	for {
		m, err := conn.Recv(ctx)
		if err != nil {
			return
		}
		switch m := m.(type) {
		case *protocol.V0JobStatusUpdate:
			err := f.statusUpdate(ctx, hotkey, m)
			resp := &protocol.Response{Status: "success"}
			if err != nil {
				f.log.Warn("status update refused", "job", m.UUID, "err", err)
				resp = &protocol.Response{Status: "error", Errors: []protocol.ResponseError{{Msg: err.Error(), Type: "status_update"}}}
			}
			conn.Send(ctx, resp)
		case *protocol.V0JobVolumeResult:
			f.mu.Lock()
			ch := f.pending[m.MessageID]
			f.mu.Unlock()
			if ch != nil {
				select {
				case ch <- m:
				default:
				}
			}
			conn.Send(ctx, &protocol.Response{Status: "success"})
		case *protocol.V0ValidatorReport:
			resp := &protocol.Response{Status: "success"}
			if b, err := protocol.Encode(m); err != nil || f.cfg.Store.PutReport(ctx, hotkey, b) != nil {
				resp = &protocol.Response{Status: "error", Errors: []protocol.ResponseError{{Msg: "report not stored", Type: "report"}}}
			}
			conn.Send(ctx, resp)
		case *protocol.V0Heartbeat, *protocol.V0MachineSpecsUpdate:
			conn.Send(ctx, &protocol.Response{Status: "success"})
		default:
			conn.Send(ctx, &protocol.GenericError{Details: "unexpected message " + m.MessageType()})
		}
	}
}

// statusUpdate records a validator's report on a job it was given.
func (f *Facilitator) statusUpdate(ctx context.Context, validator string, m *protocol.V0JobStatusUpdate) error {
	j, err := f.cfg.Store.Job(ctx, m.UUID)
	if err != nil {
		return err
	}
	if j.ValidatorHotkey != validator {
		return fmt.Errorf("job %s was not given to validator %s", m.UUID, validator)
	}
	if j.Status.Terminal() {
		return nil // already ended (e.g. cancelled here); later news changes nothing
	}
	e := protocol.StatusEntry{Status: m.Status, CreatedAt: time.Now().UTC(), Metadata: m.Metadata}
	if err := f.cfg.Store.AddStatus(ctx, m.UUID, e); err != nil {
		return err
	}
	if m.Metadata != nil && m.Metadata.MinerHotkey != "" && j.MinerHotkey == "" {
		f.cfg.Store.SetAssignment(ctx, m.UUID, validator, m.Metadata.MinerHotkey)
	}
	f.publish(m.UUID, e)
	return nil
}

// kick wakes the dispatcher.
func (f *Facilitator) kick() {
	select {
	case f.dispatch <- struct{}{}:
	default:
	}
}

// dispatchLoop hands jobs not yet given to a validator to a connected one:
// jobs accepted while no validator was connected wait here, durably. A job a
// validator has not acknowledged in time is given again.
func (f *Facilitator) dispatchLoop(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.dispatch:
		case <-t.C:
		}
		jobs, err := f.cfg.Store.Unfinished(ctx)
		if err != nil {
			f.log.Error("dispatch: list jobs", "err", err)
			continue
		}
		for _, j := range jobs {
			if j.Status != protocol.StatusSent {
				continue
			}
			if j.ValidatorHotkey == "" || time.Since(j.UpdatedAt) > f.cfg.Redispatch {
				f.send(ctx, j)
			}
		}
		f.forwardPairs(ctx)
	}
}

func (f *Facilitator) pickValidator(target string) *validatorConn {
	f.mu.Lock()
	defer f.mu.Unlock()
	if target != "" {
		return f.validators[target]
	}
	all := make([]*validatorConn, 0, len(f.validators))
	for _, v := range f.validators {
		all = append(all, v)
	}
	if len(all) == 0 {
		return nil
	}
	return all[rand.IntN(len(all))]
}

func (f *Facilitator) send(ctx context.Context, j store.JobRecord) {
	target := j.Spec.TargetValidatorHotkey
	if j.ValidatorHotkey != "" {
		// Given before and not acknowledged: only the same validator gets it
		// again (it ignores a job it has), so the job never runs twice.
		target = j.ValidatorHotkey
	}
	vc := f.pickValidator(target)
	if vc == nil {
		return
	}
	if err := f.cfg.Store.SetAssignment(ctx, j.UUID, vc.hotkey, ""); err != nil {
		f.log.Error("dispatch: assign", "job", j.UUID, "err", err)
		return
	}
	sg := j.Signature
	if err := vc.conn.Send(ctx, &protocol.V2JobRequest{UUID: j.UUID, JobSpec: j.Spec, Signature: &sg}); err != nil {
		f.log.Warn("dispatch: send failed; will retry", "job", j.UUID, "err", err)
		f.cfg.Store.SetAssignment(ctx, j.UUID, "", "")
		return
	}
	f.log.Info("job sent to validator", "job", j.UUID, "validator", vc.hotkey)
}

func (f *Facilitator) subscribe(uuid string) chan protocol.StatusEntry {
	ch := make(chan protocol.StatusEntry, 32)
	f.mu.Lock()
	if f.watchers[uuid] == nil {
		f.watchers[uuid] = map[chan protocol.StatusEntry]struct{}{}
	}
	f.watchers[uuid][ch] = struct{}{}
	f.mu.Unlock()
	return ch
}

func (f *Facilitator) unsubscribe(uuid string, ch chan protocol.StatusEntry) {
	f.mu.Lock()
	delete(f.watchers[uuid], ch)
	if len(f.watchers[uuid]) == 0 {
		delete(f.watchers, uuid)
	}
	f.mu.Unlock()
}

func (f *Facilitator) publish(uuid string, e protocol.StatusEntry) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.watchers[uuid] {
		select {
		case ch <- e:
		default: // a slow watcher re-reads the history when it catches up
		}
	}
}

// forwardPairs passes reported streaming pairs on to the validators of their
// jobs; pairs wait here while a validator is away.
func (f *Facilitator) forwardPairs(ctx context.Context) {
	f.mu.Lock()
	vcs := make([]*validatorConn, 0, len(f.validators))
	for _, vc := range f.validators {
		vcs = append(vcs, vc)
	}
	f.mu.Unlock()
	for _, vc := range vcs {
		pairs, ids, err := f.cfg.Store.UnforwardedPairs(ctx, vc.hotkey, 100)
		if err != nil {
			f.log.Error("forward pairs", "err", err)
			return
		}
		for i, p := range pairs {
			m := &protocol.V0StreamPairReport{UUID: p.JobUUID, Image: p.Image, MinerHotkey: p.MinerHotkey, Proof: p.Proof, Pair: p.Pair}
			if err := vc.conn.Send(ctx, m); err != nil {
				break
			}
			f.cfg.Store.MarkForwarded(ctx, ids[i])
		}
	}
}
