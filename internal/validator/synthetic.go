package validator

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/synthetic"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
)

// SyntheticConfig configures the validator's synthetic rounds.
type SyntheticConfig struct {
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

// ClassResult summarises a miner's synthetic jobs of one class in a cycle.
type ClassResult struct {
	Claimed    int      `json:"claimed"`
	Sent       int      `json:"sent"`
	Passed     int      `json:"passed"`
	Failed     int      `json:"failed"`
	Reasons    []string `json:"reasons,omitempty"`
	ExpectedMS int64    `json:"expected_ms"`
	MaxTookMS  int64    `json:"max_took_ms"`
	Gate       bool     `json:"gate"`
}

// ScoreDetails is what a miner's score rests on.
type ScoreDetails struct {
	Reachable bool                    `json:"reachable"`
	Note      string                  `json:"note,omitempty"`
	Classes   map[string]*ClassResult `json:"classes"`
	// Receipts are the jobs whose finished receipts (valid, both signatures) count.
	Receipts []string `json:"receipts"`
	// ExecutorSeconds is the sum of the counted jobs' time, by class.
	ExecutorSeconds map[string]float64 `json:"executor_seconds"`
	// RejectedReceipts explains receipts from the miner that were not counted.
	RejectedReceipts []string `json:"rejected_receipts,omitempty"`
}

// Report is the outcome of one round.
type Report struct {
	Cycle   int64                    `json:"cycle"`
	Started time.Time                `json:"started"`
	Took    time.Duration            `json:"took"`
	Results []store.SyntheticResult  `json:"results"`
	Scores  []store.MinerScore       `json:"scores"`
	Details map[string]*ScoreDetails `json:"-"`
}

// every calls f every d until ctx ends.
func every(ctx context.Context, d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

func (v *Validator) roundLoop(ctx context.Context) {
	every(ctx, v.cfg.Synthetic.Every, func() {
		if _, err := v.Round(ctx); err != nil && ctx.Err() == nil {
			v.log.Error("synthetic round failed", "err", err)
		}
	})
}

// Round runs one synthetic cycle: every executor every miner claims gets a
// job at the same moment; answers are checked and timed; receipts are fetched
// from the miners and verified; scores and weights follow.
func (v *Validator) Round(ctx context.Context) (*Report, error) {
	v.roundMu.Lock()
	defer v.roundMu.Unlock()
	sc := v.cfg.Synthetic
	start := time.Now().UTC()
	cycle := start.UnixMilli()
	rep := &Report{Cycle: cycle, Started: start, Details: map[string]*ScoreDetails{}}
	log := v.log.With("cycle", cycle)

	mg, err := v.cfg.Metagraph.Metagraph(ctx)
	if err != nil {
		return nil, fmt.Errorf("round: %w", err)
	}
	v.refresh(ctx)
	rng := rand.New(rand.NewPCG(uint64(start.UnixNano()), rand.Uint64()))
	gen := sc.Generators[int(v.rounds)%len(sc.Generators)]
	v.rounds++

	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range mg.Miners() {
		if n.Hotkey == v.cfg.Hotkey.SS58() {
			continue
		}
		d := &ScoreDetails{Classes: map[string]*ClassResult{}, ExecutorSeconds: map[string]float64{}, Receipts: []string{}}
		rep.Details[n.Hotkey] = d
		v.mu.Lock()
		mc := v.miners[n.Hotkey]
		v.mu.Unlock()
		if mc == nil || mc.connect(ctx, v.cfg.Hotkey, &v.wg, v.life) != nil {
			d.Note = "unreachable: no session with the miner"
			log.Info("miner unreachable this round", "miner", n.Hotkey)
			continue
		}
		d.Reachable = true
		for class, count := range mc.manifestCopy() {
			p, ok := sc.Params[class]
			if !ok || count <= 0 {
				continue
			}
			cr := &ClassResult{Claimed: count, ExpectedMS: p.Expected.Milliseconds()}
			d.Classes[class] = cr
			// All executors of the class at once: one GPU cannot answer for many claims.
			for range count {
				task := gen.Generate(p, rng)
				wg.Go(func() {
					r := v.runSynthetic(ctx, mc, class, task, cycle)
					mu.Lock()
					defer mu.Unlock()
					rep.Results = append(rep.Results, r)
					cr.Sent++
					if r.Passed {
						cr.Passed++
					} else {
						cr.Failed++
						cr.Reasons = append(cr.Reasons, r.Reason)
					}
					cr.MaxTookMS = max(cr.MaxTookMS, r.TookMS)
				})
			}
		}
		if sc.Sequential {
			wg.Wait()
		}
	}
	wg.Wait()
	for _, r := range rep.Results {
		if err := v.cfg.Store.PutSyntheticResult(context.WithoutCancel(ctx), r); err != nil {
			log.Error("store synthetic result", "err", err)
		}
		if !r.Passed {
			log.Info("synthetic job failed", "miner", r.Miner, "class", r.Class, "job", r.JobUUID, "reason", r.Reason)
		}
	}

	// Receipts: fetch what the miners countersigned, verify, count once.
	for hk, d := range rep.Details {
		if !d.Reachable {
			continue
		}
		v.mu.Lock()
		mc := v.miners[hk]
		v.mu.Unlock()
		d.RejectedReceipts = v.fetchReceipts(ctx, mc)
	}
	// The cycle covers everything since the last one: organic jobs count too.
	end := time.Now()
	rep.Scores = v.score(ctx, cycle, v.lastCycle, end, rep.Details)
	v.lastCycle = end
	if err := v.cfg.Store.PutScores(context.WithoutCancel(ctx), rep.Scores); err != nil {
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
		v.out.push(&protocol.V0ValidatorReport{Cycle: cycle, At: time.Now().UTC(), Scores: b})
	}
	rep.Took = time.Since(start)
	log.Info("synthetic round done", "miners", len(rep.Details), "jobs", len(rep.Results), "took", rep.Took.Round(time.Millisecond))
	return rep, nil
}

// runSynthetic sends one synthetic job and judges it.
func (v *Validator) runSynthetic(ctx context.Context, mc *minerClient, class string, task synthetic.Task, cycle int64) store.SyntheticResult {
	id := uuid.NewString()
	limit := int(math.Ceil((3 * task.Expected).Seconds()))
	spec := &protocol.JobSpec{ExecutorClass: class, DockerImage: v.cfg.Synthetic.Image, Args: task.Args, ArtifactsDir: task.ArtifactsDir,
		DownloadTimeLimit: 30, ExecutionTimeLimit: max(limit, 1), UploadTimeLimit: 30}
	r := store.SyntheticResult{Cycle: cycle, Miner: mc.neuron.Hotkey, Class: class, JobUUID: id, Generator: task.Generator,
		ExpectedMS: task.Expected.Milliseconds(), At: time.Now().UTC()}
	o := v.attempt(ctx, mc, id, spec, false, func(protocol.JobStatus, *protocol.StatusMetadata) {})
	if o.meta != nil && o.meta.Timings != nil {
		r.TookMS = o.meta.Timings["validator:execute"]
	}
	switch {
	case o.status == protocol.StatusCompleted:
		res := synthetic.Result{Stdout: o.meta.MinerResponse.DockerProcessStdout, Artifacts: o.meta.MinerResponse.Artifacts}
		if err := task.Check(res); err != nil {
			r.Reason = err.Error()
		} else if took := time.Duration(r.TookMS) * time.Millisecond; took > task.Expected {
			r.Reason = fmt.Sprintf("too slow: executed in %s, the class allows %s", took, task.Expected.Round(time.Millisecond))
		} else {
			r.Passed = true
		}
	case o.busy():
		if n := v.validExcuses(mc.neuron.Hotkey, class, o.excuses); n > 0 {
			r.Passed, r.Reason = true, fmt.Sprintf("excused: busy with organic jobs (%d valid receipts)", n)
		} else {
			r.Reason = "declined as busy without valid excuses"
		}
	default:
		r.Reason = o.reason("")
	}
	return r
}

// validExcuses counts the receipts that prove a busy miner's executors of
// class were taken by organic jobs: started receipts signed by a validator,
// naming this miner and class, still within their ttl.
func (v *Validator) validExcuses(miner, class string, excuses []json.RawMessage) int {
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
			time.Since(sp.Timestamp.Time) <= time.Duration(sp.TTL)*time.Second {
			n++
		}
	}
	return n
}

// score turns a cycle's verdicts and valid receipts into scores and weights:
// executor-seconds of counted finished jobs × class weight, for classes whose
// synthetic jobs all passed; weights are the normalised scores.
func (v *Validator) score(ctx context.Context, cycle int64, from, to time.Time, details map[string]*ScoreDetails) []store.MinerScore {
	for _, d := range details {
		for _, cr := range d.Classes {
			cr.Gate = cr.Sent > 0 && cr.Failed == 0
		}
	}
	rs, err := v.cfg.Store.ReceiptsStored(ctx, from, to)
	if err != nil {
		v.log.Error("score: read receipts", "err", err)
	}
	classOf := map[string]string{}
	for _, r := range rs {
		if p, err := r.Decode(); err == nil && r.Type == receipt.JobStarted {
			classOf[p.(*receipt.StartedPayload).JobUUID] = p.(*receipt.StartedPayload).ExecutorClass
		}
	}
	totals := map[string]float64{}
	for _, r := range rs {
		if r.Type != receipt.JobFinished || r.MinerSignature == "" || r.Verify() != nil {
			continue
		}
		p, _ := r.Decode()
		fp := p.(*receipt.FinishedPayload)
		d := details[fp.MinerHotkey]
		class := classOf[fp.JobUUID]
		if d == nil || class == "" || d.Classes[class] == nil || !d.Classes[class].Gate {
			continue
		}
		secs := float64(fp.TimeTookUS) / 1e6
		d.ExecutorSeconds[class] += secs
		d.Receipts = append(d.Receipts, fp.JobUUID)
		totals[fp.MinerHotkey] += secs * v.cfg.Synthetic.Params[class].Weight
	}
	// A cheat proved in a validation window zeroes the miner for the cycle.
	cheats, err := v.cfg.Store.Cheats(ctx, from)
	if err != nil {
		v.log.Error("score: read cheats", "err", err)
	}
	for _, c := range cheats {
		if d := details[c.Miner]; d != nil {
			totals[c.Miner] = 0
			d.Note = fmt.Sprintf("cheating proved in validation window %d (job %s); evidence kept", c.Window, c.JobUUID)
		}
	}
	var sum float64
	for _, t := range totals {
		sum += t
	}
	miners := make([]string, 0, len(details))
	for hk := range details {
		miners = append(miners, hk)
	}
	sort.Strings(miners)
	now := time.Now().UTC()
	var out []store.MinerScore
	for _, hk := range miners {
		d := details[hk]
		sort.Strings(d.Receipts)
		b, _ := json.Marshal(d)
		w := 0.0
		if sum > 0 {
			w = totals[hk] / sum
		}
		out = append(out, store.MinerScore{Cycle: cycle, Miner: hk, Score: totals[hk], Weight: w, Details: b, At: now})
	}
	return out
}
