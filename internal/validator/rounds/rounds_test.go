package rounds_test

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/store/sqlite"
	"github.com/horde-compute/horde/internal/synthetic"
	"github.com/horde-compute/horde/internal/validator/jobrun"
	"github.com/horde-compute/horde/internal/validator/minertest"
	"github.com/horde-compute/horde/internal/validator/receipts"
	"github.com/horde-compute/horde/internal/validator/rounds"
	"github.com/horde-compute/horde/internal/validator/route"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
	"github.com/horde-compute/horde/sig"
)

const class = protocol.ClassTest

var params = map[string]synthetic.Params{class: {SearchSpace: 500, MatrixN: 8, Expected: 5 * time.Second, Weight: 1}}

// working answers like Honest but takes d to execute.
func working(m *minertest.Miner, d time.Duration, stdout string) func(minertest.Peer, protocol.Message) {
	return func(p minertest.Peer, f protocol.Message) {
		jr, ok := f.(*protocol.V0JobRequest)
		if !ok {
			m.Honest(p, f)
			return
		}
		p.Send(&protocol.V0VolumesReadyRequest{JobUUID: jr.JobUUID})
		go func() { // ends after d, within the test's bubble
			time.Sleep(d)
			p.Send(&protocol.V0ExecutionDoneRequest{JobUUID: jr.JobUUID})
			fin := minertest.Finished(jr)
			if stdout != "" {
				fin.DockerProcessStdout, fin.Artifacts = stdout, nil
			}
			p.Send(fin)
		}()
	}
}

func busy(excuses ...json.RawMessage) func(minertest.Peer, protocol.Message) {
	return func(p minertest.Peer, f protocol.Message) {
		if in, ok := f.(*protocol.V0InitialJobRequest); ok {
			p.Send(&protocol.V0DeclineJobRequest{JobUUID: in.JobUUID, Reason: protocol.RejectBusy, Message: "busy", Receipts: excuses})
		}
	}
}

// excuse is a job-started receipt another validator signed for an organic job on miner.
func excuse(t *testing.T, signer *sig.Hotkey, miner, class string, organic bool, age time.Duration) json.RawMessage {
	p := &receipt.StartedPayload{Base: receipt.Base{JobUUID: "organic", MinerHotkey: miner, ValidatorHotkey: signer.SS58(), Timestamp: receipt.At(time.Now().Add(-age))},
		ExecutorClass: class, IsOrganic: organic, TTL: 60}
	s, err := receipt.Sign(signer, p)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := receipt.New(p, s)
	b, _ := json.Marshal(r)
	return b
}

type fixture struct {
	r       *rounds.Rounds
	st      *sqlite.DB
	pool    *route.Pool
	net     *minertest.Net
	run     jobrun.Params
	out     *outbox
	weights *weights
	ns      []chain.Neuron
}

// metagraph is a fixed metagraph.
type metagraph struct{ mg chain.Metagraph }

func (m *metagraph) Metagraph(context.Context) (*chain.Metagraph, error) { return &m.mg, nil }

// validators are other validators of the metagraph, with permits and enough stake.
func validators(ks ...*sig.Hotkey) []chain.Neuron {
	var ns []chain.Neuron
	for _, k := range ks {
		ns = append(ns, chain.Neuron{Hotkey: k.SS58(), ValidatorPermit: true, Stake: 1e6})
	}
	return ns
}

type miners struct {
	pool *route.Pool
	ns   []chain.Neuron
}

func (m miners) Refresh(ctx context.Context) ([]chain.Neuron, error) {
	m.pool.Sync(ctx, m.ns)
	return m.ns, nil
}
func (m miners) Connect(ctx context.Context, hk string) (map[string]int, error) {
	return m.pool.Connect(ctx, hk)
}
func (m miners) LeaseOn(hk, job, class string) (jobrun.Lease, error) {
	return m.pool.LeaseOn(hk, job, class)
}

type outbox struct {
	mu  sync.Mutex
	got []protocol.Message
}

func (o *outbox) Push(m protocol.Message) { o.mu.Lock(); o.got = append(o.got, m); o.mu.Unlock() }

type weights struct {
	mu  sync.Mutex
	got []map[string]float64
}

func (w *weights) SetWeights(_ context.Context, m map[string]float64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.got = append(w.got, m)
	return nil
}

// newFixture runs rounds over ms (down ones unreachable); it must run in a bubble.
func newFixture(t *testing.T, sequential bool, down []*minertest.Miner, ms ...*minertest.Miner) *fixture {
	return newFixtureWith(t, sequential, nil, down, ms...)
}

// newFixtureWith is newFixture with other validators in the metagraph.
func newFixtureWith(t *testing.T, sequential bool, others []chain.Neuron, down []*minertest.Miner, ms ...*minertest.Miner) *fixture {
	net := &minertest.Net{}
	var ns []chain.Neuron
	for _, m := range ms {
		ns = append(ns, net.Add(m))
	}
	for _, m := range down {
		net.SetDown(m, true)
	}
	v := minertest.Hotkey(t)
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "v.db"))
	if err != nil {
		t.Fatal(err)
	}
	pool := route.NewPool(net, v.SS58(), nil)
	f := &fixture{st: st, pool: pool, net: net, out: &outbox{}, weights: &weights{}, ns: ns,
		run: jobrun.Params{Hotkey: v, Timing: jobrun.DefaultTiming(), Receipts: st}}
	mg := &metagraph{chain.Metagraph{Neurons: append(append([]chain.Neuron{{Hotkey: v.SS58(), ValidatorPermit: true}}, others...), ns...)}}
	f.r = rounds.New(rounds.Deps{
		Config:    rounds.Config{Image: "img", Params: params, Generators: synthetic.Generators(), Weights: f.weights, Sequential: sequential},
		Run:       f.run,
		Miners:    miners{pool, ns},
		Receipts:  &receipts.Collector{Validator: v.SS58(), Store: st, HTTP: &http.Client{Transport: net}},
		Store:     st,
		Out:       f.out,
		Metagraph: mg,
	})
	return f
}

func (f *fixture) close() {
	f.pool.Close()
	f.st.Close()
}

func TestRound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		other := minertest.Hotkey(t) // another validator
		honest := minertest.New(t, map[string]int{class: 2})
		honest.Reply = working(honest, time.Second, "")
		wrong := minertest.New(t, map[string]int{class: 1})
		wrong.Reply = working(wrong, time.Second, "42\n")
		slow := minertest.New(t, map[string]int{class: 1})
		slow.Reply = working(slow, 6*time.Second, "")
		excused := minertest.New(t, map[string]int{class: 1})
		excused.Reply = busy(excuse(t, other, excused.Hotkey.SS58(), class, true, time.Second))
		unexcused := minertest.New(t, map[string]int{class: 1})
		unexcused.Reply = busy(excuse(t, other, unexcused.Hotkey.SS58(), class, false, time.Second))
		selfExcused := minertest.New(t, map[string]int{class: 1})
		selfExcused.Reply = busy(excuse(t, selfExcused.Hotkey, selfExcused.Hotkey.SS58(), class, true, time.Second))
		gone := minertest.New(t, map[string]int{class: 1})
		f := newFixtureWith(t, false, validators(other), []*minertest.Miner{gone}, honest, wrong, slow, excused, unexcused, selfExcused, gone)
		defer f.close()

		start := time.Now()
		rep, err := f.r.Round(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took != 6*time.Second {
			t.Errorf("round took %s: the miners were not tested at once", took)
		}
		for _, tt := range []struct {
			m                       *minertest.Miner
			passed, failed, excused int
			reason                  string
			score                   float64
		}{
			{honest, 2, 0, 0, "", 2}, // two jobs of 1 s, class weight 1
			{wrong, 0, 1, 0, "wrong answer", 0},
			{slow, 0, 1, 0, "too slow: executed in 6s, the class allows 5s", 0},
			{excused, 0, 0, 1, "", 0},
			{unexcused, 0, 1, 0, "declined as busy without valid excuses", 0},
			{selfExcused, 0, 1, 0, "declined as busy without valid excuses", 0},
		} {
			d := rep.Details[tt.m.Hotkey.SS58()]
			cr := d.Classes[class]
			if !d.Reachable || cr == nil || cr.Passed != tt.passed || cr.Failed != tt.failed || cr.Excused != tt.excused ||
				cr.Sent != tt.passed+tt.failed+tt.excused || cr.Claimed != cr.Sent {
				t.Errorf("%s: %+v %+v", tt.m.Hotkey.SS58()[:8], d, cr)
				continue
			}
			if tt.reason != "" && (len(cr.Reasons) == 0 || !strings.Contains(cr.Reasons[0], tt.reason)) {
				t.Errorf("reasons %v, want %q", cr.Reasons, tt.reason)
			}
			if cr.Gate != (tt.failed == 0) {
				t.Errorf("gate %v", cr.Gate)
			}
			for _, s := range rep.Scores {
				if s.Miner == tt.m.Hotkey.SS58() && s.Score != tt.score {
					t.Errorf("%s score %v, want %v", tt.m.Hotkey.SS58()[:8], s.Score, tt.score)
				}
			}
		}
		// Every excuse judged is kept, the refused ones with their reason.
		vs, err := f.st.ExcuseVerdicts(t.Context(), rep.Cycle)
		if err != nil || len(vs) != 3 {
			t.Fatalf("verdicts %+v, %v", vs, err)
		}
		for _, v := range vs {
			switch v.Miner {
			case excused.Hotkey.SS58():
				if !v.Valid || v.Signer != other.SS58() || v.Job != "organic" || v.Reason != "" {
					t.Errorf("excused: %+v", v)
				}
			case unexcused.Hotkey.SS58():
				if v.Valid || !strings.Contains(v.Reason, "synthetic job") {
					t.Errorf("unexcused: %+v", v)
				}
			case selfExcused.Hotkey.SS58():
				if v.Valid || !strings.Contains(v.Reason, "signed by the miner itself") || v.Signer != selfExcused.Hotkey.SS58() {
					t.Errorf("self-signed: %+v", v)
				}
			}
		}
		if d := rep.Details[gone.Hotkey.SS58()]; d.Reachable || d.Note == "" {
			t.Errorf("unreachable miner: %+v", d)
		}
		if len(rep.Results) != 7 || len(rep.Scores) != 7 {
			t.Errorf("%d results, %d scores", len(rep.Results), len(rep.Scores))
		}
		stored, err := f.st.SyntheticResults(t.Context(), rep.Cycle)
		if err != nil || len(stored) != 7 {
			t.Errorf("stored %d results: %v", len(stored), err)
		}
		if len(f.weights.got) != 1 || f.weights.got[0][honest.Hotkey.SS58()] != 1 {
			t.Errorf("weights %v", f.weights.got)
		}
		if len(f.out.got) != 1 || f.out.got[0].(*protocol.V0ValidatorReport).Cycle != rep.Cycle {
			t.Errorf("reported %v", f.out.got)
		}

		// The next cycle counts only its own jobs, with the other generator.
		rep2, err := f.r.Round(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if rep2.Results[0].Generator == rep.Results[0].Generator {
			t.Errorf("generator %s twice", rep.Results[0].Generator)
		}
		for _, s := range rep2.Scores {
			if s.Miner == honest.Hotkey.SS58() && s.Score != 2 {
				t.Errorf("second cycle: score %v, want 2", s.Score)
			}
		}
		latest, err := f.st.LatestScores(t.Context(), 1)
		if err != nil || len(latest) != 7 || latest[0].Cycle != rep2.Cycle {
			t.Errorf("latest scores: %v %v", latest, err)
		}
	})
}

func TestRoundSequential(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := minertest.New(t, map[string]int{class: 2})
		a.Reply = working(a, time.Second, "")
		b := minertest.New(t, map[string]int{class: 1})
		b.Reply = working(b, time.Second, "")
		f := newFixture(t, true, nil, a, b)
		defer f.close()
		start := time.Now()
		if _, err := f.r.Round(t.Context()); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took != 2*time.Second {
			t.Errorf("took %s: want one miner after the other, each miner's executors at once", took)
		}
	})
}

type failingMiners struct{ miners }

func (failingMiners) Refresh(context.Context) ([]chain.Neuron, error) {
	return nil, context.DeadlineExceeded
}

func TestRoundWithoutMetagraph(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, false, nil)
		defer f.close()
		r := rounds.New(rounds.Deps{Config: rounds.Config{Params: params, Generators: synthetic.Generators()}, Miners: failingMiners{}})
		if _, err := r.Round(t.Context()); err == nil || !strings.HasPrefix(err.Error(), "round: ") {
			t.Errorf("got %v", err)
		}
	})
}

func mustDecode(t *testing.T, r receipt.Receipt) receipt.Payload {
	p, err := r.Decode()
	if err != nil {
		t.Fatal(err)
	}
	return p
}
