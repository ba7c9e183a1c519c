// Package receipt defines the job receipts validators and miners exchange
// (started, accepted, finished), the exact bytes both sign, and Sign/Verify.
//
// Both parties sign the same bytes: Python's json.dumps(payload, sort_keys=True)
// of the payload in pydantic JSON form (see package pyjson).
package receipt

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/horde-compute/horde/pyjson"
	"github.com/horde-compute/horde/sig"
)

// Type names a receipt kind, as the payload's receipt_type field.
type Type string

// The receipt types.
const (
	JobStarted  Type = "JobStartedReceipt"
	JobAccepted Type = "JobAcceptedReceipt"
	JobFinished Type = "JobFinishedReceipt"
)

// ErrInvalid marks a receipt that fails a check.
var ErrInvalid = errors.New("invalid receipt")

// Time is a timestamp that encodes as pydantic does.
type Time struct{ time.Time }

// MarshalJSON writes the pydantic form; it refuses a time outside years
// 1–9999 in UTC, which that form cannot hold.
func (t Time) MarshalJSON() ([]byte, error) {
	if err := pyjson.TimeInRange(t.Time); err != nil {
		return nil, err
	}
	return json.Marshal(pyjson.Time(t.Time))
}

// UnmarshalJSON reads an RFC 3339 time.
func (t *Time) UnmarshalJSON(b []byte) error {
	var s string
	if n := len(b); n >= 2 && b[0] == '"' && b[n-1] == '"' && bytes.IndexByte(b[1:n-1], '\\') < 0 && bytes.IndexByte(b[1:n-1], '"') < 0 {
		s = string(b[1 : n-1]) // no escapes: the text is the string
	} else if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := pyjson.ParseTime(s)
	t.Time = v
	return err
}

// At returns t truncated to microseconds, the precision pydantic keeps.
func At(t time.Time) Time { return Time{t.UTC().Truncate(time.Microsecond)} }

// Base holds the fields every payload has.
type Base struct {
	JobUUID         string `json:"job_uuid"`
	MinerHotkey     string `json:"miner_hotkey"`
	ValidatorHotkey string `json:"validator_hotkey"`
	Timestamp       Time   `json:"timestamp"`
}

// StartedPayload is signed by the validator when it offers a job to a miner.
type StartedPayload struct {
	Base
	ReceiptType   Type   `json:"receipt_type"`
	ExecutorClass string `json:"executor_class"`
	IsOrganic     bool   `json:"is_organic"`
	TTL           int    `json:"ttl"`
}

// AcceptedPayload records that the miner accepted the job.
type AcceptedPayload struct {
	Base
	ReceiptType  Type `json:"receipt_type"`
	TimeAccepted Time `json:"time_accepted"`
	TTL          int  `json:"ttl"`
}

// FinishedPayload is signed by the validator when the job ended (also on failure, score 0).
type FinishedPayload struct {
	Base
	ReceiptType  Type    `json:"receipt_type"`
	TimeStarted  Time    `json:"time_started"`
	TimeTookUS   int64   `json:"time_took_us"`
	ScoreStr     string  `json:"score_str"`
	BlockNumbers []int64 `json:"block_numbers"`
}

// Payload is any of the payload types.
type Payload interface{ base() *Base }

func (p *StartedPayload) base() *Base  { p.ReceiptType = JobStarted; return &p.Base }
func (p *AcceptedPayload) base() *Base { p.ReceiptType = JobAccepted; return &p.Base }
func (p *FinishedPayload) base() *Base {
	p.ReceiptType = JobFinished
	if p.BlockNumbers == nil {
		p.BlockNumbers = []int64{}
	}
	return &p.Base
}

// Bytes returns the canonical bytes both parties sign.
func Bytes(p Payload) ([]byte, error) {
	p.base()
	b, err := canonical(p)
	if err != nil {
		return nil, fmt.Errorf("receipt bytes: %w", err)
	}
	return b, nil
}

// Sign returns "0x"+hex of k's signature over the payload's canonical bytes.
func Sign(k *sig.Hotkey, p Payload) (string, error) {
	b, err := Bytes(p)
	if err != nil {
		return "", err
	}
	return k.SignHex(b), nil
}

// VerifyBy checks that signature over p was made by the given SS58 hotkey.
func VerifyBy(hotkey string, p Payload, signature string) error {
	b, err := Bytes(p)
	if err != nil {
		return err
	}
	return verifyBytes(hotkey, p.base().JobUUID, b, signature)
}

// verifyBytes checks signature over the payload's canonical bytes msg.
func verifyBytes(hotkey, jobUUID string, msg []byte, signature string) error {
	if err := sig.VerifyHex(hotkey, msg, signature); err != nil {
		return fmt.Errorf("%w: %s signature of %s: %w", ErrInvalid, hotkey, jobUUID, err)
	}
	return nil
}

// Receipt is a stored receipt: its payload and the signatures over it.
type Receipt struct {
	Type               Type            `json:"receipt_type"`
	Payload            json.RawMessage `json:"payload"`
	ValidatorSignature string          `json:"validator_signature"`
	MinerSignature     string          `json:"miner_signature,omitempty"`
}

// New builds a stored receipt from a payload and the validator's signature.
func New(p Payload, validatorSignature string) (Receipt, error) {
	p.base()
	b, err := json.Marshal(p)
	if err != nil {
		return Receipt{}, err
	}
	var t struct {
		ReceiptType Type `json:"receipt_type"`
	}
	_ = json.Unmarshal(b, &t)
	return Receipt{Type: t.ReceiptType, Payload: b, ValidatorSignature: validatorSignature}, nil
}

// Decode returns the typed payload of r.
func (r Receipt) Decode() (Payload, error) {
	var p Payload
	switch r.Type {
	case JobStarted:
		p = &StartedPayload{}
	case JobAccepted:
		p = &AcceptedPayload{}
	case JobFinished:
		p = &FinishedPayload{}
	default:
		return nil, fmt.Errorf("%w: unknown receipt type %q", ErrInvalid, r.Type)
	}
	if err := json.Unmarshal(r.Payload, p); err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrInvalid, err)
	}
	return p, nil
}

// Verify checks the validator's signature and, when present, the miner's.
// The payload is decoded and its canonical bytes made once, for both.
func (r Receipt) Verify() error {
	p, err := r.Decode()
	if err != nil {
		return err
	}
	msg, err := Bytes(p)
	if err != nil {
		return err
	}
	b := p.base()
	if err := verifyBytes(b.ValidatorHotkey, b.JobUUID, msg, r.ValidatorSignature); err != nil {
		return err
	}
	if r.MinerSignature != "" {
		return verifyBytes(b.MinerHotkey, b.JobUUID, msg, r.MinerSignature)
	}
	return nil
}
