// Package streamreceipt holds what both ends of a streaming job share: the
// signed receipt every response carries (its canonical bytes, signing and
// verification against what the client sent and received), and the job's and
// client's ed25519 keys with their pinned TLS configurations.
package streamreceipt

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ReceiptVersion is the first line of every receipt blob.
const ReceiptVersion = "horde-streaming-receipt/v1"

// Headers and trailers of the streaming protocol.
const (
	HeaderTimestamp = "X-Horde-Timestamp"
	HeaderRequestID = "X-Horde-Request-Id"
	TrailerReceipt  = "X-Horde-Receipt"
	TrailerSig      = "X-Horde-Signature"
	// ReceiptsPath serves kept receipts: GET ReceiptsPath + request id.
	ReceiptsPath = "/.horde/receipts/"
)

// TimeFormat is RFC 3339 in UTC with microseconds.
const TimeFormat = "2006-01-02T15:04:05.000000Z"

// ErrReceipt marks a receipt that does not verify; the message says why.
var ErrReceipt = errors.New("invalid streaming receipt")

// Receipt is what the job signs for one request and its response.
type Receipt struct {
	JobUUID       string    `json:"job_uuid"`
	RequestID     string    `json:"request_id"`
	TimestampFrom time.Time `json:"timestamp_from"`
	TimestampTo   time.Time `json:"timestamp_to"`
	InputSHA256   string    `json:"input_sha256"`
	OutputSHA256  string    `json:"output_sha256"`
}

// Blob returns the canonical bytes that are signed.
func (r *Receipt) Blob() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\njob_uuid=%s\nrequest_id=%s\ntimestamp_from=%s\ntimestamp_to=%s\ninput_sha256=%s\noutput_sha256=%s\n",
		ReceiptVersion, r.JobUUID, r.RequestID, r.TimestampFrom.UTC().Format(TimeFormat), r.TimestampTo.UTC().Format(TimeFormat),
		r.InputSHA256, r.OutputSHA256)
	return b.Bytes()
}

// ParseBlob reads a receipt blob, insisting on the canonical form.
func ParseBlob(blob []byte) (*Receipt, error) {
	sc := bufio.NewScanner(bytes.NewReader(blob))
	want := []string{"", "job_uuid", "request_id", "timestamp_from", "timestamp_to", "input_sha256", "output_sha256"}
	vals := map[string]string{}
	i := 0
	for sc.Scan() {
		line := sc.Text()
		if i == 0 {
			if line != ReceiptVersion {
				return nil, fmt.Errorf("%w: first line %.40q is not %s", ErrReceipt, line, ReceiptVersion)
			}
			i++
			continue
		}
		if i >= len(want) {
			return nil, fmt.Errorf("%w: extra line %.40q", ErrReceipt, line)
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k != want[i] {
			return nil, fmt.Errorf("%w: line %d is %.40q, want %s=…", ErrReceipt, i+1, line, want[i])
		}
		vals[k] = v
		i++
	}
	if i != len(want) {
		return nil, fmt.Errorf("%w: %d lines, want %d", ErrReceipt, i, len(want))
	}
	r := &Receipt{JobUUID: vals["job_uuid"], RequestID: vals["request_id"], InputSHA256: vals["input_sha256"], OutputSHA256: vals["output_sha256"]}
	var err error
	if r.TimestampFrom, err = time.Parse(TimeFormat, vals["timestamp_from"]); err != nil {
		return nil, fmt.Errorf("%w: timestamp_from: %v", ErrReceipt, err)
	}
	if r.TimestampTo, err = time.Parse(TimeFormat, vals["timestamp_to"]); err != nil {
		return nil, fmt.Errorf("%w: timestamp_to: %v", ErrReceipt, err)
	}
	if !bytes.Equal(r.Blob(), blob) {
		return nil, fmt.Errorf("%w: blob is not in canonical form", ErrReceipt)
	}
	return r, nil
}

// Sign returns the receipt's blob and signature, base64 as the trailers carry them.
func Sign(key ed25519.PrivateKey, r *Receipt) (blob, signature string) {
	b := r.Blob()
	return base64.StdEncoding.EncodeToString(b), base64.StdEncoding.EncodeToString(ed25519.Sign(key, b))
}

// decodeBase64 reads standard padded base64 in its one canonical text (no
// line breaks, zero unused bits), so that a receipt or signature has one
// text and a re-encoded copy is not a different one. ed25519.Verify refuses
// non-canonical signature bytes itself.
func decodeBase64(s string) ([]byte, error) {
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil || base64.StdEncoding.EncodeToString(b) != s {
		return nil, fmt.Errorf("not canonical standard padded base64")
	}
	return b, nil
}

// Expect is what a client knows of one of its requests.
type Expect struct {
	JobUUID, RequestID        string
	InputSHA256, OutputSHA256 string
	// Sent and Received bound the exchange on the client's clock.
	Sent, Received time.Time
	Skew           time.Duration
}

// Verify checks a receipt from the trailers (base64 blob and signature)
// against the job's public key and what the client sent and received. The
// error says precisely what does not match.
func Verify(pub ed25519.PublicKey, blobB64, sigB64 string, want Expect) (*Receipt, error) {
	if blobB64 == "" || sigB64 == "" {
		return nil, fmt.Errorf("%w: no receipt (the response did not complete)", ErrReceipt)
	}
	blob, err := decodeBase64(blobB64)
	if err != nil {
		return nil, fmt.Errorf("%w: receipt: %v", ErrReceipt, err)
	}
	sig, err := decodeBase64(sigB64)
	if err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrReceipt, err)
	}
	if !ed25519.Verify(pub, blob, sig) {
		return nil, fmt.Errorf("%w: signature does not verify with the job's key", ErrReceipt)
	}
	r, err := ParseBlob(blob)
	if err != nil {
		return nil, err
	}
	switch {
	case r.JobUUID != want.JobUUID:
		return r, fmt.Errorf("%w: receipt is for job %s, not %s", ErrReceipt, r.JobUUID, want.JobUUID)
	case r.RequestID != want.RequestID:
		return r, fmt.Errorf("%w: receipt is for request %s, not %s", ErrReceipt, r.RequestID, want.RequestID)
	case r.InputSHA256 != want.InputSHA256:
		return r, fmt.Errorf("%w: input_sha256 %s is not the sha256 of what was sent (%s)", ErrReceipt, r.InputSHA256, want.InputSHA256)
	case r.OutputSHA256 != want.OutputSHA256:
		return r, fmt.Errorf("%w: output_sha256 %s is not the sha256 of what was received (%s)", ErrReceipt, r.OutputSHA256, want.OutputSHA256)
	case r.TimestampTo.Before(r.TimestampFrom):
		return r, fmt.Errorf("%w: timestamp_to is before timestamp_from", ErrReceipt)
	case r.TimestampFrom.Before(want.Sent.Add(-want.Skew)):
		return r, fmt.Errorf("%w: timestamp_from %s is before the request was sent (%s) beyond the skew of %s", ErrReceipt,
			r.TimestampFrom.Format(TimeFormat), want.Sent.UTC().Format(TimeFormat), want.Skew)
	case r.TimestampTo.After(want.Received.Add(want.Skew)):
		return r, fmt.Errorf("%w: timestamp_to %s is after the response was received (%s) beyond the skew of %s", ErrReceipt,
			r.TimestampTo.Format(TimeFormat), want.Received.UTC().Format(TimeFormat), want.Skew)
	}
	return r, nil
}

// VerifyEvidence checks a receipt kept as evidence, away from the exchange:
// the signature by the job's key and that it covers exactly these request
// and response bodies of this job. Timestamps are returned for the caller
// to judge against the job's life.
func VerifyEvidence(pub ed25519.PublicKey, jobUUID, blobB64, sigB64 string, request, response []byte) (*Receipt, error) {
	blob, err := decodeBase64(blobB64)
	if err != nil {
		return nil, fmt.Errorf("%w: receipt: %v", ErrReceipt, err)
	}
	sig, err := decodeBase64(sigB64)
	if err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrReceipt, err)
	}
	if !ed25519.Verify(pub, blob, sig) {
		return nil, fmt.Errorf("%w: signature does not verify with the job's key", ErrReceipt)
	}
	r, err := ParseBlob(blob)
	if err != nil {
		return nil, err
	}
	in, out := sha256.Sum256(request), sha256.Sum256(response)
	switch {
	case r.JobUUID != jobUUID:
		return r, fmt.Errorf("%w: receipt is for job %s, not %s", ErrReceipt, r.JobUUID, jobUUID)
	case r.InputSHA256 != hex.EncodeToString(in[:]):
		return r, fmt.Errorf("%w: the request body does not match the receipt's input_sha256", ErrReceipt)
	case r.OutputSHA256 != hex.EncodeToString(out[:]):
		return r, fmt.Errorf("%w: the response body does not match the receipt's output_sha256", ErrReceipt)
	}
	return r, nil
}
