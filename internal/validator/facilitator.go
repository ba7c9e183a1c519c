package validator

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// outbox holds status updates until the facilitator has them: nothing is lost
// while the link is down.
type outbox struct {
	mu    sync.Mutex
	queue []protocol.Message
	wake  chan struct{}
}

func newOutbox() *outbox { return &outbox{wake: make(chan struct{}, 1)} }

func (o *outbox) push(m protocol.Message) {
	o.mu.Lock()
	o.queue = append(o.queue, m)
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

func (o *outbox) peek() protocol.Message {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.queue) == 0 {
		return nil
	}
	return o.queue[0]
}

func (o *outbox) pop() {
	o.mu.Lock()
	o.queue = o.queue[1:]
	o.mu.Unlock()
}

// facilitatorLoop keeps a session with the facilitator, reconnecting with backoff.
func (v *Validator) facilitatorLoop(ctx context.Context) {
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		err := v.facilitatorSession(ctx)
		if ctx.Err() != nil {
			return
		}
		v.log.Warn("facilitator session ended", "err", err)
		if time.Since(start) > time.Minute {
			backoff = 200 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

func (v *Validator) facilitatorSession(ctx context.Context) error {
	conn, err := wsconn.Dial(ctx, v.cfg.FacilitatorURL, v.log)
	if err != nil {
		return err
	}
	defer conn.Close("validator stopping")
	if err := conn.Send(ctx, wsconn.NewFacilitatorAuth(v.cfg.Hotkey, time.Now())); err != nil {
		return err
	}
	first, err := conn.Recv(ctx)
	if err != nil {
		return err
	}
	if r, ok := first.(*protocol.Response); !ok || r.Status != "success" {
		return fmt.Errorf("facilitator refused authentication: %+v", first)
	}
	v.log.Info("connected to facilitator")
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { // owned: the sender drains the outbox while the session lives
		defer cancel()
		heartbeat := time.NewTicker(60 * time.Second)
		defer heartbeat.Stop()
		for {
			for m := v.out.peek(); m != nil; m = v.out.peek() {
				if err := conn.Send(sctx, m); err != nil {
					return
				}
				v.out.pop()
			}
			select {
			case <-sctx.Done():
				return
			case <-v.out.wake:
			case <-heartbeat.C:
				if conn.Send(sctx, &protocol.V0Heartbeat{}) != nil {
					return
				}
			}
		}
	})
	for {
		m, err := conn.Recv(sctx)
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *protocol.V2JobRequest:
			v.accept(ctx, m)
		case *protocol.V0CancelJobByFacilitator:
			if !v.Cancel(m.UUID) {
				v.log.Info("cancel for a job not running here", "job", m.UUID)
			}
		case *protocol.Response:
			if m.Status != "success" {
				v.log.Warn("facilitator answered an error", "errors", m.Errors)
			}
		}
	}
}

// Errors of job intake.
var (
	ErrBadClientSignature = errors.New("client signature is invalid")
)

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

// accept takes a job from the facilitator: signature first, then store, then route.
func (v *Validator) accept(ctx context.Context, req *protocol.V2JobRequest) {
	reject := func(reason protocol.JobRejectionReason, msg string) {
		v.log.Info("job rejected", "job", req.UUID, "reason", reason, "msg", msg)
		v.out.push(&protocol.V0JobStatusUpdate{UUID: req.UUID, Status: protocol.StatusRejected, Metadata: &protocol.StatusMetadata{
			JobRejectionDetails: &protocol.RejectionDetails{RejectedBy: protocol.ByValidator, Reason: reason, Message: msg}}})
	}
	if err := VerifyJobSignature(&req.JobSpec, req.Signature, time.Now(), v.cfg.MaxJobAge); err != nil {
		reject(protocol.RejectInvalidSignature, err.Error())
		return
	}
	if err := req.JobSpec.Validate(); err != nil {
		reject(protocol.RejectUnknown, "invalid job: "+err.Error())
		return
	}
	rec := store.JobRecord{UUID: req.UUID, Spec: req.JobSpec, Signature: *req.Signature, Status: protocol.StatusReceived,
		ValidatorHotkey: v.cfg.Hotkey.SS58(), CreatedAt: time.Now().UTC()}
	if err := v.cfg.Store.CreateJob(ctx, rec); err != nil {
		if errors.Is(err, store.ErrDuplicate) {
			reject(protocol.RejectInvalidSignature, "job was already received (replayed request)")
		} else {
			reject(protocol.RejectUnknown, "validator could not store the job: "+err.Error())
		}
		return
	}
	v.out.push(&protocol.V0JobStatusUpdate{UUID: req.UUID, Status: protocol.StatusReceived})
	jctx, cancel := context.WithCancelCause(v.life)
	v.mu.Lock()
	v.cancel[req.UUID] = cancel
	v.mu.Unlock()
	v.wg.Go(func() {
		defer func() {
			v.mu.Lock()
			delete(v.cancel, req.UUID)
			v.mu.Unlock()
			cancel(nil)
		}()
		v.drive(jctx, req.UUID, &req.JobSpec, true)
	})
}
