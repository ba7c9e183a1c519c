package validator

import (
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/horde-compute/horde/internal/validator/minertest"
	"github.com/horde-compute/horde/protocol"
)

// oneExecutor plays an honest miner with a single executor: it declines an
// offer as busy while a job runs. A streaming job serves until stopped;
// others run for a second.
func oneExecutor(m *minertest.Miner) func(minertest.Peer, protocol.Message) {
	var mu sync.Mutex
	running := ""
	free := func(job string) {
		mu.Lock()
		defer mu.Unlock()
		if running == job {
			running = ""
		}
	}
	return func(p minertest.Peer, f protocol.Message) {
		switch f := f.(type) {
		case *protocol.V0InitialJobRequest:
			mu.Lock()
			defer mu.Unlock()
			if running != "" {
				p.Send(&protocol.V0DeclineJobRequest{JobUUID: f.JobUUID, Reason: protocol.RejectBusy})
				return
			}
			running = f.JobUUID
			m.Honest(p, f)
		case *protocol.V0JobRequest:
			if in := m.Initial(f.JobUUID); in != nil && in.StreamingDetails != nil {
				m.Honest(p, f)
				return
			}
			p.Send(&protocol.V0VolumesReadyRequest{JobUUID: f.JobUUID})
			go func() { // ends after a second, in the test's bubble
				time.Sleep(time.Second)
				free(f.JobUUID)
				p.Send(&protocol.V0ExecutionDoneRequest{JobUUID: f.JobUUID})
				p.Send(minertest.Finished(f))
			}()
		case *protocol.V0StopJobRequest:
			free(f.JobUUID)
			m.Honest(p, f)
		default:
			m.Honest(p, f)
		}
	}
}

// Canaries and rounds never compete for the same executors: with both on
// the same one-minute timer (as horde dev sets them) the only miner, with
// one executor, has it tested in each of five rounds and serves each
// canary; called at the same moment, both get it too.
func TestCanariesAndRoundsDoNotCompete(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, map[string]int{protocol.ClassTest: 1})
		m.Reply = oneExecutor(m)
		cfg := Config{StreamingWhitelist: map[string]string{"llm": "sha256:1"},
			Synthetic: SyntheticConfig{Every: time.Minute, Image: "img"},
			Validation: ValidationConfig{CanaryEvery: time.Minute,
				Canaries: map[string]CanarySpec{"llm": {Path: "/v1/completions", Requests: [][]byte{[]byte("hello")}}}}}
		h := newHarness(t, cfg, m)
		defer h.stop()
		time.Sleep(5*time.Minute + 30*time.Second)
		synctest.Wait()
		scores, err := h.st.LatestScores(t.Context(), 10)
		if err != nil || len(scores) != 5 {
			t.Fatalf("%d rounds scored, want 5 (%v)", len(scores), err)
		}
		for _, s := range scores {
			rs, err := h.st.SyntheticResults(t.Context(), s.Cycle)
			if err != nil || len(rs) != 1 || !rs[0].Passed || rs[0].Reason != "" {
				t.Errorf("round %d: %+v %v; want the executor tested and passed", s.Cycle, rs, err)
			}
		}
		if n, err := h.v.PairsWaiting(t.Context(), "llm"); err != nil || n != 5 {
			t.Errorf("%d canary pairs kept, want 5 (%v)", n, err)
		}

		// At the same moment, by hand.
		var wg sync.WaitGroup
		wg.Go(func() {
			if n, err := h.v.Canary(t.Context(), "llm", [][]byte{[]byte("now")}, "/"); err != nil || n != 1 {
				t.Errorf("canary: %d, %v", n, err)
			}
		})
		rep, err := h.v.Round(t.Context())
		wg.Wait()
		if err != nil || len(rep.Results) != 1 || !rep.Results[0].Passed || rep.Results[0].Reason != "" {
			t.Errorf("round: %+v, %v", rep, err)
		}
	})
}
