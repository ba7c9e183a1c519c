// Package scoring turns one cycle's evidence into miners' scores and
// weights: a pure function of the jobs counted (from verified receipts),
// the synthetic round's results, the cheats proved, and the classes'
// weights. It reads no store and knows no transport.
//
// Today's rule: a miner's score is the sum, over its counted jobs of classes
// whose synthetic jobs all passed this cycle, of executor-seconds × class
// weight; a cheat proved in the cycle zeroes it. Weights are the scores
// normalised to sum to 1.
package scoring

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/receipt"
)

// ClassResult summarises a miner's synthetic jobs of one class in a cycle.
type ClassResult struct {
	Claimed    int      `json:"claimed"`
	Sent       int      `json:"sent"`
	Passed     int      `json:"passed"`
	Failed     int      `json:"failed"`
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
	// Receipts are the jobs whose finished receipts (valid, both signatures) count.
	Receipts []string `json:"receipts"`
	// ExecutorSeconds is the sum of the counted jobs' time, by class.
	ExecutorSeconds map[string]float64 `json:"executor_seconds"`
	// RejectedReceipts explains receipts from the miner that were not counted.
	RejectedReceipts []string `json:"rejected_receipts,omitempty"`
}

// Job is a job that may count: one with a finished receipt both parties signed.
type Job struct {
	UUID    string
	Miner   string
	Class   string  // "" when unknown
	Seconds float64 // the time the job took, by its finished receipt
	// Completed says the job completed (its receipt scored it above zero);
	// failed jobs count today too.
	Completed bool
}

// Input is one cycle's evidence.
type Input struct {
	Cycle int64
	// From starts the cycle: cheats proved at or after it count.
	From time.Time
	// At stamps the scores.
	At time.Time
	// Miners are the round's miners with their synthetic results; only they are scored.
	Miners map[string]*Details
	Jobs   []Job
	Cheats []store.Cheat
	// ClassWeights multiply each class's executor-seconds.
	ClassWeights map[string]float64
}

// Output is the cycle's scores, by miner in hotkey order, and what each rests on.
type Output struct {
	Scores  []store.MinerScore
	Details map[string]*Details
}

// Score computes the cycle's scores and weights. It does not change in.
func Score(in Input) Output {
	details := make(map[string]*Details, len(in.Miners))
	for hk, d := range in.Miners {
		details[hk] = copyDetails(d)
	}
	totals := map[string]float64{}
	for _, j := range in.Jobs {
		d := details[j.Miner]
		if d == nil || j.Class == "" || d.Classes[j.Class] == nil || !d.Classes[j.Class].Gate {
			continue
		}
		d.ExecutorSeconds[j.Class] += j.Seconds
		d.Receipts = append(d.Receipts, j.UUID)
		totals[j.Miner] += j.Seconds * in.ClassWeights[j.Class]
	}
	for _, c := range in.Cheats {
		if d := details[c.Miner]; d != nil && !c.At.Before(in.From) {
			totals[c.Miner] = 0
			d.Note = cheatNote(c)
		}
	}
	var sum float64
	for _, hk := range slices.Sorted(maps.Keys(totals)) {
		sum += totals[hk]
	}
	out := Output{Details: details}
	for _, hk := range slices.Sorted(maps.Keys(details)) {
		d := details[hk]
		slices.Sort(d.Receipts)
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
	c.RejectedReceipts = slices.Clone(d.RejectedReceipts)
	return &c
}

// JobsFromReceipts returns the jobs a cycle's receipts count: one per
// finished receipt that carries the miner's signature and whose signatures
// verify, with the class named by the job's started receipt among rs.
func JobsFromReceipts(rs []receipt.Receipt) []Job {
	classOf := map[string]string{}
	for _, r := range rs {
		if r.Type != receipt.JobStarted {
			continue
		}
		if p, err := r.Decode(); err == nil {
			sp := p.(*receipt.StartedPayload)
			classOf[sp.JobUUID] = sp.ExecutorClass
		}
	}
	var out []Job
	for _, r := range rs {
		if r.Type != receipt.JobFinished || r.MinerSignature == "" || r.Verify() != nil {
			continue
		}
		p, err := r.Decode()
		if err != nil {
			continue
		}
		fp := p.(*receipt.FinishedPayload)
		out = append(out, Job{UUID: fp.JobUUID, Miner: fp.MinerHotkey, Class: classOf[fp.JobUUID],
			Seconds: float64(fp.TimeTookUS) / 1e6, Completed: fp.ScoreStr != "0"})
	}
	return out
}
