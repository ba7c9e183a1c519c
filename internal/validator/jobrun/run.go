package jobrun

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
	"github.com/horde-compute/horde/sig"
)

// Stage names, as timings and timeout reasons name them.
const (
	StageReserve   = "reserve"
	StageStartup   = "startup"
	StageDownload  = "download"
	StageStreaming = "streaming"
	StageExecute   = "execute"
	StageUpload    = "upload"
)

// Run is one attempt of one job on one miner. Each stage has a deadline;
// time left from one stage carries into the next (the deadline is
// cumulative). Whatever happens after the miner was offered the job, unless
// it declined, the miner gets a job-finished receipt (score 0 on failure).
type Run struct {
	p     Params
	job   Job
	miner string
	link  Link
	inbox Inbox
	notes Notes
	log   *slog.Logger

	ttl        int
	startedAt  time.Time
	stageStart time.Time
	deadline   time.Time
	timings    map[string]int64
	offered    bool // the offer went out
	// caps are the miner's extensions: none from an upstream miner, which
	// then gets upstream's messages only.
	caps protocol.Capabilities

	mu   sync.Mutex
	open bool // the job request went out and the run goes on: Relay may send
}

// New prepares a run of job on miner, talking through link and inbox.
func New(p Params, job Job, miner string, link Link, inbox Inbox, notes Notes) *Run {
	log := p.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Run{p: p, job: job, miner: miner, link: link, inbox: inbox, notes: notes, timings: map[string]int64{},
		log: log.With("job", job.UUID, "miner", miner)}
	if c, ok := link.(Capable); ok && !p.Upstream {
		r.caps = c.Capabilities()
	}
	return r
}

// Capable is a Link that knows the extensions its miner advertised. A Link
// that is not speaks to an upstream miner.
type Capable interface {
	Capabilities() protocol.Capabilities
}

// relayCapability is the extension a message relayed to the miner needs.
func relayCapability(m protocol.Message) string {
	switch m.(type) {
	case *protocol.V0StopJobRequest:
		return protocol.MinerCapStop
	case *protocol.V0VolumeRequest:
		return protocol.MinerCapVolumeMessages
	case *protocol.V0CancelJobRequest:
		return protocol.MinerCapCancel
	}
	return ""
}

// cancelOnMiner tells a horde miner to stop the job now; an upstream miner
// has no such message (it ends the job when its time is up).
func (r *Run) cancelOnMiner(ctx context.Context) {
	if r.caps.Has(protocol.MinerCapCancel) {
		r.link.Send(context.WithoutCancel(ctx), &protocol.V0CancelJobRequest{JobUUID: r.job.UUID})
	}
}

// Execute runs the stages in order until one ends the run, then signs the
// job-finished receipt and adds the validator's stage timings to the outcome.
func (r *Run) Execute(ctx context.Context) Outcome {
	r.startedAt = time.Now()
	r.stageStart = r.startedAt
	o := r.stages(ctx)
	r.mu.Lock()
	r.open = false
	r.mu.Unlock()
	if !r.offered || o.declined() {
		return o // nothing ran, nothing to sign
	}
	r.sendFinishedReceipt(ctx, o)
	if o.Meta != nil {
		if o.Meta.Timings == nil {
			o.Meta.Timings = map[string]int64{}
		}
		for k, ms := range r.timings {
			o.Meta.Timings["validator:"+k] = ms
		}
	}
	return o
}

func (r *Run) stages(ctx context.Context) Outcome {
	for _, stage := range []func(context.Context) *Outcome{r.reserve, r.startup, r.download, r.streamingStart, r.execute} {
		if o := stage(ctx); o != nil {
			return *o
		}
	}
	return r.upload(ctx)
}

// Relay sends m (a stop or volume request) to the miner while the job
// serves: from the moment its job request went out until the run ends. It
// reports whether m was sent; a miner that does not speak the message's
// extension (an upstream miner) is not sent it.
func (r *Run) Relay(ctx context.Context, m protocol.Message) bool {
	r.mu.Lock()
	open := r.open
	r.mu.Unlock()
	if c := relayCapability(m); c != "" && !r.caps.Has(c) {
		r.log.Info("miner does not speak the message", "type", m.MessageType(), "capability", c)
		return false
	}
	if !open {
		return false
	}
	if err := r.link.Send(context.WithoutCancel(ctx), m); err != nil {
		r.log.Warn("relay to miner failed", "type", m.MessageType(), "err", err)
	}
	return true
}

// reserve offers the job with a signed job-started receipt and waits for
// the miner to accept or decline.
func (r *Run) reserve(ctx context.Context) *Outcome {
	t, spec := r.p.Timing, r.job.Spec
	me := r.p.Hotkey.SS58()
	r.ttl = int((t.Reserve + t.SpinUp[spec.ExecutorClass] + t.StartupSlack + t.Leeway).Seconds()) + spec.DownloadTimeLimit + spec.ExecutionTimeLimit + spec.UploadTimeLimit
	started := &receipt.StartedPayload{Base: receipt.Base{JobUUID: r.job.UUID, MinerHotkey: r.miner, ValidatorHotkey: me, Timestamp: receipt.At(time.Now())},
		ExecutorClass: spec.ExecutorClass, IsOrganic: r.job.Organic, TTL: r.ttl}
	startedSig, err := receipt.Sign(r.p.Hotkey, started)
	if err != nil {
		return fail(protocol.HordeGenericError, "sign the job started receipt: "+err.Error(), false)
	}
	rc, err := receipt.New(started, startedSig)
	if err == nil {
		err = r.p.Receipts.PutReceipt(ctx, rc)
	}
	if err != nil {
		return fail(protocol.HordeGenericError, "validator could not store the job started receipt: "+err.Error(), false)
	}
	startedJSON, err := json.Marshal(started)
	if err != nil {
		return fail(protocol.HordeGenericError, "encode the job started receipt: "+err.Error(), false)
	}
	// The volume goes with the offer only: upstream miners drop a job whose
	// volume comes twice, and horde's executor takes it from either.
	initial := &protocol.V0InitialJobRequest{JobUUID: r.job.UUID, ExecutorClass: spec.ExecutorClass, DockerImage: spec.DockerImage,
		StreamingDetails: spec.StreamingDetails, Volume: spec.Volume, JobStartedReceiptPayload: startedJSON, JobStartedReceiptSignature: startedSig,
		ExecutorTiming: &protocol.ExecutorTiming{AllowedLeeway: int(t.Leeway.Seconds()), DownloadTimeLimit: spec.DownloadTimeLimit,
			ExecutionTimeLimit: spec.ExecutionTimeLimit, UploadTimeLimit: spec.UploadTimeLimit, StreamingStartTimeLimit: spec.StreamingStartTimeLimit}}
	if r.caps.Has(protocol.MinerCapAllowPull) {
		initial.AllowPull = r.p.AllowPull
	}
	if r.caps.Has(protocol.MinerCapImageDigest) {
		initial.ImageDigest = r.p.Digests[spec.DockerImage]
	}
	if err := r.link.Send(ctx, initial); err != nil {
		return fail(protocol.HordeMinerConnectionFailed, err.Error(), true)
	}
	r.offered = true
	r.deadline = time.Now().Add(t.Reserve)
	m, o := r.await(ctx, StageReserve, protocol.HordeInitialTimeout, func(m protocol.Message) bool {
		return is[*protocol.V0DeclineJobRequest](m) || is[*protocol.V0AcceptJobRequest](m)
	})
	if o != nil {
		return o
	}
	if d, ok := m.(*protocol.V0DeclineJobRequest); ok {
		return &Outcome{Status: protocol.StatusRejected, Retry: true, Excuses: d.Receipts, Offered: started, Meta: &protocol.StatusMetadata{JobRejectionDetails: &protocol.RejectionDetails{
			RejectedBy: protocol.ByMiner, Reason: d.Reason, Message: d.Message, Context: d.Context}}}
	}
	r.mark(StageReserve)
	r.notes.Status(protocol.StatusAccepted, &protocol.StatusMetadata{MinerHotkey: r.miner})
	now := time.Now()
	r.sendReceipt(ctx, &receipt.AcceptedPayload{Base: receipt.Base{JobUUID: r.job.UUID, MinerHotkey: r.miner, ValidatorHotkey: me, Timestamp: receipt.At(now)},
		TimeAccepted: receipt.At(now), TTL: r.ttl})
	return nil
}

// startup covers spin-up and start: the executor reports ready.
func (r *Run) startup(ctx context.Context) *Outcome {
	t := r.p.Timing
	r.deadline = r.deadline.Add(t.SpinUp[r.job.Spec.ExecutorClass] + t.StartupSlack)
	if _, o := r.await(ctx, StageStartup, protocol.HordeReadinessTimeout, is[*protocol.V0ExecutorReadyRequest]); o != nil {
		return o
	}
	r.mark(StageStartup)
	r.notes.Status(protocol.StatusExecutorReady, nil)
	return nil
}

// download sends the full job; the executor reports its volumes ready.
func (r *Run) download(ctx context.Context) *Outcome {
	spec := r.job.Spec
	jr := &protocol.V0JobRequest{JobUUID: r.job.UUID, ExecutorClass: spec.ExecutorClass, DockerImage: spec.DockerImage, DockerRunOptionsPreset: protocol.PresetNone,
		DockerRunCmd: spec.Args, Env: spec.Env, OutputUpload: spec.OutputUpload, ArtifactsDir: spec.ArtifactsDir}
	if jr.DockerRunCmd == nil {
		jr.DockerRunCmd = []string{}
	}
	if !r.caps.Horde() {
		jr = protocol.UpstreamJobRequest(*jr)
	}
	// Held while sending, so a relayed message cannot overtake the job request.
	r.mu.Lock()
	err := r.link.Send(ctx, jr)
	r.open = err == nil
	r.mu.Unlock()
	if err != nil {
		return fail(protocol.HordeMinerConnectionFailed, err.Error(), true)
	}
	r.deadline = r.deadline.Add(r.p.Timing.Leeway + time.Duration(spec.DownloadTimeLimit)*time.Second)
	if _, o := r.await(ctx, StageDownload, protocol.HordeVolumesTimeout, is[*protocol.V0VolumesReadyRequest]); o != nil {
		return o
	}
	r.mark(StageDownload)
	r.notes.Status(protocol.StatusVolumesReady, nil)
	return nil
}

// streamingStart (streaming jobs only) waits for the job to serve; the miner
// vouches for the job's key with its hotkey.
func (r *Run) streamingStart(ctx context.Context) *Outcome {
	spec := r.job.Spec
	if spec.StreamingDetails == nil {
		return nil
	}
	r.deadline = r.deadline.Add(r.p.Timing.Leeway + time.Duration(max(spec.StreamingStartTimeLimit, 60))*time.Second)
	m, o := r.await(ctx, StageStreaming, protocol.HordeStreamingReadyTimeout, is[*protocol.V0StreamingJobReadyRequest])
	if o != nil {
		return o
	}
	ready := m.(*protocol.V0StreamingJobReadyRequest)
	msg := protocol.StreamingReadyMessage(r.job.UUID, ready.IP, ready.Port, ready.PublicKey)
	if err := sig.VerifyHex(r.miner, msg, ready.MinerSignature); err != nil {
		r.cancelOnMiner(ctx)
		return fail(protocol.HordeSecurityCheckFailed, "the miner's signature of the streaming job's key does not verify: "+err.Error(), false)
	}
	r.mark(StageStreaming)
	r.notes.Status(protocol.StatusStreaming, &protocol.StatusMetadata{MinerHotkey: r.miner, StreamingDetails: &protocol.StreamingServerDetails{
		StreamingServerCert: ready.PublicKey, StreamingServerAddress: ready.IP, StreamingServerPort: ready.Port, MinerSignature: ready.MinerSignature}})
	return nil
}

// execute waits for the container to exit.
func (r *Run) execute(ctx context.Context) *Outcome {
	r.deadline = r.deadline.Add(time.Duration(r.job.Spec.ExecutionTimeLimit) * time.Second)
	if _, o := r.await(ctx, StageExecute, protocol.HordeExecutionTimeout, is[*protocol.V0ExecutionDoneRequest]); o != nil {
		return o
	}
	r.mark(StageExecute)
	r.notes.Status(protocol.StatusExecutionDone, nil)
	return nil
}

// upload waits for outputs to be uploaded and the result reported.
func (r *Run) upload(ctx context.Context) Outcome {
	r.deadline = r.deadline.Add(time.Duration(r.job.Spec.UploadTimeLimit) * time.Second)
	m, o := r.await(ctx, StageUpload, protocol.HordeFinalTimeout, is[*protocol.V0JobFinishedRequest])
	if o != nil {
		return *o
	}
	fin := m.(*protocol.V0JobFinishedRequest)
	r.mark(StageUpload)
	meta := &protocol.StatusMetadata{MinerResponse: &protocol.MinerResponse{DockerProcessStdout: fin.DockerProcessStdout,
		DockerProcessStderr: fin.DockerProcessStderr, Artifacts: fin.Artifacts, UploadResults: fin.UploadResults}, Timings: map[string]int64{}}
	for k, ms := range fin.Timings {
		meta.Timings["executor:"+k] = ms
	}
	return Outcome{Status: protocol.StatusCompleted, Meta: meta}
}

// await reads the miner's messages until want takes one. A terminal message
// ends the run, as do the stage's deadline, the loss of the session and the
// end of ctx (the miner is then told to cancel). Volume results are passed
// on; other messages are ignored.
func (r *Run) await(ctx context.Context, stage string, timeout protocol.HordeFailureReason, want func(protocol.Message) bool) (protocol.Message, *Outcome) {
	sctx, cancel := context.WithDeadline(ctx, r.deadline)
	defer cancel()
	for {
		m, err := r.inbox.Next(sctx)
		switch {
		case err == nil:
		case ctx.Err() != nil:
			r.cancelOnMiner(ctx)
			return nil, &Outcome{Status: protocol.StatusCancelled}
		case sctx.Err() != nil:
			return nil, fail(timeout, "timeout:"+stage+": no answer from the miner in time", stage == StageReserve)
		default:
			msg := "miner connection lost during " + stage
			if err != ErrLost { // the inbox says more than that the session ended
				msg += ": " + err.Error()
			}
			return nil, fail(protocol.HordeMinerConnectionFailed, msg, stage == StageReserve || stage == StageStartup)
		}
		if vr, ok := m.(*protocol.V0VolumeResult); ok {
			r.notes.VolumeResult(vr)
			continue
		}
		if want(m) {
			return m, nil
		}
		if o := terminal(m); o != nil {
			return nil, o
		}
		r.log.Debug("ignoring message", "stage", stage, "type", m.MessageType())
	}
}

// mark records how long the stage that just ended took.
func (r *Run) mark(stage string) {
	now := time.Now()
	r.timings[stage] = now.Sub(r.stageStart).Milliseconds()
	r.p.observer().Stage(stage, now.Sub(r.stageStart))
	r.stageStart = now
}

func (r *Run) sendFinishedReceipt(ctx context.Context, o Outcome) {
	took := time.Since(r.startedAt)
	score := "0"
	if o.Status == protocol.StatusCompleted {
		score = fmt.Sprintf("%.6f", took.Seconds())
	}
	r.sendReceipt(context.WithoutCancel(ctx), &receipt.FinishedPayload{
		Base:        receipt.Base{JobUUID: r.job.UUID, MinerHotkey: r.miner, ValidatorHotkey: r.p.Hotkey.SS58(), Timestamp: receipt.At(time.Now())},
		TimeStarted: receipt.At(r.startedAt), TimeTookUS: took.Microseconds(), ScoreStr: score})
}

// sendReceipt signs a receipt, stores it and hands it to the miner.
func (r *Run) sendReceipt(ctx context.Context, p receipt.Payload) {
	s, err := receipt.Sign(r.p.Hotkey, p)
	if err != nil {
		r.log.Error("sign receipt", "err", err)
		return
	}
	rc, err := receipt.New(p, s)
	if err != nil {
		r.log.Error("make receipt", "err", err)
		return
	}
	if err := r.p.Receipts.PutReceipt(ctx, rc); err != nil {
		r.log.Error("store receipt", "type", rc.Type, "err", err)
	}
	var m protocol.Message
	switch rc.Type {
	case receipt.JobAccepted:
		m = &protocol.V0JobAcceptedReceiptRequest{Payload: rc.Payload, Signature: s}
	case receipt.JobFinished:
		m = &protocol.V0JobFinishedReceiptRequest{Payload: rc.Payload, Signature: s}
	default:
		return
	}
	if err := r.link.Send(ctx, m); err != nil {
		r.log.Warn("receipt not delivered", "type", rc.Type, "err", err)
	}
}

func fail(reason protocol.HordeFailureReason, msg string, retry bool) *Outcome {
	o := HordeFail(reason, msg, retry)
	return &o
}

func is[T protocol.Message](m protocol.Message) bool { _, ok := m.(T); return ok }
