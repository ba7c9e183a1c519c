// Package rounds runs the validator's cycles. Each cycle sends a synthetic
// job to every executor every miner claims, all at the same moment (one GPU
// cannot answer for many claims), checks and times the answers, judges a
// busy miner's excuses (package excuse: only a permitted validator's
// receipts of client work excuse, and never more executors than claimed),
// collects the receipts miners countersigned, and scores the cycle (package
// scoring) over every finished job no earlier cycle counted: scores and what
// each job was counted for are stored together, weights set and reported.
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
	"github.com/horde-compute/horde/internal/validator/excuse"
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
	// MinExcuseStake is the stake a validator needs for its receipts to
	// excuse a busy miner (default excuse.DefaultMinStake, as upstream).
	MinExcuseStake float64
	// MaxExcuseTTL is the longest ttl an excuse may carry, by class
	// (default excuse.DefaultMaxTTL).
	MaxExcuseTTL map[string]time.Duration
}

// Report is the outcome of one round.
type Report struct {
	Cycle   int64                       `json:"cycle"`
	Started time.Time                   `json:"started"`
	Took    time.Duration               `json:"took"`
	Results []store.SyntheticResult     `json:"results"`
	Scores  []store.MinerScore          `json:"scores"`
	Details map[string]*scoring.Details `json:"-"`
	// Excuses are the verdicts on busy miners' excuses.
	Excuses []store.ExcuseVerdict `json:"excuses,omitempty"`
	// Counted are the finished jobs this cycle counted, paid or not.
	Counted []store.Counted `json:"counted,omitempty"`
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
	PutExcuseVerdicts(ctx context.Context, vs []store.ExcuseVerdict) error
	ReceiptsForJob(ctx context.Context, jobUUID string) ([]receipt.Receipt, error)
	Uncounted(ctx context.Context) ([]store.Work, error)
	Cheats(ctx context.Context, since time.Time) ([]store.Cheat, error)
	LatestScores(ctx context.Context, n int) ([]store.MinerScore, error)
	PutCycle(ctx context.Context, scores []store.MinerScore, counted []store.Counted) error
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
	// Metagraph says which validators' receipts may excuse a busy miner
	// (nil: only this validator's own).
	Metagraph chain.Source
	Log       *slog.Logger
}

// Rounds runs cycles, one at a time.
type Rounds struct {
	d   Deps
	log *slog.Logger

	created time.Time

	mu        sync.Mutex
	rounds    int64
	lastCycle time.Time // end of the last scored cycle; zero: read it from the store
}

// New returns rounds. The first cycle starts where the last one stored
// ended, or now. Config.Params and Config.Generators must be set.
func New(d Deps) *Rounds {
	log := d.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Rounds{d: d, log: log, created: time.Now()}
}

// Round runs one cycle: every executor every miner claims gets a job at the
// same moment; answers are checked and timed and busy miners' excuses
// judged; receipts are fetched from the miners and verified; every finished
// job not counted before is counted; scores and weights follow.
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
	from := r.cycleStart(ctx)
	rng := rand.New(rand.NewPCG(uint64(start.UnixNano()), rand.Uint64()))
	gen := sc.Generators[int(r.rounds)%len(sc.Generators)]
	r.rounds++

	var mu sync.Mutex
	var wg sync.WaitGroup
	var attempts []attempt
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
			d.Classes[class] = &scoring.ClassResult{Claimed: count, ExpectedMS: p.Expected.Milliseconds()}
			// All executors of the class at once: one GPU cannot answer for many claims.
			for range count {
				task := gen.Generate(p, rng)
				wg.Go(func() {
					a := r.synthetic(ctx, n.Hotkey, class, task, cycle)
					mu.Lock()
					attempts = append(attempts, a)
					mu.Unlock()
				})
			}
		}
		if sc.Sequential {
			wg.Wait()
		}
	}
	wg.Wait()
	verdicts := r.judge(ctx, cycle, rep.Details, attempts)
	rep.Excuses = verdicts
	for _, a := range attempts {
		rep.Results = append(rep.Results, a.res)
		cr := rep.Details[a.res.Miner].Classes[a.res.Class]
		cr.Sent++
		switch {
		case a.excused:
			cr.Excused++
		case a.res.Passed:
			cr.Passed++
		default:
			cr.Failed++
			cr.Reasons = append(cr.Reasons, a.res.Reason)
		}
		cr.MaxTookMS = max(cr.MaxTookMS, a.res.TookMS)
		if err := r.d.Store.PutSyntheticResult(context.WithoutCancel(ctx), a.res); err != nil {
			log.Error("store synthetic result", "err", err)
		}
		if !a.res.Passed {
			log.Info("synthetic job failed", "miner", a.res.Miner, "class", a.res.Class, "job", a.res.JobUUID, "reason", a.res.Reason)
		}
	}
	if len(verdicts) > 0 {
		if err := r.d.Store.PutExcuseVerdicts(context.WithoutCancel(ctx), verdicts); err != nil {
			log.Error("store excuse verdicts", "err", err)
		}
	}

	// Receipts: fetch what the miners countersigned, verify, keep.
	for hk, n := range reachable {
		rep.Details[hk].RejectedReceipts = r.d.Receipts.Collect(ctx, n)
	}
	// The cycle counts every finished job no cycle counted before: organic
	// jobs, synthetic ones, and those of miners that were unreachable.
	end := time.Now().UTC()
	work, err := r.d.Store.Uncounted(ctx)
	if err != nil {
		return nil, fmt.Errorf("round: read the jobs to count: %w", err)
	}
	cheats, err := r.d.Store.Cheats(ctx, from)
	if err != nil {
		return nil, fmt.Errorf("round: read cheats: %w", err)
	}
	weights := map[string]float64{}
	for class, p := range sc.Params {
		weights[class] = p.Weight
	}
	out := scoring.Score(scoring.Input{Cycle: cycle, From: from, At: end, Miners: rep.Details,
		Jobs: scoring.Jobs(work), Cheats: cheats, ClassWeights: weights})
	rep.Scores, rep.Details, rep.Counted = out.Scores, out.Details, out.Counted
	if err := r.d.Store.PutCycle(context.WithoutCancel(ctx), rep.Scores, out.Counted); err != nil {
		return nil, fmt.Errorf("round: store the cycle: %w", err)
	}
	r.lastCycle = end
	if sc.Weights != nil {
		ws := map[string]float64{}
		for _, s := range rep.Scores {
			ws[s.Miner] = s.Weight
		}
		if err := sc.Weights.SetWeights(ctx, ws); err != nil {
			log.Error("set weights", "err", err)
		}
	}
	if b, err := json.Marshal(rep.Scores); err == nil {
		r.d.Out.Push(&protocol.V0ValidatorReport{Cycle: cycle, At: time.Now().UTC(), Scores: b})
	}
	rep.Took = time.Since(start)
	log.Info("synthetic round done", "miners", len(rep.Details), "jobs", len(rep.Results), "counted", len(out.Counted), "took", rep.Took.Round(time.Millisecond))
	return rep, nil
}

// cycleStart is where the cycle about to be scored starts: where the last
// one ended (as stored, after a restart), or when rounds were made.
func (r *Rounds) cycleStart(ctx context.Context) time.Time {
	if r.lastCycle.IsZero() {
		r.lastCycle = r.created
		if last, err := r.d.Store.LatestScores(ctx, 1); err != nil {
			r.log.Error("read the last cycle", "err", err)
		} else if len(last) > 0 {
			r.lastCycle = last[0].At
		}
	}
	return r.lastCycle
}

// attempt is one synthetic job of a round.
type attempt struct {
	res store.SyntheticResult
	// decline is set when the miner declined as busy.
	decline *excuse.Decline
	excused bool
}

type minerClass struct{ miner, class string }

// judge judges the busy declines of each miner and class together (they
// were offered at once): the excused ones pass, the others fail with the
// reason. It returns the verdict on every excuse.
func (r *Rounds) judge(ctx context.Context, cycle int64, details map[string]*scoring.Details, attempts []attempt) []store.ExcuseVerdict {
	busy := map[minerClass][]int{}
	for i, a := range attempts {
		if a.decline != nil {
			k := minerClass{a.res.Miner, a.res.Class}
			busy[k] = append(busy[k], i)
		}
	}
	if len(busy) == 0 {
		return nil
	}
	rules := r.rules(ctx)
	var out []store.ExcuseVerdict
	now := time.Now().UTC()
	for k, idx := range busy {
		ds := make([]excuse.Decline, len(idx))
		for i, ai := range idx {
			ds[i] = *attempts[ai].decline
		}
		j := rules.Judge(details[k.miner].Classes[k.class].Claimed, ds)
		for i, ai := range idx {
			a := &attempts[ai]
			if i < j.Excused {
				a.excused = true
				a.res.Passed, a.res.Reason = true, fmt.Sprintf("excused: busy with client work (%d valid excuses)", j.Valid)
			} else {
				a.res.Reason = fmt.Sprintf("declined as busy without valid excuses (%d valid for %d busy declines)", j.Valid, len(idx))
			}
		}
		for _, v := range j.Verdicts {
			sv := store.ExcuseVerdict{Cycle: cycle, Miner: k.miner, Class: k.class, DeclinedJob: v.Declined, Job: v.Job, Signer: v.Signer, Valid: v.Err == nil, At: now}
			if v.Err != nil {
				sv.Reason = v.Err.Error()
				r.log.Info("excuse refused", "miner", k.miner, "class", k.class, "declined", v.Declined, "job", v.Job, "signer", v.Signer, "why", sv.Reason)
			}
			out = append(out, sv)
		}
	}
	return out
}

// rules are the round's excuse rules: the metagraph as it is now, and this
// validator's own records of when its jobs ended.
func (r *Rounds) rules(ctx context.Context) excuse.Rules {
	sc := r.d.Config
	rules := excuse.Rules{MinStake: sc.MinExcuseStake, MaxTTL: sc.MaxExcuseTTL,
		Ended: func(job, miner string) (time.Time, bool) { return r.ended(ctx, job, miner) }}
	if r.d.Run.Hotkey != nil {
		rules.Self = r.d.Run.Hotkey.SS58()
	}
	if r.d.Metagraph != nil {
		mg, err := r.d.Metagraph.Metagraph(ctx)
		if err != nil {
			r.log.Warn("metagraph unreadable: only this validator's receipts excuse this round", "err", err)
			return rules
		}
		rules.Registered = make(map[string]excuse.Registration, len(mg.Neurons))
		for _, n := range mg.Neurons {
			rules.Registered[n.Hotkey] = excuse.Registration{ValidatorPermit: n.ValidatorPermit, Stake: n.Stake}
		}
	}
	return rules
}

// ended says when this validator signed the finished receipt of job on miner.
func (r *Rounds) ended(ctx context.Context, job, miner string) (time.Time, bool) {
	rs, err := r.d.Store.ReceiptsForJob(ctx, job)
	if err != nil {
		return time.Time{}, false
	}
	for _, rc := range rs {
		if rc.Type != receipt.JobFinished {
			continue
		}
		if p, err := rc.Decode(); err == nil && p.(*receipt.FinishedPayload).MinerHotkey == miner {
			return p.(*receipt.FinishedPayload).Timestamp.Time, true
		}
	}
	return time.Time{}, false
}

// synthetic sends one synthetic job to miner and judges it; a busy decline
// is judged with the others of the round (see judge).
func (r *Rounds) synthetic(ctx context.Context, miner, class string, task synthetic.Task, cycle int64) attempt {
	limit := int(math.Ceil((3 * task.Expected).Seconds()))
	spec := &protocol.JobSpec{ExecutorClass: class, DockerImage: r.d.Config.Image, Args: task.Args, ArtifactsDir: task.ArtifactsDir,
		DownloadTimeLimit: 30, ExecutionTimeLimit: max(limit, 1), UploadTimeLimit: 30}
	var id string
	var o jobrun.Outcome
	for try := 0; ; try++ {
		id = uuid.NewString()
		if lease, err := r.d.Miners.LeaseOn(miner, id, class); err != nil {
			o = jobrun.HordeFail(protocol.HordeMinerConnectionFailed, "miner session is down", true)
		} else {
			o = jobrun.New(r.d.Run, jobrun.Job{UUID: id, Spec: spec}, miner, lease, lease, silent{}).Execute(ctx)
			lease.Release(false)
		}
		// Busy only with this validator's own jobs that have ended (a
		// canary, a client's job): the miner is still freeing the executor.
		// Offer again shortly, so that the executor is tested.
		if !o.Busy() || try == teardownTries || !r.tearingDown(ctx, miner, o.Excuses) || sleep(ctx, teardownWait) != nil {
			break
		}
	}
	res := store.SyntheticResult{Cycle: cycle, Miner: miner, Class: class, JobUUID: id, Generator: task.Generator,
		ExpectedMS: task.Expected.Milliseconds(), At: time.Now().UTC()}
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
	case o.Busy() && o.Offered != nil:
		return attempt{res: res, decline: &excuse.Decline{JobUUID: id, Miner: miner, Class: class, At: o.Offered.Timestamp.Time,
			Synthetic: true, Receipts: o.Excuses}}
	default:
		res.Reason = o.Reason("")
	}
	return attempt{res: res}
}

// A synthetic offer declined as busy only with this validator's own jobs
// that have ended is made again after teardownWait, teardownTries times at
// most.
const (
	teardownWait  = 500 * time.Millisecond
	teardownTries = 20
)

// tearingDown says that every excuse is a receipt of this validator's own
// job on miner that has ended (and that there is one).
func (r *Rounds) tearingDown(ctx context.Context, miner string, excuses []json.RawMessage) bool {
	if len(excuses) == 0 || r.d.Run.Hotkey == nil {
		return false
	}
	for _, raw := range excuses {
		rc, err := excuse.Parse(raw)
		if err != nil || rc.Type != receipt.JobStarted {
			return false
		}
		p, err := rc.Decode()
		if err != nil || rc.Verify() != nil {
			return false
		}
		sp := p.(*receipt.StartedPayload)
		if sp.ValidatorHotkey != r.d.Run.Hotkey.SS58() || sp.MinerHotkey != miner {
			return false
		}
		if _, ended := r.ended(ctx, sp.JobUUID, miner); !ended {
			return false
		}
	}
	return true
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

// silent hears nothing: a synthetic job's statuses go nowhere.
type silent struct{}

func (silent) Status(protocol.JobStatus, *protocol.StatusMetadata) {}
func (silent) VolumeResult(*protocol.V0VolumeResult)               {}
