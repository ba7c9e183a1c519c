package facilitator

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/protocol"
	sr "github.com/horde-compute/horde/streamreceipt"
)

// jobKey is a streaming job's ed25519 key and certificate.
type jobKey struct {
	key  ed25519.PrivateKey
	cert []byte
}

func newJobKey(t *testing.T) *jobKey {
	t.Helper()
	k, cert, err := sr.NewKeyPair("job", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &jobKey{key: k, cert: cert}
}

// pair returns an exchange of job id with the receipt k signs for it.
func (k *jobKey) pair(id, requestID string, req, resp []byte, at time.Time) *protocol.StreamPair {
	in, out := sha256.Sum256(req), sha256.Sum256(resp)
	blob, s := sr.Sign(k.key, &sr.Receipt{JobUUID: id, RequestID: requestID, TimestampFrom: at, TimestampTo: at.Add(time.Millisecond),
		InputSHA256: hex.EncodeToString(in[:]), OutputSHA256: hex.EncodeToString(out[:])})
	return &protocol.StreamPair{Method: "POST", Path: "/v1/completions", RequestB64: base64.StdEncoding.EncodeToString(req),
		ResponseB64: base64.StdEncoding.EncodeToString(resp), ReceiptB64: blob, SignatureB64: s}
}

func TestReportedPairs(t *testing.T) {
	h := newHarness(t, Config{})
	v := h.connect()
	j := h.create(spec())
	v.nextJob()
	if err := h.client.ReportPair(h.ctx(), j.UUID, newJobKey(t).pair(j.UUID, "r0", []byte("q"), []byte("a"), time.Now())); err == nil ||
		!strings.Contains(err.Error(), "never served") {
		t.Errorf("pair of a job that never served: %v", err)
	}
	k, miner := streamingReady(t, v, j.UUID)
	now := time.Now()

	good := k.pair(j.UUID, "r1", []byte(`{"prompt": "hi"}`), []byte(`{"text": "hello"}`), now)
	if err := h.client.ReportPair(h.ctx(), j.UUID, good); err != nil {
		t.Fatalf("good pair refused: %v", err)
	}
	// It is passed on to the job's validator, with the proof.
	m, ok := v.next().(*protocol.V0StreamPairReport)
	if !ok || m.UUID != j.UUID || m.MinerHotkey != miner.SS58() || m.Pair != *good || m.Image != "horde/job:dev" ||
		m.Proof.MinerSignature == "" {
		t.Errorf("validator got %+v", m)
	}
	// Each pair is taken once.
	var ae *client.APIError
	if err := h.client.ReportPair(h.ctx(), j.UUID, good); !errors.As(err, &ae) || ae.Status != http.StatusConflict {
		t.Errorf("the same pair again: %v, want HTTP 409", err)
	}

	tampered := k.pair(j.UUID, "r2", []byte("q"), []byte("a"), now)
	tampered.ResponseB64 = base64.StdEncoding.EncodeToString([]byte("another answer"))
	otherKey := newJobKey(t).pair(j.UUID, "r3", []byte("q"), []byte("a"), now)
	otherJob := k.pair("another-job", "r4", []byte("q"), []byte("a"), now)
	tooOld := k.pair(j.UUID, "r5", []byte("q"), []byte("a"), now.Add(-time.Hour))
	notBase64 := k.pair(j.UUID, "r6", []byte("q"), []byte("a"), now)
	notBase64.RequestB64 = "%%%"
	for name, p := range map[string]*protocol.StreamPair{"tampered answer": tampered, "signed by another key": otherKey,
		"receipt of another job": otherJob, "before the job served": tooOld, "bodies not base64": notBase64} {
		t.Run(name, func(t *testing.T) {
			err := h.client.ReportPair(h.ctx(), j.UUID, p)
			if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || !strings.Contains(err.Error(), "pair refused") {
				t.Errorf("%v, want HTTP 400 pair refused", err)
			}
		})
	}

	// A pair of a job whose validator is away waits; it is passed on when
	// the validator connects.
	away := hotkey(t)
	j2 := h.create(spec())
	v.nextJob()
	if err := h.db.SetAssignment(h.ctx(), j2.UUID, away.SS58(), ""); err != nil {
		t.Fatal(err)
	}
	d := &protocol.StreamingServerDetails{StreamingServerCert: string(k.cert), StreamingServerAddress: "127.0.0.1", StreamingServerPort: 4443}
	// The miner's proof as a validator that also talks to upstream sends
	// it: beside streaming_details, not inside.
	proof := miner.SignHex(protocol.StreamingReadyMessage(j2.UUID, d.StreamingServerAddress, d.StreamingServerPort, d.StreamingServerCert))
	if err := h.db.AddStatus(h.ctx(), j2.UUID, protocol.StatusEntry{Status: protocol.StatusStreaming, CreatedAt: now,
		Metadata: &protocol.StatusMetadata{StreamingDetails: d, StreamingProof: proof, MinerHotkey: miner.SS58()}}); err != nil {
		t.Fatal(err)
	}
	if err := h.client.ReportPair(h.ctx(), j2.UUID, k.pair(j2.UUID, "r7", []byte("q"), []byte("a"), now)); err != nil {
		t.Fatal(err)
	}
	h.allow(away)
	back := h.connectAs(away)
	if m, ok := back.next().(*protocol.V0StreamPairReport); !ok || m.UUID != j2.UUID || m.Proof.MinerSignature != proof {
		t.Errorf("returning validator got %+v, want the pair that waited, with the proof", m)
	}
}

func httptestRecorder() *httptest.ResponseRecorder { return httptest.NewRecorder() }

func mustRequest(t *testing.T, method, path string) *http.Request {
	t.Helper()
	return httptest.NewRequestWithContext(t.Context(), method, path, nil)
}

// nextPair returns the next pair report the validator was sent, skipping
// other messages (jobs sent again on a new session).
func (v *fakeValidator) nextPair() *protocol.V0StreamPairReport {
	v.t.Helper()
	for {
		if m, ok := v.next().(*protocol.V0StreamPairReport); ok {
			return m
		}
	}
}

// A reported pair is delivered until the validator acknowledges it: sent
// to a validator that goes away unacknowledged, it comes again on its next
// session; acknowledged, it is delivered for good.
func TestPairsRedeliveredUntilAcknowledged(t *testing.T) {
	h := newHarness(t, Config{})
	key := hotkey(t)
	h.allow(key)
	v := h.connectAs(key)
	j := h.create(spec())
	v.nextJob()
	k, _ := streamingReady(t, v, j.UUID)
	if err := h.client.ReportPair(h.ctx(), j.UUID, k.pair(j.UUID, "r1", []byte("q"), []byte("a"), time.Now())); err != nil {
		t.Fatal(err)
	}
	first := v.nextPair()
	if first.ID == 0 || first.UUID != j.UUID {
		t.Fatalf("pair report %+v, want one with an id", first)
	}
	v.conn.Close("validator restarts before keeping the pair")

	v = h.connectAs(key)
	again := v.nextPair()
	if again.ID != first.ID || again.Pair != first.Pair {
		t.Fatalf("after reconnecting: %+v, want the unacknowledged pair %d again", again, first.ID)
	}
	// Another validator's ack does not deliver it.
	other := h.connect()
	if r := other.request(&protocol.V0StreamPairAck{ID: first.ID}); r.Status != "success" {
		t.Fatalf("ack refused: %+v", r)
	}
	if pending, _, err := h.db.UnforwardedPairs(h.ctx(), key.SS58(), 10); err != nil || len(pending) != 1 {
		t.Fatalf("after another validator's ack: %d pending, %v; want 1", len(pending), err)
	}
	if r := v.request(&protocol.V0StreamPairAck{ID: first.ID}); r.Status != "success" {
		t.Fatalf("ack refused: %+v", r)
	}
	if pending, _, err := h.db.UnforwardedPairs(h.ctx(), key.SS58(), 10); err != nil || len(pending) != 0 {
		t.Fatalf("after the ack: %d pending, %v; want none", len(pending), err)
	}
}
