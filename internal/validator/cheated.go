package validator

import (
	"context"
	"encoding/json"
	"time"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/protocol"
)

// CheatBlacklist is how long a miner reported cheating on a client's job
// gets no job (upstream's DYNAMIC_JOB_CHEATED_BLACKLIST_TIME_SECONDS).
const CheatBlacklist = 4 * time.Hour

// cheatReportKind marks the evidence of a cheat a client reported (not
// proved by a validation window).
const cheatReportKind = "client_report"

// cheatEvidence is what the validator keeps of a client's cheat report.
type cheatEvidence struct {
	Kind   string                 `json:"kind"`
	Report *protocol.V0JobCheated `json:"report"`
}

// cheated takes a client's report that a job's miner cheated, as upstream's
// validator does: the report must verify and come from the job's own client;
// the job must be this validator's, completed and not reported before.
// Then the miner is blacklisted for CheatBlacklist and the cheat kept: it
// zeroes the miner's score in the cycle that counts it, so the miner is not
// paid for the cycle's work, the cheated job included.
func (v *Validator) cheated(ctx context.Context, m *protocol.V0JobCheated) {
	log := v.log.With("job", m.JobUUID, "trusted_job", m.TrustedJobUUID)
	if err := protocol.VerifyJobCheated(m, time.Now(), v.cfg.MaxJobAge, time.Minute); err != nil {
		log.Warn("cheat report refused", "err", err)
		return
	}
	j, err := v.cfg.Store.Job(ctx, m.JobUUID)
	if err != nil {
		log.Warn("cheat report on a job this validator does not have", "err", err)
		return
	}
	miner := j.MinerHotkey
	if miner == "" { // the validator names the miner in the job's statuses
		hist, err := v.cfg.Store.History(ctx, m.JobUUID)
		if err != nil {
			log.Error("read the job's history", "err", err)
			return
		}
		for _, e := range hist {
			if e.Metadata != nil && e.Metadata.MinerHotkey != "" {
				miner = e.Metadata.MinerHotkey
			}
		}
	}
	switch {
	case j.Signature.Signatory != m.Signature.Signatory:
		log.Warn("cheat report refused: not signed by the job's client", "signatory", m.Signature.Signatory)
		return
	case j.Status != protocol.StatusCompleted:
		log.Info("cheat report on a job that did not complete", "status", j.Status)
		return
	case miner == "":
		log.Warn("cheat report on a job without a miner")
		return
	}
	cheats, err := v.cfg.Store.Cheats(ctx, j.CreatedAt)
	if err != nil {
		log.Error("read cheats", "err", err)
		return
	}
	for _, c := range cheats {
		if c.JobUUID == m.JobUUID {
			log.Info("job already marked cheated")
			return
		}
	}
	ev, err := json.Marshal(cheatEvidence{Kind: cheatReportKind, Report: m})
	if err != nil {
		log.Error("encode the cheat report", "err", err)
		return
	}
	now := time.Now().UTC()
	w := store.Window{Image: j.Spec.DockerImage, Body: ev, At: now}
	if _, err := v.cfg.Store.PutWindow(context.WithoutCancel(ctx), w, []store.Cheat{{Miner: miner, JobUUID: m.JobUUID, Evidence: ev, At: now}}); err != nil {
		log.Error("keep the cheat", "err", err)
		return
	}
	v.pool.Blacklist(miner, now.Add(CheatBlacklist))
	log.Warn("miner reported cheating: blacklisted and not paid this cycle", "miner", miner, "until", now.Add(CheatBlacklist))
}

// restoreBlacklist blacklists again, after a restart, the miners reported
// cheating within CheatBlacklist.
func (v *Validator) restoreBlacklist(ctx context.Context) {
	cheats, err := v.cfg.Store.Cheats(ctx, time.Now().Add(-CheatBlacklist))
	if err != nil {
		v.log.Error("read cheats", "err", err)
		return
	}
	for _, c := range cheats {
		var ev cheatEvidence
		if json.Unmarshal(c.Evidence, &ev) == nil && ev.Kind == cheatReportKind {
			v.pool.Blacklist(c.Miner, c.At.Add(CheatBlacklist))
		}
	}
}
