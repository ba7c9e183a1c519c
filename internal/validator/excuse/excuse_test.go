package excuse_test

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/validator/excuse"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
	"github.com/horde-compute/horde/sig"
)

const (
	class = protocol.ClassTest
	gpu   = protocol.ClassGPU24
)

func hotkey(t *testing.T) *sig.Hotkey {
	t.Helper()
	k, err := sig.FromSeed(sig.RandomSeed())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// keys of the test's world.
type world struct {
	self, permitted, noPermit, poor, stranger, miner, otherMiner *sig.Hotkey
	rules                                                        excuse.Rules
	offer                                                        time.Time
}

func newWorld(t *testing.T) *world {
	w := &world{self: hotkey(t), permitted: hotkey(t), noPermit: hotkey(t), poor: hotkey(t), stranger: hotkey(t),
		miner: hotkey(t), otherMiner: hotkey(t), offer: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	mg := map[string]excuse.Registration{
		w.self.SS58():      {ValidatorPermit: true, Stake: 10}, // itself: trusted whatever its stake
		w.permitted.SS58(): {ValidatorPermit: true, Stake: 30_000},
		w.noPermit.SS58():  {Stake: 1e6},
		w.poor.SS58():      {ValidatorPermit: true, Stake: 29_999.5},
		w.miner.SS58():     {Stake: 5},
	}
	w.rules = excuse.Rules{Self: w.self.SS58(), Registered: mg,
		Ended: func(job, miner string) (time.Time, bool) {
			switch job {
			case "ended":
				return w.offer.Add(-excuse.EndGrace - time.Second), true
			case "ending":
				return w.offer.Add(-excuse.EndGrace), true
			}
			return time.Time{}, false
		}}
	return w
}

// started is a job-started receipt; edit changes the payload before signing.
type started struct {
	signer *sig.Hotkey // signs
	names  *sig.Hotkey // named as validator (signer when nil)
	job    string
	edit   func(*receipt.StartedPayload)
}

func (w *world) receipt(t *testing.T, s started) receipt.Receipt {
	t.Helper()
	names := s.names
	if names == nil {
		names = s.signer
	}
	job := s.job
	if job == "" {
		job = "organic-1"
	}
	p := &receipt.StartedPayload{Base: receipt.Base{JobUUID: job, MinerHotkey: w.miner.SS58(), ValidatorHotkey: names.SS58(),
		Timestamp: receipt.At(w.offer.Add(-10 * time.Second))}, ExecutorClass: class, IsOrganic: true, TTL: 60}
	if s.edit != nil {
		s.edit(p)
	}
	vs, err := receipt.Sign(s.signer, p)
	if err != nil {
		t.Fatal(err)
	}
	r, err := receipt.New(p, vs)
	if err != nil {
		t.Fatal(err)
	}
	countersigner := w.miner
	if p.MinerHotkey == w.otherMiner.SS58() {
		countersigner = w.otherMiner
	}
	r.MinerSignature, _ = receipt.Sign(countersigner, p)
	return r
}

// horde is the receipt in horde's shape.
func (w *world) horde(t *testing.T, s started) json.RawMessage {
	b, _ := json.Marshal(w.receipt(t, s))
	return b
}

// upstream is the receipt in upstream's shape: no type outside the payload.
func (w *world) upstream(t *testing.T, s started) json.RawMessage {
	r := w.receipt(t, s)
	b, _ := json.Marshal(map[string]any{"payload": r.Payload, "validator_signature": r.ValidatorSignature, "miner_signature": r.MinerSignature})
	return b
}

func (w *world) decline(receipts ...json.RawMessage) excuse.Decline {
	return excuse.Decline{JobUUID: "declined", Miner: w.miner.SS58(), Class: class, At: w.offer, Synthetic: true, Receipts: receipts}
}

// Every way an excuse can fail is refused, each with its reason; the ways
// it may pass, pass.
func TestCheck(t *testing.T) {
	w := newWorld(t)
	at := func(d time.Duration, ttl int) func(*receipt.StartedPayload) {
		return func(p *receipt.StartedPayload) { p.Timestamp, p.TTL = receipt.At(w.offer.Add(d)), ttl }
	}
	tests := []struct {
		name string
		raw  json.RawMessage
		want error // nil: it excuses
	}{
		{"permitted validator with the minimum stake", w.horde(t, started{signer: w.permitted}), nil},
		{"this validator itself", w.horde(t, started{signer: w.self}), nil},
		{"upstream's shape", w.upstream(t, started{signer: w.permitted}), nil},
		{"upstream's shape without the miner's signature", func() json.RawMessage {
			r := w.receipt(t, started{signer: w.permitted})
			b, _ := json.Marshal(map[string]any{"payload": r.Payload, "validator_signature": r.ValidatorSignature})
			return b
		}(), nil},
		{"this validator's job that has just ended", w.horde(t, started{signer: w.self, job: "ending"}), nil},
		{"expired but within the 2 s leeway", w.horde(t, started{signer: w.permitted, edit: at(-61*time.Second, 60)}), nil},

		{"self-signed by the miner", w.horde(t, started{signer: w.miner}), excuse.ErrSelfSigned},
		{"signed by the miner in a validator's name", w.horde(t, started{signer: w.miner, names: w.permitted}), excuse.ErrSignature},
		{"registered key without a validator permit", w.horde(t, started{signer: w.noPermit}), excuse.ErrNoPermit},
		{"too little stake", w.horde(t, started{signer: w.poor}), excuse.ErrStake},
		{"a key the metagraph does not list", w.horde(t, started{signer: w.stranger}), excuse.ErrNotListed},
		{"expired", w.horde(t, started{signer: w.permitted, edit: at(-62*time.Second, 60)}), excuse.ErrExpired},
		{"future", w.horde(t, started{signer: w.permitted, edit: at(time.Second, 60)}), excuse.ErrFuture},
		{"issued with the offer", w.horde(t, started{signer: w.permitted, edit: at(0, 60)}), excuse.ErrFuture},
		{"ttl of 2^30 s", w.horde(t, started{signer: w.permitted, edit: at(-time.Hour, 1<<30)}), excuse.ErrTTL},
		{"ttl of a day and a second", w.horde(t, started{signer: w.permitted, edit: at(-time.Hour, 86401)}), excuse.ErrTTL},
		{"negative ttl", w.horde(t, started{signer: w.permitted, edit: at(-time.Second, -5)}), excuse.ErrTTL},
		{"the declined job itself", w.horde(t, started{signer: w.permitted, job: "declined"}), excuse.ErrSameJob},
		{"other miner", w.horde(t, started{signer: w.permitted, edit: func(p *receipt.StartedPayload) { p.MinerHotkey = w.otherMiner.SS58() }}), excuse.ErrOtherMiner},
		{"other class", w.horde(t, started{signer: w.permitted, edit: func(p *receipt.StartedPayload) { p.ExecutorClass = gpu }}), excuse.ErrOtherClass},
		{"a synthetic job's receipt", w.horde(t, started{signer: w.permitted, edit: func(p *receipt.StartedPayload) { p.IsOrganic = false }}), excuse.ErrSynthetic},
		{"this validator's job that had ended", w.horde(t, started{signer: w.self, job: "ended"}), excuse.ErrEnded},
		{"altered after signing", func() json.RawMessage {
			r := w.receipt(t, started{signer: w.permitted})
			r.Payload = json.RawMessage(strings.Replace(string(r.Payload), `"ttl":60`, `"ttl":600`, 1))
			b, _ := json.Marshal(r)
			return b
		}(), excuse.ErrSignature},
		{"a countersignature by someone else", func() json.RawMessage {
			r := w.receipt(t, started{signer: w.permitted})
			p, _ := r.Decode()
			r.MinerSignature, _ = receipt.Sign(w.stranger, p)
			b, _ := json.Marshal(r)
			return b
		}(), excuse.ErrSignature},
		{"a finished receipt", func() json.RawMessage {
			p := &receipt.FinishedPayload{Base: receipt.Base{JobUUID: "x", MinerHotkey: w.miner.SS58(), ValidatorHotkey: w.permitted.SS58(), Timestamp: receipt.At(w.offer)}}
			s, _ := receipt.Sign(w.permitted, p)
			r, _ := receipt.New(p, s)
			b, _ := json.Marshal(r)
			return b
		}(), excuse.ErrShape},
		{"types outside and inside disagree", func() json.RawMessage {
			r := w.receipt(t, started{signer: w.permitted})
			r.Type = receipt.JobFinished
			b, _ := json.Marshal(r)
			return b
		}(), excuse.ErrShape},
		{"no payload", json.RawMessage(`{"receipt_type": "JobStartedReceipt"}`), excuse.ErrShape},
		{"garbage", json.RawMessage(`{"receipt_type": 5}`), excuse.ErrShape},
		{"not an object", json.RawMessage(`"excuse me"`), excuse.ErrShape},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := w.rules.Check(w.decline(), tt.raw)
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

// Without a metagraph only this validator's receipts excuse; for an organic
// offer a synthetic job's receipt excuses too (as upstream); the minimum
// stake and the ttl limit are configurable.
func TestRulesConfigured(t *testing.T) {
	w := newWorld(t)
	bare := excuse.Rules{Self: w.self.SS58()}
	if _, err := bare.Check(w.decline(), w.horde(t, started{signer: w.permitted})); !errors.Is(err, excuse.ErrNotListed) {
		t.Errorf("no metagraph, another validator: %v", err)
	}
	if _, err := bare.Check(w.decline(), w.horde(t, started{signer: w.self})); err != nil {
		t.Errorf("no metagraph, itself: %v", err)
	}
	organic := w.decline()
	organic.Synthetic = false
	synth := w.horde(t, started{signer: w.permitted, edit: func(p *receipt.StartedPayload) { p.IsOrganic = false }})
	if _, err := w.rules.Check(organic, synth); err != nil {
		t.Errorf("organic offer, synthetic receipt: %v", err)
	}
	low := w.rules
	low.MinStake = 100
	if _, err := low.Check(w.decline(), w.horde(t, started{signer: w.poor})); err != nil {
		t.Errorf("stake 29999.5 with a minimum of 100: %v", err)
	}
	short := w.rules
	short.MaxTTL = map[string]time.Duration{class: 30 * time.Second}
	if _, err := short.Check(w.decline(), w.horde(t, started{signer: w.permitted})); !errors.Is(err, excuse.ErrTTL) {
		t.Errorf("ttl 60 s with a limit of 30 s: %v", err)
	}
	if d := excuse.DefaultMaxTTL(protocol.ClassSpinUp4minGPU24); d != 24*time.Hour+4*time.Minute {
		t.Errorf("spin-up class limit %s", d)
	}
}

// Upstream's decline (the vector from upstream's own models) decodes, and
// its receipt is read in upstream's shape: the vector's signature is a
// placeholder, so it is refused for that; its job is the declined one.
func TestUpstreamVector(t *testing.T) {
	line, err := os.ReadFile("testdata/upstream_decline.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		JSON json.RawMessage `json:"json"`
	}
	if err := json.Unmarshal(line, &v); err != nil {
		t.Fatal(err)
	}
	m, err := protocol.Decode(v.JSON)
	if err != nil {
		t.Fatal(err)
	}
	d := m.(*protocol.V0DeclineJobRequest)
	if d.Reason != protocol.RejectBusy || len(d.Receipts) != 1 {
		t.Fatalf("decline = %+v", d)
	}
	r, err := excuse.Parse(d.Receipts[0])
	if err != nil || r.Type != receipt.JobStarted || r.MinerSignature == "" {
		t.Fatalf("parse = %+v, %v", r, err)
	}
	p, err := r.Decode()
	if err != nil {
		t.Fatal(err)
	}
	sp := p.(*receipt.StartedPayload)
	if sp.JobUUID != d.JobUUID || sp.TTL != 300 || !sp.IsOrganic || sp.ExecutorClass != gpu {
		t.Errorf("payload = %+v", sp)
	}
	rules := excuse.Rules{Registered: map[string]excuse.Registration{sp.ValidatorHotkey: {ValidatorPermit: true, Stake: 1e6}}}
	_, err = rules.Check(excuse.Decline{JobUUID: d.JobUUID, Miner: sp.MinerHotkey, Class: gpu, At: sp.Timestamp.Add(time.Second), Receipts: d.Receipts}, d.Receipts[0])
	if !errors.Is(err, excuse.ErrSignature) {
		t.Errorf("placeholder signature: %v", err)
	}
}

// Judge: over a round's busy declines of one miner and class, each job
// excuses once, duplicates in one decline are refused, no more jobs excuse
// than executors claimed, and as many declines are excused as jobs excuse.
func TestJudge(t *testing.T) {
	w := newWorld(t)
	a := w.horde(t, started{signer: w.permitted, job: "a"})
	b := w.upstream(t, started{signer: w.self, job: "b"})
	c := w.horde(t, started{signer: w.permitted, job: "c"})
	forged := w.horde(t, started{signer: w.miner, job: "f"})
	second := func(d excuse.Decline) excuse.Decline { d.JobUUID = "declined-2"; return d }
	tests := []struct {
		name     string
		claimed  int
		declines []excuse.Decline
		excused  int
		valid    int
		verdicts []error // in order; nil: it excuses
	}{
		{"one busy executor excuses one decline", 2, []excuse.Decline{w.decline(a)}, 1, 1, []error{nil}},
		// The honest miner sends the same receipts with each decline.
		{"the same receipts with two declines", 2, []excuse.Decline{w.decline(a, b), second(w.decline(a, b))}, 2, 2, []error{nil, nil, nil, nil}},
		{"one receipt cannot excuse two declines", 2, []excuse.Decline{w.decline(a), second(w.decline(a))}, 1, 1, []error{nil, nil}},
		{"a duplicate in one decline", 2, []excuse.Decline{w.decline(a, a)}, 1, 1, []error{nil, excuse.ErrDuplicate}},
		{"more than claimed", 2, []excuse.Decline{w.decline(a, b, c)}, 1, 2, []error{nil, nil, excuse.ErrTooMany}},
		{"refused ones do not count", 2, []excuse.Decline{w.decline(forged), second(w.decline(forged, a))}, 1, 1,
			[]error{excuse.ErrSelfSigned, excuse.ErrSelfSigned, nil}},
		{"no receipts", 1, []excuse.Decline{w.decline()}, 0, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := w.rules.Judge(tt.claimed, tt.declines)
			if j.Excused != tt.excused || j.Valid != tt.valid {
				t.Errorf("excused %d, valid %d; want %d, %d", j.Excused, j.Valid, tt.excused, tt.valid)
			}
			if len(j.Verdicts) != len(tt.verdicts) {
				t.Fatalf("%d verdicts, want %d", len(j.Verdicts), len(tt.verdicts))
			}
			for i, v := range j.Verdicts {
				if want := tt.verdicts[i]; want == nil && v.Err != nil || want != nil && !errors.Is(v.Err, want) {
					t.Errorf("verdict %d, %s (declined %s): %v, want %v", i, v.Job, v.Declined, v.Err, want)
				}
				if v.Job == "" || v.Signer == "" {
					t.Errorf("verdict without job or signer: %+v", v)
				}
			}
		})
	}
}
