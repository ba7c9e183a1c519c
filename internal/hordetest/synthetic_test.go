package hordetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/synthetic"
	"github.com/horde-compute/horde/internal/validator"
	"github.com/horde-compute/horde/protocol"
)

func details(t *testing.T, raw json.RawMessage) validator.ScoreDetails {
	var d validator.ScoreDetails
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	return d
}

// One round against an honest miner and one whose two claimed executors
// share one CPU: the cheater is too slow on every job and scores zero; the
// honest miner takes all the weight, its organic job counted too.
//
// CPU-timing-sensitive: it times real containers on one core against two
// (devstack.Calibrate) and then judges the round by those times; another
// process using the cores between calibration and round moves both. Run it
// with no other package beside it.
func TestSyntheticRoundCatchesSharedHardware(t *testing.T) {
	// A round that passes both the honest miner and the cheater says
	// nothing about the validator: this machine's timing did not slow the
	// shared core beyond the allowance that time (other tenants of the
	// host). Such an attempt is logged and made again, calibration
	// included, on a fresh horde (the last one stopped), at most twice; a
	// round that convicts the honest miner is judged as it is.
	for attempt := 1; attempt <= 3; attempt++ {
		again := false
		t.Run(fmt.Sprintf("attempt %d", attempt), func(t *testing.T) { again = sharedHardwareRound(t, attempt == 3) })
		if !again {
			return
		}
	}
}

// sharedHardwareRound is one attempt of TestSyntheticRoundCatchesSharedHardware;
// true if it was inconclusive (and not the last).
func sharedHardwareRound(t *testing.T, last bool) (again bool) {
	params, err := devstack.Calibrate(t.Context(), Docker(t), time.Second)
	if errors.Is(err, devstack.ErrNoSeparation) {
		// Other work holds both cores: two jobs on one core are no slower
		// than on two, so no allowance can tell a cheater now. Measured,
		// not assumed: the ratio is in the error.
		t.Skipf("this machine cannot tell one core from two right now: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	h := Start(t, devstack.Config{Miners: 2, Cheaters: map[int]bool{1: true},
		Synthetic: validator.SyntheticConfig{Params: map[string]synthetic.Params{protocol.ClassTest: params},
			Generators: []synthetic.Generator{synthetic.Matmul{}, synthetic.Search{}}, Sequential: true}})
	organic := h.Run(t, Spec("echo", "organic"))
	rep, err := h.Round(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	honest, cheater := h.Miners[0].SS58(), h.Miners[1].SS58()
	if !last && inconclusive(t, rep, honest, cheater) {
		t.Log("the cheater's shared core was not slowed beyond the allowance this time: again")
		return true
	}
	if len(rep.Results) != 4 {
		t.Fatalf("%d synthetic jobs, want 4 (2 claimed executors × 2 miners)", len(rep.Results))
	}
	byMiner := map[string]float64{}
	for _, s := range rep.Scores {
		byMiner[s.Miner] = s.Weight
		d := details(t, s.Details)
		cr := d.Classes[protocol.ClassTest]
		t.Logf("%s weight %.3f score %.3f classes %+v receipts %d", s.Miner[:8], s.Weight, s.Score, *cr, len(d.Receipts))
		switch s.Miner {
		case honest:
			if cr.Passed != 2 || !cr.Gate || s.Weight != 1 {
				t.Errorf("honest miner: %+v weight %v", cr, s.Weight)
			}
			if served := Last(organic).Metadata.MinerHotkey; served == honest && !strings.Contains(strings.Join(d.Receipts, " "), organic.UUID) {
				t.Errorf("honest miner's organic job not counted: %v", d.Receipts)
			}
		case cheater:
			if cr.Gate || s.Score != 0 || s.Weight != 0 || !strings.Contains(strings.Join(cr.Reasons, ";"), "too slow") || len(d.Receipts) != 0 {
				t.Errorf("cheater: %+v score %v weight %v receipts %v", cr, s.Score, s.Weight, d.Receipts)
			}
		}
	}
	if len(byMiner) != 2 {
		t.Errorf("scores for %d miners", len(byMiner))
	}
	// The facilitator shows the same scores to clients.
	reports, err := h.Client.Scores(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute) // the report goes through the validator's outbox and link
	for len(reports) == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		reports, _ = h.Client.Scores(t.Context())
	}
	rv, ok := reports[h.Validator.SS58()]
	if !ok || rv.Cycle != rep.Cycle {
		t.Fatalf("facilitator reports = %v", reports)
	}
	return false
}

// inconclusive says whether a round passed both the honest miner and the
// cheater: the machine did not slow the shared core enough that time.
func inconclusive(t *testing.T, rep *validator.Report, honest, cheater string) bool {
	passed := map[string]bool{}
	for _, s := range rep.Scores {
		if cr := details(t, s.Details).Classes[protocol.ClassTest]; cr != nil {
			passed[s.Miner] = cr.Gate
			t.Logf("%s: %+v", s.Miner[:8], *cr)
		}
	}
	return passed[honest] && passed[cheater]
}

// Misbehaving miners are each scored correctly with a reason, and none
// stops the round for the others.
//
// Timing-sensitive: the honest fakes must answer within the 2 s allowance
// and the slow one (3 s) must not; a starved test process blurs the two.
func TestSyntheticRoundBadMiners(t *testing.T) {
	params := synthetic.Params{SearchSpace: 5000, MatrixN: 24, Expected: 2 * time.Second, Weight: 1}
	two := map[string]int{protocol.ClassTest: 2}
	fakes := map[string]*FakeMiner{
		"honest":  {Mode: "honest", Manifest: two},
		"wrong":   {Mode: "wrong", Manifest: two},
		"slow":    {Mode: "slow", Delay: 3 * time.Second, Manifest: two},
		"silent":  {Mode: "silent", Manifest: two},
		"busy":    {Mode: "busy", Manifest: two},
		"forger":  {Mode: "honest", Receipts: "forge", Manifest: two},
		"alterer": {Mode: "honest", Receipts: "alter", Manifest: two},
		"replay":  {Mode: "honest", Receipts: "replay", Manifest: two},
	}
	var neurons []chain.Neuron
	name := map[string]string{}
	for n, f := range fakes {
		StartFakeMiner(t, f)
		neurons = append(neurons, f.Neuron)
		name[f.Hotkey.SS58()] = n
	}
	// The real miner offers a class the round does not test, so it takes no part.
	h := StartFake(t, devstack.Config{ExtraNeurons: neurons, Manifest: map[string]int{protocol.ClassCPU8c16gb: 1},
		Synthetic: validator.SyntheticConfig{Params: map[string]synthetic.Params{protocol.ClassTest: params},
			Generators: []synthetic.Generator{synthetic.Search{}, synthetic.Matmul{}}}})
	rep, err := h.Round(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]store.MinerScore{}
	for _, s := range rep.Scores {
		if n, ok := name[s.Miner]; ok {
			got[n] = s
		}
	}
	want := map[string]struct {
		passed int
		reason string
		scored bool
	}{
		"honest":  {2, "", true},
		"wrong":   {0, "wrong answer", false},
		"slow":    {0, "too slow", false},
		"silent":  {0, "executor_readiness_response_timed_out", false},
		"busy":    {0, "declined as busy without valid excuses", false},
		"forger":  {2, "", false},
		"alterer": {2, "", false},
		"replay":  {2, "", true},
	}
	for n, w := range want {
		s, ok := got[n]
		if !ok {
			t.Errorf("%s: no score", n)
			continue
		}
		d := details(t, s.Details)
		cr := d.Classes[protocol.ClassTest]
		if cr == nil || cr.Passed != w.passed || (w.reason != "" && !strings.Contains(strings.Join(cr.Reasons, ";"), w.reason)) {
			t.Errorf("%s: class result %+v, want %d passed and a reason with %q", n, cr, w.passed, w.reason)
		}
		if (s.Score > 0) != w.scored {
			t.Errorf("%s: score %v (receipts %v, refused %v)", n, s.Score, d.Receipts, d.RejectedReceipts)
		}
	}
	// Forged and altered receipts are refused with the reason; replays count once.
	for n, reason := range map[string]string{"forger": "signature", "alterer": "signature"} {
		if d := details(t, got[n].Details); !strings.Contains(strings.Join(d.RejectedReceipts, ";"), reason) {
			t.Errorf("%s: refused receipts %v", n, d.RejectedReceipts)
		}
	}
	if h, r := got["honest"], got["replay"]; len(details(t, r.Details).Receipts) != len(details(t, h.Details).Receipts) {
		t.Errorf("replayed receipts counted %d times, honest %d", len(details(t, r.Details).Receipts), len(details(t, h.Details).Receipts))
	}
}
