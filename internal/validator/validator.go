// Package validator runs a validator: it keeps sessions with the miners of
// the metagraph, takes client jobs from the facilitator, verifies the
// client's signature, routes each job to a miner with a free executor, drives
// it through its stages with a deadline each, retries elsewhere when a miner
// declines or is lost before execution, and signs the job's receipts.
package validator

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/synthetic"
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
}

// Timing holds the validator's stage deadlines (upstream defaults).
type Timing struct {
	Reserve time.Duration // offer → accept/decline
	// SpinUp is each class's executor spin-up time (0 for always_on classes).
	SpinUp       map[string]time.Duration
	StartupSlack time.Duration // added to spin-up for the executor to start
	Leeway       time.Duration // one allowance for the whole job
}

// DefaultTiming returns upstream's defaults.
func DefaultTiming() Timing {
	return Timing{Reserve: 7 * time.Second, StartupSlack: 5 * time.Second, Leeway: 5 * time.Second,
		SpinUp: map[string]time.Duration{protocol.ClassSpinUp4minGPU24: 4 * time.Minute}}
}

// Config configures a validator.
type Config struct {
	Hotkey *sig.Hotkey
	// FacilitatorURL is the facilitator's WebSocket ("ws://host:port/ws/v0/"); empty runs without one.
	FacilitatorURL string
	Metagraph      chain.Source
	Refresh        time.Duration
	Store          Store
	// MaxAttempts bounds how many miners one job is offered to.
	MaxAttempts int
	// QueueTimeout is how long a job waits for an executor while the
	// miners that have the class are busy (default 30s).
	QueueTimeout time.Duration
	Timing       Timing
	// AllowPull lets executors pull images that are not present.
	AllowPull bool
	// MaxJobAge refuses client signatures older than this (replays).
	MaxJobAge time.Duration
	// Synthetic configures synthetic rounds, scores and weights.
	Synthetic SyntheticConfig
	// StreamingWhitelist maps the images streaming jobs may use to their
	// pinned digests (image id or repo digest); others are refused.
	StreamingWhitelist map[string]string
	// Validation configures the validation of streaming jobs.
	Validation ValidationConfig
	// Started, if set, is called with the running validator (to run rounds on demand).
	Started func(*Validator)
	Log     *slog.Logger
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
	}
	return nil
}

// Validator is a running validator.
type Validator struct {
	cfg  Config
	log  *slog.Logger
	life context.Context
	wg   sync.WaitGroup

	mu     sync.Mutex
	miners map[string]*minerClient
	cancel map[string]context.CancelCauseFunc // running jobs
	relay  map[string]func(protocol.Message)  // running jobs: send to their miner

	out *outbox

	roundMu       sync.Mutex // one round at a time
	validateMu    sync.Mutex // one validation window at a time
	rounds        int64
	lastCycle     time.Time        // end of the last scored cycle
	trusted       *minerClient     // the validator's own miner, for validation windows
	receiptCursor map[string]int64 // by miner: last receipt id fetched
}

// Run serves until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Refresh == 0 {
		cfg.Refresh = time.Minute
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = 3
	}
	if cfg.Timing.Reserve == 0 {
		cfg.Timing = DefaultTiming()
	}
	if cfg.QueueTimeout == 0 {
		cfg.QueueTimeout = 30 * time.Second
	}
	if cfg.MaxJobAge == 0 {
		cfg.MaxJobAge = 10 * time.Minute
	}
	if cfg.Synthetic.Params == nil {
		cfg.Synthetic.Params = synthetic.DefaultParams()
	}
	cfg.Validation.defaults()
	if len(cfg.Synthetic.Generators) == 0 {
		cfg.Synthetic.Generators = synthetic.Generators()
	}
	v := &Validator{cfg: cfg, log: cfg.Log.With("role", "validator"), life: ctx,
		miners: map[string]*minerClient{}, cancel: map[string]context.CancelCauseFunc{}, relay: map[string]func(protocol.Message){}, receiptCursor: map[string]int64{}, lastCycle: time.Now()}
	v.out = newOutbox(cfg.Store, v.log)
	v.recover(ctx)
	v.wg.Go(func() { v.refreshLoop(ctx) })
	if cfg.Synthetic.Every > 0 {
		v.wg.Go(func() { v.roundLoop(ctx) })
	}
	if cfg.Validation.Every > 0 && cfg.Validation.TrustedMiner != nil {
		v.wg.Go(func() { v.validationLoop(ctx) })
	}
	if cfg.Validation.CanaryEvery > 0 && len(cfg.Validation.Canaries) > 0 {
		v.wg.Go(func() { v.canaryLoop(ctx) })
	}
	if cfg.FacilitatorURL != "" {
		v.wg.Go(func() { v.facilitatorLoop(ctx) })
	}
	v.log.Info("validator running", "hotkey", cfg.Hotkey.SS58())
	if cfg.Started != nil {
		cfg.Started(v)
	}
	<-ctx.Done()
	v.wg.Wait()
	return nil
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

func (v *Validator) refreshLoop(ctx context.Context) {
	t := time.NewTicker(v.cfg.Refresh)
	defer t.Stop()
	for {
		v.refresh(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// refresh reloads the metagraph and connects to every miner in it.
func (v *Validator) refresh(ctx context.Context) {
	mg, err := v.cfg.Metagraph.Metagraph(ctx)
	if err != nil {
		v.log.Warn("metagraph refresh failed", "err", err)
		return
	}
	var wg sync.WaitGroup
	for _, n := range mg.Miners() {
		if n.Hotkey == v.cfg.Hotkey.SS58() {
			continue
		}
		v.mu.Lock()
		mc := v.miners[n.Hotkey]
		if mc == nil || mc.neuron.AxonInfo != n.AxonInfo {
			mc = newMinerClient(n, v.log)
			v.miners[n.Hotkey] = mc
		}
		v.mu.Unlock()
		wg.Go(func() {
			if err := mc.connect(ctx, v.cfg.Hotkey, &v.wg, v.life); err != nil {
				v.log.Debug("miner not reachable", "miner", n.Hotkey, "err", err)
			}
		})
	}
	wg.Wait()
}

// pick chooses a connected miner with a free executor of class, not in tried:
// the one with the most free executors, ties broken at random. offered says
// whether any such miner has the class at all (busy or not).
func (v *Validator) pick(ctx context.Context, class string, tried map[string]bool) (_ *minerClient, offered bool) {
	v.mu.Lock()
	var all []*minerClient
	for hk, mc := range v.miners {
		if !tried[hk] {
			all = append(all, mc)
		}
	}
	v.mu.Unlock()
	var cands []*minerClient
	best := 0
	for _, mc := range all {
		if err := mc.connect(ctx, v.cfg.Hotkey, &v.wg, v.life); err != nil {
			continue
		}
		if mc.offers(class) {
			offered = true
		}
		switch free := mc.free(class); {
		case free <= 0 || free < best:
		case free > best:
			best, cands = free, []*minerClient{mc}
		default:
			cands = append(cands, mc)
		}
	}
	if len(cands) == 0 {
		return nil, offered
	}
	return cands[rand.IntN(len(cands))], true
}

// Cancel stops a running job; it reports whether the job was running here.
func (v *Validator) Cancel(uuid string) bool {
	v.mu.Lock()
	c := v.cancel[uuid]
	v.mu.Unlock()
	if c != nil {
		c(errCancelled)
	}
	return c != nil
}

var errCancelled = errors.New("cancelled by the client")

// Stop ends a running streaming job normally; it reports whether the job was running here.
func (v *Validator) Stop(uuid string) bool {
	return v.toMiner(uuid, &protocol.V0StopJobRequest{JobUUID: uuid})
}

// toMiner sends m to the miner running job uuid; false if none runs it here.
func (v *Validator) toMiner(uuid string, m protocol.Message) bool {
	v.mu.Lock()
	f := v.relay[uuid]
	v.mu.Unlock()
	if f != nil {
		f(m)
	}
	return f != nil
}

func (v *Validator) setStop(uuid string, f func(protocol.Message)) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if f == nil {
		delete(v.relay, uuid)
	} else {
		v.relay[uuid] = f
	}
}

// setStatus records a status and queues it for the facilitator.
func (v *Validator) setStatus(ctx context.Context, uuid string, s protocol.JobStatus, meta *protocol.StatusMetadata) {
	e := protocol.StatusEntry{Status: s, CreatedAt: time.Now().UTC(), Metadata: meta}
	if err := v.cfg.Store.AddStatus(context.WithoutCancel(ctx), uuid, e); err != nil {
		v.log.Error("store status", "job", uuid, "status", s, "err", err)
	}
	v.out.push(&protocol.V0JobStatusUpdate{UUID: uuid, Status: s, Metadata: meta})
}
