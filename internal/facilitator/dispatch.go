package facilitator

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/protocol"
)

// This file: which validator gets which job, and the passing on of pairs.

// kick wakes the dispatcher.
func (f *Facilitator) kick() {
	select {
	case f.dispatch <- struct{}{}:
	default:
	}
}

// dispatchLoop hands jobs not yet given to a validator to a connected one:
// jobs accepted while no validator was connected wait here, durably. A job a
// validator has not acknowledged in time is given again, to the same
// validator. Reported pairs are passed on to their validators.
func (f *Facilitator) dispatchLoop(ctx context.Context) {
	t := time.NewTicker(f.cfg.DispatchEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.dispatch:
		case <-t.C:
		}
		f.dispatchPass(ctx, time.Now())
		f.forwardPairs(ctx)
		f.forwardCheats(ctx)
	}
}

// dispatchPass gives every job that is due to a validator.
func (f *Facilitator) dispatchPass(ctx context.Context, now time.Time) {
	jobs, err := f.cfg.Store.Dispatchable(ctx, now.Add(-f.cfg.Redispatch))
	if err != nil {
		if ctx.Err() == nil {
			f.log.Error("dispatch: list jobs", "err", err)
		}
		return
	}
	for _, j := range jobs {
		if due(j, now, f.cfg.Redispatch) {
			f.send(ctx, j)
		}
	}
}

// due reports whether a job should be given to a validator now: it was
// never given, or the validator has not acknowledged it within redispatch.
func due(j store.JobRecord, now time.Time, redispatch time.Duration) bool {
	if j.Status != protocol.StatusSent {
		return false
	}
	return j.ValidatorHotkey == "" || now.Sub(j.UpdatedAt) > redispatch
}

// target is the validator a job may go to: the one it was given before (it
// ignores a job it has, so the job never runs twice), else the one the client
// named, else "" for any.
func target(j store.JobRecord) string {
	if j.ValidatorHotkey != "" {
		return j.ValidatorHotkey
	}
	return j.Spec.TargetValidatorHotkey
}

// pick returns the session of the validator hotkey, or of a random
// connected validator when hotkey is "", or nil.
func (f *Facilitator) pick(hotkey string) *session {
	f.mu.Lock()
	defer f.mu.Unlock()
	if hotkey != "" {
		return f.validators[hotkey]
	}
	all := make([]*session, 0, len(f.validators))
	for _, v := range f.validators {
		all = append(all, v)
	}
	if len(all) == 0 {
		return nil
	}
	return all[rand.IntN(len(all))]
}

// send gives a job to its validator, claiming it first: a job another
// replica (or an earlier pass) gave meanwhile is left alone.
func (f *Facilitator) send(ctx context.Context, j store.JobRecord) {
	vs := f.pick(target(j))
	if vs == nil {
		return
	}
	retry := j.ValidatorHotkey != ""
	won, err := f.cfg.Store.ClaimJob(ctx, j, vs.hotkey)
	if err != nil {
		if ctx.Err() == nil {
			f.metrics.Dispatch("claim_failed", retry)
			f.log.Error("dispatch: claim", "job", j.UUID, "err", err)
		}
		return
	}
	if !won {
		f.metrics.Dispatch("claimed_elsewhere", retry)
		return
	}
	sg := j.Signature
	if err := vs.send(ctx, &protocol.V2JobRequest{UUID: j.UUID, JobSpec: j.Spec, Signature: &sg}); err != nil {
		f.metrics.Dispatch("send_failed", retry)
		f.log.Warn("dispatch: send failed; will retry", "job", j.UUID, "err", err)
		if j.ValidatorHotkey == "" { // never reached a validator: any may have it
			f.cfg.Store.SetAssignment(ctx, j.UUID, "", "")
		}
		return
	}
	f.metrics.Dispatch("sent", retry)
	if !retry {
		f.metrics.Stage("queue", time.Since(j.CreatedAt))
	}
	f.log.Info("job sent to validator", "job", j.UUID, "validator", vs.hotkey)
}

// sessions returns the connected validators that speak capability ("":
// all).
func (f *Facilitator) sessions(capability string) []*session {
	f.mu.Lock()
	defer f.mu.Unlock()
	all := make([]*session, 0, len(f.validators))
	for _, vs := range f.validators {
		if capability == "" || vs.has(capability) {
			all = append(all, vs)
		}
	}
	return all
}

// forwardCheats passes clients' cheat reports on to the validators of
// their jobs: always to an upstream validator (it takes V0JobCheated), to a
// horde one that speaks it. Reports wait here while a validator is away.
func (f *Facilitator) forwardCheats(ctx context.Context) {
	for _, vs := range f.sessions("") {
		if len(vs.caps) > 0 && !vs.has(protocol.CapJobCheated) {
			continue
		}
		reps, ids, err := f.cfg.Store.UnforwardedCheatReports(ctx, vs.hotkey, 100)
		if err != nil {
			if ctx.Err() == nil {
				f.log.Error("forward cheat reports", "err", err)
			}
			return
		}
		for i, r := range reps {
			sg := r.Signature
			m := &protocol.V0JobCheated{JobUUID: r.JobUUID, TrustedJobUUID: r.TrustedJobUUID, Details: r.Details, Signature: &sg}
			if err := vs.send(ctx, m); err != nil {
				break
			}
			if err := f.cfg.Store.MarkCheatForwarded(ctx, ids[i]); err != nil {
				if ctx.Err() == nil {
					f.log.Error("forward cheat reports: mark forwarded", "err", err)
				}
				break
			}
		}
	}
}

// forwardPairs passes reported streaming pairs on to the validators of their
// jobs that speak it; pairs wait here while a validator is away. A session
// with CapStreamPairAcks gets each pair once, with its id, and the pair is
// delivered only when the validator acknowledges it (V0StreamPairAck): a
// pair sent to a validator that went away is sent again on its next
// session. Without acks, a pair counts as delivered once sent.
func (f *Facilitator) forwardPairs(ctx context.Context) {
	for _, vs := range f.sessions(protocol.CapStreamPairs) {
		acks := vs.has(protocol.CapStreamPairAcks)
		pairs, ids, err := f.cfg.Store.UnforwardedPairs(ctx, vs.hotkey, 100)
		if err != nil {
			if ctx.Err() == nil {
				f.log.Error("forward pairs", "err", err)
			}
			return
		}
		for i, p := range pairs {
			m := &protocol.V0StreamPairReport{UUID: p.JobUUID, Image: p.Image, MinerHotkey: p.MinerHotkey, Proof: p.Proof, Pair: p.Pair}
			if acks {
				if !vs.pairSent(ids[i]) {
					continue // sent on this session; its ack is on the way
				}
				m.ID = ids[i]
			}
			if err := vs.send(ctx, m); err != nil {
				break
			}
			if acks {
				continue
			}
			if err := f.cfg.Store.MarkForwarded(ctx, vs.hotkey, ids[i]); err != nil {
				if ctx.Err() == nil {
					f.log.Error("forward pairs: mark forwarded", "err", err)
				}
				break
			}
		}
	}
}

// pairAcked records a validator's acknowledgement of a pair: it is delivered.
func (f *Facilitator) pairAcked(ctx context.Context, s *session, m *protocol.V0StreamPairAck) error {
	if m.Error != "" {
		f.log.Warn("validator refused a reported pair", "validator", s.hotkey, "pair", m.ID, "err", m.Error)
	}
	if err := f.cfg.Store.MarkForwarded(ctx, s.hotkey, m.ID); err != nil {
		return fmt.Errorf("mark pair %d delivered: %w", m.ID, err)
	}
	s.pairDone(m.ID)
	return nil
}
