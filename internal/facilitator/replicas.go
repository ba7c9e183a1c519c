package facilitator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"sync"
	"time"

	"github.com/horde-compute/horde/protocol"
)

// This file: replicas. Several facilitators over one database (PostgreSQL)
// serve as one: a client may submit at one and watch, cancel or report
// pairs at another, and validators connect to any. What a replica keeps in
// memory (its validators' sessions, its watchers) it learns of from the
// others through a Bus; what they share is in the database, and a job is
// claimed (store.Jobs.ClaimJob) before it is sent, so each goes to one
// validator, once, whichever replica sends it. A replica that dies after
// claiming a job but before sending it leaves it assigned: once Redispatch
// has passed, whichever replica its validator is connected to then gives
// it again, to the same validator, which ignores a job it has.

// Bus carries wake-ups between the replicas of one database. A Store that
// implements it (postgres.DB, through LISTEN/NOTIFY) makes a facilitator
// a replica; without it a facilitator is alone.
type Bus interface {
	// Notify sends payload to every replica listening, the sender included.
	Notify(ctx context.Context, payload string) error
	// Listen calls fn with every payload until ctx ends (nil) or it fails;
	// ready once it listens.
	Listen(ctx context.Context, ready func(), fn func(payload string)) error
}

// What replicas tell each other: "<replica> <kind> <job>".
const (
	noticeDispatch  = "dispatch"  // jobs, pairs or cheat reports wait: dispatch
	noticeJob       = "job"       // the job's history grew: tell its watchers
	noticeCancel    = "cancel"    // the replica with the job's validator: cancel it
	noticeCancelled = "cancelled" // the cancel was taken care of
)

func newReplicaID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// announce tells the other replicas; alone, it does nothing.
func (f *Facilitator) announce(ctx context.Context, kind, job string) {
	if f.bus == nil {
		return
	}
	if err := f.bus.Notify(ctx, f.replica+" "+kind+" "+job); err != nil && ctx.Err() == nil {
		f.log.Warn("tell the other replicas", "kind", kind, "job", job, "err", err)
	}
}

// wake wakes this replica's dispatcher and the other replicas'.
func (f *Facilitator) wake(ctx context.Context) {
	f.kick()
	f.announce(ctx, noticeDispatch, "")
}

// changed tells the job's watchers, here and at the other replicas, that
// its history grew.
func (f *Facilitator) changed(ctx context.Context, id string) {
	f.publish(id)
	f.announce(ctx, noticeJob, id)
}

// listenLoop hears the other replicas until ctx ends, listening again
// after a failure (and then looking again at everything, since notices
// sent meanwhile are lost).
func (f *Facilitator) listenLoop(ctx context.Context) {
	var wg sync.WaitGroup // cancels being taken care of
	defer wg.Wait()
	ready := func() {
		f.kick()
		f.publishAll()
	}
	for {
		err := f.bus.Listen(ctx, ready, func(payload string) { f.notice(ctx, &wg, payload) })
		if ctx.Err() != nil {
			return
		}
		f.log.Warn("replicas: listening failed; listening again", "err", err)
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// notice acts on what another replica told.
func (f *Facilitator) notice(ctx context.Context, wg *sync.WaitGroup, payload string) {
	from, rest, _ := strings.Cut(payload, " ")
	kind, job, _ := strings.Cut(rest, " ")
	if from == f.replica {
		return // done here already
	}
	switch kind {
	case noticeDispatch:
		f.kick()
	case noticeJob:
		f.publish(job)
	case noticeCancel:
		wg.Go(func() { f.cancelForReplica(ctx, job) })
	case noticeCancelled:
		f.mu.Lock()
		ch := f.cancels[job]
		f.mu.Unlock()
		if ch != nil {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
}

// publishAll tells every watcher here to look again.
func (f *Facilitator) publishAll() {
	f.mu.Lock()
	ids := make([]string, 0, len(f.watchers))
	for id := range f.watchers {
		ids = append(ids, id)
	}
	f.mu.Unlock()
	for _, id := range ids {
		f.publish(id)
	}
}

// cancelForReplica cancels a job another replica was asked to cancel, if
// its validator is connected here, and says so.
func (f *Facilitator) cancelForReplica(ctx context.Context, id string) {
	rec, err := f.cfg.Store.Job(ctx, id)
	if err != nil || rec.Status.Terminal() {
		return
	}
	vs := f.validator(rec.ValidatorHotkey)
	if vs == nil {
		return // not here
	}
	if err := f.cancelAt(ctx, vs, id); err != nil {
		f.log.Warn("cancel for another replica", "job", id, "err", err)
		return
	}
	f.announce(ctx, noticeCancelled, id)
}

// cancelElsewhere asks the replica that has the job's validator to cancel
// it and waits until one says it did, or the job ended, or PingTimeout
// passed (false: no replica has its validator).
func (f *Facilitator) cancelElsewhere(ctx context.Context, id string) bool {
	if f.bus == nil {
		return false
	}
	ack := make(chan struct{}, 1)
	f.mu.Lock()
	f.cancels[id] = ack
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.cancels, id)
		f.mu.Unlock()
	}()
	watch := f.subscribe(id)
	defer f.unsubscribe(id, watch)
	f.announce(ctx, noticeCancel, id)
	t := time.NewTimer(f.cfg.PingTimeout)
	defer t.Stop()
	for {
		select {
		case <-ack:
			return true
		case <-watch:
			if rec, err := f.cfg.Store.Job(ctx, id); err == nil && rec.Status.Terminal() {
				return true
			}
		case <-t.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// cancelAt cancels a job whose validator is connected here: the validator
// is told to if it can cancel, else the job ends here.
func (f *Facilitator) cancelAt(ctx context.Context, vs *session, id string) error {
	if vs != nil && vs.has(protocol.CapCancel) {
		return vs.send(ctx, &protocol.V0CancelJobByFacilitator{UUID: id})
	}
	// No validator that can cancel has the job (none yet, it is away, or
	// it speaks upstream's protocol, which has no cancel): the job ends
	// here, and what its validator reports later changes nothing.
	e := protocol.StatusEntry{Status: protocol.StatusCancelled, CreatedAt: time.Now().UTC(), Metadata: &protocol.StatusMetadata{Comment: "cancelled by the client"}}
	return f.end(ctx, id, e)
}
