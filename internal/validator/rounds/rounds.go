// Package rounds runs the validator's cycles. Each cycle sends a synthetic
// job to every executor every miner claims, all at the same moment (one GPU
// cannot answer for many claims), checks and times the answers, accepts a
// busy miner's excuses only when they prove organic work, collects the
// receipts miners countersigned, and scores the cycle: scores are stored,
// weights set and reported.
package rounds

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/synthetic"
	"github.com/horde-compute/horde/internal/validator/jobrun"
	"github.com/horde-compute/horde/internal/validator/scoring"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
)

// Config configures the validator's synthetic rounds.
type Config struct {
	// Every is the cycle length: one round, one score and one weight setting
	// per cycle. Zero turns rounds off.
	Every time.Duration
	// Image is the synthetic job image (it must be present on executors).
	Image      string
	Params     map[string]synthetic.Params
	Generators []synthetic.Generator
	// Weights receives the weights each cycle; nil skips setting them.
	Weights chain.WeightSetter
	// Sequential tests one miner after another instead of all at once: for
	// dev stacks, where every miner shares this machine's CPUs.
	Sequential bool
}

// Report is the outcome of one round.
type Report struct {
	Cycle   int64                       `json:"cycle"`
	Started time.Time                   `json:"started"`
	Took    time.Duration               `json:"took"`
	Results []store.SyntheticResult     `json:"results"`
	Scores  []store.MinerScore          `json:"scores"`
	Details map[string]*scoring.Details `json:"-"`
}

// Miners is the validator's pool as rounds use it.
type Miners interface {
	// Refresh reloads the metagraph, syncs the pool with it and returns
	// its miners (the validator excluded).
	Refresh(ctx context.Context) ([]chain.Neuron, error)
	// Connect makes sure the session with a miner is up and returns its manifest.
	Connect(ctx context.Context, hotkey string) (map[string]int, error)
	// LeaseOn leases an executor of class on a connected miner, free or not.
	LeaseOn(hotkey, job, class string) (jobrun.Lease, error)
}

// Collector collects the receipts a miner countersigned; it returns why
// some were refused.
type Collector interface {
	Collect(ctx context.Context, n chain.Neuron) []string
}

// Store is what rounds keep and read.
type Store interface {
	PutSyntheticResult(ctx context.Context, r store.SyntheticResult) error
	ReceiptsStored(ctx context.Context, from, to time.Time) ([]receipt.Receipt, error)
	Cheats(ctx context.Context, since time.Time) ([]store.Cheat, error)
	PutScores(ctx context.Context, scores []store.MinerScore) error
}

// Outbox takes messages for the facilitator.
type Outbox interface {
	Push(m protocol.Message)
}

// Deps are what rounds work with.
type Deps struct {
	Config   Config
	Run      jobrun.Params // how synthetic jobs are run
	Miners   Miners
	Receipts Collector
	Store    Store
	Out      Outbox
	Log      *slog.Logger
}

// Rounds runs cycles, one at a time.
type Rounds struct {
	d   Deps
	log *slog.Logger

	mu        sync.Mutex
	rounds    int64
	lastCycle time.Time // end of the last scored cycle
}

// New returns rounds whose first cycle starts now. Config.Params and
// Config.Generators must be set.
func New(d Deps) *Rounds {
	log := d.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Rounds{d: d, log: log, lastCycle: time.Now()}
}

// Round runs one cycle: every executor every miner claims gets a job at the
// same moment; answers are checked and timed; receipts are fetched from the
// miners and verified; scores and weights follow.
func (r *Rounds) Round(ctx context.Context) (*Report, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	sc := r.d.Config
	start := time.Now().UTC()
	cycle := start.UnixMilli()
	rep := &Report{Cycle: cycle, Started: start, Details: map[string]*scoring.Details{}}
	log := r.log.With("cycle", cycle)

	miners, err := r.d.Miners.Refresh(ctx)
	if err != nil {
		return nil, fmt.Errorf("round: %w", err)
	}
	rng := rand.New(rand.NewPCG(uint64(start.UnixNano()), rand.Uint64()))
	gen := sc.Generators[int(r.rounds)%len(sc.Generators)]
	r.rounds++

	var mu sync.Mutex
	var wg sync.WaitGroup
	reachable := map[string]chain.Neuron{}
	for _, n := range miners {
		d := &scoring.Details{Classes: map[string]*scoring.ClassResult{}, ExecutorSeconds: map[string]float64{}, Receipts: []string{}}
		rep.Details[n.Hotkey] = d
		manifest, err := r.d.Miners.Connect(ctx, n.Hotkey)
		if err != nil {
			d.Note = "unreachable: no session with the miner"
			log.Info("miner unreachable this round", "miner", n.Hotkey, "err", err)
			continue
		}
		d.Reachable = true
		reachable[n.Hotkey] = n
		for class, count := range manifest {
			p, ok := sc.Params[class]
			if !ok || count <= 0 {
				continue
			}
			cr := &scoring.ClassResult{Claimed: count, ExpectedMS: p.Expected.Milliseconds()}
			d.Classes[class] = cr
			// All executors of the class at once: one GPU cannot answer for many claims.
			for range count {
				task := gen.Generate(p, rng)
				wg.Go(func() {
					res := r.synthetic(ctx, n.Hotkey, class, task, cycle)
					mu.Lock()
					defer mu.Unlock()
					rep.Results = append(rep.Results, res)
					cr.Sent++
					if res.Passed {
						cr.Passed++
					} else {
						cr.Failed++
						cr.Reasons = append(cr.Reasons, res.Reason)
					}
					cr.MaxTookMS = max(cr.MaxTookMS, res.TookMS)
				})
			}
		}
		if sc.Sequential {
			wg.Wait()
		}
	}
	wg.Wait()
	for _, res := range rep.Results {
		if err := r.d.Store.PutSyntheticResult(context.WithoutCancel(ctx), res); err != nil {
			log.Error("store synthetic result", "err", err)
		}
		if !res.Passed {
			log.Info("synthetic job failed", "miner", res.Miner, "class", res.Class, "job", res.JobUUID, "reason", res.Reason)
		}
	}

	// Receipts: fetch what the miners countersigned, verify, count once.
	for hk, n := range reachable {
		rep.Details[hk].RejectedReceipts = r.d.Receipts.Collect(ctx, n)
	}
	// The cycle covers everything since the last one: organic jobs count too.
	end := time.Now()
	out := scoring.Score(r.evidence(ctx, cycle, r.lastCycle, end, rep.Details))
	rep.Scores, rep.Details = out.Scores, out.Details
	r.lastCycle = end
	if err := r.d.Store.PutScores(context.WithoutCancel(ctx), rep.Scores); err != nil {
		log.Error("store scores", "err", err)
	}
	weights := map[string]float64{}
	for _, s := range rep.Scores {
		weights[s.Miner] = s.Weight
	}
	if sc.Weights != nil {
		if err := sc.Weights.SetWeights(ctx, weights); err != nil {
			log.Error("set weights", "err", err)
		}
	}
	if b, err := json.Marshal(rep.Scores); err == nil {
		r.d.Out.Push(&protocol.V0ValidatorReport{Cycle: cycle, At: time.Now().UTC(), Scores: b})
	}
	rep.Took = time.Since(start)
	log.Info("synthetic round done", "miners", len(rep.Details), "jobs", len(rep.Results), "took", rep.Took.Round(time.Millisecond))
	return rep, nil
}

// evidence gathers what scoring needs for the cycle [from, to).
func (r *Rounds) evidence(ctx context.Context, cycle int64, from, to time.Time, details map[string]*scoring.Details) scoring.Input {
	rs, err := r.d.Store.ReceiptsStored(ctx, from, to)
	if err != nil {
		r.log.Error("score: read receipts", "err", err)
	}
	cheats, err := r.d.Store.Cheats(ctx, from)
	if err != nil {
		r.log.Error("score: read cheats", "err", err)
	}
	weights := map[string]float64{}
	for class, p := range r.d.Config.Params {
		weights[class] = p.Weight
	}
	return scoring.Input{Cycle: cycle, From: from, At: time.Now().UTC(), Miners: details, Jobs: scoring.JobsFromReceipts(rs), Cheats: cheats, ClassWeights: weights}
}

// synthetic sends one synthetic job to miner and judges it.
func (r *Rounds) synthetic(ctx context.Context, miner, class string, task synthetic.Task, cycle int64) store.SyntheticResult {
	id := uuid.NewString()
	limit := int(math.Ceil((3 * task.Expected).Seconds()))
	spec := &protocol.JobSpec{ExecutorClass: class, DockerImage: r.d.Config.Image, Args: task.Args, ArtifactsDir: task.ArtifactsDir,
		DownloadTimeLimit: 30, ExecutionTimeLimit: max(limit, 1), UploadTimeLimit: 30}
	res := store.SyntheticResult{Cycle: cycle, Miner: miner, Class: class, JobUUID: id, Generator: task.Generator,
		ExpectedMS: task.Expected.Milliseconds(), At: time.Now().UTC()}
	var o jobrun.Outcome
	if lease, err := r.d.Miners.LeaseOn(miner, id, class); err != nil {
		o = jobrun.HordeFail(protocol.HordeMinerConnectionFailed, "miner session is down", true)
	} else {
		o = jobrun.New(r.d.Run, jobrun.Job{UUID: id, Spec: spec}, miner, lease, lease, silent{}).Execute(ctx)
		lease.Release(false)
	}
	if o.Meta != nil && o.Meta.Timings != nil {
		res.TookMS = o.Meta.Timings["validator:"+jobrun.StageExecute]
	}
	switch {
	case o.Status == protocol.StatusCompleted:
		out := synthetic.Result{Stdout: o.Meta.MinerResponse.DockerProcessStdout, Artifacts: o.Meta.MinerResponse.Artifacts}
		if err := task.Check(out); err != nil {
			res.Reason = err.Error()
		} else if took := time.Duration(res.TookMS) * time.Millisecond; took > task.Expected {
			res.Reason = fmt.Sprintf("too slow: executed in %s, the class allows %s", took, task.Expected.Round(time.Millisecond))
		} else {
			res.Passed = true
		}
	case o.Busy():
		if n := ValidExcuses(miner, class, o.Excuses, time.Now()); n > 0 {
			res.Passed, res.Reason = true, fmt.Sprintf("excused: busy with organic jobs (%d valid receipts)", n)
		} else {
			res.Reason = "declined as busy without valid excuses"
		}
	default:
		res.Reason = o.Reason("")
	}
	return res
}

// silent hears nothing: a synthetic job's statuses go nowhere.
type silent struct{}

func (silent) Status(protocol.JobStatus, *protocol.StatusMetadata) {}
func (silent) VolumeResult(*protocol.V0VolumeResult)               {}

// ValidExcuses counts the receipts that prove a busy miner's executors of
// class were taken by organic jobs at now: job-started receipts whose
// signature verifies, naming this miner and class, still within their ttl.
func ValidExcuses(miner, class string, excuses []json.RawMessage, now time.Time) int {
	n := 0
	for _, raw := range excuses {
		var r receipt.Receipt
		if json.Unmarshal(raw, &r) != nil || r.Type != receipt.JobStarted || r.Verify() != nil {
			continue
		}
		p, err := r.Decode()
		if err != nil {
			continue
		}
		sp := p.(*receipt.StartedPayload)
		if sp.MinerHotkey == miner && sp.ExecutorClass == class && sp.IsOrganic &&
			now.Sub(sp.Timestamp.Time) <= time.Duration(sp.TTL)*time.Second {
			n++
		}
	}
	return n
}
