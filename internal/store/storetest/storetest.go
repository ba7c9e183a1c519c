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
}

// Run runs the suite against stores made by open (a fresh, empty one per call).
func Run(t *testing.T, open func(t *testing.T) Store) {
	t.Run("jobs", func(t *testing.T) { testJobs(t, open(t)) })
	t.Run("receipts", func(t *testing.T) { testReceipts(t, open(t)) })
	t.Run("outbox", func(t *testing.T) { testOutbox(t, open(t)) })
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
	got, err = s.ReceiptsSince(ctx, since, 10)
	if err != nil || len(got) != 1 {
		t.Errorf("since = %d, %v", len(got), err)
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
