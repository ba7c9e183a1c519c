package miner

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/horde-compute/horde/internal/metrics"
	"github.com/horde-compute/horde/internal/miner/decide"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
)

// The transport: sessions with validators and executors receive frames,
// hand them to the logic (package decide, and the job lifecycle in jobs.go)
// and send what it answers. Every send is bounded
// by Config.SendTimeout.

// send sends msg on conn, waiting at most Config.SendTimeout (and no
// longer than ctx lives).
func (m *Miner) send(ctx context.Context, conn *wsconn.Conn, msg protocol.Message) error {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.SendTimeout)
	defer cancel()
	return conn.Send(ctx, msg)
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
		m.send(ctx, conn, &protocol.UnauthorizedError{Code: protocol.UnauthorizedUnknownValidator, Details: "first message must be ValidatorAuthForMiner, got " + first.MessageType()})
		conn.CloseWith("auth required")
		return
	}
	if err := wsconn.CheckValidatorAuth(auth, r.PathValue("hotkey"), m.cfg.Hotkey.SS58(), m.allowed, m.guard, time.Now()); err != nil {
		m.log.Warn("validator refused", "validator", auth.ValidatorHotkey, "err", err)
		m.send(ctx, conn, authRefusal(err, m.registered(auth.ValidatorHotkey)))
		conn.CloseWith("unauthorized")
		return
	}
	validator := auth.ValidatorHotkey
	log := m.log.With("validator", validator)
	log.Info("validator connected")
	m.metrics.Validators(1)
	defer m.metrics.Validators(-1)
	if err := m.send(ctx, conn, manifestFor(m.cfg.Manifest, m.cfg.UpstreamOnly)); err != nil {
		return
	}
	m.send(ctx, conn, &protocol.V0MainHotkeyMessage{MainHotkey: m.cfg.Hotkey.SS58()})

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
			m.send(ctx, conn, &protocol.V0MainHotkeyMessage{MainHotkey: m.cfg.Hotkey.SS58()}) // upstream's validator asks
		case *protocol.GenericError:
			log.Warn("validator reported an error", "details", msg.Details)
		default:
			m.send(ctx, conn, &protocol.GenericError{Details: "unexpected message " + msg.MessageType()})
		}
	}
}

// offer answers a job offer: decline with a reason, or keep the started
// receipt, accept and start the executor. It returns the accepted job.
func (m *Miner) offer(ctx context.Context, conn *wsconn.Conn, validator string, req *protocol.V0InitialJobRequest) *job {
	log := m.log.With("job", req.JobUUID, "validator", validator)
	if msg := m.images().streamingRefusal(req); msg != "" {
		log.Info("declining job", "reason", protocol.RejectUnknown, "msg", msg)
		m.metrics.Job("declined", metrics.Word(string(protocol.RejectUnknown)))
		m.send(ctx, conn, decide.DeclineMessage(req, decide.Declined(protocol.RejectUnknown, "%s", msg), nil))
		return nil
	}
	j, d, excuses := m.admit(validator, conn, req)
	if j != nil {
		if err := m.cfg.Store.PutReceipt(ctx, j.started); err != nil {
			m.release(j)
			j, d = nil, decide.Declined(protocol.RejectUnknown, "miner could not store the receipt: %v", err)
		}
	}
	if j == nil {
		log.Info("declining job", "reason", d.Reason, "msg", d.Message)
		m.metrics.Job("declined", metrics.Word(string(d.Reason)))
		m.send(ctx, conn, decide.DeclineMessage(req, d, excuses))
		return nil
	}
	if err := m.send(ctx, conn, &protocol.V0AcceptJobRequest{JobUUID: j.uuid}); err != nil {
		m.release(j)
		return nil
	}
	m.start(ctx, j)
	return j
}

// countersign verifies a validator-signed receipt, adds the miner's signature and stores it.
func (m *Miner) countersign(ctx context.Context, conn *wsconn.Conn, validator string, t receipt.Type, payload json.RawMessage, signature string) {
	r, err := decide.Countersign(m.cfg.Hotkey, validator, t, payload, signature)
	if err == nil {
		err = m.cfg.Store.PutReceipt(ctx, r)
	}
	if err != nil {
		m.log.Warn("receipt refused", "type", t, "err", err)
		m.send(ctx, conn, &protocol.GenericError{Details: "receipt refused: " + err.Error()})
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
	// The relay ends with the job: a cancelled job's executor has nothing
	// left to say.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(j.ctx, cancel)()
	if err := m.send(ctx, conn, j.initial); err != nil {
		return
	}
	j.mu.Lock()
	j.exec = conn
	pending := j.pending
	j.pending = nil
	j.mu.Unlock()
	close(j.connected)
	for _, msg := range pending {
		m.send(ctx, conn, msg)
	}
	for {
		msg, err := conn.Recv(ctx)
		if err != nil {
			return // watch reports the loss once the executor has ended
		}
		out, terminal, ok := decide.FromExecutor(m.cfg.Hotkey, msg)
		if !ok {
			m.send(ctx, conn, &protocol.GenericError{Details: "unexpected message from executor: " + msg.MessageType()})
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
		if terminal {
			m.free(j) // before the validator hears of the end
		}
		if err := m.send(ctx, j.vconn, out); err != nil {
			m.log.Warn("validator gone; dropping executor message", "job", uuid, "type", out.MessageType())
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
