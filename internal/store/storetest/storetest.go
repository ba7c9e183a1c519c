// Package storetest is the conformance suite every store backend passes.
package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
)

// Store is what a backend offers.
type Store interface {
	store.Jobs
	store.Receipts
	store.Outbox
	store.Scores
	store.Reports
	store.Pairs
	store.Validations
}

// Run runs the suite against stores made by open (a fresh, empty one per call).
func Run(t *testing.T, open func(t *testing.T) Store) {
	t.Run("jobs", func(t *testing.T) { testJobs(t, open(t)) })
	t.Run("receipts", func(t *testing.T) { testReceipts(t, open(t)) })
	t.Run("outbox", func(t *testing.T) { testOutbox(t, open(t)) })
	t.Run("scores", func(t *testing.T) { testScores(t, open(t)) })
	t.Run("pairs", func(t *testing.T) { testPairs(t, open(t)) })
	t.Run("validations", func(t *testing.T) { testValidations(t, open(t)) })
}

func testJobs(t *testing.T, s Store) {
	ctx := t.Context()
	now := time.Now().UTC().Truncate(time.Microsecond)
	j := store.JobRecord{UUID: "j1", Spec: protocol.JobSpec{ExecutorClass: "c", DockerImage: "i", ExecutionTimeLimit: 5},
		Signature: protocol.Signature{Signatory: "alice", Signature: "s1"}, Status: protocol.StatusSent, CreatedAt: now}
	if err := s.CreateJob(ctx, j); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateJob(ctx, j); !errors.Is(err, store.ErrDuplicate) {
		t.Errorf("duplicate uuid: %v", err)
	}
	replay := j
	replay.UUID = "j2"
	if err := s.CreateJob(ctx, replay); !errors.Is(err, store.ErrDuplicate) {
		t.Errorf("replayed signature: %v", err)
	}
	if _, err := s.Job(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("missing job: %v", err)
	}
	for _, st := range []protocol.JobStatus{protocol.StatusAccepted, protocol.StatusFailed, protocol.StatusCompleted} {
		if err := s.AddStatus(ctx, "j1", protocol.StatusEntry{Status: st, CreatedAt: now,
			Metadata: &protocol.StatusMetadata{Comment: string(st)}}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Job(ctx, "j1")
	if err != nil || got.Status != protocol.StatusFailed || got.Spec.DockerImage != "i" {
		t.Errorf("job = %+v, %v; a terminal status must stick", got, err)
	}
	h, err := s.History(ctx, "j1")
	if err != nil || len(h) != 4 || h[1].Metadata.Comment != "accepted" {
		t.Errorf("history = %+v, %v", h, err)
	}
	s.CreateJob(ctx, store.JobRecord{UUID: "j3", Signature: protocol.Signature{Signatory: "bob", Signature: "s3"}, Status: protocol.StatusSent, CreatedAt: now.Add(time.Second)})
	list, total, err := s.ListJobs(ctx, "alice", 0, 10)
	if err != nil || total != 1 || len(list) != 1 {
		t.Errorf("list alice = %d/%d, %v", len(list), total, err)
	}
	un, err := s.Unfinished(ctx)
	if err != nil || len(un) != 1 || un[0].UUID != "j3" {
		t.Errorf("unfinished = %+v, %v", un, err)
	}
}

func testReceipts(t *testing.T, s Store) {
	ctx := t.Context()
	p := &receipt.StartedPayload{Base: receipt.Base{JobUUID: "j1", MinerHotkey: "m", ValidatorHotkey: "v", Timestamp: receipt.At(time.Now())}, ExecutorClass: "c", TTL: 5}
	r, err := receipt.New(p, "0xaa")
	if err != nil {
		t.Fatal(err)
	}
	since := time.Now().Add(-time.Second)
	if err := s.PutReceipt(ctx, r); err != nil {
		t.Fatal(err)
	}
	r.MinerSignature = "0xbb"
	if err := s.PutReceipt(ctx, r); err != nil {
		t.Fatal(err)
	}
	r.MinerSignature = "0xcc"
	s.PutReceipt(ctx, r) // a second countersignature does not overwrite the first
	got, err := s.ReceiptsForJob(ctx, "j1")
	if err != nil || len(got) != 1 || got[0].MinerSignature != "0xbb" {
		t.Fatalf("receipts = %+v, %v", got, err)
	}
	// The same job offered to another miner has receipts of its own.
	p2 := *p
	p2.MinerHotkey = "m2"
	r2, _ := receipt.New(&p2, "0xdd")
	if err := s.PutReceipt(ctx, r2); err != nil {
		t.Fatal(err)
	}
	if both, _ := s.ReceiptsForJob(ctx, "j1"); len(both) != 2 {
		t.Errorf("receipts of a job with two miners = %d, want 2", len(both))
	}
	stored, err := s.ReceiptsStored(ctx, since, time.Now().Add(time.Second))
	if err != nil || len(stored) != 2 {
		t.Errorf("stored = %d, %v", len(stored), err)
	}
	page, err := s.ReceiptsAfter(ctx, 0, 1)
	if err != nil || len(page) != 1 || page[0].ID == 0 {
		t.Fatalf("after 0 = %+v, %v", page, err)
	}
	if rest, _ := s.ReceiptsAfter(ctx, page[0].ID, 10); len(rest) != 1 {
		t.Errorf("after last = %d", len(rest))
	}
}

func testOutbox(t *testing.T, s Store) {
	ctx := t.Context()
	for _, m := range []string{"a", "b", "c"} {
		if err := s.PushOutbox(ctx, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	items, err := s.PeekOutbox(ctx, 2)
	if err != nil || len(items) != 2 || string(items[0].Message) != "a" || string(items[1].Message) != "b" {
		t.Fatalf("peek = %+v, %v", items, err)
	}
	if err := s.AckOutbox(ctx, items[0].ID); err != nil {
		t.Fatal(err)
	}
	items, _ = s.PeekOutbox(ctx, 10)
	if len(items) != 2 || string(items[0].Message) != "b" {
		t.Errorf("after ack = %+v", items)
	}
}

func testScores(t *testing.T, s Store) {
	ctx := t.Context()
	now := time.Now().UTC().Truncate(time.Microsecond)
	for i, passed := range []bool{true, false} {
		r := store.SyntheticResult{Cycle: 7, Miner: "m", Class: "c", JobUUID: string(rune('a' + i)), Generator: "g", Passed: passed, Reason: "r", TookMS: 5, ExpectedMS: 9, At: now}
		if err := s.PutSyntheticResult(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	rs, err := s.SyntheticResults(ctx, 7)
	if err != nil || len(rs) != 2 || !rs[0].Passed || rs[1].Passed || !rs[0].At.Equal(now) {
		t.Errorf("results = %+v, %v", rs, err)
	}
	for cycle := int64(1); cycle <= 3; cycle++ {
		if err := s.PutScores(ctx, []store.MinerScore{{Cycle: cycle, Miner: "a", Score: 1, Weight: 0.25, Details: []byte(`{}`), At: now},
			{Cycle: cycle, Miner: "b", Score: 3, Weight: 0.75, Details: []byte(`{"x":1}`), At: now}}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.LatestScores(ctx, 2)
	if err != nil || len(got) != 4 || got[0].Cycle != 3 || got[0].Miner != "b" || got[3].Cycle != 2 {
		t.Errorf("latest = %+v, %v", got, err)
	}
	if err := s.PutReport(ctx, "v", []byte(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	reps, err := s.Reports(ctx)
	if err != nil || string(reps["v"]) != `{"a":1}` {
		t.Errorf("reports = %v, %v", reps, err)
	}
}

func testPairs(t *testing.T, s Store) {
	ctx := t.Context()
	for i, img := range []string{"a", "b", "a"} {
		p := store.PairRecord{JobUUID: "j", RequestID: string(rune('x' + i)), Image: img, MinerHotkey: "m", ValidatorHotkey: "v", At: time.Now(),
			Pair: protocol.StreamPair{Path: "/p", RequestB64: "cQ=="}, Proof: protocol.StreamingServerDetails{MinerSignature: "0x1"}}
		if err := s.PutPair(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutPair(ctx, store.PairRecord{JobUUID: "j", RequestID: "x", Image: "a"}); !errors.Is(err, store.ErrDuplicate) {
		t.Errorf("duplicate request id: %v", err)
	}
	ps, ids, err := s.PairsForImage(ctx, "a", 0, 10)
	if err != nil || len(ps) != 2 || ps[0].RequestID != "x" || ps[1].Pair.Path != "/p" {
		t.Fatalf("pairs = %+v %v", ps, err)
	}
	if rest, _, _ := s.PairsForImage(ctx, "a", ids[0], 10); len(rest) != 1 || rest[0].Proof.MinerSignature != "0x1" {
		t.Errorf("after first = %+v", rest)
	}
	pending, pids, err := s.UnforwardedPairs(ctx, "v", 10)
	if err != nil || len(pending) != 3 {
		t.Fatalf("unforwarded = %d, %v", len(pending), err)
	}
	s.MarkForwarded(ctx, pids[0])
	if pending, _, _ = s.UnforwardedPairs(ctx, "v", 10); len(pending) != 2 {
		t.Errorf("after forwarding one: %d", len(pending))
	}
}

func testValidations(t *testing.T, s Store) {
	ctx := t.Context()
	before := time.Now().Add(-time.Second)
	if last, err := s.LastPair(ctx, "img"); err != nil || last != 0 {
		t.Fatalf("last pair of nothing = %d, %v", last, err)
	}
	id, err := s.PutWindow(ctx, store.Window{Image: "img", LastPair: 7, Body: []byte(`{"checked":3}`), At: time.Now()},
		[]store.Cheat{{Miner: "m", JobUUID: "j", RequestID: "r1", ReplaySHA256: "ab12", Evidence: []byte(`{"pair":1}`), At: time.Now()},
			{Miner: "m2", JobUUID: "j2", Evidence: []byte(`{"pair":2}`), At: time.Now()}})
	if err != nil || id == 0 {
		t.Fatal(err)
	}
	if last, _ := s.LastPair(ctx, "img"); last != 7 {
		t.Errorf("last pair = %d", last)
	}
	ws, err := s.Windows(ctx, 5)
	if err != nil || len(ws) != 1 || string(ws[0].Body) != `{"checked":3}` {
		t.Errorf("windows = %+v %v", ws, err)
	}
	cs, err := s.Cheats(ctx, before)
	if err != nil || len(cs) != 2 || cs[0].Window != id || cs[0].Miner != "m" || cs[0].RequestID != "r1" || cs[0].ReplaySHA256 != "ab12" ||
		string(cs[0].Evidence) != `{"pair":1}` || cs[1].RequestID != "" || cs[1].ReplaySHA256 != "" {
		t.Errorf("cheats = %+v %v", cs, err)
	}
}
