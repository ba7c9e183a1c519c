package validator

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/horde-compute/horde/internal/metrics"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/validator/jobrun"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// ErrBadClientSignature marks a job whose client signature is refused.
var ErrBadClientSignature = errors.New("client signature is invalid")

// VerifyJobSignature checks a job's client signature and its freshness.
func VerifyJobSignature(spec *protocol.JobSpec, s *protocol.Signature, now time.Time, maxAge time.Duration) error {
	if s == nil {
		return fmt.Errorf("%w: job carries no signature", ErrBadClientSignature)
	}
	if s.SignatureType != protocol.SignatureTypeBittensor {
		return fmt.Errorf("%w: signature_type %q is not supported", ErrBadClientSignature, s.SignatureType)
	}
	age := now.Sub(time.Unix(0, s.TimestampNS))
	if age > maxAge || age < -time.Minute {
		return fmt.Errorf("%w: signed %s ago, limit %s", ErrBadClientSignature, age.Round(time.Second), maxAge)
	}
	pub, err := sig.ParseSS58(s.Signatory)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadClientSignature, err)
	}
	raw, err := base64.StdEncoding.DecodeString(s.Signature)
	if err != nil {
		return fmt.Errorf("%w: signature is not base64", ErrBadClientSignature)
	}
	payload, err := spec.SignedBytes()
	if err != nil {
		return err
	}
	if err := sig.Verify(pub, protocol.SignedMessage(s.TimestampNS, payload), raw); err != nil {
		return fmt.Errorf("%w: %w", ErrBadClientSignature, err)
	}
	return nil
}

// accept takes a job from the facilitator: signature first, then store,
// then the job is driven to its end in a goroutine Run waits for.
func (v *Validator) accept(ctx context.Context, req *protocol.V2JobRequest) {
	// reject refuses the job with upstream's reason and horde's specific code.
	reject := func(reason protocol.JobRejectionReason, code, msg string) {
		v.log.Info("job rejected", "job", req.UUID, "reason", reason, "code", code, "msg", msg)
		v.out.Push(&protocol.V0JobStatusUpdate{UUID: req.UUID, Status: protocol.StatusRejected, Metadata: &protocol.StatusMetadata{
			JobRejectionDetails: &protocol.RejectionDetails{RejectedBy: protocol.ByValidator, Reason: reason, Message: msg,
				Context: protocol.WithReason(code)}}})
	}
	if err := VerifyJobSignature(&req.JobSpec, req.Signature, time.Now(), v.cfg.MaxJobAge); err != nil {
		reject(protocol.RejectInvalidSignature, "invalid_signature", err.Error())
		return
	}
	if err := req.JobSpec.Validate(); err != nil {
		reject(protocol.RejectUnknown, "invalid_job", "invalid job: "+err.Error())
		return
	}
	if req.StreamingDetails != nil {
		if _, ok := v.cfg.StreamingWhitelist[req.DockerImage]; !ok {
			reject(protocol.RejectUnknown, "image_not_whitelisted", "image "+req.DockerImage+" is not whitelisted for streaming jobs")
			return
		}
	}
	rec := store.JobRecord{UUID: req.UUID, Spec: req.JobSpec, Signature: *req.Signature, Status: protocol.StatusReceived,
		ValidatorHotkey: v.cfg.Hotkey.SS58(), CreatedAt: time.Now().UTC()}
	if err := v.cfg.Store.CreateJob(ctx, rec); err != nil {
		// Looked up only now, not before every job: a uuid we have is the
		// facilitator re-sending a job (our answer was slow), not a replay.
		if _, jerr := v.cfg.Store.Job(ctx, req.UUID); jerr == nil && errors.Is(err, store.ErrDuplicate) {
			v.log.Info("job already received", "job", req.UUID)
			return
		}
		if errors.Is(err, store.ErrDuplicate) {
			reject(protocol.RejectInvalidSignature, "replayed_job", "job was already received (replayed request)")
		} else {
			reject(protocol.RejectUnknown, "store_failed", "validator could not store the job: "+err.Error())
		}
		return
	}
	v.out.Push(&protocol.V0JobStatusUpdate{UUID: req.UUID, Status: protocol.StatusReceived})
	jctx, cancel := context.WithCancelCause(ctx)
	v.mu.Lock()
	v.cancel[req.UUID] = cancel
	v.mu.Unlock()
	v.jobs.Go(func() {
		defer func() {
			v.mu.Lock()
			delete(v.cancel, req.UUID)
			v.mu.Unlock()
			cancel(nil)
		}()
		v.driver.Drive(jctx, jobrun.Job{UUID: req.UUID, Spec: &req.JobSpec, Organic: true}, jobNotes{v: v, ctx: jctx, uuid: req.UUID})
	})
}

// jobNotes records a client job's statuses and queues them, and its volume
// results, for the facilitator.
type jobNotes struct {
	v    *Validator
	ctx  context.Context
	uuid string
}

func (n jobNotes) Status(s protocol.JobStatus, meta *protocol.StatusMetadata) {
	n.v.setStatus(n.ctx, n.uuid, s, meta)
}

func (n jobNotes) VolumeResult(r *protocol.V0VolumeResult) {
	n.v.out.Push(&protocol.V0JobVolumeResult{UUID: n.uuid, MessageID: r.MessageID, Success: r.Success, Error: r.Error, UploadResults: r.UploadResults})
}

// setStatus records a status and queues it for the facilitator.
func (v *Validator) setStatus(ctx context.Context, uuid string, s protocol.JobStatus, meta *protocol.StatusMetadata) {
	e := protocol.StatusEntry{Status: s, CreatedAt: time.Now().UTC(), Metadata: meta}
	if s.Terminal() { // counted before the facilitator (and so the client) can see it
		v.metrics.Job(string(s), metrics.Reason(meta))
	}
	// The status and its message for the facilitator in one commit; a
	// status the store refuses still reaches the facilitator, as before.
	m := &protocol.V0JobStatusUpdate{UUID: uuid, Status: s, Metadata: meta}
	if err := v.out.PushStatus(context.WithoutCancel(ctx), uuid, e, m); err != nil {
		v.log.Error("store status", "job", uuid, "status", s, "err", err)
		v.out.Push(m)
	}
}
