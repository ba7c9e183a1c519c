package validation

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
	sr "github.com/horde-compute/horde/streamreceipt"
)

// job is a streaming job: its key, and the miner that vouched for it.
type job struct {
	uuid  string
	key   ed25519.PrivateKey
	miner *sig.Hotkey
	proof protocol.StreamingServerDetails
}

func newJob(t *testing.T, uuid string) *job {
	t.Helper()
	key, cert, err := sr.NewKeyPair("job", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	miner, err := sig.FromSeed(sig.RandomSeed())
	if err != nil {
		t.Fatal(err)
	}
	j := &job{uuid: uuid, key: key, miner: miner,
		proof: protocol.StreamingServerDetails{StreamingServerCert: string(cert), StreamingServerAddress: "192.0.2.1", StreamingServerPort: 8443}}
	j.proof.MinerSignature = miner.SignHex(protocol.StreamingReadyMessage(uuid, j.proof.StreamingServerAddress, j.proof.StreamingServerPort, j.proof.StreamingServerCert))
	return j
}

func hexsum(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }

// exchange is what the job's proxy signs for one request and its answer.
func (j *job) exchange(id, method, target, ctype string, req []byte, status int, rtype string, resp []byte) *protocol.StreamPair {
	now := time.Now().UTC().Truncate(time.Microsecond)
	blob, s := sr.Sign(j.key, &sr.Receipt{Version: 2, JobUUID: j.uuid, RequestID: id, Stamp: sr.StampClient, TimestampFrom: now, TimestampTo: now,
		Method: method, Target: target, RequestContentType: ctype, InputSHA256: hexsum(req), Status: status, ResponseContentType: rtype, OutputSHA256: hexsum(resp)})
	return &protocol.StreamPair{Method: method, Path: target, ContentType: ctype, RequestB64: base64.StdEncoding.EncodeToString(req), Status: status,
		ResponseContentType: rtype, ResponseB64: base64.StdEncoding.EncodeToString(resp), ReceiptB64: blob, SignatureB64: s}
}

var (
	completionReq  = []byte(`{"prompt": "hello", "max_tokens": 4, "temperature": 0}`)
	completionResp = []byte(`{"choices": [{"text": " world"}]}`)
)

// Intake refuses a genuine pair reported under any other request or
// response than the one its receipt binds, and says which part differs.
func TestVerifyPairAttacks(t *testing.T) {
	j := newJob(t, "j1")
	genuine := func() protocol.StreamPair {
		return *j.exchange("r1", "POST", "/v1/completions?user=a", "application/json", completionReq, 200, "application/json", completionResp)
	}
	rc, err := VerifyPair(j.uuid, j.miner.SS58(), j.proof, genuine())
	if err != nil || rc.Version != 2 || rc.Target != "/v1/completions?user=a" {
		t.Fatalf("genuine pair: %+v %v", rc, err)
	}
	for name, tc := range map[string]struct {
		edit func(p *protocol.StreamPair)
		want string
	}{
		"forged path":          {func(p *protocol.StreamPair) { p.Path = "/v1/chat/completions?user=a" }, `request target "/v1/chat/completions?user=a" is not the signed "/v1/completions?user=a"`},
		"forged query":         {func(p *protocol.StreamPair) { p.Path = "/v1/completions?user=b" }, `request target "/v1/completions?user=b" is not the signed "/v1/completions?user=a"`},
		"query dropped":        {func(p *protocol.StreamPair) { p.Path = "/v1/completions" }, `request target "/v1/completions" is not the signed`},
		"forged method":        {func(p *protocol.StreamPair) { p.Method = "PUT" }, `request method "PUT" is not the signed "POST"`},
		"forged content type":  {func(p *protocol.StreamPair) { p.ContentType = "application/x-www-form-urlencoded" }, `request content type "application/x-www-form-urlencoded" is not the signed "application/json"`},
		"content type dropped": {func(p *protocol.StreamPair) { p.ContentType = "" }, `request content type "" is not the signed "application/json"`},
		"forged status":        {func(p *protocol.StreamPair) { p.Status = 0 }, "response status 0 is not the signed 200"},
		"forged response type": {func(p *protocol.StreamPair) { p.ResponseContentType = "text/event-stream" }, `response content type "text/event-stream" is not the signed "application/json"`},
		"other request body":   {func(p *protocol.StreamPair) { p.RequestB64 = base64.StdEncoding.EncodeToString([]byte("{}")) }, "input_sha256"},
		"other response body":  {func(p *protocol.StreamPair) { p.ResponseB64 = base64.StdEncoding.EncodeToString([]byte("{}")) }, "output_sha256"},
		"bodies not base64":    {func(p *protocol.StreamPair) { p.RequestB64 = "%%%" }, "base64"},
	} {
		p := genuine()
		tc.edit(&p)
		if _, err := VerifyPair(j.uuid, j.miner.SS58(), j.proof, p); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
	// Blamed on another miner, or on another job.
	other := newJob(t, "j1")
	if _, err := VerifyPair(j.uuid, other.miner.SS58(), j.proof, genuine()); err == nil || !strings.Contains(err.Error(), "miner's signature") {
		t.Errorf("other miner: %v", err)
	}
	if _, err := VerifyPair("j2", j.miner.SS58(), j.proof, genuine()); err == nil {
		t.Error("pair accepted for another job")
	}
	// A v1 receipt verifies its bodies only and says so: kept for
	// statistics, never evidence.
	now := time.Now().UTC()
	blob, s := sr.Sign(j.key, &sr.Receipt{JobUUID: j.uuid, RequestID: "old", TimestampFrom: now, TimestampTo: now, InputSHA256: hexsum(completionReq), OutputSHA256: hexsum(completionResp)})
	v1 := genuine()
	v1.Path, v1.ReceiptB64, v1.SignatureB64 = "/v1/chat/completions", blob, s
	if rc, err := VerifyPair(j.uuid, j.miner.SS58(), j.proof, v1); err != nil || rc.Version != 1 || rc.RequestDigest() != "" {
		t.Errorf("v1 pair: %+v %v", rc, err)
	}
}

// evidence makes evidence that the miner of j answered p's request with
// something other than the trusted job tr's answer.
func evidence(j, tr *job, p *protocol.StreamPair, answer []byte, cmp string) *Evidence {
	req, _ := base64.StdEncoding.DecodeString(p.RequestB64)
	replayed := tr.exchange("t1", p.Method, p.Path, p.ContentType, req, 200, "application/json", answer)
	return &Evidence{Format: EvidenceFormat, Image: "horde/llm:dev", JobUUID: j.uuid, RequestID: "r1", MinerHotkey: j.miner.SS58(), Pair: *p, JobReady: j.proof,
		Replay: Replay{RequestSHA256: sr.RequestDigest(p.Method, p.Path, p.ContentType, hexsum(req)), TrustedJob: tr.uuid, TrustedMiner: tr.miner.SS58(),
			JobReady: tr.proof, Status: 200, ResponseB64: replayed.ResponseB64, ReceiptB64: replayed.ReceiptB64, SignatureB64: replayed.SignatureB64},
		Comparator: "exact", Verdict: Verdict{Detail: "differs"}}
}

// Evidence re-checks only when the replayed request is the very request
// the miner's receipt binds, and the trusted job signed that replay.
func TestCheckEvidence(t *testing.T) {
	j, tr := newJob(t, "j1"), newJob(t, "trusted-1")
	p := j.exchange("r1", "POST", "/v1/completions", "application/json", completionReq, 200, "application/json", []byte(`{"choices": [{"text": " cheap"}]}`))
	good := evidence(j, tr, p, completionResp, "exact")
	if rc, err := CheckEvidence(good); err != nil || rc.RequestDigest() != good.Replay.RequestSHA256 {
		t.Fatalf("good evidence: %v", err)
	}
	for name, tc := range map[string]struct {
		edit func(e *Evidence)
		want string
	}{
		"no format (evidence of before)": {func(e *Evidence) { e.Format = "" }, "does not show the replayed request"},
		"replayed on another path": {func(e *Evidence) {
			*e = *evidence(j, tr, &protocol.StreamPair{Method: "POST", Path: "/v1/chat/completions", ContentType: "application/json",
				RequestB64: p.RequestB64, ResponseB64: p.ResponseB64, ReceiptB64: p.ReceiptB64, SignatureB64: p.SignatureB64}, completionResp, "exact")
		}, "request target"},
		"replay digest of another request": {func(e *Evidence) {
			e.Replay.RequestSHA256 = sr.RequestDigest("POST", "/v1/chat/completions", "application/json", hexsum(completionReq))
		}, "is not the signed request"},
		"trusted receipt of another request": {func(e *Evidence) {
			other := tr.exchange("t2", "POST", "/v1/chat/completions", "application/json", completionReq, 200, "application/json", completionResp)
			e.Replay.ReceiptB64, e.Replay.SignatureB64 = other.ReceiptB64, other.SignatureB64
		}, "does not bind the replayed request"},
		"trusted job not vouched for": {func(e *Evidence) { e.Replay.TrustedMiner = j.miner.SS58() }, "the trusted job"},
		"replay answer swapped": {func(e *Evidence) {
			e.Replay.ResponseB64 = base64.StdEncoding.EncodeToString([]byte("x"))
		}, "output_sha256"},
		"replay status misreported":  {func(e *Evidence) { e.Replay.Status = 500 }, "says HTTP 200, the evidence 500"},
		"exact, yet the same answer": {func(e *Evidence) { *e = *evidence(j, tr, p, []byte(`{"choices": [{"text": " cheap"}]}`), "exact") }, "no cheat"},
		"miner's pair forged":        {func(e *Evidence) { e.Pair.Path = "/v1/chat/completions" }, "the miner's receipt"},
	} {
		e := *good
		tc.edit(&e)
		if _, err := CheckEvidence(&e); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}
