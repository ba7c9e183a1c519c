package validator

import (
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/horde-compute/horde/internal/schematest"
	"github.com/horde-compute/horde/sig"

	"github.com/horde-compute/horde/internal/validator/minertest"
	"github.com/horde-compute/horde/protocol"
)

// A client's job with a volume and an output upload, end to end through the
// validator on an upstream miner: the miner gets upstream's exact messages
// (the volume once), the job completes and the facilitator hears it.
func TestUpstreamMinerEndToEnd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, map[string]int{protocol.ClassTest: 1})
		m.Upstream = true
		h := newHarness(t, Config{}, m)
		defer h.stop()
		s := spec()
		s.Volume = &protocol.Volume{VolumeType: protocol.VolumeMulti, Volumes: []protocol.Volume{
			{VolumeType: protocol.VolumeSingleFile, URL: "http://h/f", RelativePath: "in/f.txt"},
			{VolumeType: protocol.VolumeHuggingFace, RepoID: "org/m", AllowPattern: []string{"*.json"}}}}
		s.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadSinglePut, URL: "http://h/put", RelativePath: "out.txt"}
		s.ArtifactsDir = "/artifacts"
		h.fac.send(h.job(t, "j1", s))
		synctest.Wait()
		got := statusList(h.fac.statuses("j1"))
		want := []protocol.JobStatus{protocol.StatusReceived, protocol.StatusAccepted, protocol.StatusExecutorReady, protocol.StatusVolumesReady,
			protocol.StatusExecutionDone, protocol.StatusCompleted}
		if strings.Join(asStrings(got), ",") != strings.Join(asStrings(want), ",") {
			t.Fatalf("statuses %v", got)
		}
		fin := last(t, h.fac.statuses("j1"))
		if r := fin.Metadata.MinerResponse; r == nil || r.DockerProcessStdout != "hi\n" || r.UploadResults["out.txt"] == "" {
			t.Errorf("final %+v", fin.Metadata.MinerResponse)
		}
		if v := m.Violations(); len(v) > 0 {
			t.Fatalf("upstream refuses:\n%s", strings.Join(v, "\n"))
		}
		in := m.Initial("j1")
		if in == nil || in.Volume == nil || len(in.Volume.Volumes) != 2 {
			t.Fatalf("offer %+v", in)
		}
		for _, f := range m.Got() {
			if jr, ok := f.(*protocol.V0JobRequest); ok && (jr.Volume != nil || jr.OutputUpload == nil || jr.ArtifactsDir != "/artifacts") {
				t.Errorf("job request %+v", jr)
			}
		}
	})
}

// cheatReport is the job's client's signed report that job uuid cheated.
func (h *harness) cheatReport(t *testing.T, signer *sig.Hotkey, uuid string) *protocol.V0JobCheated {
	r := protocol.CheatReport{JobUUID: uuid, TrustedJobUUID: "trusted-" + uuid, Details: json.RawMessage(`{"why": "differs"}`)}
	payload, err := r.SignedPayload()
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Now().UnixNano()
	return &protocol.V0JobCheated{JobUUID: uuid, TrustedJobUUID: r.TrustedJobUUID, Details: r.Details, Signature: &protocol.Signature{
		SignatureType: protocol.SignatureTypeBittensor, Signatory: signer.SS58(), TimestampNS: ts, SignatureScope: "FullRequest",
		Signature: base64.StdEncoding.EncodeToString(signer.Sign(protocol.SignedMessage(ts, payload)))}}
}

// With upstream's facilitator and upstream's miners: every frame the
// validator sends validates against upstream's models, each status goes once,
// heartbeats wait for no answer, and a client's cheat report blacklists the
// miner, whose cheat is kept (it is not paid).
func TestUpstreamFacilitatorEndToEnd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, map[string]int{protocol.ClassTest: 1})
		m.Upstream = true
		fac := &facilitator{upstream: true}
		h := newHarnessWith(t, Config{}, fac, m)
		defer h.stop()
		h.fac.send(h.job(t, "j1", spec()))
		synctest.Wait()
		if s := last(t, h.fac.statuses("j1")); s.Status != protocol.StatusCompleted {
			t.Fatalf("status %s", s.Status)
		}
		// Heartbeats go unanswered: the session stays up.
		time.Sleep(3 * heartbeatEvery)
		synctest.Wait()
		if n := len(fac.messages("V0Heartbeat")); n < 2 || len(fac.dials) != 1 {
			t.Errorf("%d heartbeats, %d dials", n, len(fac.dials))
		}

		// A report not signed by the job's client is ignored.
		h.fac.send(h.cheatReport(t, minertest.Hotkey(t), "j1"))
		synctest.Wait()
		if cs, _ := h.st.Cheats(t.Context(), time.Time{}); len(cs) != 0 {
			t.Fatalf("cheats %+v", cs)
		}
		h.fac.send(h.cheatReport(t, h.client, "j1"))
		h.fac.send(h.cheatReport(t, h.client, "j1")) // twice: kept once
		synctest.Wait()
		cs, err := h.st.Cheats(t.Context(), time.Time{})
		if err != nil || len(cs) != 1 || cs[0].Miner != m.Hotkey.SS58() || cs[0].JobUUID != "j1" {
			t.Fatalf("cheats %+v %v", cs, err)
		}
		// Blacklisted: the next job finds no miner.
		h.fac.send(h.job(t, "j2", spec()))
		synctest.Wait()
		if s := last(t, h.fac.statuses("j2")); s.Status != protocol.StatusRejected {
			t.Errorf("j2: %s", s.Status)
		}
		if len(m.Offers()) != 1 {
			t.Errorf("%d offers to a blacklisted miner", len(m.Offers()))
		}
		if v := fac.violations; len(v) > 0 {
			t.Errorf("upstream facilitator refuses:\n%s", strings.Join(v, "\n"))
		}
		if v := m.Violations(); len(v) > 0 {
			t.Errorf("upstream miner refuses:\n%s", strings.Join(v, "\n"))
		}
	})
}

// To an upstream facilitator: no horde-only message, a cancelled job
// reported as upstream knows it, streaming details without horde's key.
func TestForUpstreamFacilitator(t *testing.T) {
	v := &Validator{log: slog.New(slog.DiscardHandler)}
	up := &fconn{f: &facilitator{upstream: true}}
	if v.forFacilitator(up, &protocol.V0JobVolumeResult{UUID: "j"}) != nil || v.forFacilitator(up, &protocol.V0ValidatorReport{}) != nil {
		t.Error("horde-only message for an upstream facilitator")
	}
	u := v.forFacilitator(up, &protocol.V0JobStatusUpdate{UUID: "j", Status: protocol.StatusCancelled}).(*protocol.V0JobStatusUpdate)
	if u.Status != protocol.StatusHordeFailed {
		t.Errorf("cancelled sent as %s", u.Status)
	}
	s := &protocol.V0JobStatusUpdate{UUID: "j", Status: protocol.StatusStreaming, Metadata: &protocol.StatusMetadata{StreamingDetails: &protocol.StreamingServerDetails{
		StreamingServerCert: "c", StreamingServerAddress: "a", StreamingServerPort: 1, MinerSignature: "0xsig"}}}
	u = v.forFacilitator(up, s).(*protocol.V0JobStatusUpdate)
	b, _ := protocol.Encode(u)
	schematest.Valid(t, "fv_validator_requests.JobStatusUpdate", b)
	if u.Metadata.StreamingMinerSignature() != "0xsig" || s.Metadata.StreamingDetails.MinerSignature != "0xsig" {
		t.Errorf("miner signature lost (or the original changed): %s", b)
	}
	if v.forFacilitator(up, s) != nil {
		t.Error("a status sent twice")
	}
	horde := &fconn{f: &facilitator{}}
	if v.forFacilitator(horde, s) != s {
		t.Error("horde facilitator got a changed update")
	}
}

// A validator in upstream mode speaks upstream's protocol to a horde miner
// too: the miner advertises its extensions, the validator uses none, and
// every frame it sends is one upstream's models take.
func TestUpstreamModeWithHordeMiner(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, map[string]int{protocol.ClassTest: 1}) // horde: advertises every extension
		h := newHarness(t, Config{Upstream: true, AllowPull: true, StreamingWhitelist: map[string]string{"img": "sha256:d"}}, m)
		defer h.stop()
		s := spec()
		s.Volume = &protocol.Volume{VolumeType: protocol.VolumeZipURL, Contents: "http://h/a.zip"}
		h.fac.send(h.job(t, "j1", s))
		synctest.Wait()
		if st := last(t, h.fac.statuses("j1")); st.Status != protocol.StatusCompleted {
			t.Fatalf("status %s", st.Status)
		}
		if len(m.Got()) == 0 {
			t.Fatal("no frames")
		}
		for _, f := range m.Got() {
			b, _ := protocol.Encode(f)
			if strings.Contains(string(b), "horde_") {
				t.Errorf("horde field in upstream mode: %s", b)
			}
			schematest.Valid(t, "protocol_messages.ValidatorToMinerMessage.union", b)
		}
	})
}

// A status whose sending failed goes again on the next session.
func TestUpstreamStatusResentAfterAFailedSend(t *testing.T) {
	v := &Validator{log: slog.New(slog.DiscardHandler)}
	up := &fconn{f: &facilitator{upstream: true}}
	s := &protocol.V0JobStatusUpdate{UUID: "j", Status: protocol.StatusAccepted}
	m := v.forFacilitator(up, s)
	if m == nil {
		t.Fatal("not sent")
	}
	v.unsent(m)
	if v.forFacilitator(up, s) == nil {
		t.Error("a status whose send failed is never sent again")
	}
}
