package jobrun

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/horde-compute/horde/protocol"
)

// Lease is an executor reserved on one miner for one job: a link to the
// miner and the job's inbox. Release gives it back; busy says the miner
// declined because all its executors of the class were taken.
type Lease interface {
	Link
	Inbox
	Miner() string
	Release(busy bool)
}

// Want is what a job asks of the pool.
type Want struct {
	Job, Class string
	// Tried are the miners the job was offered to: none is offered it again.
	Tried map[string]bool
	// Until bounds the wait for a free executor; the zero time: no wait.
	Until time.Time
	// Waiting, if set, is called once when the job has to wait.
	Waiting func()
	// Since is when the job first asked for an executor (the zero time: at
	// this Acquire). The line is kept in its order: a job that asks again
	// (its miner declined as busy) keeps its place ahead of later jobs.
	Since time.Time
}

// Pool leases executors: Acquire returns a lease on the miner with the most
// free executors of the class, waiting in line (first come, first served)
// while the miners that have the class are all busy. It fails with an error
// when no miner has the class, when Until passes, or when ctx ends.
type Pool interface {
	Acquire(ctx context.Context, w Want) (Lease, error)
}

// ErrCancelled is the cause a job's context is cancelled with when its
// client cancels it.
var ErrCancelled = errors.New("cancelled by the client")

// Driver runs jobs to a terminal status over a pool of miners.
type Driver struct {
	Params Params
	Pool   Pool
	// MaxAttempts bounds how many miners one job is offered to.
	MaxAttempts int
	// QueueTimeout bounds how long a job waits for a free executor.
	QueueTimeout time.Duration

	mu   sync.Mutex
	runs map[string]*Run // the current run of each job
}

// Relay sends m to the miner serving job uuid; false if no run of it serves here.
func (d *Driver) Relay(ctx context.Context, uuid string, m protocol.Message) bool {
	d.mu.Lock()
	r := d.runs[uuid]
	d.mu.Unlock()
	return r != nil && r.Relay(ctx, m)
}

func (d *Driver) track(uuid string, r *Run) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.runs == nil {
		d.runs = map[string]*Run{}
	}
	if r == nil {
		delete(d.runs, uuid)
	} else {
		d.runs[uuid] = r
	}
}

// Drive runs job to a terminal status, told to notes, trying up to
// MaxAttempts miners. A miner that declines because it is busy does not use
// up an attempt: while the queue timeout lasts, the job waits for an
// executor to free up. Cancelling ctx with ErrCancelled cancels the job.
func (d *Driver) Drive(ctx context.Context, job Job, notes Notes) {
	log := d.Params.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("job", job.UUID)
	cancelled := func() bool {
		if errors.Is(context.Cause(ctx), ErrCancelled) {
			notes.Status(protocol.StatusCancelled, &protocol.StatusMetadata{Comment: "cancelled by the client"})
			return true
		}
		return false
	}
	tried := map[string]bool{}
	var reasons []string
	waiting := false
	want := Want{Job: job.UUID, Class: job.Spec.ExecutorClass, Tried: tried, Since: time.Now(), Until: time.Now().Add(d.QueueTimeout), Waiting: func() {
		if !waiting {
			waiting = true
			notes.Status(protocol.StatusReceived, &protocol.StatusMetadata{Comment: "waiting for a free executor"})
		}
	}}
	for attempt := 1; attempt <= d.MaxAttempts; {
		lease, err := d.Pool.Acquire(ctx, want)
		if cancelled() {
			if lease != nil {
				lease.Release(false)
			}
			return
		}
		if err != nil {
			log.Debug("no executor", "err", err)
			break
		}
		hk := lease.Miner()
		run := New(d.Params, job, hk, lease, lease, notes)
		d.track(job.UUID, run)
		o := run.Execute(ctx)
		d.track(job.UUID, nil)
		lease.Release(o.Busy())
		if cancelled() {
			return
		}
		if ctx.Err() != nil {
			notes.Status(protocol.StatusHordeFailed, &protocol.StatusMetadata{HordeFailureDetails: &protocol.HordeFailureDetails{
				ReportedBy: protocol.ByValidator, Reason: protocol.HordeGenericError, Message: "validator stopped while the job ran"}})
			return
		}
		if o.Busy() {
			d.Params.observer().Attempt("busy")
			continue // the pool holds the miner back for a while; no attempt used
		}
		tried[hk] = true
		if o.Retry && attempt < d.MaxAttempts {
			d.Params.observer().Attempt("retry")
			attempt++
			reasons = append(reasons, o.Reason(hk))
			log.Info("retrying on another miner", "miner", hk, "why", o.Reason(""))
			notes.Status(protocol.StatusReceived, &protocol.StatusMetadata{Comment: "retrying: " + o.Reason(hk)})
			continue
		}
		d.Params.observer().Attempt("final")
		d.finish(ctx, job.UUID, hk, o, notes)
		return
	}
	msg := fmt.Sprintf("no miner with a free %s executor", job.Spec.ExecutorClass)
	if len(reasons) > 0 {
		msg += " after " + strings.Join(reasons, "; ")
	}
	notes.Status(protocol.StatusRejected, &protocol.StatusMetadata{JobRejectionDetails: &protocol.RejectionDetails{
		RejectedBy: protocol.ByValidator, Reason: protocol.RejectNoMiner, Message: msg}})
}

// finish tells the job's last status with the miner and the job's receipts.
func (d *Driver) finish(ctx context.Context, uuid, miner string, o Outcome, notes Notes) {
	if o.Meta == nil {
		o.Meta = &protocol.StatusMetadata{}
	}
	o.Meta.MinerHotkey = miner
	if rs, err := d.Params.Receipts.ReceiptsForJob(context.WithoutCancel(ctx), uuid); err == nil {
		for _, r := range rs {
			if b, err := json.Marshal(r); err == nil {
				o.Meta.Receipts = append(o.Meta.Receipts, b)
			}
		}
	}
	notes.Status(o.Status, o.Meta)
}
