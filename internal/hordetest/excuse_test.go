package hordetest

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/synthetic"
	"github.com/horde-compute/horde/internal/validator"
	"github.com/horde-compute/horde/protocol"
)

// A miner busy with a client's work at round time is excused, not failed,
// and is paid for that work in the round after it ends; a miner that
// excuses itself with receipts it signed itself fails every job it
// declines. On the fake runtime: a real miner with one executor serving a
// client's streaming job, and a fake miner that is always busy.
func TestRoundExcusesClientWork(t *testing.T) {
	liar := StartFakeMiner(t, &FakeMiner{Mode: "busy", Excuses: "self", Manifest: map[string]int{protocol.ClassTest: 2}})
	params := synthetic.Params{SearchSpace: 1000, MatrixN: 8, Expected: 20 * time.Second, Weight: 1}
	h := StartFake(t, devstack.Config{Manifest: map[string]int{protocol.ClassTest: 1}, ExtraNeurons: []chain.Neuron{liar.Neuron},
		StreamingWhitelist: map[string]string{images.LLMImage: OnFake.LLMDigest(t)},
		Synthetic: validator.SyntheticConfig{Params: map[string]synthetic.Params{protocol.ClassTest: params},
			Generators: []synthetic.Generator{synthetic.Search{}}}})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	honest, lying := h.Miners[0].SS58(), liar.Hotkey.SS58()

	st, err := h.Client.StartStreaming(ctx, streamSpec(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.MinerHotkey != honest {
		t.Fatalf("the stream runs on %s, not on the honest miner", st.MinerHotkey)
	}
	rep1, err := h.Round(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cr := rep1.Details[honest].Classes[protocol.ClassTest]; cr == nil || cr.Excused != 1 || cr.Failed != 0 || !cr.Gate {
		t.Errorf("round 1, honest miner busy with the stream: %+v", cr)
	}
	if cr := rep1.Details[lying].Classes[protocol.ClassTest]; cr == nil || cr.Failed != 2 || cr.Gate ||
		!strings.Contains(strings.Join(cr.Reasons, ";"), "declined as busy without valid excuses") {
		t.Errorf("round 1, self-excused miner: %+v", cr)
	}
	var honestExcuses, lies int
	for _, v := range rep1.Excuses {
		switch v.Miner {
		case honest:
			honestExcuses++
			if !v.Valid || v.Job != st.JobUUID || v.Signer != h.Validator.SS58() {
				t.Errorf("honest miner's excuse: %+v", v)
			}
		case lying:
			lies++
			if v.Valid || !strings.Contains(v.Reason, "signed by the miner itself") {
				t.Errorf("self-signed excuse: %+v", v)
			}
		}
	}
	if honestExcuses != 1 || lies != 4 {
		t.Errorf("%d excuses of the honest miner judged, %d of the liar; want 1 and 4 (2 declines × 2 receipts)", honestExcuses, lies)
	}
	if slices.ContainsFunc(rep1.Counted, func(c store.Counted) bool { return c.JobUUID == st.JobUUID }) {
		t.Error("the stream was counted before it ended")
	}

	if _, err := h.Client.Stop(ctx, st.JobUUID); err != nil {
		t.Fatal(err)
	}
	done, err := h.Client.Watch(ctx, st.JobUUID, func(protocol.StatusEntry) {})
	if err != nil || done.Status != protocol.StatusCompleted {
		t.Fatalf("stream ended %v, %v", done, err)
	}
	rep2, err := h.Round(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The executor may still be freeing itself: passed or excused, never failed.
	if cr := rep2.Details[honest].Classes[protocol.ClassTest]; cr == nil || cr.Failed != 0 || cr.Passed+cr.Excused != 1 || !cr.Gate {
		t.Errorf("round 2, honest miner: %+v", cr)
	}
	i := slices.IndexFunc(rep2.Counted, func(c store.Counted) bool { return c.JobUUID == st.JobUUID })
	if i < 0 {
		t.Fatalf("the stream was not counted in the round after it ended: %+v", rep2.Counted)
	}
	if c := rep2.Counted[i]; c.Miner != honest || c.Class != protocol.ClassTest || c.Pay <= 0 || c.Reason != "" {
		t.Errorf("stream counted %+v; want it paid to the honest miner", c)
	}
	for _, s := range rep2.Scores {
		if s.Miner == honest && s.Score < rep2.Counted[i].Pay {
			t.Errorf("honest miner scored %v, less than the stream's pay %v", s.Score, rep2.Counted[i].Pay)
		}
		if s.Miner == lying && s.Score != 0 {
			t.Errorf("the self-excused miner scored %v", s.Score)
		}
	}
}

// A round right after a canary tests the executor the canary used: the
// miner may still be freeing it and decline as busy, with the canary's
// receipt as excuse; the round offers again until it is free (in horde dev
// canaries and rounds fired on the same timer, and the only miner's rounds
// were declined as busy). Canaries and rounds never run at once (see the
// validator's tests).
func TestRoundRightAfterCanaryTestsTheExecutor(t *testing.T) {
	params := synthetic.Params{SearchSpace: 1000, MatrixN: 8, Expected: 20 * time.Second, Weight: 1}
	h := StartFake(t, devstack.Config{Manifest: map[string]int{protocol.ClassTest: 1},
		StreamingWhitelist: map[string]string{images.LLMImage: OnFake.LLMDigest(t)},
		Synthetic: validator.SyntheticConfig{Params: map[string]synthetic.Params{protocol.ClassTest: params},
			Generators: []synthetic.Generator{synthetic.Search{}}}})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	requests := [][]byte{[]byte(`{"prompt": "a canary", "max_tokens": 4, "temperature": 0}`), []byte(`{"prompt": "another", "max_tokens": 4, "temperature": 0}`)}
	n, err := h.Canary(ctx, images.LLMImage, requests, "/v1/completions")
	if err != nil || n != len(requests) {
		t.Fatalf("canary: kept %d pairs, %v", n, err)
	}
	rep, err := h.Round(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cr := rep.Details[h.Miners[0].SS58()].Classes[protocol.ClassTest]; cr == nil || cr.Passed != 1 {
		t.Errorf("round: %+v; want the executor tested and passed", cr)
	}
}
