package validator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
	"github.com/horde-compute/horde/sig"
)

// outcome is how one attempt on one miner ended.
type outcome struct {
	status protocol.JobStatus
	meta   *protocol.StatusMetadata
	retry  bool // declined or lost before execution: another miner may try
	// excuses are the receipts a busy miner declined with.
	excuses []json.RawMessage
}

// drive runs a job to a terminal status, trying up to MaxAttempts miners. A
// miner that declines because it is busy does not use up an attempt: while
// the queue timeout lasts, the job waits for an executor to free up.
func (v *Validator) drive(ctx context.Context, uuid string, spec *protocol.JobSpec, organic bool) {
	log := v.log.With("job", uuid)
	tried, busy := map[string]bool{}, map[string]bool{}
	var reasons []string
	queueUntil := time.Now().Add(v.cfg.QueueTimeout)
	backoff, waiting := 25*time.Millisecond, false
	for attempt := 1; attempt <= v.cfg.MaxAttempts; {
		mc, offered := v.pick(ctx, spec.ExecutorClass, tried)
		if errors.Is(context.Cause(ctx), errCancelled) {
			v.cancelled(ctx, uuid)
			return
		}
		if mc == nil {
			// Wait while some miner has the class but all of it is in use.
			if (len(busy) == 0 && !offered) || time.Now().After(queueUntil) || ctx.Err() != nil {
				break
			}
			if !waiting {
				waiting = true
				v.setStatus(ctx, uuid, protocol.StatusReceived, &protocol.StatusMetadata{Comment: "waiting for a free executor"})
			}
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			for hk := range busy {
				delete(tried, hk)
			}
			clear(busy)
			continue
		}
		hk := mc.neuron.Hotkey
		tried[hk] = true
		o := v.attempt(ctx, mc, uuid, spec, organic, func(s protocol.JobStatus, m *protocol.StatusMetadata) { v.setStatus(ctx, uuid, s, m) })
		if errors.Is(context.Cause(ctx), errCancelled) {
			v.cancelled(ctx, uuid)
			return
		}
		if ctx.Err() != nil {
			v.setStatus(ctx, uuid, protocol.StatusHordeFailed, &protocol.StatusMetadata{HordeFailureDetails: &protocol.HordeFailureDetails{
				ReportedBy: protocol.ByValidator, Reason: protocol.HordeGenericError, Message: "validator stopped while the job ran"}})
			return
		}
		if o.busy() {
			busy[hk] = true
			continue
		}
		if o.retry && attempt < v.cfg.MaxAttempts {
			attempt++
			reasons = append(reasons, o.reason(hk))
			log.Info("retrying on another miner", "miner", hk, "why", o.reason(""))
			v.setStatus(ctx, uuid, protocol.StatusReceived, &protocol.StatusMetadata{Comment: "retrying: " + o.reason(hk)})
			continue
		}
		if o.meta == nil {
			o.meta = &protocol.StatusMetadata{}
		}
		o.meta.MinerHotkey = hk
		if rs, err := v.cfg.Store.ReceiptsForJob(context.WithoutCancel(ctx), uuid); err == nil {
			for _, r := range rs {
				if b, err := json.Marshal(r); err == nil {
					o.meta.Receipts = append(o.meta.Receipts, b)
				}
			}
		}
		v.setStatus(ctx, uuid, o.status, o.meta)
		return
	}
	msg := fmt.Sprintf("no miner with a free %s executor", spec.ExecutorClass)
	if len(reasons) > 0 {
		msg += " after " + strings.Join(reasons, "; ")
	}
	v.setStatus(ctx, uuid, protocol.StatusRejected, &protocol.StatusMetadata{JobRejectionDetails: &protocol.RejectionDetails{
		RejectedBy: protocol.ByValidator, Reason: protocol.RejectNoMiner, Message: msg}})
}

// busy reports a decline because every executor of the class was taken.
func (o outcome) busy() bool {
	return o.meta != nil && o.meta.JobRejectionDetails != nil && o.meta.JobRejectionDetails.Reason == protocol.RejectBusy
}

func (o outcome) reason(miner string) string {
	m := o.meta
	var s string
	switch {
	case m == nil:
		s = string(o.status)
	case m.JobRejectionDetails != nil:
		s = "declined (" + string(m.JobRejectionDetails.Reason) + "): " + m.JobRejectionDetails.Message
	case m.HordeFailureDetails != nil:
		s = string(m.HordeFailureDetails.Reason) + ": " + m.HordeFailureDetails.Message
	default:
		s = string(o.status)
	}
	if miner != "" {
		return "miner " + miner + " " + s
	}
	return s
}

func (v *Validator) cancelled(ctx context.Context, uuid string) {
	v.setStatus(ctx, uuid, protocol.StatusCancelled, &protocol.StatusMetadata{Comment: "cancelled by the client"})
}

func hordeFail(reason protocol.HordeFailureReason, msg string, retry bool) outcome {
	return outcome{status: protocol.StatusHordeFailed, retry: retry, meta: &protocol.StatusMetadata{HordeFailureDetails: &protocol.HordeFailureDetails{
		ReportedBy: protocol.ByValidator, Reason: reason, Message: msg}}}
}

// attempt offers the job to one miner and follows it through its stages. Each
// stage has a deadline; time left from one stage carries into the next.
// Progress is told of each stage a job reaches.
type progress func(protocol.JobStatus, *protocol.StatusMetadata)

func (v *Validator) attempt(ctx context.Context, mc *minerClient, uuid string, spec *protocol.JobSpec, organic bool, note progress) (o outcome) {
	inbox, ok := mc.register(uuid, spec.ExecutorClass)
	if !ok {
		return hordeFail(protocol.HordeMinerConnectionFailed, "miner session is down", true)
	}
	defer mc.unregister(uuid, spec.ExecutorClass)
	log := v.log.With("job", uuid, "miner", mc.neuron.Hotkey)
	me, miner := v.cfg.Hotkey.SS58(), mc.neuron.Hotkey
	t := v.cfg.Timing
	startedAt := time.Now()
	timings := map[string]int64{}
	mark := func(stage string, since time.Time) time.Time {
		now := time.Now()
		timings[stage] = now.Sub(since).Milliseconds()
		return now
	}
	// Whatever happens, the miner gets a job-finished receipt (score 0 on failure).
	defer func() {
		took := time.Since(startedAt)
		if o.retry && o.status == protocol.StatusRejected {
			return // declined: nothing ran, nothing to sign
		}
		score := "0"
		if o.status == protocol.StatusCompleted {
			score = fmt.Sprintf("%.6f", took.Seconds())
		}
		v.sendReceipt(context.WithoutCancel(ctx), mc, &receipt.FinishedPayload{
			Base:        receipt.Base{JobUUID: uuid, MinerHotkey: miner, ValidatorHotkey: me, Timestamp: receipt.At(time.Now())},
			TimeStarted: receipt.At(startedAt), TimeTookUS: took.Microseconds(), ScoreStr: score})
		if o.meta != nil {
			if o.meta.Timings == nil {
				o.meta.Timings = map[string]int64{}
			}
			for k, ms := range timings {
				o.meta.Timings["validator:"+k] = ms
			}
		}
	}()

	// 1. reserve
	spinUp := t.SpinUp[spec.ExecutorClass]
	ttl := int((t.Reserve + spinUp + t.StartupSlack + t.Leeway).Seconds()) + spec.DownloadTimeLimit + spec.ExecutionTimeLimit + spec.UploadTimeLimit
	started := &receipt.StartedPayload{Base: receipt.Base{JobUUID: uuid, MinerHotkey: miner, ValidatorHotkey: me, Timestamp: receipt.At(time.Now())},
		ExecutorClass: spec.ExecutorClass, IsOrganic: organic, TTL: ttl}
	startedSig, err := receipt.Sign(v.cfg.Hotkey, started)
	if err != nil {
		return hordeFail(protocol.HordeGenericError, err.Error(), false)
	}
	startedJSON, _ := json.Marshal(started)
	if r, err := receipt.New(started, startedSig); err == nil {
		v.cfg.Store.PutReceipt(ctx, r)
	}
	initial := &protocol.V0InitialJobRequest{JobUUID: uuid, ExecutorClass: spec.ExecutorClass, DockerImage: spec.DockerImage,
		StreamingDetails: spec.StreamingDetails, ImageDigest: v.cfg.StreamingWhitelist[spec.DockerImage],
		Volume: spec.Volume, JobStartedReceiptPayload: startedJSON, JobStartedReceiptSignature: startedSig, AllowPull: v.cfg.AllowPull,
		ExecutorTiming: &protocol.ExecutorTiming{AllowedLeeway: int(t.Leeway.Seconds()), DownloadTimeLimit: spec.DownloadTimeLimit,
			ExecutionTimeLimit: spec.ExecutionTimeLimit, UploadTimeLimit: spec.UploadTimeLimit, StreamingStartTimeLimit: spec.StreamingStartTimeLimit}}
	if err := mc.send(ctx, initial); err != nil {
		return hordeFail(protocol.HordeMinerConnectionFailed, err.Error(), true)
	}
	deadline := time.Now().Add(t.Reserve)
	next := func(stage string, reason protocol.HordeFailureReason) (protocol.Message, *outcome) {
		timer := time.NewTimer(time.Until(deadline))
		defer timer.Stop()
		select {
		case m, ok := <-inbox:
			if !ok {
				o := hordeFail(protocol.HordeMinerConnectionFailed, "miner connection lost during "+stage, stage == "reserve" || stage == "startup")
				return nil, &o
			}
			return m, nil
		case <-timer.C:
			o := hordeFail(reason, "timeout:"+stage+": no answer from the miner in time", stage == "reserve")
			return nil, &o
		case <-ctx.Done():
			mc.send(context.WithoutCancel(ctx), &protocol.V0CancelJobRequest{JobUUID: uuid})
			o := outcome{status: protocol.StatusCancelled}
			return nil, &o
		}
	}
	stageStart := startedAt
	// expect waits for the message that ends a stage; failures end the job.
	expect := func(stage string, reason protocol.HordeFailureReason, want func(protocol.Message) bool) *outcome {
		for {
			m, fail := next(stage, reason)
			if fail != nil {
				return fail
			}
			if vr, ok := m.(*protocol.V0VolumeResult); ok {
				v.out.push(&protocol.V0JobVolumeResult{UUID: uuid, MessageID: vr.MessageID, Success: vr.Success, Error: vr.Error, UploadResults: vr.UploadResults})
				continue
			}
			if want(m) {
				return nil
			}
			if f := terminal(m); f != nil {
				return f
			}
			log.Debug("ignoring message", "stage", stage, "type", m.MessageType())
		}
	}
	var decline *protocol.V0DeclineJobRequest
	if f := expect("reserve", protocol.HordeInitialTimeout, func(m protocol.Message) bool {
		if d, ok := m.(*protocol.V0DeclineJobRequest); ok {
			decline = d
			return true
		}
		_, ok := m.(*protocol.V0AcceptJobRequest)
		return ok
	}); f != nil {
		return *f
	}
	if decline != nil {
		return outcome{status: protocol.StatusRejected, retry: true, excuses: decline.Receipts, meta: &protocol.StatusMetadata{JobRejectionDetails: &protocol.RejectionDetails{
			RejectedBy: protocol.ByMiner, Reason: decline.Reason, Message: decline.Message}}}
	}
	stageStart = mark("reserve", stageStart)
	note(protocol.StatusAccepted, &protocol.StatusMetadata{MinerHotkey: miner})
	v.sendReceipt(ctx, mc, &receipt.AcceptedPayload{Base: receipt.Base{JobUUID: uuid, MinerHotkey: miner, ValidatorHotkey: me, Timestamp: receipt.At(time.Now())},
		TimeAccepted: receipt.At(time.Now()), TTL: ttl})

	// 2–3. spin-up and startup
	deadline = deadline.Add(spinUp + t.StartupSlack)
	if f := expect("startup", protocol.HordeReadinessTimeout, is[*protocol.V0ExecutorReadyRequest]); f != nil {
		return *f
	}
	stageStart = mark("startup", stageStart)
	note(protocol.StatusExecutorReady, nil)

	// 4. download
	v.setStop(uuid, func(m protocol.Message) { mc.send(context.WithoutCancel(ctx), m) })
	defer v.setStop(uuid, nil)
	jr := &protocol.V0JobRequest{JobUUID: uuid, ExecutorClass: spec.ExecutorClass, DockerImage: spec.DockerImage, DockerRunOptionsPreset: "none",
		DockerRunCmd: spec.Args, Env: spec.Env, Volume: spec.Volume, OutputUpload: spec.OutputUpload, ArtifactsDir: spec.ArtifactsDir}
	if err := mc.send(ctx, jr); err != nil {
		return hordeFail(protocol.HordeMinerConnectionFailed, err.Error(), true)
	}
	deadline = deadline.Add(t.Leeway + time.Duration(spec.DownloadTimeLimit)*time.Second)
	if f := expect("download", protocol.HordeVolumesTimeout, is[*protocol.V0VolumesReadyRequest]); f != nil {
		return *f
	}
	stageStart = mark("download", stageStart)
	note(protocol.StatusVolumesReady, nil)

	// 4b. streaming start: the miner vouches for the job's key.
	if spec.StreamingDetails != nil {
		deadline = deadline.Add(t.Leeway + time.Duration(max(spec.StreamingStartTimeLimit, 60))*time.Second)
		var ready *protocol.V0StreamingJobReadyRequest
		if f := expect("streaming", protocol.HordeStreamingReadyTimeout, func(m protocol.Message) bool {
			ready, _ = m.(*protocol.V0StreamingJobReadyRequest)
			return ready != nil
		}); f != nil {
			return *f
		}
		msg := protocol.StreamingReadyMessage(uuid, ready.IP, ready.Port, ready.PublicKey)
		if err := sig.VerifyHex(miner, msg, ready.MinerSignature); err != nil {
			mc.send(context.WithoutCancel(ctx), &protocol.V0CancelJobRequest{JobUUID: uuid})
			return hordeFail(protocol.HordeSecurityCheckFailed, "the miner's signature of the streaming job's key does not verify: "+err.Error(), false)
		}
		stageStart = mark("streaming", stageStart)
		note(protocol.StatusStreaming, &protocol.StatusMetadata{MinerHotkey: miner, StreamingDetails: &protocol.StreamingServerDetails{
			StreamingServerCert: ready.PublicKey, StreamingServerAddress: ready.IP, StreamingServerPort: ready.Port, MinerSignature: ready.MinerSignature}})
	}

	// 5. execute
	deadline = deadline.Add(time.Duration(spec.ExecutionTimeLimit) * time.Second)
	if f := expect("execute", protocol.HordeExecutionTimeout, is[*protocol.V0ExecutionDoneRequest]); f != nil {
		return *f
	}
	stageStart = mark("execute", stageStart)
	note(protocol.StatusExecutionDone, nil)

	// 6–7. upload and finish
	deadline = deadline.Add(time.Duration(spec.UploadTimeLimit) * time.Second)
	var fin *protocol.V0JobFinishedRequest
	if f := expect("upload", protocol.HordeFinalTimeout, func(m protocol.Message) bool {
		fin, _ = m.(*protocol.V0JobFinishedRequest)
		return fin != nil
	}); f != nil {
		return *f
	}
	mark("upload", stageStart)
	meta := &protocol.StatusMetadata{MinerResponse: &protocol.MinerResponse{DockerProcessStdout: fin.DockerProcessStdout,
		DockerProcessStderr: fin.DockerProcessStderr, Artifacts: fin.Artifacts, UploadResults: fin.UploadResults}, Timings: map[string]int64{}}
	for k, ms := range fin.Timings {
		meta.Timings["executor:"+k] = ms
	}
	return outcome{status: protocol.StatusCompleted, meta: meta}
}

func is[T protocol.Message](m protocol.Message) bool { _, ok := m.(T); return ok }

// terminal maps a miner's failure message to an outcome, or nil.
func terminal(m protocol.Message) *outcome {
	switch m := m.(type) {
	case *protocol.V0JobFailedRequest:
		code, _ := m.Context["horde_reason"].(string)
		if code == "" {
			code = string(m.Reason)
		}
		return &outcome{status: protocol.StatusFailed, meta: &protocol.StatusMetadata{Comment: code, JobFailureDetails: &protocol.FailureDetails{
			Reason: m.Reason, Stage: m.Stage, Message: m.Message, Context: m.Context, DockerProcessExitStatus: m.DockerProcessExitStatus,
			DockerProcessStdout: m.DockerProcessStdout, DockerProcessStderr: m.DockerProcessStderr}}}
	case *protocol.V0HordeFailedRequest:
		return &outcome{status: protocol.StatusHordeFailed, meta: &protocol.StatusMetadata{HordeFailureDetails: &protocol.HordeFailureDetails{
			ReportedBy: m.ReportedBy, Reason: m.Reason, Message: m.Message, Context: m.Context}}}
	case *protocol.V0ExecutorFailedRequest:
		return &outcome{status: protocol.StatusHordeFailed, meta: &protocol.StatusMetadata{HordeFailureDetails: &protocol.HordeFailureDetails{
			ReportedBy: protocol.ByMiner, Reason: protocol.HordeSpinupFailed, Message: "executor failed to start"}}}
	case *protocol.V0StreamingJobNotReadyRequest:
		return &outcome{status: protocol.StatusHordeFailed, meta: &protocol.StatusMetadata{HordeFailureDetails: &protocol.HordeFailureDetails{
			ReportedBy: protocol.ByMiner, Reason: protocol.HordeStreamingFailed, Message: "streaming job did not become ready"}}}
	}
	return nil
}

// sendReceipt signs a receipt, stores it and hands it to the miner.
func (v *Validator) sendReceipt(ctx context.Context, mc *minerClient, p receipt.Payload) {
	s, err := receipt.Sign(v.cfg.Hotkey, p)
	if err != nil {
		v.log.Error("sign receipt", "err", err)
		return
	}
	r, err := receipt.New(p, s)
	if err != nil {
		return
	}
	if err := v.cfg.Store.PutReceipt(ctx, r); err != nil {
		v.log.Error("store receipt", "err", err)
	}
	var m protocol.Message
	switch r.Type {
	case receipt.JobAccepted:
		m = &protocol.V0JobAcceptedReceiptRequest{Payload: r.Payload, Signature: s}
	case receipt.JobFinished:
		m = &protocol.V0JobFinishedReceiptRequest{Payload: r.Payload, Signature: s}
	default:
		return
	}
	if err := mc.send(ctx, m); err != nil {
		v.log.Warn("receipt not delivered", "type", r.Type, "err", err)
	}
}
