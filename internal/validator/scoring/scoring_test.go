package scoring_test

import (
	"encoding/json"
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

func miner(classes map[string]*scoring.ClassResult) *scoring.Details {
	return &scoring.Details{Reachable: true, Classes: classes}
}

type want struct {
	score, weight float64
	receipts      []string
	seconds       map[string]float64
	note          string
}

func TestScore(t *testing.T) {
	tests := []struct {
		name   string
		miners map[string]*scoring.Details
		jobs   []scoring.Job
		cheats []store.Cheat
		want   map[string]want
	}{
		{
			name:   "no jobs: all zero",
			miners: map[string]*scoring.Details{"a": miner(map[string]*scoring.ClassResult{test: passed()})},
			want:   map[string]want{"a": {seconds: map[string]float64{}}},
		},
		{
			// a: (2.5 + 1.5) s × 1 = 4; b: 0.5 s × 10 = 5 (its test job does
			// not count: the class failed); sum 9.
			name: "executor-seconds times class weight, gated",
			miners: map[string]*scoring.Details{
				"a": miner(map[string]*scoring.ClassResult{test: passed()}),
				"b": miner(map[string]*scoring.ClassResult{gpu: passed(), test: failed()}),
			},
			jobs: []scoring.Job{
				{UUID: "a2", Miner: "a", Class: test, Seconds: 2.5, Completed: true},
				{UUID: "a1", Miner: "a", Class: test, Seconds: 1.5},
				{UUID: "b1", Miner: "b", Class: gpu, Seconds: 0.5, Completed: true},
				{UUID: "b2", Miner: "b", Class: test, Seconds: 100, Completed: true},
			},
			want: map[string]want{
				"a": {score: 4, weight: 4.0 / 9, receipts: []string{"a1", "a2"}, seconds: map[string]float64{test: 4}},
				"b": {score: 5, weight: 5.0 / 9, receipts: []string{"b1"}, seconds: map[string]float64{gpu: 0.5}},
			},
		},
		{
			// Unknown class, a class the miner was not tested on, a miner
			// not in the round, a class with no synthetic job sent: none count.
			name: "jobs that do not count",
			miners: map[string]*scoring.Details{
				"a": miner(map[string]*scoring.ClassResult{test: passed(), gpu: {Claimed: 1}}),
			},
			jobs: []scoring.Job{
				{UUID: "x1", Miner: "a", Class: "", Seconds: 1},
				{UUID: "x2", Miner: "a", Class: protocol.ClassCPU8c16gb, Seconds: 1},
				{UUID: "x3", Miner: "stranger", Class: test, Seconds: 1},
				{UUID: "x4", Miner: "a", Class: gpu, Seconds: 1},
				{UUID: "ok", Miner: "a", Class: test, Seconds: 2},
			},
			want: map[string]want{"a": {score: 2, weight: 1, receipts: []string{"ok"}, seconds: map[string]float64{test: 2}}},
		},
		{
			// c's 3 s would have counted; the cheat zeroes it. A cheat older
			// than the cycle, or of a miner not in the round, changes nothing.
			name: "a cheat zeroes the miner",
			miners: map[string]*scoring.Details{
				"a": miner(map[string]*scoring.ClassResult{test: passed()}),
				"c": miner(map[string]*scoring.ClassResult{test: passed()}),
			},
			jobs: []scoring.Job{
				{UUID: "a1", Miner: "a", Class: test, Seconds: 1},
				{UUID: "c1", Miner: "c", Class: test, Seconds: 3},
			},
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
		},
		{
			name: "unreachable miner scores zero",
			miners: map[string]*scoring.Details{
				"d": {Note: "unreachable: no session with the miner"},
			},
			want: map[string]want{"d": {note: "unreachable: no session with the miner", seconds: map[string]float64{}}},
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
				if diff := cmp.Diff(w.receipts, d.Receipts); diff != "" {
					t.Errorf("%s receipts (-want +got):\n%s", s.Miner, diff)
				}
				if diff := cmp.Diff(w.seconds, d.ExecutorSeconds); diff != "" {
					t.Errorf("%s executor seconds (-want +got):\n%s", s.Miner, diff)
				}
				if d.Note != w.note {
					t.Errorf("%s note %q, want %q", s.Miner, d.Note, w.note)
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
		})
	}
}

func near(a, b float64) bool { return a-b < 1e-12 && b-a < 1e-12 }

// Receipts become jobs only when both parties signed them and they verify;
// the class comes from the job's started receipt.
func TestJobsFromReceipts(t *testing.T) {
	v := hotkey(t)
	m := hotkey(t)
	other := hotkey(t)
	base := func(job string) receipt.Base {
		return receipt.Base{JobUUID: job, MinerHotkey: m.SS58(), ValidatorHotkey: v.SS58(), Timestamp: receipt.At(from)}
	}
	sign := func(p receipt.Payload, minerKey *sig.Hotkey) receipt.Receipt {
		s, err := receipt.Sign(v, p)
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
		return r
	}
	started := func(job, class string) receipt.Receipt {
		return sign(&receipt.StartedPayload{Base: base(job), ExecutorClass: class, TTL: 60}, nil)
	}
	finished := func(job string, tookUS int64, score string, minerKey *sig.Hotkey) receipt.Receipt {
		return sign(&receipt.FinishedPayload{Base: base(job), TimeStarted: receipt.At(from), TimeTookUS: tookUS, ScoreStr: score}, minerKey)
	}
	rs := []receipt.Receipt{
		started("ok", test), finished("ok", 2_500_000, "2.5", m),
		started("failed", gpu), finished("failed", 500_000, "0", m),
		finished("noclass", 1_000_000, "1", m),
		started("unsigned", test), finished("unsigned", 1_000_000, "1", nil),
		started("forged", test), finished("forged", 1_000_000, "1", other),
	}
	got := scoring.JobsFromReceipts(rs)
	want := []scoring.Job{
		{UUID: "ok", Miner: m.SS58(), Class: test, Seconds: 2.5, Completed: true},
		{UUID: "failed", Miner: m.SS58(), Class: gpu, Seconds: 0.5},
		{UUID: "noclass", Miner: m.SS58(), Seconds: 1, Completed: true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("jobs (-want +got):\n%s", diff)
	}
}

func hotkey(t *testing.T) *sig.Hotkey {
	k, err := sig.FromSeed(sig.RandomSeed())
	if err != nil {
		t.Fatal(err)
	}
	return k
}
