package miner

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
)

// job is one job the miner accepted.
type job struct {
	uuid      string
	class     string
	validator string
	vconn     *wsconn.Conn
	initial   *protocol.V0InitialJobRequest
	started   receipt.Receipt
	token     string
	cancel    context.CancelFunc

	mu        sync.Mutex
	pending   []protocol.Message // validator → executor, before the executor connects
	exec      *wsconn.Conn
	connected chan struct{}
	relayed   chan struct{} // closed when the executor's messages are all relayed
	terminal  bool
}

// serveValidator handles one validator session.
func (m *Miner) serveValidator(w http.ResponseWriter, r *http.Request) {
	conn, first, err := wsconn.AcceptAuth(w, r, m.log)
	if err != nil {
		return
	}
	ctx := r.Context()
	auth, ok := first.(*protocol.ValidatorAuthForMiner)
	if !ok {
		conn.Send(ctx, &protocol.UnauthorizedError{Code: protocol.UnauthorizedUnknownValidator, Details: "first message must be ValidatorAuthForMiner, got " + first.MessageType()})
		conn.CloseWith("auth required")
		return
	}
	if err := wsconn.CheckValidatorAuth(auth, r.PathValue("hotkey"), m.cfg.Hotkey.SS58(), m.allowed, m.guard, time.Now()); err != nil {
		m.log.Warn("validator refused", "validator", auth.ValidatorHotkey, "err", err)
		conn.Send(ctx, authRefusal(err, m.registered(auth.ValidatorHotkey)))
		conn.CloseWith("unauthorized")
		return
	}
	validator := auth.ValidatorHotkey
	log := m.log.With("validator", validator)
	log.Info("validator connected")
	if err := conn.Send(ctx, manifestFor(m.cfg.Manifest)); err != nil {
		return
	}
	conn.Send(ctx, &protocol.V0MainHotkeyMessage{MainHotkey: m.cfg.Hotkey.SS58()})

	var mine []*job
	defer func() {
		// The validator is gone: its jobs cannot report anywhere, so stop them.
		for _, j := range mine {
			j.cancel()
		}
		log.Info("validator disconnected")
	}()
	for {
		msg, err := conn.Recv(ctx)
		if err != nil {
			return
		}
		switch msg := msg.(type) {
		case *protocol.V0InitialJobRequest:
			if j := m.offer(ctx, conn, validator, msg); j != nil {
				mine = append(mine, j)
			}
		case *protocol.V0JobRequest:
			m.toExecutor(ctx, conn, validator, msg.JobUUID, msg)
		case *protocol.V0StopJobRequest:
			m.toExecutor(ctx, conn, validator, msg.JobUUID, msg)
		case *protocol.V0VolumeRequest:
			m.toExecutor(ctx, conn, validator, msg.JobUUID, msg)
		case *protocol.V0CancelJobRequest:
			m.cancelJob(ctx, validator, msg.JobUUID)
		case *protocol.V0JobAcceptedReceiptRequest:
			m.countersign(ctx, conn, validator, receipt.JobAccepted, msg.Payload, msg.Signature)
		case *protocol.V0JobFinishedReceiptRequest:
			m.countersign(ctx, conn, validator, receipt.JobFinished, msg.Payload, msg.Signature)
		case *protocol.V0MainHotkeyMessage:
			conn.Send(ctx, &protocol.V0MainHotkeyMessage{MainHotkey: m.cfg.Hotkey.SS58()}) // upstream's validator asks
		case *protocol.GenericError:
			log.Warn("validator reported an error", "details", msg.Details)
		default:
			conn.Send(ctx, &protocol.GenericError{Details: "unexpected message " + msg.MessageType()})
		}
	}
}

// offer decides on a job offer: verify the started receipt, check the class,
// reserve an executor, accept and start the executor; or decline with a reason.
func (m *Miner) offer(ctx context.Context, conn *wsconn.Conn, validator string, req *protocol.V0InitialJobRequest) *job {
	log := m.log.With("job", req.JobUUID, "validator", validator)
	decline := func(reason protocol.JobRejectionReason, msg string, excuses []json.RawMessage) *job {
		log.Info("declining job", "reason", reason, "msg", msg)
		if excuses == nil {
			excuses = []json.RawMessage{}
		}
		conn.Send(ctx, &protocol.V0DeclineJobRequest{JobUUID: req.JobUUID, Reason: reason, Message: msg, Receipts: excuses})
		return nil
	}
	var p receipt.StartedPayload
	if err := json.Unmarshal(req.JobStartedReceiptPayload, &p); err != nil {
		return decline(protocol.RejectInvalidSignature, "job started receipt payload does not decode: "+err.Error(), nil)
	}
	switch {
	case p.JobUUID != req.JobUUID, p.MinerHotkey != m.cfg.Hotkey.SS58(), p.ValidatorHotkey != validator, p.ExecutorClass != req.ExecutorClass:
		return decline(protocol.RejectInvalidSignature, "job started receipt does not match the job (uuid, hotkeys or class)", nil)
	}
	if err := receipt.VerifyBy(validator, &p, req.JobStartedReceiptSignature); err != nil {
		return decline(protocol.RejectInvalidSignature, err.Error(), nil)
	}
	if _, ok := m.cfg.Manifest[req.ExecutorClass]; !ok {
		return decline(protocol.RejectUnknown, fmt.Sprintf("executor class %q is not offered by this miner", req.ExecutorClass), nil)
	}
	if msg := m.images().streamingRefusal(req); msg != "" {
		return decline(protocol.RejectUnknown, msg, nil)
	}
	m.mu.Lock()
	_, dup := m.jobs[req.JobUUID]
	m.mu.Unlock()
	if dup {
		return decline(protocol.RejectUnknown, "job uuid is already running here", nil)
	}
	if !m.reserve(req.ExecutorClass) {
		return decline(protocol.RejectBusy, "all executors of class "+req.ExecutorClass+" are busy", m.upstreamExcuses(req))
	}
	started, err := receipt.New(&p, req.JobStartedReceiptSignature)
	if err == nil {
		started.MinerSignature, err = receipt.Sign(m.cfg.Hotkey, &p)
	}
	jctx, cancel := context.WithCancel(m.ctx)
	j := &job{uuid: req.JobUUID, class: req.ExecutorClass, validator: validator, vconn: conn, initial: m.images().forExecutor(req),
		started: started, cancel: cancel, connected: make(chan struct{}), relayed: make(chan struct{})}
	j.token = m.tokens.Issue(j.uuid)
	m.mu.Lock()
	m.jobs[j.uuid] = j
	m.mu.Unlock()
	if err == nil {
		err = m.cfg.Store.PutReceipt(ctx, started)
	}
	if err != nil {
		m.release(j)
		cancel()
		return decline(protocol.RejectUnknown, "miner could not store the receipt: "+err.Error(), nil)
	}
	if err := conn.Send(ctx, &protocol.V0AcceptJobRequest{JobUUID: j.uuid}); err != nil {
		m.release(j)
		cancel()
		return nil
	}
	done, err := m.cfg.Backend.Start(jctx, ExecutorSpec{JobUUID: j.uuid, Class: j.class,
		MinerURL: m.cfg.ExecutorBaseURL + protocol.ExecutorPath + j.token, Limits: m.cfg.Classes[j.class]})
	if err != nil {
		m.hordeFailed(ctx, j, protocol.HordeSpinupFailed, "executor back-end could not start an executor: "+err.Error())
		m.release(j)
		cancel()
		return j
	}
	log.Info("job accepted, executor starting", "class", j.class)
	m.watchers.Go(func() { m.watch(jctx, j, done) }) // ends when the executor has
	return j
}

// watch enforces the spin-up deadline and frees the executor when it ends.
func (m *Miner) watch(ctx context.Context, j *job, done <-chan struct{}) {
	t := time.NewTimer(m.cfg.SpinUpTimeout)
	defer t.Stop()
	select {
	case <-j.connected:
	case <-t.C:
		m.tokens.Revoke(j.token)
		m.hordeFailed(ctx, j, protocol.HordeSpinupFailed, fmt.Sprintf("executor did not connect within %s", m.cfg.SpinUpTimeout))
		j.cancel()
	case <-done:
	}
	<-done
	m.tokens.Revoke(j.token)
	select {
	case <-j.connected:
		// Let the relay pass on what the executor said before it ended.
		select {
		case <-j.relayed:
		case <-time.After(5 * time.Second):
		}
	default:
	}
	if ctx.Err() == nil {
		// A no-op if the executor reported a result.
		m.hordeFailed(context.Background(), j, protocol.HordeExecutorDisconnected, "executor ended without reporting a result")
	}
	m.release(j)
	j.cancel()
}

func (m *Miner) hordeFailed(ctx context.Context, j *job, reason protocol.HordeFailureReason, msg string) {
	j.mu.Lock()
	if j.terminal {
		j.mu.Unlock()
		return
	}
	j.terminal = true
	j.mu.Unlock()
	m.log.Warn("job failed (horde)", "job", j.uuid, "reason", reason, "msg", msg)
	j.vconn.Send(ctx, &protocol.V0HordeFailedRequest{JobUUID: j.uuid, ReportedBy: protocol.ByMiner, Reason: reason, Message: msg})
}

func (m *Miner) jobOf(validator, uuid string) *job {
	m.mu.Lock()
	defer m.mu.Unlock()
	j := m.jobs[uuid]
	if j == nil || j.validator != validator {
		return nil
	}
	return j
}

// toExecutor forwards a validator message to the job's executor, queueing it
// until the executor connects.
func (m *Miner) toExecutor(ctx context.Context, conn *wsconn.Conn, validator, uuid string, msg protocol.Message) {
	j := m.jobOf(validator, uuid)
	if j == nil {
		conn.Send(ctx, &protocol.GenericError{Details: "no such job here: " + uuid})
		return
	}
	j.mu.Lock()
	exec := j.exec
	if exec == nil {
		j.pending = append(j.pending, msg)
	}
	j.mu.Unlock()
	if exec != nil {
		exec.Send(ctx, msg)
	}
}

func (m *Miner) cancelJob(ctx context.Context, validator, uuid string) {
	j := m.jobOf(validator, uuid)
	if j == nil {
		return
	}
	j.mu.Lock()
	j.terminal = true // the validator knows; nothing more to report
	exec := j.exec
	j.mu.Unlock()
	if exec != nil {
		exec.Send(ctx, &protocol.V0CancelJobRequest{JobUUID: uuid})
	}
	m.log.Info("job cancelled by validator", "job", uuid)
	j.cancel()
}

// countersign verifies a validator-signed receipt, adds the miner's signature and stores it.
func (m *Miner) countersign(ctx context.Context, conn *wsconn.Conn, validator string, t receipt.Type, payload json.RawMessage, signature string) {
	r := receipt.Receipt{Type: t, Payload: payload, ValidatorSignature: signature}
	p, err := r.Decode()
	if err == nil {
		err = r.Verify()
	}
	if err == nil {
		var b receipt.Base
		json.Unmarshal(payload, &b)
		if b.MinerHotkey != m.cfg.Hotkey.SS58() || b.ValidatorHotkey != validator {
			err = fmt.Errorf("%w: receipt names miner %s and validator %s", receipt.ErrInvalid, b.MinerHotkey, b.ValidatorHotkey)
		}
	}
	if err == nil {
		r.MinerSignature, err = receipt.Sign(m.cfg.Hotkey, p)
	}
	if err == nil {
		err = m.cfg.Store.PutReceipt(ctx, r)
	}
	if err != nil {
		m.log.Warn("receipt refused", "type", t, "err", err)
		conn.Send(ctx, &protocol.GenericError{Details: "receipt refused: " + err.Error()})
	}
}

// serveExecutor handles an executor's connection, authenticated by its one-time token.
func (m *Miner) serveExecutor(w http.ResponseWriter, r *http.Request) {
	uuid, ok := m.tokens.Redeem(r.PathValue("token"))
	if !ok {
		http.Error(w, "unknown or already used executor token", http.StatusForbidden)
		return
	}
	m.mu.Lock()
	j := m.jobs[uuid]
	m.mu.Unlock()
	if j == nil {
		http.Error(w, "job is no longer active", http.StatusGone)
		return
	}
	conn, err := wsconn.Accept(w, r, m.log)
	if err != nil {
		return
	}
	defer close(j.relayed)
	ctx := r.Context()
	if err := conn.Send(ctx, j.initial); err != nil {
		return
	}
	j.mu.Lock()
	j.exec = conn
	pending := j.pending
	j.pending = nil
	j.mu.Unlock()
	close(j.connected)
	for _, msg := range pending {
		conn.Send(ctx, msg)
	}
	for {
		msg, err := conn.Recv(ctx)
		if err != nil {
			return // watch reports the loss once the executor has ended
		}
		terminal := false
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
			msg.MinerSignature = m.cfg.Hotkey.SignHex(protocol.StreamingReadyMessage(msg.JobUUID, msg.IP, msg.Port, msg.PublicKey))
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
			conn.Send(ctx, &protocol.GenericError{Details: "unexpected message from executor: " + msg.MessageType()})
			continue
		}
		j.mu.Lock()
		skip := j.terminal
		if terminal {
			j.terminal = true
		}
		j.mu.Unlock()
		if skip {
			continue
		}
		if err := j.vconn.Send(ctx, msg); err != nil {
			m.log.Warn("validator gone; dropping executor message", "job", uuid, "type", msg.MessageType())
		}
	}
}

// serveReceipts pages through the miner's countersigned receipts as JSON
// lines of {"id", "receipt"}: ?after=ID (0 to start)&limit=N (≤ 10000). The
// id of the last line is where the next page starts.
func (m *Miner) serveReceipts(w http.ResponseWriter, r *http.Request) {
	after, _ := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64)
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	if limit <= 0 || limit > 10000 {
		limit = 1000
	}
	rs, err := m.cfg.Store.ReceiptsAfter(r.Context(), after, limit)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/jsonl")
	enc := json.NewEncoder(w)
	for _, rc := range rs {
		enc.Encode(rc)
	}
}
