package decide

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/schematest"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
	"github.com/horde-compute/horde/sig"
)

func newKey(t testing.TB) *sig.Hotkey {
	t.Helper()
	k, err := sig.FromSeed(sig.RandomSeed())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// startedOffer builds the offer a validator signs for a job on a miner.
func startedOffer(t testing.TB, v *sig.Hotkey, miner, uuid, class string, organic bool, at time.Time) *protocol.V0InitialJobRequest {
	t.Helper()
	p := &receipt.StartedPayload{Base: receipt.Base{JobUUID: uuid, MinerHotkey: miner, ValidatorHotkey: v.SS58(), Timestamp: receipt.At(at)},
		ExecutorClass: class, IsOrganic: organic, TTL: 60}
	s, err := receipt.Sign(v, p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := receipt.Bytes(p)
	if err != nil {
		t.Fatal(err)
	}
	return &protocol.V0InitialJobRequest{JobUUID: uuid, ExecutorClass: class, DockerImage: "img",
		JobStartedReceiptPayload: b, JobStartedReceiptSignature: s}
}

// The offer decision, without a socket: every reason to decline, and the
// checks in the order the miner makes them.
func TestDecide(t *testing.T) {
	v, m, other := newKey(t), newKey(t), newKey(t)
	now := time.Now()
	good := func() *protocol.V0InitialJobRequest {
		return startedOffer(t, v, m.SS58(), "j1", protocol.ClassTest, true, now)
	}
	manifest := map[string]int{protocol.ClassTest: 2}
	for name, tc := range map[string]struct {
		edit       func(o *Offer)
		wantReason protocol.JobRejectionReason // "" to accept
		wantMsg    string
	}{
		"accepted":           {},
		"last free executor": {edit: func(o *Offer) { o.Reserved = 1 }},
		"busy":               {edit: func(o *Offer) { o.Reserved = 2 }, wantReason: protocol.RejectBusy, wantMsg: "busy"},
		"unknown class": {edit: func(o *Offer) {
			*o = Offer{Miner: o.Miner, Validator: o.Validator, Manifest: o.Manifest, Request: startedOffer(t, v, m.SS58(), "j1", protocol.ClassGPU24, false, now)}
		}, wantReason: protocol.RejectUnknown, wantMsg: "not offered"},
		"already running":  {edit: func(o *Offer) { o.Running = true }, wantReason: protocol.RejectUnknown, wantMsg: "already running"},
		"payload not json": {edit: func(o *Offer) { o.Request.JobStartedReceiptPayload = json.RawMessage(`[`) }, wantReason: protocol.RejectInvalidSignature, wantMsg: "does not decode"},
		"signed by another": {edit: func(o *Offer) {
			o.Request = startedOffer(t, other, m.SS58(), "j1", protocol.ClassTest, true, now)
			o.Validator = v.SS58()
		}, wantReason: protocol.RejectInvalidSignature, wantMsg: "match"},
		"bad signature":       {edit: func(o *Offer) { o.Request.JobStartedReceiptSignature = other.SignHex([]byte("x")) }, wantReason: protocol.RejectInvalidSignature, wantMsg: "signature"},
		"other miner's job":   {edit: func(o *Offer) { o.Miner = other.SS58() }, wantReason: protocol.RejectInvalidSignature, wantMsg: "match"},
		"uuid differs":        {edit: func(o *Offer) { o.Request.JobUUID = "j2" }, wantReason: protocol.RejectInvalidSignature, wantMsg: "match"},
		"class differs":       {edit: func(o *Offer) { o.Request.ExecutorClass = protocol.ClassCPU8c16gb }, wantReason: protocol.RejectInvalidSignature, wantMsg: "match"},
		"busy but bad sig":    {edit: func(o *Offer) { o.Reserved = 2; o.Request.JobStartedReceiptSignature = "0x00" }, wantReason: protocol.RejectInvalidSignature},
		"unknown before busy": {edit: func(o *Offer) { o.Manifest = map[string]int{protocol.ClassGPU24: 0} }, wantReason: protocol.RejectUnknown},
	} {
		t.Run(name, func(t *testing.T) {
			o := Offer{Miner: m.SS58(), Validator: v.SS58(), Request: good(), Manifest: manifest}
			if tc.edit != nil {
				tc.edit(&o)
			}
			d := Decide(o)
			if tc.wantReason == "" {
				if !d.Accept || d.Started == nil || d.Started.JobUUID != "j1" || !d.Started.IsOrganic {
					t.Fatalf("declined: %+v", d)
				}
				return
			}
			if d.Accept || d.Reason != tc.wantReason || !strings.Contains(d.Message, tc.wantMsg) {
				t.Errorf("got accept=%v %s %q, want %s %q", d.Accept, d.Reason, d.Message, tc.wantReason, tc.wantMsg)
			}
			dm := DeclineMessage(o.Request, d, nil)
			if dm.JobUUID != o.Request.JobUUID || dm.Reason != d.Reason || dm.Receipts == nil {
				t.Errorf("decline message %+v", dm)
			}
		})
	}
}

// The miner countersigns receipts its validator signed for it, and only those.
func TestCountersign(t *testing.T) {
	v, m, other := newKey(t), newKey(t), newKey(t)
	finished := func(miner, validator string, signer *sig.Hotkey) (json.RawMessage, string) {
		p := &receipt.FinishedPayload{Base: receipt.Base{JobUUID: "j", MinerHotkey: miner, ValidatorHotkey: validator, Timestamp: receipt.At(time.Now())},
			TimeStarted: receipt.At(time.Now()), TimeTookUS: 5, ScoreStr: "1"}
		b, _ := receipt.Bytes(p)
		s, _ := receipt.Sign(signer, p)
		return b, s
	}
	b, s := finished(m.SS58(), v.SS58(), v)
	r, err := Countersign(m, v.SS58(), receipt.JobFinished, b, s)
	if err != nil {
		t.Fatal(err)
	}
	p, err := r.Decode()
	if err != nil {
		t.Fatal(err)
	}
	if err := receipt.VerifyBy(m.SS58(), p, r.MinerSignature); err != nil {
		t.Errorf("miner signature: %v", err)
	}
	if err := r.Verify(); err != nil {
		t.Errorf("validator signature: %v", err)
	}
	type bad struct {
		payload json.RawMessage
		sig     string
	}
	mk := func(miner, validator string, signer *sig.Hotkey) bad {
		b, s := finished(miner, validator, signer)
		return bad{b, s}
	}
	for name, tc := range map[string]bad{
		"another miner's":         mk(other.SS58(), v.SS58(), v),
		"another validator's":     mk(m.SS58(), other.SS58(), other),
		"signed by someone else":  mk(m.SS58(), v.SS58(), other),
		"payload does not decode": {payload: json.RawMessage(`{`), sig: s},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Countersign(m, v.SS58(), receipt.JobFinished, tc.payload, tc.sig); err == nil {
				t.Error("countersigned")
			} else if name != "payload does not decode" && !errors.Is(err, receipt.ErrInvalid) {
				t.Errorf("error %v is not ErrInvalid", err)
			}
		})
	}
}

// A busy miner proves its executors are taken with the started receipts of
// running organic jobs within their ttl.
func TestExcuses(t *testing.T) {
	v, m := newKey(t), newKey(t)
	now := time.Now()
	started := func(uuid string, organic bool, at time.Time) receipt.Receipt {
		req := startedOffer(t, v, m.SS58(), uuid, protocol.ClassTest, organic, at)
		d := Decide(Offer{Miner: m.SS58(), Validator: v.SS58(), Request: req, Manifest: map[string]int{protocol.ClassTest: 1}})
		r, err := CountersignStarted(m, d.Started, req.JobStartedReceiptSignature)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	declined := startedOffer(t, v, m.SS58(), "declined", protocol.ClassTest, true, now)
	got := Excuses([]receipt.Receipt{started("organic", true, now), started("synthetic", false, now),
		started("expired", true, now.Add(-2*time.Minute)), started("later", true, now.Add(time.Second)),
		started("declined", true, now), {Type: receipt.JobStarted, Payload: json.RawMessage(`{`)}}, declined)
	if len(got) != 1 {
		t.Fatalf("%d excuses, want 1: %s", len(got), got)
	}
	// In upstream's Receipt shape: the type inside the payload.
	schematest.Valid(t, "receipts.Receipt", got[0])
	r, err := receipt.ParseLine(got[0])
	if err != nil {
		t.Fatal(err)
	}
	p, err := r.Decode()
	if err != nil || p.(*receipt.StartedPayload).JobUUID != "organic" || strings.Contains(string(got[0]), `{"receipt_type"`) {
		t.Errorf("excuse %v %v", p, err)
	}
	if err := receipt.VerifyBy(m.SS58(), p, r.MinerSignature); err != nil {
		t.Errorf("excuse not countersigned: %v", err)
	}
}

// What an executor says reaches the validator without the executor's
// token; the miner vouches for a streaming job's key and names the
// executor as the reporter of a horde failure.
func TestFromExecutor(t *testing.T) {
	m := newKey(t)
	for _, tc := range []struct {
		in       protocol.Message
		terminal bool
	}{
		{&protocol.V0ExecutorReadyRequest{JobUUID: "j", ExecutorToken: "secret"}, false},
		{&protocol.V0VolumesReadyRequest{JobUUID: "j", ExecutorToken: "secret"}, false},
		{&protocol.V0ExecutionDoneRequest{JobUUID: "j", ExecutorToken: "secret"}, false},
		{&protocol.V0MachineSpecsRequest{JobUUID: "j", ExecutorToken: "secret"}, false},
		{&protocol.V0StreamingJobNotReadyRequest{JobUUID: "j", ExecutorToken: "secret"}, false},
		{&protocol.V0VolumeResult{JobUUID: "j", ExecutorToken: "secret"}, false},
		{&protocol.V0StreamingJobReadyRequest{JobUUID: "j", ExecutorToken: "secret", IP: "192.0.2.1", Port: 8443, PublicKey: "cert"}, false},
		{&protocol.V0JobFinishedRequest{JobUUID: "j", ExecutorToken: "secret"}, true},
		{&protocol.V0JobFailedRequest{JobUUID: "j", ExecutorToken: "secret"}, true},
		{&protocol.V0HordeFailedRequest{JobUUID: "j", ExecutorToken: "secret", ReportedBy: protocol.ByMiner}, true},
		{&protocol.V0ExecutorFailedRequest{JobUUID: "j", ExecutorToken: "secret"}, true},
	} {
		t.Run(tc.in.MessageType(), func(t *testing.T) {
			out, terminal, ok := FromExecutor(m, tc.in)
			if !ok || terminal != tc.terminal {
				t.Fatalf("ok %v terminal %v, want true %v", ok, terminal, tc.terminal)
			}
			b, _ := json.Marshal(out)
			if strings.Contains(string(b), "secret") {
				t.Errorf("token passed on: %s", b)
			}
			switch out := out.(type) {
			case *protocol.V0StreamingJobReadyRequest:
				if err := sig.VerifyHex(m.SS58(), protocol.StreamingReadyMessage("j", out.IP, out.Port, out.PublicKey), out.MinerSignature); err != nil {
					t.Errorf("miner signature: %v", err)
				}
			case *protocol.V0HordeFailedRequest:
				if out.ReportedBy != protocol.ByExecutor {
					t.Errorf("reported by %s", out.ReportedBy)
				}
			}
		})
	}
	if _, _, ok := FromExecutor(m, &protocol.V0JobRequest{JobUUID: "j"}); ok {
		t.Error("a job request from an executor passed on")
	}
}
