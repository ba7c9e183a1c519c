package rounds_test

import (
	"encoding/json"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/uuid"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/validator/jobrun"
	"github.com/horde-compute/horde/internal/validator/minertest"
	"github.com/horde-compute/horde/internal/validator/rounds"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
)

// capacity plays an honest miner with as many executors as it claims: it
// accepts an offer while one is free and otherwise declines as busy, with
// the countersigned started receipts of the client jobs it runs as excuses.
// A job runs for the seconds its "sleep" argument says, others for 1 s; a
// streaming job serves until stopped.
func capacity(m *minertest.Miner) func(minertest.Peer, protocol.Message) {
	return tearingDown(m, 0)
}

// tearingDown is capacity whose executors stay taken for teardown after
// their job's result.
func tearingDown(m *minertest.Miner, teardown time.Duration) func(minertest.Peer, protocol.Message) {
	var mu sync.Mutex
	running := map[string]bool{} // job uuid → organic
	return func(p minertest.Peer, f protocol.Message) {
		switch f := f.(type) {
		case *protocol.V0InitialJobRequest:
			mu.Lock()
			defer mu.Unlock()
			if len(running) < m.Manifest[f.ExecutorClass] {
				var sp receipt.StartedPayload
				json.Unmarshal(f.JobStartedReceiptPayload, &sp)
				running[f.JobUUID] = sp.IsOrganic
				p.Send(&protocol.V0AcceptJobRequest{JobUUID: f.JobUUID})
				p.Send(&protocol.V0ExecutorReadyRequest{JobUUID: f.JobUUID})
				return
			}
			var excuses []json.RawMessage
			for job, organic := range running {
				in := m.Initial(job)
				if !organic || in == nil {
					continue
				}
				r := receipt.Receipt{Type: receipt.JobStarted, Payload: in.JobStartedReceiptPayload, ValidatorSignature: in.JobStartedReceiptSignature}
				p, _ := r.Decode()
				r.MinerSignature, _ = receipt.Sign(m.Hotkey, p)
				b, _ := json.Marshal(r)
				excuses = append(excuses, b)
			}
			p.Send(&protocol.V0DeclineJobRequest{JobUUID: f.JobUUID, Reason: protocol.RejectBusy, Receipts: excuses})
		case *protocol.V0JobRequest:
			p.Send(&protocol.V0VolumesReadyRequest{JobUUID: f.JobUUID})
			if in := m.Initial(f.JobUUID); in != nil && in.StreamingDetails != nil {
				p.Send(m.StreamingReady(f.JobUUID)) // serves until stopped
				return
			}
			d := time.Second
			if len(f.DockerRunCmd) == 2 && f.DockerRunCmd[0] == "sleep" {
				s, _ := strconv.Atoi(f.DockerRunCmd[1])
				d = time.Duration(s) * time.Second
			}
			go func() { // ends after d and the teardown, within the test's bubble
				time.Sleep(d)
				p.Send(&protocol.V0ExecutionDoneRequest{JobUUID: f.JobUUID})
				p.Send(minertest.Finished(f))
				time.Sleep(teardown)
				mu.Lock()
				delete(running, f.JobUUID)
				mu.Unlock()
			}()
		case *protocol.V0StopJobRequest:
			p.Send(&protocol.V0ExecutionDoneRequest{JobUUID: f.JobUUID})
			p.Send(&protocol.V0JobFinishedRequest{JobUUID: f.JobUUID, DockerProcessStdout: "stopped\n"})
			mu.Lock()
			delete(running, f.JobUUID)
			mu.Unlock()
		}
	}
}

// client runs a client's job of s seconds on miner m, as the validator
// routes one; wait waits for its end.
func (f *fixture) client(t *testing.T, wg *sync.WaitGroup, m *minertest.Miner, seconds int) string {
	id := uuid.NewString()
	lease, err := f.pool.LeaseOn(m.Hotkey.SS58(), id, class)
	if err != nil {
		t.Fatal(err)
	}
	spec := &protocol.JobSpec{ExecutorClass: class, DockerImage: "client", Args: []string{"sleep", strconv.Itoa(seconds)},
		DownloadTimeLimit: 30, ExecutionTimeLimit: 600, UploadTimeLimit: 30}
	wg.Go(func() {
		o := jobrun.New(f.run, jobrun.Job{UUID: id, Spec: spec, Organic: true}, m.Hotkey.SS58(), lease, lease, nobody{}).Execute(t.Context())
		lease.Release(false)
		if o.Status != protocol.StatusCompleted {
			t.Errorf("client job %s: %s", id, o.Reason(""))
		}
	})
	return id
}

type nobody struct{}

func (nobody) Status(protocol.JobStatus, *protocol.StatusMetadata) {}
func (nobody) VolumeResult(*protocol.V0VolumeResult)               {}

// Cycles of a minute. A miner with two executors runs a client job of
// 150 s started in cycle 1 (it ends in cycle 4) and one of 70 s started in
// cycle 2 (it ends in cycle 3); each round offers both executors, and the
// miner declines as busy, with the client jobs' receipts, what it cannot
// take. By hand (class weight 1, synthetic jobs of 1 s):
//
//	round 1 (t=0):   1 synthetic (1 s), 1 excused (150-s job)  → 1
//	round 2 (t=60):  both excused (150-s and 70-s jobs)       → 0
//	round 3 (t=120): 1 synthetic, 1 excused; 70-s job ended   → 1 + 70 = 71
//	round 4 (t=180): 2 synthetic; 150-s job ended              → 2 + 150 = 152
//
// Each client job is counted once, in the cycle it ended, with its class
// from the receipt the validator signed when it started.
func TestLongJobsCountedOnceWhenTheyEnd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, map[string]int{class: 2})
		m.Reply = capacity(m)
		f := newFixture(t, false, nil, m)
		defer f.close()
		var clients sync.WaitGroup
		t0 := time.Now()
		if _, err := f.r.Round(t.Context()); err != nil { // connects the miner
			t.Fatal(err)
		}
		time.Sleep(t0.Add(10 * time.Second).Sub(time.Now()))

		long := f.client(t, &clients, m, 150)
		synctest.Wait()
		time.Sleep(time.Second) // an excuse must be older than the offer it excuses
		t0 = time.Now()
		var cycles []int64
		want := []struct {
			score           float64
			passed, excused int
		}{
			{1, 1, 1},
			{0, 0, 2},
			{71, 1, 1},
			{152, 2, 0},
		}
		var medium string
		for i, w := range want {
			time.Sleep(t0.Add(time.Duration(i) * time.Minute).Sub(time.Now()))
			rep, err := f.r.Round(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			cycles = append(cycles, rep.Cycle)
			cr := rep.Details[m.Hotkey.SS58()].Classes[class]
			if rep.Scores[0].Score != w.score || cr.Passed != w.passed || cr.Excused != w.excused || !cr.Gate {
				vs, _ := f.st.ExcuseVerdicts(t.Context(), rep.Cycle)
				t.Errorf("round %d: score %v, class %+v; want %v, %d passed, %d excused; excuses %+v", i+1, rep.Scores[0].Score, cr, w.score, w.passed, w.excused, vs)
			}
			if i == 0 {
				time.Sleep(30 * time.Second)
				medium = f.client(t, &clients, m, 70)
				synctest.Wait()
			}
		}
		clients.Wait()
		counted := map[string][]store.Counted{}
		for _, c := range cycles {
			cs, err := f.st.Counted(t.Context(), c)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range cs {
				counted[k.JobUUID] = append(counted[k.JobUUID], k)
			}
		}
		for name, id := range map[string]string{"long": long, "medium": medium} {
			cs := counted[id]
			wantCycle, wantPay := cycles[3], 150.0
			if name == "medium" {
				wantCycle, wantPay = cycles[2], 70
			}
			if len(cs) != 1 || cs[0].Cycle != wantCycle || cs[0].Pay != wantPay || cs[0].Class != class {
				t.Errorf("%s job counted %+v; want once, in cycle %d, paid %v", name, cs, wantCycle, wantPay)
			}
		}
		// And nothing is left to count.
		if work, _ := f.st.Uncounted(t.Context()); len(work) != 0 {
			t.Errorf("%d jobs left uncounted", len(work))
		}
	})
}

// A miner unreachable during a round is paid for its work once it is
// reachable again: its client job of 5 s ended before round 1, during which
// the miner is down (score 0, the job waits); round 2 fetches its receipts
// and pays 5 s + its synthetic job's 1 s. The receipts are fetched from
// where the last fetch ended, and nothing is counted twice.
func TestUnreachableMinerPaidLater(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := minertest.New(t, map[string]int{class: 1})
		a.Reply = capacity(a)
		b := minertest.New(t, map[string]int{class: 1})
		b.Reply = capacity(b)
		f := newFixture(t, false, nil, a, b)
		defer f.close()
		if _, err := f.r.Round(t.Context()); err != nil { // connects the miners
			t.Fatal(err)
		}
		var clients sync.WaitGroup
		job := f.client(t, &clients, b, 5)
		clients.Wait()
		f.net.SetDown(b, true)
		synctest.Wait() // the pool has seen b's session end

		rep1, err := f.r.Round(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		f.net.SetDown(b, false)
		synctest.Wait() // the last round's fakes have freed their executors
		rep2, err := f.r.Round(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		rep3, err := f.r.Round(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for i, tt := range []struct {
			rep       *rounds.Report
			a, b      float64
			bPending  int
			reachable bool
		}{
			{rep1, 1, 0, 1, false},
			{rep2, 1, 6, 0, true},
			{rep3, 1, 1, 0, true},
		} {
			if got := scoreOf(tt.rep, a.Hotkey.SS58()); got != tt.a {
				t.Errorf("round %d: a scored %v, want %v", i+1, got, tt.a)
			}
			if got := scoreOf(tt.rep, b.Hotkey.SS58()); got != tt.b {
				t.Errorf("round %d: b scored %v, want %v", i+1, got, tt.b)
			}
			if d := tt.rep.Details[b.Hotkey.SS58()]; d.Pending != tt.bPending || d.Reachable != tt.reachable {
				t.Errorf("round %d: b pending %d reachable %v", i+1, d.Pending, d.Reachable)
			}
		}
		cs, err := f.st.Counted(t.Context(), rep2.Cycle)
		if err != nil {
			t.Fatal(err)
		}
		paid := 0
		for _, c := range cs {
			if c.JobUUID == job {
				paid++
				if c.Pay != 5 || c.Miner != b.Hotkey.SS58() {
					t.Errorf("client job counted %+v", c)
				}
			}
		}
		if paid != 1 {
			t.Errorf("client job counted %d times in round 2", paid)
		}
		if cur, err := f.st.ReceiptCursor(t.Context(), b.Hotkey.SS58()); err != nil || cur == "" {
			t.Errorf("b's receipt cursor %q, %v", cur, err)
		}
	})
}

func scoreOf(rep *rounds.Report, hk string) float64 {
	for _, s := range rep.Scores {
		if s.Miner == hk {
			return s.Score
		}
	}
	return -1
}

// A round right after this validator's own client job ended finds the
// executor still being freed: the miner declines as busy with that job's
// receipt. The round offers again until the executor is free, and tests it.
func TestRoundOffersAgainWhileOwnJobTearsDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, map[string]int{class: 1})
		// Freed 1.75 s after the client job: between two offers, never at
		// the instant of one (which of two goroutines woken at one instant
		// runs first is not fixed).
		m.Reply = tearingDown(m, 1750*time.Millisecond)
		f := newFixture(t, false, nil, m)
		defer f.close()
		if _, err := f.r.Round(t.Context()); err != nil { // connects the miner
			t.Fatal(err)
		}
		time.Sleep(10 * time.Second)
		var clients sync.WaitGroup
		f.client(t, &clients, m, 5)
		clients.Wait()
		start := time.Now()
		rep, err := f.r.Round(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		cr := rep.Details[m.Hotkey.SS58()].Classes[class]
		if cr.Passed != 1 || cr.Excused != 0 || len(rep.Results) != 1 {
			t.Errorf("class %+v; want the executor tested once it was free", cr)
		}
		// Declined at 0, 0.5, 1 and 1.5 s; accepted at 2 s; the job takes 1 s.
		if took := time.Since(start); took != 3*time.Second {
			t.Errorf("round took %s, want 3s", took)
		}
		if offers := len(m.Offers()); offers != 1+1+5 {
			t.Errorf("%d offers, want 7 (first round, client job, 4 declined and 1 accepted)", offers)
		}
		time.Sleep(2 * time.Second) // the miner frees the last executor
	})
}

// A client's stream on a miner's only executor serves from before round 1
// until it is stopped between rounds 3 and 4 (151 s). Rounds 1–3 find the
// executor busy with it, excused: 0 each. Round 4 tests the executor (1 s)
// and pays the stream once: 1 + 151 = 152.
func TestStreamAcrossCyclesPaidOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, map[string]int{class: 1})
		m.Reply = capacity(m)
		f := newFixture(t, false, nil, m)
		defer f.close()
		if _, err := f.r.Round(t.Context()); err != nil { // connects the miner
			t.Fatal(err)
		}
		time.Sleep(10 * time.Second)
		id := uuid.NewString()
		lease, err := f.pool.LeaseOn(m.Hotkey.SS58(), id, class)
		if err != nil {
			t.Fatal(err)
		}
		spec := &protocol.JobSpec{ExecutorClass: class, DockerImage: "llm", Args: []string{}, DownloadTimeLimit: 30, ExecutionTimeLimit: 3600,
			UploadTimeLimit: 30, StreamingStartTimeLimit: 30, StreamingDetails: &protocol.StreamingDetails{PublicKey: "client-cert"}}
		run := jobrun.New(f.run, jobrun.Job{UUID: id, Spec: spec, Organic: true}, m.Hotkey.SS58(), lease, lease, nobody{})
		done := make(chan jobrun.Outcome, 1)
		go func() { // waited for through done
			o := run.Execute(t.Context())
			lease.Release(false)
			done <- o
		}()
		time.Sleep(time.Second)
		t0 := time.Now()
		var cycles []int64
		for i, want := range []float64{0, 0, 0, 152} {
			time.Sleep(t0.Add(time.Duration(i) * time.Minute).Sub(time.Now()))
			rep, err := f.r.Round(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			cycles = append(cycles, rep.Cycle)
			cr := rep.Details[m.Hotkey.SS58()].Classes[class]
			if s := scoreOf(rep, m.Hotkey.SS58()); s != want || !cr.Gate || (i < 3) != (cr.Excused == 1) {
				t.Errorf("round %d: score %v, class %+v; want %v", i+1, s, cr, want)
			}
			if i == 2 {
				time.Sleep(t0.Add(150 * time.Second).Sub(time.Now()))
				if !run.Relay(t.Context(), &protocol.V0StopJobRequest{JobUUID: id}) {
					t.Fatal("the stream does not serve")
				}
				if o := <-done; o.Status != protocol.StatusCompleted {
					t.Fatalf("stream ended %s", o.Reason(""))
				}
			}
		}
		var counted []store.Counted
		for _, c := range cycles {
			cs, _ := f.st.Counted(t.Context(), c)
			for _, k := range cs {
				if k.JobUUID == id {
					counted = append(counted, k)
				}
			}
		}
		if len(counted) != 1 || counted[0].Cycle != cycles[3] || counted[0].Pay != 151 {
			t.Errorf("stream counted %+v; want once, in round 4, paid 151", counted)
		}
	})
}
