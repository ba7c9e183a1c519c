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
	noticeDispatch = "dispatch" // jobs, pairs or cheat reports wait: dispatch
	noticeJob      = "job"      // the job's history grew: tell its watchers
	noticeCancel   = "cancel"   // the replica with the job's validator: cancel it
	noticeStop     = "stop"     // the replica with the job's validator: stop it
	noticeDone     = "done"     // "done <kind>:<job>": a cancel or stop was passed on
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
	case noticeCancel, noticeStop:
		wg.Go(func() { f.forReplica(ctx, kind, job) })
	case noticeDone:
		f.mu.Lock()
		ch := f.asked[job]
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

// forReplica cancels or stops a job another replica was asked to, if its
// validator is connected here, and says it did.
func (f *Facilitator) forReplica(ctx context.Context, kind, id string) {
	rec, err := f.cfg.Store.Job(ctx, id)
	if err != nil || rec.Status.Terminal() {
		return
	}
	vs := f.validator(rec.ValidatorHotkey)
	if vs == nil {
		return // not here
	}
	switch kind {
	case noticeCancel:
		err = f.cancelAt(ctx, vs, id)
	case noticeStop:
		if rec.Status != protocol.StatusStreaming || !vs.has(protocol.CapStop) {
			return // the asking replica answers when no one says done
		}
		err = vs.send(ctx, &protocol.V0StopJobByFacilitator{UUID: id})
	}
	if err != nil {
		f.log.Warn("pass on for another replica", "kind", kind, "job", id, "err", err)
		return
	}
	f.announce(ctx, noticeDone, kind+":"+id)
}

// elsewhere asks the replica that has the job's validator to cancel or
// stop it (kind) and waits until one says it did (true), or, for a cancel,
// the job ended (true), or PingTimeout passed (false: no replica has its
// validator). Alone, it is false at once.
func (f *Facilitator) elsewhere(ctx context.Context, kind, id string) bool {
	if f.bus == nil {
		return false
	}
	key := kind + ":" + id
	ack := make(chan struct{}, 1)
	f.mu.Lock()
	f.asked[key] = ack
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.asked, key)
		f.mu.Unlock()
	}()
	watch := f.subscribe(id)
	defer f.unsubscribe(id, watch)
	f.announce(ctx, kind, id)
	t := time.NewTimer(f.cfg.PingTimeout)
	defer t.Stop()
	for {
		select {
		case <-ack:
			return true
		case <-watch:
			if rec, err := f.cfg.Store.Job(ctx, id); err == nil && rec.Status.Terminal() && kind == noticeCancel {
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
