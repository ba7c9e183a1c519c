package miner

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/horde-compute/horde/internal/metrics"
	"github.com/horde-compute/horde/internal/miner/decide"
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
	ctx       context.Context // the job's life, a child of the miner's
	cancel    context.CancelFunc
	freed     bool // its executor is counted free (guarded by Miner.mu)

	mu        sync.Mutex
	pending   []protocol.Message // validator → executor, before the executor connects
	exec      *wsconn.Conn
	connected chan struct{}
	relayed   chan struct{} // closed when the executor's messages are all relayed
	terminal  bool
}

// admit decides an offer against the miner's state and, when it is
// accepted, reserves an executor and registers the job, all under one lock.
// A declined busy offer carries its excuses.
func (m *Miner) admit(validator string, conn *wsconn.Conn, req *protocol.V0InitialJobRequest) (*job, decide.Decision, []json.RawMessage) {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, running := m.jobs[req.JobUUID]
	d := decide.Decide(decide.Offer{Miner: m.cfg.Hotkey.SS58(), Validator: validator, Request: req, Manifest: m.cfg.Manifest,
		Reserved: m.reserved[req.ExecutorClass], Running: running})
	if !d.Accept {
		var ex []json.RawMessage
		if d.Reason == protocol.RejectBusy {
			var started []receipt.Receipt
			for _, j := range m.jobs {
				if j.class == req.ExecutorClass && !j.freed {
					started = append(started, j.started)
				}
			}
			ex = decide.Excuses(started, req)
		}
		return nil, d, ex
	}
	started, err := decide.CountersignStarted(m.cfg.Hotkey, d.Started, req.JobStartedReceiptSignature)
	if err != nil {
		return nil, decide.Declined(protocol.RejectUnknown, "miner could not countersign the receipt: %v", err), nil
	}
	ctx, cancel := context.WithCancel(m.base)
	j := &job{uuid: req.JobUUID, class: req.ExecutorClass, validator: validator, vconn: conn, initial: m.images().forExecutor(req),
		started: started, ctx: ctx, cancel: cancel, connected: make(chan struct{}), relayed: make(chan struct{})}
	j.token = m.tokens.Issue(j.uuid)
	m.reserved[j.class]++
	m.jobs[j.uuid] = j
	return j, d, nil
}

// free counts the job's executor free once the job has reported its end:
// the executor is only tidying up, and the validator, told of the end,
// offers the next job at once, which must not be declined as busy.
func (m *Miner) free(j *job) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.jobs[j.uuid]; ok && !j.freed {
		j.freed = true
		m.reserved[j.class]--
	}
}

// release frees the job's executor and forgets the job.
func (m *Miner) release(j *job) {
	m.mu.Lock()
	if _, ok := m.jobs[j.uuid]; ok {
		delete(m.jobs, j.uuid)
		if !j.freed {
			j.freed = true
			m.reserved[j.class]--
		}
	}
	m.mu.Unlock()
	m.tokens.Revoke(j.token)
	j.cancel()
}

// start starts the job's executor and watches it until it ends.
func (m *Miner) start(ctx context.Context, j *job) {
	done, err := m.cfg.Backend.Start(j.ctx, ExecutorSpec{JobUUID: j.uuid, Class: j.class,
		MinerURL: m.executorURL(j.token), Limits: m.cfg.Classes[j.class]})
	if err != nil {
		m.hordeFailed(ctx, j, protocol.HordeSpinupFailed, "executor back-end could not start an executor: "+err.Error())
		m.release(j)
		return
	}
	m.log.Info("job accepted, executor starting", "job", j.uuid, "validator", j.validator, "class", j.class)
	m.metrics.Job("accepted", "")
	m.watchers.Go(func() { m.watch(j, done) }) // ends when the executor has
}

// watch enforces the spin-up deadline and frees the executor when it ends.
func (m *Miner) watch(j *job, done <-chan struct{}) {
	t := time.NewTimer(m.cfg.SpinUpTimeout)
	defer t.Stop()
	select {
	case <-j.connected:
	case <-t.C:
		m.tokens.Revoke(j.token)
		m.hordeFailed(j.ctx, j, protocol.HordeSpinupFailed, fmt.Sprintf("executor did not connect within %s", m.cfg.SpinUpTimeout))
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
	if j.ctx.Err() == nil {
		// A no-op if the executor reported a result.
		m.hordeFailed(m.base, j, protocol.HordeExecutorDisconnected, "executor ended without reporting a result")
	}
	m.release(j)
}

// hordeFailed tells the validator the job failed through no fault of its
// own, unless something terminal was reported already.
func (m *Miner) hordeFailed(ctx context.Context, j *job, reason protocol.HordeFailureReason, msg string) {
	j.mu.Lock()
	if j.terminal {
		j.mu.Unlock()
		return
	}
	j.terminal = true
	j.mu.Unlock()
	m.log.Warn("job failed (horde)", "job", j.uuid, "reason", reason, "msg", msg)
	m.metrics.Job("horde_failed", metrics.Word(string(reason)))
	m.send(ctx, j.vconn, &protocol.V0HordeFailedRequest{JobUUID: j.uuid, ReportedBy: protocol.ByMiner, Reason: reason, Message: msg})
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
		m.send(ctx, conn, &protocol.GenericError{Details: "no such job here: " + uuid})
		return
	}
	j.mu.Lock()
	exec := j.exec
	if exec == nil {
		j.pending = append(j.pending, msg)
	}
	j.mu.Unlock()
	if exec != nil {
		m.send(ctx, exec, msg)
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
		m.send(ctx, exec, &protocol.V0CancelJobRequest{JobUUID: uuid})
	}
	m.log.Info("job cancelled by validator", "job", uuid)
	j.cancel()
}
