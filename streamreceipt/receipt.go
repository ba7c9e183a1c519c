// Package streamreceipt holds what both ends of a streaming job share: the
// signed receipt every response carries (its canonical bytes in two
// versions, signing and verification against what the client sent and
// received), and the job's and client's ed25519 keys with their pinned TLS
// configurations. docs/PROTOCOL.md defines the receipt's bytes.
package streamreceipt

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// Headers and trailers of the streaming protocol.
const (
	HeaderTimestamp = "X-Horde-Timestamp"
	// HeaderRequestID is sent by a client that stamps its requests, and
	// returned in every response that carries a receipt.
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

// Receipt is what the job signs for one request and its response. v1
// receipts have only the job, request id, timestamps and body hashes.
type Receipt struct {
	// Version is 1 or 2; 0 reads as 1 (receipts kept before versions were).
	Version   int    `json:"version,omitempty"`
	JobUUID   string `json:"job_uuid"`
	RequestID string `json:"request_id"`
	// Stamp says who stamped the request's time and id (v2).
	Stamp         Stamp     `json:"stamp,omitempty"`
	TimestampFrom time.Time `json:"timestamp_from"`
	TimestampTo   time.Time `json:"timestamp_to"`
	// Method, Target (path and raw query) and RequestContentType are the
	// request as the proxy received it and passed it on (v2).
	Method             string `json:"method,omitempty"`
	Target             string `json:"target,omitempty"`
	RequestContentType string `json:"request_content_type,omitempty"`
	InputSHA256        string `json:"input_sha256"`
	// Status and ResponseContentType are the response as sent (v2).
	Status              int    `json:"status,omitempty"`
	ResponseContentType string `json:"response_content_type,omitempty"`
	OutputSHA256        string `json:"output_sha256"`
}

// Exchange is one side's account of a request and its response: what a v2
// receipt binds beside the bodies' hashes.
type Exchange struct {
	Method, Target, RequestContentType string
	Status                             int
	ResponseContentType                string
}

// CheckExchange says precisely which part of x a v2 receipt does not bind
// (nil if it binds all of x). A v1 receipt binds none of it.
func (r *Receipt) CheckExchange(x Exchange) error {
	switch {
	case r.version() != 2:
		return fmt.Errorf("%w: a %s receipt does not bind the request", ErrReceipt, VersionV1)
	case x.Method != r.Method:
		return fmt.Errorf("%w: request method %q is not the signed %q", ErrReceipt, x.Method, r.Method)
	case x.Target != r.Target:
		return fmt.Errorf("%w: request target %q is not the signed %q", ErrReceipt, x.Target, r.Target)
	case x.RequestContentType != r.RequestContentType:
		return fmt.Errorf("%w: request content type %q is not the signed %q", ErrReceipt, x.RequestContentType, r.RequestContentType)
	case x.Status != r.Status:
		return fmt.Errorf("%w: response status %d is not the signed %d", ErrReceipt, x.Status, r.Status)
	case x.ResponseContentType != r.ResponseContentType:
		return fmt.Errorf("%w: response content type %q is not the signed %q", ErrReceipt, x.ResponseContentType, r.ResponseContentType)
	}
	return nil
}

// SignReceipt returns the receipt's blob and signature, base64 as the
// trailers carry them, or why the receipt cannot be encoded.
func SignReceipt(key ed25519.PrivateKey, r *Receipt) (blob, signature string, err error) {
	b, err := r.Blob()
	if err != nil {
		return "", "", err
	}
	return base64.StdEncoding.EncodeToString(b), base64.StdEncoding.EncodeToString(ed25519.Sign(key, b)), nil
}

// Sign is SignReceipt for receipts whose values the caller made itself and
// knows to be valid; it panics if the receipt cannot be encoded.
func Sign(key ed25519.PrivateKey, r *Receipt) (blob, signature string) {
	blob, signature, err := SignReceipt(key, r)
	if err != nil {
		panic(err)
	}
	return blob, signature
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

// open checks the signature of a receipt (base64 blob and signature) by pub
// and parses it.
func open(pub ed25519.PublicKey, blobB64, sigB64 string) (*Receipt, error) {
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
	return ParseBlob(blob)
}

// Expect is what a client knows of one of its requests.
type Expect struct {
	JobUUID, RequestID string
	// Stamp is who stamped the request (default StampClient); with
	// StampProxy, RequestID is the id the response header returned.
	Stamp Stamp
	// Exchange is the request as sent and the response's head as received.
	Exchange
	InputSHA256, OutputSHA256 string
	// Sent and Received bound the exchange on the client's clock.
	Sent, Received time.Time
	Skew           time.Duration
}

// Verify checks a receipt from the trailers (base64 blob and signature)
// against the job's public key and what the client sent and received: every
// field of a v2 receipt. A v1 receipt is refused: a proxy that signs v1
// today leaves the request unbound. The error says precisely what does not
// match.
func Verify(pub ed25519.PublicKey, blobB64, sigB64 string, want Expect) (*Receipt, error) {
	if blobB64 == "" || sigB64 == "" {
		return nil, fmt.Errorf("%w: no receipt (the response did not complete)", ErrReceipt)
	}
	r, err := open(pub, blobB64, sigB64)
	if err != nil {
		return nil, err
	}
	stamp := want.Stamp
	if stamp == "" {
		stamp = StampClient
	}
	switch {
	case r.version() != 2:
		return r, fmt.Errorf("%w: receipt is %s, which does not bind the request; the job's proxy must sign %s", ErrReceipt, VersionV1, VersionV2)
	case r.JobUUID != want.JobUUID:
		return r, fmt.Errorf("%w: receipt is for job %s, not %s", ErrReceipt, r.JobUUID, want.JobUUID)
	case r.RequestID != want.RequestID:
		return r, fmt.Errorf("%w: receipt is for request %s, not %s", ErrReceipt, r.RequestID, want.RequestID)
	case r.Stamp != stamp:
		return r, fmt.Errorf("%w: receipt says the request was %s-stamped, but it was %s-stamped", ErrReceipt, r.Stamp, stamp)
	}
	if err := r.CheckExchange(want.Exchange); err != nil {
		return r, err
	}
	switch {
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
// and response bodies of this job. It accepts both versions: the caller
// checks the exchange a v2 receipt binds (CheckExchange) and never treats a
// v1 receipt as proof of what was asked. Timestamps are returned for the
// caller to judge against the job's life.
func VerifyEvidence(pub ed25519.PublicKey, jobUUID, blobB64, sigB64 string, request, response []byte) (*Receipt, error) {
	r, err := open(pub, blobB64, sigB64)
	if err != nil {
		return nil, err
	}
	switch {
	case r.JobUUID != jobUUID:
		return r, fmt.Errorf("%w: receipt is for job %s, not %s", ErrReceipt, r.JobUUID, jobUUID)
	case r.InputSHA256 != sha256Hex(request):
		return r, fmt.Errorf("%w: the request body does not match the receipt's input_sha256", ErrReceipt)
	case r.OutputSHA256 != sha256Hex(response):
		return r, fmt.Errorf("%w: the response body does not match the receipt's output_sha256", ErrReceipt)
	}
	return r, nil
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
