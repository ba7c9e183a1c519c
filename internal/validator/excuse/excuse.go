// Package excuse judges a busy miner's excuses: the job-started receipts a
// miner declines an offer with, to prove that its executors of the class are
// taken by other validators' (or this validator's) client work. Only a
// receipt a permitted validator signed, for another job of this miner and
// class, issued before the declined offer and still within its ttl, excuses
// anything; each job excuses once, and never more executors than the miner
// claims.
//
// It is a pure function of the receipts, the declines, the metagraph and the
// rules: it reads no store and knows no transport. It reads receipts in
// horde's shape ({receipt_type, payload, validator_signature,
// miner_signature}) and in upstream's ({payload: {…, receipt_type},
// validator_signature, miner_signature}).
package excuse

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
)

// Why an excuse is refused. A verdict's reason wraps one of these.
var (
	ErrShape      = errors.New("not a job-started receipt")
	ErrSignature  = errors.New("signature does not verify")
	ErrSelfSigned = errors.New("signed by the miner itself")
	ErrNotListed  = errors.New("signer is not in the metagraph")
	ErrNoPermit   = errors.New("signer has no validator permit")
	ErrStake      = errors.New("signer's stake is below the minimum for excuses")
	ErrOtherMiner = errors.New("receipt names another miner")
	ErrOtherClass = errors.New("receipt names another executor class")
	ErrSameJob    = errors.New("receipt is of the declined job itself")
	ErrSynthetic  = errors.New("receipt is of a synthetic job")
	ErrTTL        = errors.New("ttl is longer than the class allows")
	ErrFuture     = errors.New("issued at or after the declined offer")
	ErrExpired    = errors.New("expired before the declined offer")
	ErrEnded      = errors.New("the job had ended well before the declined offer")
	ErrDuplicate  = errors.New("duplicate: the same job twice in one decline")
	ErrTooMany    = errors.New("more excuses than executors the miner claims")
)

// DefaultMinStake is the stake a signer needs for its receipts to excuse
// (upstream's DYNAMIC_MINIMUM_VALIDATOR_STAKE_FOR_EXCUSE).
const DefaultMinStake = 30_000

// Leeway is how long after its ttl a receipt still excuses (upstream's, for
// clock skew and latency between validators).
const Leeway = 2 * time.Second

// EndGrace is how long after this validator signed a job's result the
// job's receipt still excuses: the miner frees the executor only once it has
// torn the job down.
const EndGrace = 30 * time.Second

// DefaultMaxTTL is the longest ttl a receipt of class may carry: a day of
// job limits plus the class's spin-up. horde validators sign the job's whole
// budget (upstream ones 7 s); a receipt that claims longer proves nothing.
func DefaultMaxTTL(class string) time.Duration {
	if class == protocol.ClassSpinUp4minGPU24 {
		return 24*time.Hour + 4*time.Minute
	}
	return 24 * time.Hour
}

// Rules say whose receipts excuse, and for how long.
type Rules struct {
	// Self is this validator's hotkey: its own receipts excuse, as upstream's
	// validators trust themselves.
	Self string
	// Registered is the metagraph's hotkeys, with what makes them
	// validators; nil: only Self's receipts excuse.
	Registered map[string]Registration
	// MinStake is the stake a signer needs (DefaultMinStake when zero).
	MinStake float64
	// MaxTTL is the longest ttl by class (DefaultMaxTTL for classes not listed).
	MaxTTL map[string]time.Duration
	// Ended, if set, says when a job this validator ran on miner ended (it
	// signed its finished receipt then): Self's receipt of a job that ended
	// more than EndGrace before the declined offer excuses nothing.
	Ended func(job, miner string) (time.Time, bool)
}

func (r Rules) minStake() float64 {
	if r.MinStake == 0 {
		return DefaultMinStake
	}
	return r.MinStake
}

func (r Rules) maxTTL(class string) time.Duration {
	if d, ok := r.MaxTTL[class]; ok {
		return d
	}
	return DefaultMaxTTL(class)
}

// Registration is what the metagraph says of a hotkey.
type Registration struct {
	ValidatorPermit bool
	Stake           float64
}

// Decline is one busy decline to judge.
type Decline struct {
	JobUUID, Miner, Class string
	// At is the timestamp of the declined job's started receipt: the moment
	// the executors must have been taken.
	At time.Time
	// Synthetic says the declined job was the validator's own test: then
	// only receipts of client (organic) jobs excuse.
	Synthetic bool
	Receipts  []json.RawMessage
}

// Verdict is the judgement of one receipt of one decline.
type Verdict struct {
	Declined string
	// Job and Signer are the receipt's job and signing validator ("" when
	// the receipt could not be read).
	Job, Signer string
	// Err is nil when the receipt excuses; otherwise why not (wrapping one of the ErrXxx).
	Err error
}

// Parse reads a receipt in horde's shape or in upstream's (the type taken
// from the payload). Both types, when given, must agree.
func Parse(raw json.RawMessage) (receipt.Receipt, error) {
	var w struct {
		Type               receipt.Type    `json:"receipt_type"`
		Payload            json.RawMessage `json:"payload"`
		ValidatorSignature string          `json:"validator_signature"`
		MinerSignature     *string         `json:"miner_signature"`
	}
	if err := json.Unmarshal(raw, &w); err != nil {
		return receipt.Receipt{}, fmt.Errorf("%w: %v", ErrShape, err)
	}
	var inner struct {
		Type receipt.Type `json:"receipt_type"`
	}
	if len(bytes.TrimSpace(w.Payload)) == 0 || json.Unmarshal(w.Payload, &inner) != nil {
		return receipt.Receipt{}, fmt.Errorf("%w: no payload object", ErrShape)
	}
	t := w.Type
	switch {
	case t == "":
		t = inner.Type
	case inner.Type != "" && inner.Type != t:
		return receipt.Receipt{}, fmt.Errorf("%w: type %q outside, %q in the payload", ErrShape, w.Type, inner.Type)
	}
	r := receipt.Receipt{Type: t, Payload: w.Payload, ValidatorSignature: w.ValidatorSignature}
	if w.MinerSignature != nil {
		r.MinerSignature = *w.MinerSignature
	}
	return r, nil
}

// Check judges one receipt of decline d on its own (not against the other
// receipts: see Judge). It returns the receipt's payload when it could be
// read, and nil or why the receipt does not excuse.
func (r Rules) Check(d Decline, raw json.RawMessage) (*receipt.StartedPayload, error) {
	rc, err := Parse(raw)
	if err != nil {
		return nil, err
	}
	if rc.Type != receipt.JobStarted {
		return nil, fmt.Errorf("%w: a %s", ErrShape, rc.Type)
	}
	p, err := rc.Decode()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrShape, err)
	}
	sp := p.(*receipt.StartedPayload)
	if err := rc.Verify(); err != nil {
		return sp, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	if err := r.signer(sp.ValidatorHotkey, d.Miner); err != nil {
		return sp, err
	}
	switch {
	case sp.MinerHotkey != d.Miner:
		return sp, fmt.Errorf("%w: %s", ErrOtherMiner, sp.MinerHotkey)
	case sp.ExecutorClass != d.Class:
		return sp, fmt.Errorf("%w: %s, not %s", ErrOtherClass, sp.ExecutorClass, d.Class)
	case sp.JobUUID == d.JobUUID:
		return sp, ErrSameJob
	case d.Synthetic && !sp.IsOrganic:
		return sp, ErrSynthetic
	}
	ttl := time.Duration(sp.TTL) * time.Second
	issued := sp.Timestamp.Time
	switch limit := r.maxTTL(d.Class); {
	case sp.TTL <= 0 || ttl > limit:
		return sp, fmt.Errorf("%w: %d s, at most %s for %s", ErrTTL, sp.TTL, limit, d.Class)
	case !issued.Before(d.At):
		return sp, fmt.Errorf("%w: issued %s, offer %s", ErrFuture, stamp(issued), stamp(d.At))
	case !d.At.Before(issued.Add(ttl + Leeway)):
		return sp, fmt.Errorf("%w: issued %s with ttl %d s, offer %s", ErrExpired, stamp(issued), sp.TTL, stamp(d.At))
	}
	if sp.ValidatorHotkey == r.Self && r.Ended != nil {
		if end, ok := r.Ended(sp.JobUUID, d.Miner); ok && end.Add(EndGrace).Before(d.At) {
			return sp, fmt.Errorf("%w: it ended %s, offer %s", ErrEnded, stamp(end), stamp(d.At))
		}
	}
	return sp, nil
}

// signer checks that hotkey may sign excuses for miner.
func (r Rules) signer(hotkey, miner string) error {
	if hotkey == r.Self && r.Self != "" {
		return nil
	}
	if hotkey == miner {
		return fmt.Errorf("%w (%s)", ErrSelfSigned, hotkey)
	}
	n, ok := r.Registered[hotkey]
	switch {
	case !ok:
		return fmt.Errorf("%w: %s", ErrNotListed, hotkey)
	case !n.ValidatorPermit:
		return fmt.Errorf("%w: %s", ErrNoPermit, hotkey)
	case n.Stake < r.minStake():
		return fmt.Errorf("%w: %s has %g, needs %g", ErrStake, hotkey, n.Stake, r.minStake())
	}
	return nil
}

func stamp(t time.Time) string { return t.UTC().Format("15:04:05.000000") }

// Judgement is what a miner's busy declines of one class come to.
type Judgement struct {
	// Excused is how many of the declines are excused (the first ones).
	Excused int
	// Valid is how many distinct jobs excuse (at most the claimed executors).
	Valid    int
	Verdicts []Verdict
}

// Judge judges a miner's busy declines of one class that were offered
// together (a round offers every executor the miner claims at once): the
// distinct jobs whose receipts excuse, over all of them and at most as many
// as the claimed executors, excuse as many declines. A receipt that comes
// with several declines excuses once; twice in one decline is a duplicate.
func (r Rules) Judge(claimed int, ds []Decline) Judgement {
	var j Judgement
	counted := map[string]bool{} // jobs that excuse
	for _, d := range ds {
		seen := map[string]bool{}
		for _, raw := range d.Receipts {
			sp, err := r.Check(d, raw)
			v := Verdict{Declined: d.JobUUID, Err: err}
			if sp != nil {
				v.Job, v.Signer = sp.JobUUID, sp.ValidatorHotkey
			}
			if err == nil {
				switch {
				case seen[sp.JobUUID]:
					v.Err = ErrDuplicate
				case !counted[sp.JobUUID] && len(counted) >= claimed:
					v.Err = fmt.Errorf("%w: %d claimed", ErrTooMany, claimed)
				default:
					counted[sp.JobUUID] = true
				}
				seen[sp.JobUUID] = true
			}
			j.Verdicts = append(j.Verdicts, v)
		}
	}
	j.Valid = len(counted)
	j.Excused = min(j.Valid, len(ds))
	return j
}
