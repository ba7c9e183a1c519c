package scoring_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/validator/scoring"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
	"github.com/horde-compute/horde/sig"
)

const (
	test = protocol.ClassTest  // weight 1
	gpu  = protocol.ClassGPU24 // weight 10
)

var (
	from    = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at      = from.Add(10 * time.Minute)
	weights = map[string]float64{test: 1, gpu: 10}
)

// passed is a class whose synthetic jobs all passed; failed one that did not.
func passed() *scoring.ClassResult { return &scoring.ClassResult{Claimed: 2, Sent: 2, Passed: 2} }
func failed() *scoring.ClassResult {
	return &scoring.ClassResult{Claimed: 2, Sent: 2, Passed: 1, Failed: 1, Reasons: []string{"wrong answer"}}
}

// busy is a class whose executors were all busy with client work, excused.
func busy() *scoring.ClassResult { return &scoring.ClassResult{Claimed: 2, Sent: 2, Excused: 2} }

func miner(classes map[string]*scoring.ClassResult) *scoring.Details {
	return &scoring.Details{Reachable: true, Classes: classes}
}

// job is a finished job the miner countersigned, finished a minute before
// the cycle's end.
func job(uuid, m, class string, score float64) scoring.Job {
	return scoring.Job{UUID: uuid, Miner: m, Class: class, Score: score, Countersigned: true, Finished: at.Add(-time.Minute)}
}

type want struct {
	score, weight float64
	receipts      []string
	seconds       map[string]float64
	unpaid        map[string]int
	pending       int
	note          string
}

func TestScore(t *testing.T) {
	unsigned := job("u1", "a", test, 5)
	unsigned.Countersigned = false
	stale := unsigned
	stale.UUID, stale.Finished = "u2", at.Add(-scoring.PendingLimit-time.Second)
	tests := []struct {
		name    string
		miners  map[string]*scoring.Details
		jobs    []scoring.Job
		cheats  []store.Cheat
		want    map[string]want
		counted []store.Counted // nil: check only what wants say
	}{
		{
			name:   "no jobs: all zero",
			miners: map[string]*scoring.Details{"a": miner(map[string]*scoring.ClassResult{test: passed()})},
			want:   map[string]want{"a": {}},
		},
		{
			// a: (2.5 + 1.5) s × 1 = 4; b: 0.5 s × 10 = 5 (its test job is
			// not paid: the class failed); sum 9.
			name: "executor-seconds times class weight, gated",
			miners: map[string]*scoring.Details{
				"a": miner(map[string]*scoring.ClassResult{test: passed()}),
				"b": miner(map[string]*scoring.ClassResult{gpu: passed(), test: failed()}),
			},
			jobs: []scoring.Job{job("a2", "a", test, 2.5), job("a1", "a", test, 1.5), job("b1", "b", gpu, 0.5), job("b2", "b", test, 100)},
			want: map[string]want{
				"a": {score: 4, weight: 4.0 / 9, receipts: []string{"a1", "a2"}, seconds: map[string]float64{test: 4}},
				"b": {score: 5, weight: 5.0 / 9, receipts: []string{"b1"}, seconds: map[string]float64{gpu: 0.5}, unpaid: map[string]int{scoring.ClassFailed: 1}},
			},
			counted: []store.Counted{{JobUUID: "a2", Miner: "a", Class: test, Pay: 2.5}, {JobUUID: "a1", Miner: "a", Class: test, Pay: 1.5},
				{JobUUID: "b1", Miner: "b", Class: gpu, Pay: 5}, {JobUUID: "b2", Miner: "b", Class: test, Reason: scoring.ClassFailed}},
		},
		{
			// A job that failed after 300 s (miner or horde failure, timeout,
			// cancel: the receipt scores 0) earns nothing; nor does one whose
			// receipts do not hold together. Only ok's 3 s × 10 = 30 counts.
			name:   "failed jobs earn nothing",
			miners: map[string]*scoring.Details{"a": miner(map[string]*scoring.ClassResult{gpu: passed()})},
			jobs: []scoring.Job{job("failed", "a", gpu, 0), job("ok", "a", gpu, 3),
				{UUID: "bad", Miner: "a", Class: gpu, Score: 300, Countersigned: true, Invalid: "finished receipt: bad signature"}},
			want: map[string]want{"a": {score: 30, weight: 1, receipts: []string{"ok"}, seconds: map[string]float64{gpu: 3},
				unpaid: map[string]int{scoring.NotCompleted: 1, "finished receipt: bad signature": 1}}},
			counted: []store.Counted{{JobUUID: "failed", Miner: "a", Class: gpu, Reason: scoring.NotCompleted}, {JobUUID: "ok", Miner: "a", Class: gpu, Pay: 30},
				{JobUUID: "bad", Miner: "a", Class: gpu, Reason: "finished receipt: bad signature"}},
		},
		{
			// Every executor busy with client work, excused: the class passes
			// and the client work is paid: 7 s × 1.
			name:   "excused executors neither fail nor go unpaid",
			miners: map[string]*scoring.Details{"a": miner(map[string]*scoring.ClassResult{test: busy()})},
			jobs:   []scoring.Job{job("client", "a", test, 7)},
			want:   map[string]want{"a": {score: 7, weight: 1, receipts: []string{"client"}, seconds: map[string]float64{test: 7}}},
		},
		{
			// Unknown class, a class the miner was not tested on, a miner
			// not in the round, a class with no synthetic job sent: counted,
			// unpaid. Only ok's 2 s count.
			name: "jobs that are counted unpaid",
			miners: map[string]*scoring.Details{
				"a": miner(map[string]*scoring.ClassResult{test: passed(), gpu: {Claimed: 1}}),
			},
			jobs: []scoring.Job{job("x1", "a", "", 1), job("x2", "a", protocol.ClassCPU8c16gb, 1), job("x3", "stranger", test, 1),
				job("x4", "a", gpu, 1), job("ok", "a", test, 2)},
			want: map[string]want{"a": {score: 2, weight: 1, receipts: []string{"ok"}, seconds: map[string]float64{test: 2},
				unpaid: map[string]int{scoring.NoClass: 1, scoring.ClassUntested: 1, scoring.ClassFailed: 1}}},
			counted: []store.Counted{{JobUUID: "x1", Miner: "a", Reason: scoring.NoClass},
				{JobUUID: "x2", Miner: "a", Class: protocol.ClassCPU8c16gb, Reason: scoring.ClassUntested},
				{JobUUID: "x3", Miner: "stranger", Class: test, Reason: scoring.NotInRound},
				{JobUUID: "x4", Miner: "a", Class: gpu, Reason: scoring.ClassFailed}, {JobUUID: "ok", Miner: "a", Class: test, Pay: 2}},
		},
		{
			// c's 3 s would have counted; the cheat zeroes it. A cheat older
			// than the cycle, or of a miner not in the round, changes nothing.
			name: "a cheat zeroes the miner",
			miners: map[string]*scoring.Details{
				"a": miner(map[string]*scoring.ClassResult{test: passed()}),
				"c": miner(map[string]*scoring.ClassResult{test: passed()}),
			},
			jobs: []scoring.Job{job("a1", "a", test, 1), job("c1", "c", test, 3)},
			cheats: []store.Cheat{
				{Window: 7, Miner: "c", JobUUID: "s1", At: from.Add(time.Minute)},
				{Window: 6, Miner: "a", JobUUID: "s0", At: from.Add(-time.Minute)},
				{Window: 7, Miner: "stranger", JobUUID: "s2", At: from.Add(time.Minute)},
			},
			want: map[string]want{
				"a": {score: 1, weight: 1, receipts: []string{"a1"}, seconds: map[string]float64{test: 1}},
				"c": {score: 0, weight: 0, receipts: []string{"c1"}, seconds: map[string]float64{test: 3},
					note: "cheating proved in validation window 7 (job s1); evidence kept"},
			},
			counted: []store.Counted{{JobUUID: "a1", Miner: "a", Class: test, Pay: 1}, {JobUUID: "c1", Miner: "c", Class: test, Reason: scoring.Cheated}},
		},
		{
			// d's job waits (not counted) until d is reachable; a failed job
			// of d is counted at once: there is nothing to wait for.
			name:    "unreachable miner scores zero, its work waits",
			miners:  map[string]*scoring.Details{"d": {Note: "unreachable: no session with the miner"}},
			jobs:    []scoring.Job{job("d1", "d", test, 4), job("d2", "d", test, 0)},
			want:    map[string]want{"d": {note: "unreachable: no session with the miner", pending: 1, unpaid: map[string]int{scoring.NotCompleted: 1}}},
			counted: []store.Counted{{JobUUID: "d2", Miner: "d", Class: test, Reason: scoring.NotCompleted}},
		},
		{
			// u1 waits for the miner's countersignature; u2 waited more than
			// 48 h and is dropped unpaid.
			name:    "not countersigned: waits, then is dropped",
			miners:  map[string]*scoring.Details{"a": miner(map[string]*scoring.ClassResult{test: passed()})},
			jobs:    []scoring.Job{unsigned, stale},
			want:    map[string]want{"a": {pending: 1, unpaid: map[string]int{scoring.NeverSigned: 1}}},
			counted: []store.Counted{{JobUUID: "u2", Miner: "a", Class: test, Reason: scoring.NeverSigned}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := json.Marshal(tt.miners)
			out := scoring.Score(scoring.Input{Cycle: 42, From: from, At: at, Miners: tt.miners, Jobs: tt.jobs, Cheats: tt.cheats, ClassWeights: weights})
			if after, _ := json.Marshal(tt.miners); string(after) != string(before) {
				t.Error("Score changed its input")
			}
			if len(out.Scores) != len(tt.want) {
				t.Fatalf("%d scores, want %d", len(out.Scores), len(tt.want))
			}
			prev := ""
			for _, s := range out.Scores {
				if s.Miner <= prev {
					t.Errorf("scores not in hotkey order: %s after %s", s.Miner, prev)
				}
				prev = s.Miner
				w, ok := tt.want[s.Miner]
				if !ok {
					t.Fatalf("unexpected miner %s", s.Miner)
				}
				if s.Cycle != 42 || !s.At.Equal(at) || s.Score != w.score || !near(s.Weight, w.weight) {
					t.Errorf("%s: cycle %d score %v weight %v, want score %v weight %v", s.Miner, s.Cycle, s.Score, s.Weight, w.score, w.weight)
				}
				var d scoring.Details
				if err := json.Unmarshal(s.Details, &d); err != nil {
					t.Fatal(err)
				}
				if w.receipts == nil {
					w.receipts = []string{}
				}
				if w.seconds == nil {
					w.seconds = map[string]float64{}
				}
				if diff := cmp.Diff(w.receipts, d.Receipts); diff != "" {
					t.Errorf("%s receipts (-want +got):\n%s", s.Miner, diff)
				}
				if diff := cmp.Diff(w.seconds, d.ExecutorSeconds); diff != "" {
					t.Errorf("%s executor seconds (-want +got):\n%s", s.Miner, diff)
				}
				if diff := cmp.Diff(w.unpaid, d.Unpaid); diff != "" {
					t.Errorf("%s unpaid (-want +got):\n%s", s.Miner, diff)
				}
				if d.Note != w.note || d.Pending != w.pending {
					t.Errorf("%s note %q pending %d, want %q %d", s.Miner, d.Note, d.Pending, w.note, w.pending)
				}
				if diff := cmp.Diff(out.Details[s.Miner], &d); diff != "" {
					t.Errorf("%s: stored details differ from returned ones:\n%s", s.Miner, diff)
				}
				for c, cr := range d.Classes {
					if want := cr.Sent > 0 && cr.Failed == 0; cr.Gate != want {
						t.Errorf("%s %s gate %v", s.Miner, c, cr.Gate)
					}
				}
			}
			if tt.counted != nil {
				for i := range tt.counted {
					tt.counted[i].Cycle = 42
				}
				if diff := cmp.Diff(tt.counted, out.Counted); diff != "" {
					t.Errorf("counted (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func near(a, b float64) bool { return a-b < 1e-12 && b-a < 1e-12 }

// Cycles of ten minutes, run one after another over a ledger of finished
// jobs the way rounds run them: each cycle scores every job finished by its
// end that no cycle counted, and what it counts is gone from the ledger.
//
//	short   2 s   test  started and finished in cycle 1         → a, cycle 1: 2
//	long    700 s test  started in cycle 1, finished in cycle 2 → a, cycle 2: 700
//	stream  1500 s test started in cycle 1, served through 3    → a, cycle 3: 1500
//	b1      300 s test  finished in cycle 2, b offline in 2     → b, cycle 3: 300
//	huge    1900 s gpu  started in cycle 1, finished in cycle 4 → a, cycle 4: 1900 × 10 = 19000
//
// Weights: cycle 1 a 1; cycle 2 a 1 (b pending); cycle 3 a 1500/1800, b
// 300/1800; cycle 4 a 1. Every job is counted once.
func TestCyclesCountEveryJobOnce(t *testing.T) {
	end := func(c int) time.Time { return from.Add(time.Duration(c) * 10 * time.Minute) }
	fin := func(uuid, m, class string, score float64, cycle int) scoring.Job {
		return scoring.Job{UUID: uuid, Miner: m, Class: class, Score: score, Countersigned: true, Finished: end(cycle).Add(-time.Minute)}
	}
	ledger := []scoring.Job{
		fin("short", "a", test, 2, 1),
		fin("long", "a", test, 700, 2),
		fin("b1", "b", test, 300, 2),
		fin("stream", "a", test, 1500, 3),
		fin("huge", "a", gpu, 1900, 4),
	}
	both := func() map[string]*scoring.ClassResult {
		return map[string]*scoring.ClassResult{test: passed(), gpu: passed()}
	}
	want := []map[string][2]float64{ // by cycle: miner → score, weight
		{"a": {2, 1}, "b": {0, 0}},
		{"a": {700, 1}, "b": {0, 0}},
		{"a": {1500, 1500.0 / 1800}, "b": {300, 300.0 / 1800}},
		{"a": {19000, 1}, "b": {0, 0}},
	}
	countedIn := map[string][]int64{}
	for c := 1; c <= 4; c++ {
		miners := map[string]*scoring.Details{"a": miner(both()), "b": miner(both())}
		var jobs []scoring.Job
		for _, j := range ledger {
			if j.Finished.Before(end(c)) {
				if j.Miner == "b" && c == 2 {
					j.Countersigned = false // its receipts could not be fetched
				}
				jobs = append(jobs, j)
			}
		}
		if c == 2 {
			miners["b"] = &scoring.Details{Note: "unreachable: no session with the miner"}
		}
		out := scoring.Score(scoring.Input{Cycle: int64(c), From: end(c - 1), At: end(c), Miners: miners, Jobs: jobs, ClassWeights: weights})
		for _, s := range out.Scores {
			w := want[c-1][s.Miner]
			if s.Score != w[0] || !near(s.Weight, w[1]) {
				t.Errorf("cycle %d, %s: score %v weight %v, want %v %v", c, s.Miner, s.Score, s.Weight, w[0], w[1])
			}
		}
		for _, k := range out.Counted {
			countedIn[k.JobUUID] = append(countedIn[k.JobUUID], k.Cycle)
			ledger = slices.DeleteFunc(ledger, func(j scoring.Job) bool { return j.UUID == k.JobUUID })
		}
	}
	wantIn := map[string][]int64{"short": {1}, "long": {2}, "b1": {3}, "stream": {3}, "huge": {4}}
	if diff := cmp.Diff(wantIn, countedIn); diff != "" {
		t.Errorf("cycles each job was counted in (-want +got):\n%s", diff)
	}
}

// Receipts become jobs as the validator signed them: the score its
// finished receipt carries, the class its started receipt names; receipts
// that do not verify or do not belong together make the job Invalid.
func TestJobs(t *testing.T) {
	v := hotkey(t)
	m := hotkey(t)
	other := hotkey(t)
	base := func(job string) receipt.Base {
		return receipt.Base{JobUUID: job, MinerHotkey: m.SS58(), ValidatorHotkey: v.SS58(), Timestamp: receipt.At(from)}
	}
	sign := func(p receipt.Payload, by, minerKey *sig.Hotkey) *receipt.Receipt {
		s, err := receipt.Sign(by, p)
		if err != nil {
			t.Fatal(err)
		}
		r, err := receipt.New(p, s)
		if err != nil {
			t.Fatal(err)
		}
		if minerKey != nil {
			r.MinerSignature, _ = receipt.Sign(minerKey, p)
		}
		return &r
	}
	started := func(job, class string) *receipt.Receipt {
		return sign(&receipt.StartedPayload{Base: base(job), ExecutorClass: class, TTL: 60}, v, nil)
	}
	finished := func(job, score string, minerKey *sig.Hotkey) receipt.Receipt {
		return *sign(&receipt.FinishedPayload{Base: base(job), TimeStarted: receipt.At(from), TimeTookUS: 1, ScoreStr: score}, v, minerKey)
	}
	work := []store.Work{
		{Started: started("ok", test), Finished: finished("ok", "2.500000", m)},
		{Started: started("failed", gpu), Finished: finished("failed", "0", m)},
		{Finished: finished("noclass", "1.000000", m)},
		{Started: started("unsigned", test), Finished: finished("unsigned", "1.000000", nil)},
		{Started: started("forged", test), Finished: finished("forged", "1.000000", other)},
		{Started: started("nan", test), Finished: finished("nan", "NaN", m)},
		{Started: started("elsewhere", test), Finished: finished("mixed", "1.000000", m)},
		{Started: sign(&receipt.StartedPayload{Base: base("otherkey"), ExecutorClass: test, TTL: 60}, other, nil), Finished: finished("otherkey", "1.000000", m)},
	}
	got := scoring.Jobs(work)
	for i := range got {
		if got[i].Invalid != "" {
			got[i].Invalid = "invalid" // the reason's words are checked below
		}
	}
	mk := func(uuid, class string, score float64, signed bool, invalid string) scoring.Job {
		return scoring.Job{UUID: uuid, Miner: m.SS58(), Class: class, Finished: from, Score: score, Countersigned: signed, Invalid: invalid}
	}
	want := []scoring.Job{
		mk("ok", test, 2.5, true, ""),
		mk("failed", gpu, 0, true, ""),
		mk("noclass", "", 1, true, ""),
		mk("unsigned", test, 1, false, ""),
		mk("forged", "", 0, true, "invalid"),
		mk("nan", "", 0, true, "invalid"),
		mk("mixed", "", 1, true, "invalid"),
		mk("otherkey", "", 1, true, "invalid"),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("jobs (-want +got):\n%s", diff)
	}
	for i, w := range []string{"", "", "", "", "signature", "not a number", "another job", "does not verify"} {
		j := scoring.Jobs(work[i : i+1])[0]
		if w == "" && j.Invalid != "" || w != "" && !strings.Contains(j.Invalid, w) {
			t.Errorf("%s: invalid %q, want %q", j.UUID, j.Invalid, w)
		}
	}
}

func hotkey(t *testing.T) *sig.Hotkey {
	k, err := sig.FromSeed(sig.RandomSeed())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// BenchmarkCycle measures reading and scoring a cycle of 1000 finished
// jobs (two signatures verified per receipt pair, as every cycle does).
func BenchmarkCycle(b *testing.B) {
	v, _ := sig.FromSeed(sig.RandomSeed())
	m, _ := sig.FromSeed(sig.RandomSeed())
	var work []store.Work
	for i := range 1000 {
		base := receipt.Base{JobUUID: fmt.Sprint("job-", i), MinerHotkey: m.SS58(), ValidatorHotkey: v.SS58(), Timestamp: receipt.At(at)}
		sp := &receipt.StartedPayload{Base: base, ExecutorClass: test, IsOrganic: true, TTL: 60}
		fp := &receipt.FinishedPayload{Base: base, TimeStarted: receipt.At(from), TimeTookUS: 2_000_000, ScoreStr: "2.000000"}
		ss, _ := receipt.Sign(v, sp)
		fs, _ := receipt.Sign(v, fp)
		s, _ := receipt.New(sp, ss)
		f, _ := receipt.New(fp, fs)
		f.MinerSignature, _ = receipt.Sign(m, fp)
		work = append(work, store.Work{Started: &s, Finished: f})
	}
	miners := map[string]*scoring.Details{m.SS58(): miner(map[string]*scoring.ClassResult{test: passed()})}
	start := time.Now()
	for b.Loop() {
		out := scoring.Score(scoring.Input{Cycle: 1, From: from, At: at, Miners: miners, Jobs: scoring.Jobs(work), ClassWeights: weights})
		if len(out.Counted) != len(work) {
			b.Fatalf("counted %d", len(out.Counted))
		}
	}
	b.ReportMetric(float64(b.N*len(work))/time.Since(start).Seconds(), "jobs/s")
}
