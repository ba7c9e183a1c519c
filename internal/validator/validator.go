// Package validator is the validator: a value that keeps sessions with the
// miners of the metagraph, takes client jobs from the facilitator, and
// scores miners. New builds it, Run runs it, Handler serves its health;
// callers hold the value and call its methods (Round, OpenWindow, Canary,
// PairsWaiting, CancelJob, StopJob).
//
// The work is done in rooms below it, each testable without sockets:
//
//	route/     the miner pool: sessions, manifests, picking, the wait for executors
//	jobrun/    one job: its stages as a state machine, and the driver that retries
//	rounds/    synthetic cycles, scored by scoring/
//	scoring/   Score, a pure function of the cycle's evidence
//	receipts/  the receipts miners countersigned
//	windows/   streaming validation windows and canaries
//
// This package wires them and carries the facilitator link: a durable
// outbox, the session, and job intake (the client's signature first).
package validator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/metrics"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/synthetic"
	"github.com/horde-compute/horde/internal/validator/jobrun"
	"github.com/horde-compute/horde/internal/validator/receipts"
	"github.com/horde-compute/horde/internal/validator/rounds"
	"github.com/horde-compute/horde/internal/validator/route"
	"github.com/horde-compute/horde/internal/validator/scoring"
	"github.com/horde-compute/horde/internal/validator/windows"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// Store is what the validator keeps.
type Store interface {
	store.Jobs
	store.Receipts
	store.Outbox
	store.Scores
	store.Pairs
	store.Validations
	store.Ledger
	store.Excuses
}

// The rooms' types, as the validator's callers name them.
type (
	// Timing holds the validator's stage deadlines.
	Timing = jobrun.Timing
	// SyntheticConfig configures synthetic rounds, scores and weights.
	SyntheticConfig = rounds.Config
	// Report is the outcome of one round.
	Report = rounds.Report
	// ClassResult summarises a miner's synthetic jobs of one class in a cycle.
	ClassResult = scoring.ClassResult
	// ScoreDetails is what a miner's score rests on.
	ScoreDetails = scoring.Details
	// ValidationConfig configures the validation of streaming jobs.
	ValidationConfig = windows.Config
	// CanarySpec is what a canary sends to an image's service.
	CanarySpec = windows.CanarySpec
	// PairVerdict is the judgement of one replayed pair.
	PairVerdict = windows.PairVerdict
	// WindowReport is what one validation window did and found.
	WindowReport = windows.WindowReport
)

// ErrNoPairs is returned when an image has no pairs waiting for validation.
var ErrNoPairs = windows.ErrNoPairs

// DefaultTiming returns upstream's stage deadlines.
func DefaultTiming() Timing { return jobrun.DefaultTiming() }

// Config configures a validator.
type Config struct {
	Hotkey *sig.Hotkey
	// FacilitatorURL is the facilitator's WebSocket ("ws://host:port/ws/v0/"); empty runs without one.
	FacilitatorURL string
	// RequireHordeFacilitator refuses a facilitator that does not offer
	// horde's replay-proof auth (protocol.CapAuthV1) instead of sending it
	// upstream's, which anyone who sees it can replay.
	RequireHordeFacilitator bool
	Metagraph               chain.Source
	// Refresh is how often the metagraph is reloaded (default 1m).
	Refresh time.Duration
	Store   Store
	// MaxAttempts bounds how many miners one job is offered to (default 3).
	MaxAttempts int
	// QueueTimeout is how long a job waits for an executor while the
	// miners that have the class are busy (default 30s).
	QueueTimeout time.Duration
	Timing       Timing
	// AllowPull lets executors pull images that are not present.
	AllowPull bool
	// Upstream makes the validator speak upstream ComputeHorde's protocol
	// only, whatever its peers advertise: no horde field or message to
	// miners, receipts read from pages, no capability offered to the
	// facilitator (which then gets upstream's auth: not with
	// RequireHordeFacilitator).
	Upstream bool
	// MaxJobAge refuses client signatures older than this (replays; default 10m).
	MaxJobAge time.Duration
	// Synthetic configures synthetic rounds, scores and weights.
	Synthetic SyntheticConfig
	// StreamingWhitelist maps the images streaming jobs may use to their
	// pinned digests (image id or repo digest); others are refused.
	StreamingWhitelist map[string]string
	// Validation configures the validation of streaming jobs.
	Validation ValidationConfig
	Log        *slog.Logger
	// Metrics is where the validator's metrics are registered (nil:
	// nowhere). When it is also a prometheus.Gatherer (a
	// *prometheus.Registry), Handler serves it at GET /metrics.
	Metrics prometheus.Registerer
}

// Validate checks the config, naming the bad field.
func (c *Config) Validate() error {
	switch {
	case c.Hotkey == nil:
		return errors.New("validator config: Hotkey is required")
	case c.Metagraph == nil:
		return errors.New("validator config: Metagraph is required")
	case c.Store == nil:
		return errors.New("validator config: Store is required")
	case c.MaxAttempts < 0:
		return errors.New("validator config: MaxAttempts must not be negative")
	case c.Refresh < 0 || c.QueueTimeout < 0 || c.MaxJobAge < 0:
		return errors.New("validator config: Refresh, QueueTimeout and MaxJobAge must not be negative")
	case c.Validation.Sample < 0 || c.Validation.Sample > 1:
		return errors.New("validator config: Validation.Sample must be within [0, 1]")
	}
	return nil
}

func (c *Config) defaults() {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Refresh == 0 {
		c.Refresh = time.Minute
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 3
	}
	if c.Timing.Reserve == 0 {
		c.Timing = DefaultTiming()
	}
	if c.QueueTimeout == 0 {
		c.QueueTimeout = 30 * time.Second
	}
	if c.MaxJobAge == 0 {
		c.MaxJobAge = 10 * time.Minute
	}
	if c.Synthetic.Params == nil {
		c.Synthetic.Params = synthetic.DefaultParams()
	}
	if len(c.Synthetic.Generators) == 0 {
		c.Synthetic.Generators = synthetic.Generators()
	}
	c.Validation.Defaults()
}

// Validator is one validator. Its methods may be called while Run runs.
type Validator struct {
	cfg     Config
	log     *slog.Logger
	pool    *route.Pool
	out     *outbox
	driver  *jobrun.Driver
	rounds  *rounds.Rounds
	windows *windows.Windows
	metrics *metrics.Validator
	dial    func(ctx context.Context, url string) (conn, error) // the facilitator

	// tests is held (a token in it) by a synthetic round, and by the
	// canaries: the validator's own streaming jobs never compete with its
	// rounds for the same executors (a canary would be declined as busy,
	// or make the round's jobs be).
	tests chan struct{}

	running       atomic.Bool
	facilitatorUp atomic.Bool
	jobs          sync.WaitGroup // job drivers, waited for by Run

	mu     sync.Mutex
	cancel map[string]context.CancelCauseFunc // running jobs
	// sentStatus are the (job, status) pairs sent to an upstream facilitator.
	sentStatus map[string]bool
}

// transport is how the validator reaches the world; zero fields are the
// real thing (tests put in-memory ones in).
type transport struct {
	miners      route.Dialer
	receipts    *http.Client
	facilitator func(ctx context.Context, url string) (conn, error)
	streams     func(*client.Stream) (windows.Caller, error)
}

// New checks cfg, fills in its defaults and returns the validator. It
// starts nothing: Run does.
func New(cfg Config) (*Validator, error) { return newValidator(cfg, transport{}) }

func newValidator(cfg Config, t transport) (*Validator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.defaults()
	log := cfg.Log.With("role", "validator")
	if t.miners == nil {
		t.miners = route.WSDialer{Hotkey: cfg.Hotkey, Log: log}
	}
	if t.facilitator == nil {
		caps := protocol.FacilitatorCapabilities
		if cfg.Upstream {
			caps = nil
		}
		t.facilitator = dialFacilitator(cfg.Hotkey, caps, cfg.RequireHordeFacilitator, log)
	}
	v := &Validator{cfg: cfg, log: log, dial: t.facilitator, cancel: map[string]context.CancelCauseFunc{}, tests: make(chan struct{}, 1),
		pool: route.NewPool(t.miners, cfg.Hotkey.SS58(), log), out: newOutbox(cfg.Store, log), metrics: metrics.NewValidator(cfg.Metrics)}
	v.metrics.Watch(metrics.ValidatorGauges{Miners: v.pool.Connected, Executors: v.pool.Executors, Outbox: v.outboxDepth,
		Facilitator: v.facilitatorUp.Load})
	if tm := cfg.Validation.TrustedMiner; tm != nil {
		v.pool.Pin(*tm)
	}
	run := jobrun.Params{Hotkey: cfg.Hotkey, Timing: cfg.Timing, AllowPull: cfg.AllowPull, Digests: cfg.StreamingWhitelist, Receipts: cfg.Store, Log: log,
		Upstream: cfg.Upstream, Metrics: v.metrics}
	v.driver = &jobrun.Driver{Params: run, Pool: v.pool, MaxAttempts: cfg.MaxAttempts, QueueTimeout: cfg.QueueTimeout}
	m := miners{v}
	v.rounds = rounds.New(rounds.Deps{Config: cfg.Synthetic, Run: run, Miners: m, Store: cfg.Store, Out: withWindows{v}, Metagraph: cfg.Metagraph, Log: log,
		Receipts: &receipts.Collector{Validator: cfg.Hotkey.SS58(), Store: cfg.Store, HTTP: t.receipts, Log: log, PagesOnly: cfg.Upstream, Metrics: v.metrics}})
	v.windows = windows.New(windows.Deps{Config: cfg.Validation, Self: cfg.Hotkey.SS58(), Whitelist: cfg.StreamingWhitelist,
		Run: run, Miners: m, Store: cfg.Store, Connect: t.streams, Log: log, Metrics: v.metrics})
	return v, nil
}

// Run serves until ctx ends: it fails the jobs a previous run left
// unfinished, then keeps the metagraph's miners connected, runs the
// configured loops (rounds, validation windows, canaries) and the
// facilitator link. It returns when every loop and job has ended.
func (v *Validator) Run(ctx context.Context) error {
	if !v.running.CompareAndSwap(false, true) {
		return errors.New("validator: Run called twice")
	}
	defer v.pool.Close()
	v.recover(ctx)
	v.restoreBlacklist(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { every(ctx, v.cfg.Refresh, true, func() { v.refresh(ctx) }) })
	if d := v.cfg.Synthetic.Every; d > 0 {
		wg.Go(func() {
			every(ctx, d, false, func() {
				if _, err := v.Round(ctx); err != nil && ctx.Err() == nil {
					v.log.Error("synthetic round failed", "err", err)
				}
			})
		})
	}
	if d := v.cfg.Validation.Every; d > 0 && v.cfg.Validation.TrustedMiner != nil {
		wg.Go(func() { every(ctx, d, false, func() { v.windows.Due(ctx) }) })
	}
	if d := v.cfg.Validation.CanaryEvery; d > 0 && len(v.cfg.Validation.Canaries) > 0 {
		// Half a period after the rounds' ticks when the periods are equal
		// (as in horde dev): a canary's executor is free again by the next round.
		wg.Go(func() {
			if sleep(ctx, d/2) != nil {
				return
			}
			every(ctx, d, false, func() {
				if v.lockTests(ctx) == nil {
					defer v.unlockTests()
					v.windows.Canaries(ctx)
				}
			})
		})
	}
	if v.cfg.FacilitatorURL != "" {
		wg.Go(func() { v.facilitatorLoop(ctx) })
	}
	v.log.Info("validator running", "hotkey", v.cfg.Hotkey.SS58())
	<-ctx.Done()
	wg.Wait()
	v.jobs.Wait()
	return nil
}

// Run builds a validator from cfg and runs it until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	v, err := New(cfg)
	if err != nil {
		return err
	}
	return v.Run(ctx)
}

// Handler serves the validator's health: GET /healthz.
func (v *Validator) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"status": "ok", "hotkey": v.cfg.Hotkey.SS58(), "running": v.running.Load(),
			"miners_connected": v.pool.Connected(), "facilitator_connected": v.facilitatorUp.Load()})
	})
	if g, ok := v.cfg.Metrics.(prometheus.Gatherer); ok {
		mux.Handle("GET /metrics", metrics.Handler(g))
	}
	return mux
}

// Round runs one synthetic cycle now (see rounds.Rounds.Round), once no
// canary runs.
func (v *Validator) Round(ctx context.Context) (*Report, error) {
	if err := v.lockTests(ctx); err != nil {
		return nil, fmt.Errorf("round: %w", err)
	}
	defer v.unlockTests()
	start := time.Now()
	rep, err := v.rounds.Round(ctx)
	v.metrics.Round(err == nil, time.Since(start))
	if rep != nil {
		for _, d := range rep.Details {
			for class, cr := range d.Classes {
				for result, n := range map[string]int{"passed": cr.Passed, "failed": cr.Failed, "excused": cr.Excused} {
					for range n {
						v.metrics.Synthetic(class, result)
					}
				}
			}
		}
	}
	return rep, err
}

// withWindows queues messages for the facilitator, adding the latest
// validation windows to each score report (for operators' dashboards).
type withWindows struct{ v *Validator }

// reportWindows is how many of the latest windows a report carries.
const reportWindows = 20

// maxReportWindows bounds the windows' bytes in a report.
const maxReportWindows = 1 << 20

func (o withWindows) Push(m protocol.Message) {
	if rep, ok := m.(*protocol.V0ValidatorReport); ok && rep.Windows == nil {
		if ws, err := o.v.cfg.Store.Windows(context.Background(), reportWindows); err != nil {
			o.v.log.Warn("report: read validation windows", "err", err)
		} else if len(ws) > 0 {
			out := make([]protocol.ReportedWindow, len(ws))
			for i, w := range ws {
				out[i] = protocol.ReportedWindow{ID: w.ID, Image: w.Image, At: w.At, Body: w.Body}
			}
			rep.Windows, _ = json.Marshal(out)
			for len(rep.Windows) > maxReportWindows && len(out) > 1 { // keep the report well under a frame's bound
				out = out[:len(out)/2]
				rep.Windows, _ = json.Marshal(out)
			}
		}
	}
	o.v.out.Push(m)
}

// outboxDepth is how many messages wait for the facilitator (up to 10000).
func (v *Validator) outboxDepth() int {
	items, err := v.cfg.Store.PeekOutbox(context.Background(), 10000)
	if err != nil {
		return 0
	}
	return len(items)
}

// lockTests waits until no round or canary runs, or ctx ends.
func (v *Validator) lockTests(ctx context.Context) error {
	select {
	case v.tests <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (v *Validator) unlockTests() { <-v.tests }

// OpenWindow opens a validation window for image now (see windows.Windows.Open).
func (v *Validator) OpenWindow(ctx context.Context, image string) (*WindowReport, error) {
	return v.windows.Open(ctx, image)
}

// Canary sends the validator's own requests to a streaming job of image and
// keeps the pairs, once no round runs; it returns how many it kept.
func (v *Validator) Canary(ctx context.Context, image string, requests [][]byte, path string) (int, error) {
	if err := v.lockTests(ctx); err != nil {
		return 0, fmt.Errorf("canary: %w", err)
	}
	defer v.unlockTests()
	return v.windows.Canary(ctx, image, requests, path)
}

// PairsWaiting returns how many pairs of image wait for a validation window.
func (v *Validator) PairsWaiting(ctx context.Context, image string) (int, error) {
	return v.windows.PairsWaiting(ctx, image)
}

// CancelJob cancels a client's job running here; it reports whether it ran here.
func (v *Validator) CancelJob(uuid string) bool {
	v.mu.Lock()
	c := v.cancel[uuid]
	v.mu.Unlock()
	if c != nil {
		c(jobrun.ErrCancelled)
	}
	return c != nil
}

// StopJob ends a serving streaming job normally (it uploads and reports as
// usual); it reports whether the job serves here.
func (v *Validator) StopJob(uuid string) bool {
	return v.driver.Relay(context.Background(), uuid, &protocol.V0StopJobRequest{JobUUID: uuid})
}

// recover fails jobs a previous run left unfinished: their miners' sessions
// died with that run, so the result cannot be collected.
func (v *Validator) recover(ctx context.Context) {
	jobs, err := v.cfg.Store.Unfinished(ctx)
	if err != nil {
		v.log.Error("recover unfinished jobs", "err", err)
		return
	}
	for _, j := range jobs {
		v.setStatus(ctx, j.UUID, protocol.StatusHordeFailed, &protocol.StatusMetadata{HordeFailureDetails: &protocol.HordeFailureDetails{
			ReportedBy: protocol.ByValidator, Reason: protocol.HordeGenericError, Message: "validator restarted while the job ran"}})
	}
}

// refresh reloads the metagraph and syncs the pool with its miners.
func (v *Validator) refresh(ctx context.Context) ([]chain.Neuron, error) {
	mg, err := v.cfg.Metagraph.Metagraph(ctx)
	if err != nil {
		v.log.Warn("metagraph refresh failed", "err", err)
		return nil, err
	}
	var ns []chain.Neuron
	for _, n := range mg.Miners() {
		if n.Hotkey != v.cfg.Hotkey.SS58() {
			ns = append(ns, n)
		}
	}
	v.pool.Sync(ctx, ns)
	return ns, nil
}

// every calls f every d until ctx ends (first at once if now).
func every(ctx context.Context, d time.Duration, now bool, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	if now {
		f()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// miners is the pool as rounds and windows use it.
type miners struct{ v *Validator }

func (m miners) Refresh(ctx context.Context) ([]chain.Neuron, error) { return m.v.refresh(ctx) }

func (m miners) Connect(ctx context.Context, hotkey string) (map[string]int, error) {
	return m.v.pool.Connect(ctx, hotkey)
}

func (m miners) LeaseOn(hotkey, job, class string) (jobrun.Lease, error) {
	return m.v.pool.LeaseOn(hotkey, job, class)
}

func (m miners) Acquire(ctx context.Context, w jobrun.Want) (jobrun.Lease, error) {
	return m.v.pool.Acquire(ctx, w)
}

func (m miners) LeasePinned(ctx context.Context, hotkey, job, class string) (jobrun.Lease, error) {
	return m.v.pool.LeasePinned(ctx, hotkey, job, class)
}
