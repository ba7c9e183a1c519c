package facilitator

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/horde-compute/horde/internal/metrics"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/validation"
	"github.com/horde-compute/horde/protocol"
)

// This file: what the facilitator does with jobs, whoever asks (the client
// API, a validator's session). It knows no HTTP and no WebSocket.

// create stores a client's signed job and wakes the dispatcher. The spec
// comes from protocol.ParseJobRequest, its signature already verified over
// the spec's SignedFields.
func (f *Facilitator) create(ctx context.Context, spec *protocol.JobSpec, s protocol.Signature, sdk bool) (*protocol.Job, error) {
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	if v := spec.TargetValidatorHotkey; v != "" && !f.cfg.AllowValidator(v) {
		return nil, fmt.Errorf("%w: Could not select Validator: %s is not a validator of this facilitator", ErrBadRequest, v)
	}
	s.SignatureScope = protocol.ScopeSignedFields
	// Microseconds, as the stores keep times: the answer is the job as read back.
	now := time.Now().UTC().Truncate(time.Microsecond)
	rec := store.JobRecord{UUID: uuid.NewString(), Spec: *spec, Signature: s, Status: protocol.StatusSent, CreatedAt: now, UpdatedAt: now}
	if err := f.cfg.Store.CreateJob(ctx, rec); err != nil {
		return nil, err
	}
	f.changed(ctx, rec.UUID) // the dashboards list it, here and at the other replicas
	f.metrics.JobCreated(spec.StreamingDetails != nil)
	f.metrics.Status(string(protocol.StatusSent), "")
	f.log.Info("job accepted", "job", rec.UUID, "client", s.Signatory, "image", spec.DockerImage, "class", spec.ExecutorClass)
	f.wake(ctx)
	// The job as stored, not read back: its history is its first status.
	return toJob(rec, []protocol.StatusEntry{{Status: rec.Status, CreatedAt: now}}, sdk), nil
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

// job returns a job of signatory's with its status history, as a horde
// client or (sdk) upstream's SDK sees it.
func (f *Facilitator) job(ctx context.Context, id, signatory string, sdk bool) (*protocol.Job, error) {
	rec, err := f.record(ctx, id, signatory)
	if err != nil {
		return nil, err
	}
	hist, err := f.cfg.Store.History(ctx, id)
	if err != nil {
		return nil, err
	}
	return toJob(rec, hist, sdk), nil
}

// Paging of job lists: horde's (offset, limit) and upstream's (page,
// page_size, as Django REST framework's page-number pagination).
const (
	defaultPage     = 20
	maxPage         = 100
	defaultPageSize = 10
	maxPageSize     = 256
)

// page is which jobs to list: offset and limit, and for upstream's style
// the page number (0: horde's style).
type page struct {
	offset, limit, number int
}

// list returns a page of signatory's jobs, newest first, with their
// histories. In upstream's style a page past the end is not found.
func (f *Facilitator) list(ctx context.Context, signatory string, p page, sdk bool) (*protocol.JobList, error) {
	recs, total, err := f.cfg.Store.ListJobs(ctx, signatory, p.offset, p.limit)
	if err != nil {
		return nil, err
	}
	if p.number > 1 && len(recs) == 0 {
		return nil, fmt.Errorf("page %d: %w (Invalid page)", p.number, store.ErrNotFound)
	}
	out := &protocol.JobList{Count: total, Results: []protocol.Job{}}
	for _, rec := range recs {
		hist, err := f.cfg.Store.History(ctx, rec.UUID)
		if err != nil {
			return nil, err
		}
		out.Results = append(out.Results, *toJob(rec, hist, sdk))
	}
	link := func(offset int) *string {
		var s string
		if p.number > 0 {
			s = fmt.Sprintf("%s?page=%d&page_size=%d", protocol.RouteJobs, offset/p.limit+1, p.limit)
		} else {
			s = fmt.Sprintf("%s?offset=%d&limit=%d", protocol.RouteJobs, offset, p.limit)
		}
		return &s
	}
	if p.offset+len(recs) < total {
		out.Next = link(p.offset + len(recs))
	}
	if p.offset > 0 {
		out.Previous = link(max(0, p.offset-p.limit))
	}
	return out, nil
}

// end records a status the facilitator decides itself and tells watchers.
func (f *Facilitator) end(ctx context.Context, id string, e protocol.StatusEntry) error {
	if err := f.cfg.Store.AddStatus(ctx, id, e); err != nil {
		return err
	}
	f.metrics.Status(string(e.Status), metrics.Reason(e.Metadata))
	f.changed(ctx, id)
	return nil
}

// cancel cancels a job: its validator is told to, or, when no validator has
// it (or its validator is away), the job is cancelled here.
func (f *Facilitator) cancel(ctx context.Context, id, signatory string, sdk bool) (*protocol.Job, error) {
	rec, err := f.record(ctx, id, signatory)
	if err != nil {
		return nil, err
	}
	if rec.Status.Terminal() {
		return nil, fmt.Errorf("%w: job %s already ended (%s)", ErrBadRequest, id, rec.Status)
	}
	vs := f.validator(rec.ValidatorHotkey)
	// A validator connected to another replica is cancelled there.
	if vs != nil || rec.ValidatorHotkey == "" || !f.elsewhere(ctx, noticeCancel, id) {
		if err := f.cancelAt(ctx, vs, id); err != nil {
			if vs != nil && vs.has(protocol.CapCancel) {
				return nil, fmt.Errorf("%w: forward cancel to validator: %w", ErrUnavailable, err)
			}
			return nil, err
		}
	}
	f.log.Info("job cancel requested", "job", id)
	return f.job(ctx, id, signatory, sdk)
}

// errAway is why a job's validator cannot be reached from here.
var errAway = fmt.Errorf("%w: its validator is not connected", ErrUnavailable)

// serving returns a client's serving streaming job and its validator's
// session, which must speak the extension capability. When the validator
// is not connected here the job comes back with an error wrapping errAway.
func (f *Facilitator) serving(ctx context.Context, id, signatory, capability string) (*protocol.Job, *session, error) {
	job, err := f.job(ctx, id, signatory, false)
	if err != nil {
		return nil, nil, err
	}
	if job.Status != protocol.StatusStreaming {
		return nil, nil, fmt.Errorf("%w: job %s is %s, not a serving streaming job", ErrBadRequest, id, job.Status)
	}
	vs := f.validator(job.ValidatorHotkey)
	if vs == nil {
		return job, nil, fmt.Errorf("job %s: %w", id, errAway)
	}
	if !vs.has(capability) {
		return nil, nil, fmt.Errorf("%w: job %s: its validator does not speak horde's %q extension", ErrBadRequest, id, capability)
	}
	return job, vs, nil
}

// stop ends a serving streaming job normally (it uploads its outputs and
// completes). A validator connected to another replica is told there.
func (f *Facilitator) stop(ctx context.Context, id, signatory string) (*protocol.Job, error) {
	job, vs, err := f.serving(ctx, id, signatory, protocol.CapStop)
	if errors.Is(err, errAway) && f.elsewhere(ctx, noticeStop, id) {
		return job, nil
	}
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
	_, vs, err := f.serving(ctx, id, signatory, protocol.CapVolumeMessages)
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
	job, err := f.job(ctx, id, signatory, false)
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
	d, miner := *ready.Metadata.StreamingDetails, ready.Metadata.MinerHotkey
	d.MinerSignature = ready.Metadata.StreamingMinerSignature()
	rc, err := validation.VerifyPair(id, miner, d, p)
	if err != nil {
		f.metrics.Pair(false)
		return "", fmt.Errorf("%w: pair refused: %v", ErrBadRequest, err)
	}
	if rc.TimestampFrom.Before(ready.CreatedAt.Add(-time.Minute)) || rc.TimestampTo.After(now.Add(time.Minute)) {
		f.metrics.Pair(false)
		return "", fmt.Errorf("%w: pair refused: the receipt's time (%s to %s) is outside the job's life", ErrBadRequest,
			rc.TimestampFrom.Format(time.RFC3339), rc.TimestampTo.Format(time.RFC3339))
	}
	rec := store.PairRecord{JobUUID: id, RequestID: rc.RequestID, Image: job.DockerImage, MinerHotkey: miner,
		ValidatorHotkey: job.ValidatorHotkey, ReportedBy: signatory, Pair: p, Proof: d, At: now.UTC()}
	if err := f.cfg.Store.PutPair(ctx, rec); err != nil {
		return "", err
	}
	f.metrics.Pair(true)
	f.log.Info("streaming pair accepted", "job", id, "request", rc.RequestID)
	f.wake(ctx) // pass it on to the job's validator
	return rc.RequestID, nil
}

// reportCheat takes a client's report that a job's miner cheated, as
// upstream's facilitator does: the job must be the client's, not run on a
// trusted miner; the trusted job the client's, run on one; a job is
// reported once. The report is kept and passed on to the job's validator
// (with the client's signature, which the validator checks).
func (f *Facilitator) reportCheat(ctx context.Context, client string, r protocol.CheatReport, s protocol.Signature, now time.Time) error {
	job, err := f.record(ctx, r.JobUUID, client)
	if err != nil || job.Spec.OnTrustedMiner {
		return fmt.Errorf("%w: Job not found", store.ErrNotFound)
	}
	trusted, err := f.record(ctx, r.TrustedJobUUID, client)
	if err != nil || !trusted.Spec.OnTrustedMiner {
		return fmt.Errorf("%w: Trusted job not found", store.ErrNotFound)
	}
	rec := store.CheatRecord{JobUUID: r.JobUUID, TrustedJobUUID: r.TrustedJobUUID, Reporter: client, ValidatorHotkey: job.ValidatorHotkey,
		Details: r.Details, Signature: s, At: now.UTC()}
	if err := f.cfg.Store.PutCheatReport(ctx, rec); err != nil {
		if errors.Is(err, store.ErrDuplicate) {
			return fmt.Errorf("%w: Cheat report already exists for this job", ErrBadRequest)
		}
		return err
	}
	f.log.Info("job reported as cheated", "job", r.JobUUID, "client", client, "validator", job.ValidatorHotkey)
	f.wake(ctx)
	return nil
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
	if err := f.cfg.Store.PutReport(ctx, validator, b); err != nil {
		return err
	}
	f.metrics.Report()
	f.changed(ctx, anyJob) // the dashboards show it, here and at the other replicas
	return nil
}

// statusUpdate records a validator's report on a job it was given. A job
// given to another validator is refused; news of a job that has ended
// changes nothing.
// Statuses are upstream's, but sent (the facilitator's own), plus horde's
// cancelled from a horde validator; anything else (upstream's "unknown") is
// refused: upstream's SDK could not read the job.
func (f *Facilitator) statusUpdate(ctx context.Context, validator string, horde bool, m *protocol.V0JobStatusUpdate) error {
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
	if !sdkStatuses[m.Status] && !(m.Status == protocol.StatusCancelled && horde) || m.Status == protocol.StatusSent {
		return fmt.Errorf("status %q is not one a validator reports", m.Status)
	}
	e := protocol.StatusEntry{Status: m.Status, CreatedAt: time.Now().UTC(), Metadata: m.Metadata}
	f.observe(j, e) // before it is stored: whoever sees the status sees it counted
	if err := f.cfg.Store.AddStatus(ctx, m.UUID, e); err != nil {
		return err
	}
	if m.Metadata != nil && m.Metadata.MinerHotkey != "" && j.MinerHotkey == "" {
		if err := f.cfg.Store.SetAssignment(ctx, m.UUID, validator, m.Metadata.MinerHotkey); err != nil {
			f.log.Warn("record the job's miner", "job", m.UUID, "err", err)
		}
	}
	f.changed(ctx, m.UUID)
	return nil
}

// observe counts a status a validator reported and, for a terminal one,
// observes the job's stages: its whole life here and the validator's
// stages, as the validator timed them.
func (f *Facilitator) observe(j store.JobRecord, e protocol.StatusEntry) {
	f.metrics.Status(string(e.Status), metrics.Reason(e.Metadata))
	if !e.Status.Terminal() {
		return
	}
	f.metrics.Stage("total", e.CreatedAt.Sub(j.CreatedAt))
	if e.Metadata == nil {
		return
	}
	for _, stage := range metrics.Stages {
		if ms, ok := e.Metadata.Timings["validator:"+stage]; ok {
			f.metrics.Stage(stage, time.Duration(ms)*time.Millisecond)
		}
	}
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
	signal := func(key string) {
		for ch := range f.watchers[key] {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
	signal(id)
	if id != anyJob {
		signal(anyJob) // the dashboard watches every job
	}
}
