package validation

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"

	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
	sr "github.com/horde-compute/horde/streamreceipt"
)

// VerifyPair checks a reported pair as evidence about miner: the miner's
// hotkey signed the job's key (proof), that key signed the receipt, the
// receipt covers exactly these bodies of this job and — for a v2 receipt —
// binds the very request reported (method, target, content type) and the
// response's status and content type. The error says precisely what does
// not match. A v1 receipt binds no request: its pair verifies by its bodies
// only, may be kept for statistics, and is never evidence (the returned
// receipt's Version says which). The timestamps are the caller's to judge.
func VerifyPair(jobUUID, miner string, proof protocol.StreamingServerDetails, p protocol.StreamPair) (*sr.Receipt, error) {
	pub, err := vouchedKey(jobUUID, miner, proof)
	if err != nil {
		return nil, err
	}
	req, err1 := base64.StdEncoding.DecodeString(p.RequestB64)
	resp, err2 := base64.StdEncoding.DecodeString(p.ResponseB64)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("bodies must be base64")
	}
	rc, err := sr.VerifyEvidence(pub, jobUUID, p.ReceiptB64, p.SignatureB64, req, resp)
	if err != nil {
		return nil, err
	}
	if rc.Version == 1 {
		return rc, nil
	}
	if err := rc.CheckExchange(PairExchange(p)); err != nil {
		return nil, err
	}
	return rc, nil
}

// PairExchange is the request and response head a pair reports.
func PairExchange(p protocol.StreamPair) sr.Exchange {
	return sr.Exchange{Method: p.Method, Target: p.Path, RequestContentType: p.ContentType, Status: p.Status, ResponseContentType: p.ResponseContentType}
}

// vouchedKey returns the job's key after checking that miner vouched for it.
func vouchedKey(jobUUID, miner string, proof protocol.StreamingServerDetails) (ed25519.PublicKey, error) {
	msg := protocol.StreamingReadyMessage(jobUUID, proof.StreamingServerAddress, proof.StreamingServerPort, proof.StreamingServerCert)
	if err := sig.VerifyHex(miner, msg, proof.MinerSignature); err != nil {
		return nil, fmt.Errorf("the miner's signature of the job's key does not verify: %w", err)
	}
	pub, err := sr.PublicKey([]byte(proof.StreamingServerCert))
	if err != nil {
		return nil, fmt.Errorf("job certificate: %w", err)
	}
	return pub, nil
}

// EvidenceFormat names the evidence a verdict of cheating keeps.
const EvidenceFormat = "horde-cheat-evidence/v2"

// Evidence is what a verdict of cheating keeps: enough for anyone to check,
// without trusting the validator, that the miner's job signed its answer to
// a request, that the very same request (by its digest) was replayed on the
// validator's trusted miner, what that answered, and what the comparator
// said. CheckEvidence re-checks it.
type Evidence struct {
	Format      string `json:"format"`
	Image       string `json:"image"`
	JobUUID     string `json:"job_uuid"`
	RequestID   string `json:"request_id"`
	MinerHotkey string `json:"miner_hotkey"`
	// Pair is the exchange as reported, with the miner's job's receipt;
	// JobReady is the miner's signature vouching for that job's key.
	Pair     protocol.StreamPair             `json:"pair"`
	JobReady protocol.StreamingServerDetails `json:"job_ready"`
	Replay   Replay                          `json:"replay"`
	// Comparator and Verdict judged the miner's answer against the replay.
	Comparator string  `json:"comparator"`
	Verdict    Verdict `json:"verdict"`
}

// Replay is the replay of the signed request on the trusted miner.
type Replay struct {
	// RequestSHA256 is the digest (streamreceipt.RequestDigest) of the
	// request replayed: method, target, content type and body.
	RequestSHA256 string `json:"request_sha256"`
	TrustedJob    string `json:"trusted_job"`
	TrustedMiner  string `json:"trusted_miner"`
	// JobReady is the trusted miner vouching for its job's key, which
	// signed Receipt over the replay and its answer.
	JobReady     protocol.StreamingServerDetails `json:"job_ready"`
	Status       int                             `json:"status"`
	ResponseB64  string                          `json:"response_b64"`
	ReceiptB64   string                          `json:"receipt_b64"`
	SignatureB64 string                          `json:"signature_b64"`
}

// CheckEvidence re-checks evidence of cheating: the miner's receipt (v2)
// binds the reported pair; the replayed request's digest is the digest of
// the request that receipt binds; the trusted miner's job signed a v2
// receipt of that very request with the replayed answer. For the exact
// comparator it also checks that the answers differ. It returns the
// miner's receipt. Which hotkey is the validator's trusted miner is the
// checker's to know.
func CheckEvidence(ev *Evidence) (*sr.Receipt, error) {
	if ev.Format != EvidenceFormat {
		return nil, fmt.Errorf("evidence format %q is not %s: it does not show the replayed request", ev.Format, EvidenceFormat)
	}
	rc, err := VerifyPair(ev.JobUUID, ev.MinerHotkey, ev.JobReady, ev.Pair)
	if err != nil {
		return nil, fmt.Errorf("the miner's receipt: %w", err)
	}
	switch {
	case rc.Version != 2:
		return rc, fmt.Errorf("the miner's receipt is %s, which binds no request: no conviction rests on it", sr.VersionV1)
	case rc.RequestID != ev.RequestID:
		return rc, fmt.Errorf("the miner's receipt is for request %s, not %s", rc.RequestID, ev.RequestID)
	case rc.RequestDigest() != ev.Replay.RequestSHA256:
		return rc, fmt.Errorf("the replayed request %s is not the signed request %s", ev.Replay.RequestSHA256, rc.RequestDigest())
	}
	r := ev.Replay
	pub, err := vouchedKey(r.TrustedJob, r.TrustedMiner, r.JobReady)
	if err != nil {
		return rc, fmt.Errorf("the trusted job: %w", err)
	}
	req, _ := base64.StdEncoding.DecodeString(ev.Pair.RequestB64)
	answer, err := base64.StdEncoding.DecodeString(r.ResponseB64)
	if err != nil {
		return rc, fmt.Errorf("the replay's answer is not base64")
	}
	tr, err := sr.VerifyEvidence(pub, r.TrustedJob, r.ReceiptB64, r.SignatureB64, req, answer)
	if err != nil {
		return rc, fmt.Errorf("the trusted job's receipt: %w", err)
	}
	switch {
	case tr.Version != 2 || tr.RequestDigest() != r.RequestSHA256:
		return rc, fmt.Errorf("the trusted job's receipt does not bind the replayed request %s", r.RequestSHA256)
	case tr.Status != r.Status:
		return rc, fmt.Errorf("the trusted job's receipt says HTTP %d, the evidence %d", tr.Status, r.Status)
	}
	if ev.Comparator == (Exact{}).Name() {
		resp, _ := base64.StdEncoding.DecodeString(ev.Pair.ResponseB64)
		if bytes.Equal(resp, answer) {
			return rc, fmt.Errorf("the trusted replay answered the very bytes the miner did: no cheat")
		}
	}
	return rc, nil
}
