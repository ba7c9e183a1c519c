package validator

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/validation"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// outbox holds status updates until the facilitator has acknowledged them,
// in the validator's store: nothing is lost while the link is down or across
// a restart.
type outbox struct {
	st   store.Outbox
	log  *slog.Logger
	wake chan struct{}
}

func newOutbox(st store.Outbox, log *slog.Logger) *outbox {
	return &outbox{st: st, log: log, wake: make(chan struct{}, 1)}
}

func (o *outbox) push(m protocol.Message) {
	b, err := protocol.Encode(m)
	if err == nil {
		err = o.st.PushOutbox(context.Background(), b)
	}
	if err != nil {
		o.log.Error("outbox: message not queued", "type", m.MessageType(), "err", err)
		return
	}
	select {
	case o.wake <- struct{}{}:
	default:
	}
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
	responses := make(chan *protocol.Response, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { // owned: the sender drains the outbox while the session lives
		defer cancel()
		if err := v.sendLoop(sctx, conn, responses); err != nil && sctx.Err() == nil {
			v.log.Warn("facilitator sender stopped", "err", err)
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
		case *protocol.V0JobVolumeRequest:
			if !v.toMiner(m.UUID, &protocol.V0VolumeRequest{JobUUID: m.UUID, MessageID: m.MessageID, Volume: m.Volume, OutputUpload: m.OutputUpload}) {
				v.out.push(&protocol.V0JobVolumeResult{UUID: m.UUID, MessageID: m.MessageID, Error: "the job is not running on this validator"})
			}
		case *protocol.V0StreamPairReport:
			v.takePair(ctx, m)
		case *protocol.V0StopJobByFacilitator:
			if !v.Stop(m.UUID) {
				v.log.Info("stop for a job not serving here", "job", m.UUID)
			}
		case *protocol.V0CancelJobByFacilitator:
			if !v.Cancel(m.UUID) {
				v.log.Info("cancel for a job not running here", "job", m.UUID)
			}
		case *protocol.Response:
			select {
			case responses <- m:
			default:
				v.log.Warn("unexpected response from facilitator", "status", m.Status)
			}
		}
	}
}

// sendLoop sends queued messages in order, each acknowledged by the
// facilitator's Response before it leaves the outbox, plus heartbeats.
func (v *Validator) sendLoop(ctx context.Context, conn *wsconn.Conn, responses <-chan *protocol.Response) error {
	heartbeat := time.NewTicker(60 * time.Second)
	defer heartbeat.Stop()
	roundTrip := func(m protocol.Message) (*protocol.Response, error) {
		if err := conn.Send(ctx, m); err != nil {
			return nil, err
		}
		select {
		case r := <-responses:
			return r, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(30 * time.Second):
			return nil, fmt.Errorf("no response from the facilitator to %s", m.MessageType())
		}
	}
	for {
		items, err := v.out.st.PeekOutbox(ctx, 100)
		if err != nil {
			return err
		}
		for _, it := range items {
			m, err := protocol.Decode(it.Message)
			if err == nil {
				var r *protocol.Response
				if r, err = roundTrip(m); err != nil {
					return err
				}
				if r.Status != "success" {
					v.log.Warn("facilitator refused an update; dropping it", "errors", r.Errors)
				}
			} else {
				v.log.Error("outbox: undecodable message dropped", "err", err)
			}
			if err := v.out.st.AckOutbox(ctx, it.ID); err != nil {
				return err
			}
		}
		if len(items) == 100 {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-v.out.wake:
		case <-heartbeat.C:
			if _, err := roundTrip(&protocol.V0Heartbeat{}); err != nil {
				return err
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
	if req.StreamingDetails != nil {
		if _, ok := v.cfg.StreamingWhitelist[req.DockerImage]; !ok {
			reject(protocol.RejectUnknown, "image "+req.DockerImage+" is not whitelisted for streaming jobs")
			return
		}
	}
	rec := store.JobRecord{UUID: req.UUID, Spec: req.JobSpec, Signature: *req.Signature, Status: protocol.StatusReceived,
		ValidatorHotkey: v.cfg.Hotkey.SS58(), CreatedAt: time.Now().UTC()}
	if _, err := v.cfg.Store.Job(ctx, req.UUID); err == nil {
		// The facilitator re-sent a job we have (our answer was slow): not a replay.
		v.log.Info("job already received", "job", req.UUID)
		return
	}
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

// takePair keeps a reported streaming pair for validation windows, after
// verifying it itself: the facilitator is not trusted with evidence.
func (v *Validator) takePair(ctx context.Context, m *protocol.V0StreamPairReport) {
	job, err := v.cfg.Store.Job(ctx, m.UUID)
	if err != nil {
		v.log.Warn("pair for a job this validator does not know", "job", m.UUID)
		return
	}
	rc, err := validation.VerifyPair(m.UUID, m.MinerHotkey, m.Proof, m.Pair)
	if err != nil {
		v.log.Warn("pair refused", "job", m.UUID, "err", err)
		return
	}
	rec := store.PairRecord{JobUUID: m.UUID, RequestID: rc.RequestID, Image: job.Spec.DockerImage, MinerHotkey: m.MinerHotkey,
		ValidatorHotkey: v.cfg.Hotkey.SS58(), ReportedBy: "facilitator", Pair: m.Pair, Proof: m.Proof, At: time.Now().UTC()}
	if err := v.cfg.Store.PutPair(ctx, rec); err != nil && !errors.Is(err, store.ErrDuplicate) {
		v.log.Error("store pair", "job", m.UUID, "err", err)
	}
}
