// Package decide holds a miner's decisions as pure functions of what it
// knows: whether to accept a job offer, the receipts it countersigns, the
// excuses of a busy miner and what of an executor's messages reaches the
// validator. No socket, lock or clock of their own: the miner's transport
// gathers their inputs and sends what they return.
package decide

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
	"github.com/horde-compute/horde/sig"
)

// Offer is a job offer and the state the miner decides it against.
type Offer struct {
	Miner     string // this miner's hotkey
	Validator string // the authenticated validator making the offer
	Request   *protocol.V0InitialJobRequest
	Manifest  map[string]int // executors offered per class
	Reserved  int            // executors of the offer's class taken
	Running   bool           // a job of the offer's uuid runs here
}

// Decision answers an offer: accept (with the validator's started receipt,
// decoded and verified) or decline with a reason and a message.
type Decision struct {
	Accept  bool
	Reason  protocol.JobRejectionReason
	Message string
	Started *receipt.StartedPayload
}

// Declined is a decision to decline, with a reason and a message.
func Declined(reason protocol.JobRejectionReason, format string, args ...any) Decision {
	return Decision{Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// Decide accepts an offer whose started receipt is the validator's, names
// this miner and the job, and whose class has a free executor.
func Decide(o Offer) Decision {
	req := o.Request
	var p receipt.StartedPayload
	if err := json.Unmarshal(req.JobStartedReceiptPayload, &p); err != nil {
		return Declined(protocol.RejectInvalidSignature, "job started receipt payload does not decode: %v", err)
	}
	switch {
	case p.JobUUID != req.JobUUID, p.MinerHotkey != o.Miner, p.ValidatorHotkey != o.Validator, p.ExecutorClass != req.ExecutorClass:
		return Declined(protocol.RejectInvalidSignature, "job started receipt does not match the job (uuid, hotkeys or class)")
	}
	if err := receipt.VerifyBy(o.Validator, &p, req.JobStartedReceiptSignature); err != nil {
		return Declined(protocol.RejectInvalidSignature, "%s", err.Error())
	}
	capacity, ok := o.Manifest[req.ExecutorClass]
	switch {
	case !ok:
		return Declined(protocol.RejectUnknown, "executor class %q is not offered by this miner", req.ExecutorClass)
	case o.Running:
		return Declined(protocol.RejectUnknown, "job uuid is already running here")
	case o.Reserved >= capacity:
		return Declined(protocol.RejectBusy, "all executors of class %s are busy", req.ExecutorClass)
	}
	return Decision{Accept: true, Started: &p}
}

// DeclineMessage is what the validator is told when d declines req.
func DeclineMessage(req *protocol.V0InitialJobRequest, d Decision, excuses []json.RawMessage) *protocol.V0DeclineJobRequest {
	if excuses == nil {
		excuses = []json.RawMessage{}
	}
	return &protocol.V0DeclineJobRequest{JobUUID: req.JobUUID, Reason: d.Reason, Message: d.Message, Receipts: excuses}
}

// CountersignStarted makes the started receipt of an accepted job: the
// validator's payload and signature, and the miner's signature.
func CountersignStarted(k *sig.Hotkey, p *receipt.StartedPayload, validatorSignature string) (receipt.Receipt, error) {
	r, err := receipt.New(p, validatorSignature)
	if err != nil {
		return receipt.Receipt{}, err
	}
	if r.MinerSignature, err = receipt.Sign(k, p); err != nil {
		return receipt.Receipt{}, err
	}
	return r, nil
}

// Countersign verifies a receipt the validator signed, checks that it names
// this miner and that validator, and adds the miner's signature.
func Countersign(k *sig.Hotkey, validator string, t receipt.Type, payload json.RawMessage, signature string) (receipt.Receipt, error) {
	r := receipt.Receipt{Type: t, Payload: payload, ValidatorSignature: signature}
	p, err := r.Decode()
	if err != nil {
		return receipt.Receipt{}, err
	}
	if err := r.Verify(); err != nil {
		return receipt.Receipt{}, err
	}
	var b receipt.Base
	if err := json.Unmarshal(payload, &b); err != nil {
		return receipt.Receipt{}, fmt.Errorf("%w: %w", receipt.ErrInvalid, err)
	}
	if b.MinerHotkey != k.SS58() || b.ValidatorHotkey != validator {
		return receipt.Receipt{}, fmt.Errorf("%w: receipt names miner %s and validator %s", receipt.ErrInvalid, b.MinerHotkey, b.ValidatorHotkey)
	}
	if r.MinerSignature, err = receipt.Sign(k, p); err != nil {
		return receipt.Receipt{}, err
	}
	return r, nil
}

// Excuses picks, among the started receipts of running jobs of req's
// class, those upstream's miner sends with a busy decline: of other organic
// jobs, valid ([timestamp, timestamp+ttl]) at the timestamp of req's own
// started receipt, each an upstream Receipt (the type inside the payload).
// They prove that the executors are really taken.
func Excuses(running []receipt.Receipt, req *protocol.V0InitialJobRequest) []json.RawMessage {
	var np receipt.StartedPayload
	if json.Unmarshal(req.JobStartedReceiptPayload, &np) != nil {
		return nil
	}
	now := np.Timestamp.Time
	var out []json.RawMessage
	for _, r := range running {
		p, err := r.Decode()
		if err != nil {
			continue
		}
		sp, ok := p.(*receipt.StartedPayload)
		if !ok || !sp.IsOrganic || sp.JobUUID == req.JobUUID || sp.Timestamp.After(now) || now.Sub(sp.Timestamp.Time) > time.Duration(sp.TTL)*time.Second {
			continue
		}
		if line, err := receipt.MarshalLine(r); err == nil {
			out = append(out, bytes.TrimSuffix(line, []byte("\n")))
		}
	}
	return out
}

// FromExecutor maps a message of an executor to what the miner passes on
// to the validator: the executor's token removed, the streaming key vouched
// for with the miner's hotkey, the reporter of a horde failure named.
// terminal says the message ends the job; ok is false for a message an
// executor may not send.
func FromExecutor(k *sig.Hotkey, msg protocol.Message) (out protocol.Message, terminal, ok bool) {
	switch msg := msg.(type) {
	case *protocol.V0ExecutorReadyRequest:
		msg.ExecutorToken = ""
	case *protocol.V0VolumesReadyRequest:
		msg.ExecutorToken = ""
	case *protocol.V0ExecutionDoneRequest:
		msg.ExecutorToken = ""
	case *protocol.V0StreamingJobReadyRequest:
		// The miner vouches for the job's key with its hotkey.
		msg.ExecutorToken = ""
		msg.MinerSignature = k.SignHex(protocol.StreamingReadyMessage(msg.JobUUID, msg.IP, msg.Port, msg.PublicKey))
	case *protocol.V0MachineSpecsRequest:
		msg.ExecutorToken = ""
	case *protocol.V0JobFinishedRequest:
		msg.ExecutorToken, terminal = "", true
	case *protocol.V0JobFailedRequest:
		msg.ExecutorToken, terminal = "", true
	case *protocol.V0HordeFailedRequest:
		msg.ExecutorToken, terminal = "", true
		msg.ReportedBy = protocol.ByExecutor
	case *protocol.V0ExecutorFailedRequest:
		msg.ExecutorToken, terminal = "", true
	case *protocol.V0StreamingJobNotReadyRequest:
		msg.ExecutorToken = ""
	case *protocol.V0VolumeResult:
		msg.ExecutorToken = ""
	default:
		return nil, false, false
	}
	return msg, terminal, true
}
