// Package scoring turns one cycle's evidence into miners' scores and
// weights: a pure function of the finished jobs no cycle has counted yet
// (from the validator's own receipts), the cycle's synthetic round results,
// the cheats proved, and the classes' weights. It reads no store and knows
// no transport.
//
// The rules:
//
//   - A job is paid what its finished receipt says, once. The unit is
//     executor-seconds × class weight: this validator's finished receipt
//     carries, as its score, the seconds from the offer to the result of a
//     job that completed, and 0 for every other end (failed through the
//     miner, the executor or the horde, timed out, cancelled); so a job that
//     did not complete earns nothing. A declined offer has no finished
//     receipt and earns nothing either.
//   - The class comes from the job-started receipt the validator signed
//     when it offered the job (kept with the job, whenever it started).
//   - A job is counted by the first cycle scored after it finished in which
//     its miner is in the round and reachable, and has countersigned the
//     finished receipt; until then it waits (a miner unreachable for a round
//     is paid when it is reachable again). A job that waits longer than
//     PendingLimit is counted unpaid.
//   - A counted job is paid only if its class passed the cycle's synthetic
//     check (some jobs sent, none failed; excused executors do not fail).
//   - A cheat proved in the cycle zeroes the miner's score.
//
// Weights are the scores normalised to sum to 1.
package scoring

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/receipt"
)

// PendingLimit is how long a finished job waits to be paid (for its miner
// to be reachable and to countersign): upstream miners keep receipts for two
// days.
const PendingLimit = 48 * time.Hour

// ClassResult summarises a miner's synthetic jobs of one class in a cycle.
type ClassResult struct {
	Claimed int `json:"claimed"`
	// Sent counts the offers made; each passed, failed or was excused.
	Sent   int `json:"sent"`
	Passed int `json:"passed"`
	Failed int `json:"failed"`
	// Excused counts offers declined as busy with receipts that prove the
	// executors were taken by client work.
	Excused    int      `json:"excused,omitempty"`
	Reasons    []string `json:"reasons,omitempty"`
	ExpectedMS int64    `json:"expected_ms"`
	MaxTookMS  int64    `json:"max_took_ms"`
	// Gate says the class's jobs count: some were sent and none failed.
	Gate bool `json:"gate"`
}

// Details is what a miner's score rests on.
type Details struct {
	Reachable bool                    `json:"reachable"`
	Note      string                  `json:"note,omitempty"`
	Classes   map[string]*ClassResult `json:"classes"`
	// Receipts are the jobs paid this cycle.
	Receipts []string `json:"receipts"`
	// ExecutorSeconds is what the paid jobs' receipts say, by class.
	ExecutorSeconds map[string]float64 `json:"executor_seconds"`
	// Unpaid counts the jobs this cycle counted without pay, by reason.
	Unpaid map[string]int `json:"unpaid,omitempty"`
	// Pending counts finished jobs that wait for a later cycle.
	Pending int `json:"pending,omitempty"`
	// RejectedReceipts explains receipts from the miner that were not accepted.
	RejectedReceipts []string `json:"rejected_receipts,omitempty"`
}

// Job is a finished job as the validator's receipts tell it.
type Job struct {
	UUID  string
	Miner string
	Class string // from the started receipt; "" when there is none
	// Finished is when the validator signed the finished receipt.
	Finished time.Time
	// Score is what the finished receipt pays, in executor-seconds.
	Score float64
	// Countersigned says the miner signed the finished receipt too.
	Countersigned bool
	// Invalid, if set, says why the job's receipts cannot pay anything.
	Invalid string
}

// Input is one cycle's evidence.
type Input struct {
	Cycle int64
	// From starts the cycle: cheats proved at or after it count.
	From time.Time
	// At ends the cycle and stamps the scores.
	At time.Time
	// Miners are the round's miners with their synthetic results; only they are scored.
	Miners map[string]*Details
	// Jobs are the finished jobs no cycle has counted yet.
	Jobs   []Job
	Cheats []store.Cheat
	// ClassWeights multiply each class's executor-seconds.
	ClassWeights map[string]float64
}

// Output is the cycle's scores, by miner in hotkey order, what each rests
// on, and the jobs the cycle counts (paid or not; the others wait).
type Output struct {
	Scores  []store.MinerScore
	Details map[string]*Details
	Counted []store.Counted
}

// Reasons a counted job is not paid.
const (
	NotCompleted  = "did not complete: its finished receipt pays 0"
	NotInRound    = "miner not in this cycle's metagraph"
	NoClass       = "no job-started receipt names its class"
	ClassUntested = "class not tested this cycle"
	ClassFailed   = "class failed this cycle's synthetic jobs"
	NeverSigned   = "not countersigned by the miner within 48h"
	Cheated       = "zeroed: cheating proved this cycle"
)

// Score computes the cycle's scores and weights. It does not change in.
func Score(in Input) Output {
	details := make(map[string]*Details, len(in.Miners))
	for hk, d := range in.Miners {
		details[hk] = copyDetails(d)
	}
	out := Output{Details: details}
	totals := map[string]float64{}
	paid := map[string][]int{} // by miner: indices into out.Counted
	for _, j := range in.Jobs {
		d := details[j.Miner]
		count := func(pay float64, reason string) {
			out.Counted = append(out.Counted, store.Counted{JobUUID: j.UUID, Miner: j.Miner, Class: j.Class, Cycle: in.Cycle, Pay: pay, Reason: reason})
			if d != nil && reason != "" {
				d.Unpaid[reason]++
			}
		}
		if j.Invalid != "" {
			count(0, j.Invalid)
			continue
		}
		if j.Score <= 0 {
			count(0, NotCompleted)
			continue
		}
		if d == nil {
			count(0, NotInRound)
			continue
		}
		if !d.Reachable || !j.Countersigned {
			if in.At.Sub(j.Finished) > PendingLimit {
				count(0, NeverSigned)
			} else {
				d.Pending++
			}
			continue
		}
		cr := d.Classes[j.Class]
		switch {
		case j.Class == "":
			count(0, NoClass)
			continue
		case cr == nil:
			count(0, ClassUntested)
			continue
		case !cr.Gate:
			count(0, ClassFailed)
			continue
		}
		pay := j.Score * in.ClassWeights[j.Class]
		count(pay, "")
		paid[j.Miner] = append(paid[j.Miner], len(out.Counted)-1)
		d.ExecutorSeconds[j.Class] += j.Score
		d.Receipts = append(d.Receipts, j.UUID)
		totals[j.Miner] += pay
	}
	for _, c := range in.Cheats {
		if d := details[c.Miner]; d != nil && !c.At.Before(in.From) {
			totals[c.Miner] = 0
			d.Note = cheatNote(c)
			for _, i := range paid[c.Miner] {
				out.Counted[i].Pay, out.Counted[i].Reason = 0, Cheated
			}
		}
	}
	var sum float64
	for _, hk := range slices.Sorted(maps.Keys(totals)) {
		sum += totals[hk]
	}
	for _, hk := range slices.Sorted(maps.Keys(details)) {
		d := details[hk]
		slices.Sort(d.Receipts)
		if len(d.Unpaid) == 0 {
			d.Unpaid = nil
		}
		b, _ := json.Marshal(d)
		w := 0.0
		if sum > 0 {
			w = totals[hk] / sum
		}
		out.Scores = append(out.Scores, store.MinerScore{Cycle: in.Cycle, Miner: hk, Score: totals[hk], Weight: w, Details: b, At: in.At})
	}
	return out
}

func cheatNote(c store.Cheat) string {
	return fmt.Sprintf("cheating proved in validation window %d (job %s); evidence kept", c.Window, c.JobUUID)
}

// copyDetails copies d with each class's gate set.
func copyDetails(d *Details) *Details {
	c := *d
	c.Classes = make(map[string]*ClassResult, len(d.Classes))
	for k, cr := range d.Classes {
		x := *cr
		x.Reasons = slices.Clone(cr.Reasons)
		x.Gate = x.Sent > 0 && x.Failed == 0
		c.Classes[k] = &x
	}
	c.Receipts = append([]string{}, d.Receipts...)
	c.ExecutorSeconds = maps.Clone(d.ExecutorSeconds)
	if c.ExecutorSeconds == nil {
		c.ExecutorSeconds = map[string]float64{}
	}
	c.Unpaid = maps.Clone(d.Unpaid)
	if c.Unpaid == nil {
		c.Unpaid = map[string]int{}
	}
	c.RejectedReceipts = slices.Clone(d.RejectedReceipts)
	return &c
}

// Jobs reads the validator's receipts of finished jobs. A job whose
// receipts do not hold together (a finished receipt that does not verify or
// does not say a number of seconds, a started receipt that does not verify
// or names another job, miner or validator) is Invalid: it will be counted
// unpaid, with the reason, so that it is not read again. The miner's
// signature is checked when present.
func Jobs(work []store.Work) []Job {
	var jobs []Job
	for _, w := range work {
		p, err := w.Finished.Decode()
		if err != nil {
			continue // not even a job to name; the store refuses such receipts
		}
		fp := p.(*receipt.FinishedPayload)
		j := Job{UUID: fp.JobUUID, Miner: fp.MinerHotkey, Finished: fp.Timestamp.Time, Countersigned: w.Finished.MinerSignature != ""}
		j.Invalid = j.read(w, fp)
		jobs = append(jobs, j)
	}
	return jobs
}

// read fills in the job's score and class from its receipts, or says why it cannot.
func (j *Job) read(w store.Work, fp *receipt.FinishedPayload) string {
	if err := w.Finished.Verify(); err != nil {
		return "finished receipt: " + err.Error()
	}
	score, err := strconv.ParseFloat(fp.ScoreStr, 64)
	if err != nil || !(score >= 0) || math.IsInf(score, 0) {
		return fmt.Sprintf("finished receipt: score %q is not a number of seconds", fp.ScoreStr)
	}
	j.Score = score
	if w.Started == nil {
		return ""
	}
	p, err := w.Started.Decode()
	sp, ok := p.(*receipt.StartedPayload)
	if err != nil || !ok || w.Started.Verify() != nil || sp.JobUUID != fp.JobUUID || sp.MinerHotkey != fp.MinerHotkey || sp.ValidatorHotkey != fp.ValidatorHotkey {
		return "its job-started receipt does not verify or names another job"
	}
	j.Class = sp.ExecutorClass
	return ""
}
