package hordetest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/internal/store/sqlite"
	"github.com/horde-compute/horde/internal/validation"
	"github.com/horde-compute/horde/internal/validator"
	"github.com/horde-compute/horde/protocol"
)

// Two miners serve the demo LLM; one answers every request with a cheaper
// model. Clients report their pairs; a validation window replays them on the
// validator's trusted miner: the cheater is caught with evidence, the honest
// miner never flagged.
func TestValidationWindowCatchesSwappedModel(t *testing.T) {
	digest := OnFake.LLMDigest(t)
	h := StartFake(t, devstack.Config{Miners: 2, Manifest: map[string]int{"always_on.test": 1},
		StreamingWhitelist: map[string]string{images.LLMImage: digest},
		StreamCheaters:     map[int]float64{1: 1.0}, TrustedMiner: true,
		Validation: validator.ValidationConfig{Sample: 1, Comparators: map[string]validation.Comparator{images.LLMImage: validation.LLM{}}}})
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	streams := make([]*client.Stream, 2)
	errs := make(chan error, 2)
	for i := range streams {
		go func() {
			st, err := h.Client.StartStreaming(ctx, streamSpec(), nil)
			streams[i] = st
			errs <- err
		}()
	}
	for range streams {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	reported := 0
	for _, st := range streams {
		hc, _ := st.HTTPClient()
		for _, p := range []string{"a client that keeps its receipts", "every answer carries a receipt", "good systems are boring",
			"the market grows when", "if the trusted machine disagrees", "when a machine fails"} {
			req := []byte(fmt.Sprintf(`{"prompt": %q, "max_tokens": 12, "temperature": 0}`, p))
			var out bytes.Buffer
			res, err := st.Call(ctx, hc, "POST", "/v1/completions", req, &out)
			if err != nil {
				t.Fatal(err)
			}
			if err := h.Client.ReportPair(ctx, st.JobUUID, client.Pair("POST", "/v1/completions", req, out.Bytes(), res)); err != nil {
				t.Fatal(err)
			}
			reported++
		}
	}
	vdb, err := sqlite.Open(ctx, filepath.Join(h.DataDir, "validator.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer vdb.Close()
	for deadline := time.Now().Add(15 * time.Second); ; {
		kept, _, _ := vdb.PairsForImage(ctx, images.LLMImage, 0, 1000)
		if len(kept) == reported {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the validator has %d of %d pairs", len(kept), reported)
		}
		time.Sleep(100 * time.Millisecond)
	}
	rep, err := h.Validate(ctx, images.LLMImage)
	if err != nil {
		t.Fatal(err)
	}
	cheater := h.Miners[1].SS58()
	failedBy := map[string]int{}
	for _, v := range rep.Verdicts {
		if v.Error != "" {
			t.Errorf("verdict error: %s", v.Error)
		}
		if !v.Verdict.Pass {
			failedBy[v.Miner]++
		}
	}
	t.Logf("window: %d pairs, %d checked, %d failed (%v), trusted %.1fs, covered %.1fs", rep.Pairs, rep.Checked, rep.Failed, failedBy, rep.TrustedSeconds, rep.CoveredSeconds)
	if rep.Checked != reported || failedBy[cheater] == 0 || len(failedBy) != 1 {
		t.Errorf("the cheater %s was not singled out: %v", cheater[:8], failedBy)
	}
	cheats, err := vdb.Cheats(ctx, time.Now().Add(-time.Hour))
	if err != nil || len(cheats) != failedBy[cheater] || cheats[0].Miner != cheater {
		t.Errorf("cheats kept = %d, %v", len(cheats), err)
	}
	// Each conviction's evidence re-verifies without the validator: the
	// replayed request is the very request the cheater's receipt binds.
	for _, c := range cheats {
		var ev validation.Evidence
		if err := json.Unmarshal(c.Evidence, &ev); err != nil {
			t.Fatal(err)
		}
		rc, err := validation.CheckEvidence(&ev)
		if err != nil {
			t.Errorf("evidence of %s does not re-verify: %v", c.RequestID, err)
			continue
		}
		if rc.Version != 2 || rc.Method != "POST" || rc.Target != "/v1/completions" || rc.RequestContentType != "application/json" ||
			c.ReplaySHA256 != rc.RequestDigest() || ev.Replay.RequestSHA256 != c.ReplaySHA256 || c.RequestID != rc.RequestID || ev.Replay.TrustedJob != rep.TrustedJob {
			t.Errorf("cheat %+v: receipt %+v, replay %+v", c, rc, ev.Replay)
		}
	}
	// A second window finds nothing new to check: every pair was covered.
	if _, err := h.Validate(ctx, images.LLMImage); err != validator.ErrNoPairs {
		t.Errorf("second window: %v", err)
	}
	// The cycle's scores: the proven cheat zeroes the cheater, whatever its synthetic results.
	for _, st := range streams {
		h.Client.Stop(ctx, st.JobUUID)
		if _, err := h.Client.Watch(ctx, st.JobUUID, func(protocol.StatusEntry) {}); err != nil {
			t.Fatal(err)
		}
	}
	round, err := h.Round(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sc := range round.Scores {
		d := details(t, sc.Details)
		if sc.Miner == cheater && (sc.Score != 0 || !strings.Contains(d.Note, "cheating proved")) {
			t.Errorf("cheater scored %v (%s)", sc.Score, d.Note)
		}
		if sc.Miner != cheater && sc.Score == 0 {
			t.Errorf("honest miner scored 0: %+v", d)
		}
	}
}

// A trusted miner that cannot serve the window leaves the pairs queued.
func TestValidationWindowKeepsPairsWhenTrustedMinerFails(t *testing.T) {
	digest := OnFake.LLMDigest(t)
	// The trusted miner is asked for a class it does not have: it declines.
	h := StartFake(t, devstack.Config{StreamingWhitelist: map[string]string{images.LLMImage: digest}, TrustedMiner: true,
		Validation: validator.ValidationConfig{Sample: 1, Class: "always_on.gpu-24gb"}})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	st, err := h.Client.StartStreaming(ctx, streamSpec(), nil)
	if err != nil {
		t.Fatal(err)
	}
	hc, _ := st.HTTPClient()
	req := []byte(`{"prompt": "the miner", "max_tokens": 4, "temperature": 0}`)
	var out bytes.Buffer
	res, err := st.Call(ctx, hc, "POST", "/v1/completions", req, &out)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Client.ReportPair(ctx, st.JobUUID, client.Pair("POST", "/v1/completions", req, out.Bytes(), res)); err != nil {
		t.Fatal(err)
	}
	vdb, err := sqlite.Open(ctx, filepath.Join(h.DataDir, "validator.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer vdb.Close()
	pending := func() int {
		last, _ := vdb.LastPair(ctx, images.LLMImage)
		p, _, _ := vdb.PairsForImage(ctx, images.LLMImage, last, 10)
		return len(p)
	}
	for deadline := time.Now().Add(10 * time.Second); pending() != 1; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the pair did not reach the validator")
		}
	}
	_, err = h.Validate(ctx, images.LLMImage)
	if err == nil || !strings.Contains(err.Error(), "trusted miner") {
		t.Fatalf("window on a trusted miner that declines: %v", err)
	}
	if n := pending(); n != 1 {
		t.Errorf("after the failed window %d pairs wait, want 1", n)
	}
	h.Client.Stop(ctx, st.JobUUID)
}

// The validator's own canary requests go to a streaming job like a client's;
// their pairs are validated like any other and catch a cheater.
func TestCanaryRequests(t *testing.T) {
	digest := OnFake.LLMDigest(t)
	h := StartFake(t, devstack.Config{Manifest: map[string]int{"always_on.test": 1},
		StreamingWhitelist: map[string]string{images.LLMImage: digest},
		StreamCheaters:     map[int]float64{0: 1.0}, TrustedMiner: true,
		Validation: validator.ValidationConfig{Sample: 1, Comparators: map[string]validation.Comparator{images.LLMImage: validation.LLM{}}}})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var reqs [][]byte
	for _, p := range []string{"a client that keeps its receipts", "every answer carries a receipt", "good systems are boring", "the market grows when"} {
		reqs = append(reqs, []byte(fmt.Sprintf(`{"prompt": %q, "max_tokens": 12, "temperature": 0}`, p)))
	}
	n, err := h.Canary(ctx, images.LLMImage, reqs, "/v1/completions")
	if err != nil || n != len(reqs) {
		t.Fatalf("canary kept %d pairs: %v", n, err)
	}
	rep, err := h.Validate(ctx, images.LLMImage)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Checked != len(reqs) || rep.Failed == 0 {
		t.Errorf("window over canary pairs: %d checked, %d failed", rep.Checked, rep.Failed)
	}
}
