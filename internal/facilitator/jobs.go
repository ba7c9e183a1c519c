package facilitator

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/validation"
	"github.com/horde-compute/horde/protocol"
)

// This file: what the facilitator does with jobs, whoever asks (the client
// API, a validator's session). It knows no HTTP and no WebSocket.

// create stores a client's signed job and wakes the dispatcher.
func (f *Facilitator) create(ctx context.Context, spec protocol.JobSpec, s protocol.Signature) (*protocol.Job, error) {
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	s.SignatureScope = protocol.ScopeSignedFields
	rec := store.JobRecord{UUID: uuid.NewString(), Spec: spec, Signature: s, Status: protocol.StatusSent, CreatedAt: time.Now().UTC()}
	if err := f.cfg.Store.CreateJob(ctx, rec); err != nil {
		return nil, err
	}
	f.log.Info("job accepted", "job", rec.UUID, "client", s.Signatory, "image", spec.DockerImage, "class", spec.ExecutorClass)
	f.kick()
	return f.job(ctx, rec.UUID, s.Signatory)
}

// record returns a job of signatory's; others' jobs are not found.
func (f *Facilitator) record(ctx context.Context, id, signatory string) (store.JobRecord, error) {
	rec, err := f.cfg.Store.Job(ctx, id)
	if err != nil {
		return rec, err
	}
	if rec.Signature.Signatory != signatory {
		return store.JobRecord{}, fmt.Errorf("job %s: %w", id, store.ErrNotFound) // do not reveal others' jobs
	}
	return rec, nil
}

// job returns a job of signatory's with its status history.
func (f *Facilitator) job(ctx context.Context, id, signatory string) (*protocol.Job, error) {
	rec, err := f.record(ctx, id, signatory)
	if err != nil {
		return nil, err
	}
	hist, err := f.cfg.Store.History(ctx, id)
	if err != nil {
		return nil, err
	}
	return toJob(rec, hist), nil
}

func toJob(rec store.JobRecord, hist []protocol.StatusEntry) *protocol.Job {
	args := rec.Spec.Args
	if args == nil {
		args = []string{}
	}
	if hist == nil {
		hist = []protocol.StatusEntry{}
	}
	return &protocol.Job{UUID: rec.UUID, Status: rec.Status, ExecutorClass: rec.Spec.ExecutorClass, DockerImage: rec.Spec.DockerImage,
		Args: args, Signatory: rec.Signature.Signatory, ValidatorHotkey: rec.ValidatorHotkey, CreatedAt: rec.CreatedAt,
		UpdatedAt: rec.UpdatedAt, StatusHistory: hist}
}

// Paging of job lists.
const (
	defaultPage = 20
	maxPage     = 100
)

// list returns a page of signatory's jobs, newest first.
func (f *Facilitator) list(ctx context.Context, signatory string, offset, limit int) (*protocol.JobList, error) {
	offset = max(0, offset)
	if limit <= 0 || limit > maxPage {
		limit = defaultPage
	}
	recs, total, err := f.cfg.Store.ListJobs(ctx, signatory, offset, limit)
	if err != nil {
		return nil, err
	}
	out := &protocol.JobList{Count: total, Results: []protocol.Job{}}
	for _, rec := range recs {
		out.Results = append(out.Results, *toJob(rec, nil))
	}
	if offset+len(recs) < total {
		out.Next = fmt.Sprintf("%s?offset=%d&limit=%d", protocol.RouteJobs, offset+len(recs), limit)
	}
	return out, nil
}

// end records a status the facilitator decides itself and tells watchers.
func (f *Facilitator) end(ctx context.Context, id string, e protocol.StatusEntry) error {
	if err := f.cfg.Store.AddStatus(ctx, id, e); err != nil {
		return err
	}
	f.publish(id)
	return nil
}

// cancel cancels a job: its validator is told to, or, when no validator has
// it (or its validator is away), the job is cancelled here.
func (f *Facilitator) cancel(ctx context.Context, id, signatory string) (*protocol.Job, error) {
	rec, err := f.record(ctx, id, signatory)
	if err != nil {
		return nil, err
	}
	if rec.Status.Terminal() {
		return nil, fmt.Errorf("%w: job %s already ended (%s)", ErrBadRequest, id, rec.Status)
	}
	if vs := f.validator(rec.ValidatorHotkey); vs != nil {
		if err := vs.send(ctx, &protocol.V0CancelJobByFacilitator{UUID: id}); err != nil {
			return nil, fmt.Errorf("%w: forward cancel to validator: %w", ErrUnavailable, err)
		}
	} else {
		e := protocol.StatusEntry{Status: protocol.StatusCancelled, CreatedAt: time.Now().UTC(), Metadata: &protocol.StatusMetadata{Comment: "cancelled by the client"}}
		if err := f.end(ctx, id, e); err != nil {
			return nil, err
		}
	}
	f.log.Info("job cancel requested", "job", id)
	return f.job(ctx, id, signatory)
}

// serving returns a client's serving streaming job and its validator's session.
func (f *Facilitator) serving(ctx context.Context, id, signatory string) (*protocol.Job, *session, error) {
	job, err := f.job(ctx, id, signatory)
	if err != nil {
		return nil, nil, err
	}
	if job.Status != protocol.StatusStreaming {
		return nil, nil, fmt.Errorf("%w: job %s is %s, not a serving streaming job", ErrBadRequest, id, job.Status)
	}
	vs := f.validator(job.ValidatorHotkey)
	if vs == nil {
		return nil, nil, fmt.Errorf("%w: job %s: its validator is not connected", ErrUnavailable, id)
	}
	return job, vs, nil
}

// stop ends a serving streaming job normally (it uploads its outputs and completes).
func (f *Facilitator) stop(ctx context.Context, id, signatory string) (*protocol.Job, error) {
	job, vs, err := f.serving(ctx, id, signatory)
	if err != nil {
		return nil, err
	}
	if err := vs.send(ctx, &protocol.V0StopJobByFacilitator{UUID: id}); err != nil {
		return nil, fmt.Errorf("%w: forward stop to validator: %w", ErrUnavailable, err)
	}
	return job, nil
}

// sendVolume passes a client's volume message to its serving streaming job
// and returns the job's acknowledgement.
func (f *Facilitator) sendVolume(ctx context.Context, id, signatory string, msg protocol.VolumeMessage) (*protocol.VolumeAck, error) {
	vr := &protocol.V0VolumeRequest{JobUUID: id, MessageID: uuid.NewString(), Volume: msg.Volume, OutputUpload: msg.OutputUpload}
	if err := vr.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	_, vs, err := f.serving(ctx, id, signatory)
	if err != nil {
		return nil, err
	}
	ch := make(chan *protocol.V0JobVolumeResult, 1)
	f.mu.Lock()
	f.pending[vr.MessageID] = ch
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.pending, vr.MessageID)
		f.mu.Unlock()
	}()
	if err := vs.send(ctx, &protocol.V0JobVolumeRequest{UUID: id, MessageID: vr.MessageID, Volume: msg.Volume, OutputUpload: msg.OutputUpload}); err != nil {
		return nil, fmt.Errorf("%w: forward volume message: %w", ErrUnavailable, err)
	}
	t := time.NewTimer(f.cfg.VolumeTimeout)
	defer t.Stop()
	select {
	case res := <-ch:
		return &protocol.VolumeAck{MessageID: res.MessageID, Success: res.Success, Error: res.Error, UploadResults: res.UploadResults}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, fmt.Errorf("%w: volume message %s: no acknowledgement from the job within %s", ErrTimeout, vr.MessageID, f.cfg.VolumeTimeout)
	}
}

// volumeResult hands a job's acknowledgement to the request waiting for it.
func (f *Facilitator) volumeResult(m *protocol.V0JobVolumeResult) {
	f.mu.Lock()
	ch := f.pending[m.MessageID]
	f.mu.Unlock()
	if ch != nil {
		select {
		case ch <- m:
		default:
		}
	}
}

// reportPair takes a streaming pair a client kept, for validators to check.
// It is verified before it is accepted: the miner vouched for the job's key,
// the key signed the receipt, the receipt covers exactly these bodies and
// falls within the job's life. Tampered pairs are refused with the reason.
// It returns the pair's request id.
func (f *Facilitator) reportPair(ctx context.Context, id, signatory string, p protocol.StreamPair, now time.Time) (string, error) {
	job, err := f.job(ctx, id, signatory)
	if err != nil {
		return "", err
	}
	var ready *protocol.StatusEntry
	for i := range job.StatusHistory {
		if e := job.StatusHistory[i]; e.Status == protocol.StatusStreaming && e.Metadata != nil && e.Metadata.StreamingDetails != nil {
			ready = &job.StatusHistory[i]
		}
	}
	if ready == nil {
		return "", fmt.Errorf("%w: job %s never served as a streaming job", ErrBadRequest, id)
	}
	d, miner := ready.Metadata.StreamingDetails, ready.Metadata.MinerHotkey
	rc, err := validation.VerifyPair(id, miner, *d, p)
	if err != nil {
		return "", fmt.Errorf("%w: pair refused: %v", ErrBadRequest, err)
	}
	if rc.TimestampFrom.Before(ready.CreatedAt.Add(-time.Minute)) || rc.TimestampTo.After(now.Add(time.Minute)) {
		return "", fmt.Errorf("%w: pair refused: the receipt's time (%s to %s) is outside the job's life", ErrBadRequest,
			rc.TimestampFrom.Format(time.RFC3339), rc.TimestampTo.Format(time.RFC3339))
	}
	rec := store.PairRecord{JobUUID: id, RequestID: rc.RequestID, Image: job.DockerImage, MinerHotkey: miner,
		ValidatorHotkey: job.ValidatorHotkey, ReportedBy: signatory, Pair: p, Proof: *d, At: now.UTC()}
	if err := f.cfg.Store.PutPair(ctx, rec); err != nil {
		return "", err
	}
	f.log.Info("streaming pair accepted", "job", id, "request", rc.RequestID)
	f.kick() // pass it on to the job's validator
	return rc.RequestID, nil
}

// scores returns the latest report of each validator: per-miner scores,
// weights and what they rest on.
func (f *Facilitator) scores(ctx context.Context) (map[string]protocol.ValidatorScores, error) {
	reps, err := f.cfg.Store.Reports(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]protocol.ValidatorScores{}
	for v, b := range reps {
		m, err := protocol.Decode(b)
		if rep, ok := m.(*protocol.V0ValidatorReport); err == nil && ok {
			out[v] = protocol.ValidatorScores{Cycle: rep.Cycle, At: rep.At, Scores: rep.Scores}
		} else {
			f.log.Warn("stored validator report does not decode", "validator", v, "err", err)
		}
	}
	return out, nil
}

// storeReport keeps a validator's latest report.
func (f *Facilitator) storeReport(ctx context.Context, validator string, m *protocol.V0ValidatorReport) error {
	b, err := protocol.Encode(m)
	if err != nil {
		return err
	}
	return f.cfg.Store.PutReport(ctx, validator, b)
}

// statusUpdate records a validator's report on a job it was given. A job
// given to another validator is refused; news of a job that has ended
// changes nothing.
func (f *Facilitator) statusUpdate(ctx context.Context, validator string, m *protocol.V0JobStatusUpdate) error {
	j, err := f.cfg.Store.Job(ctx, m.UUID)
	if err != nil {
		return err
	}
	if j.ValidatorHotkey != validator {
		return fmt.Errorf("job %s was not given to validator %s", m.UUID, validator)
	}
	if j.Status.Terminal() {
		return nil // already ended (e.g. cancelled here); later news changes nothing
	}
	e := protocol.StatusEntry{Status: m.Status, CreatedAt: time.Now().UTC(), Metadata: m.Metadata}
	if err := f.cfg.Store.AddStatus(ctx, m.UUID, e); err != nil {
		return err
	}
	if m.Metadata != nil && m.Metadata.MinerHotkey != "" && j.MinerHotkey == "" {
		if err := f.cfg.Store.SetAssignment(ctx, m.UUID, validator, m.Metadata.MinerHotkey); err != nil {
			f.log.Warn("record the job's miner", "job", m.UUID, "err", err)
		}
	}
	f.publish(m.UUID)
	return nil
}

// subscribe returns a channel that is signalled when the job's history grows.
func (f *Facilitator) subscribe(id string) chan struct{} {
	ch := make(chan struct{}, 1)
	f.mu.Lock()
	if f.watchers[id] == nil {
		f.watchers[id] = map[chan struct{}]struct{}{}
	}
	f.watchers[id][ch] = struct{}{}
	f.mu.Unlock()
	return ch
}

func (f *Facilitator) unsubscribe(id string, ch chan struct{}) {
	f.mu.Lock()
	delete(f.watchers[id], ch)
	if len(f.watchers[id]) == 0 {
		delete(f.watchers, id)
	}
	f.mu.Unlock()
}

// publish tells the job's watchers that its history grew; they re-read it,
// so a signal that finds one already pending is not lost.
func (f *Facilitator) publish(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.watchers[id] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
