package sqlite

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/protocol"
)

func openTest(t *testing.T) *DB {
	t.Helper()
	d, err := Open(t.Context(), filepath.Join(t.TempDir(), "w.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func job(id, sig string) store.JobRecord {
	return store.JobRecord{UUID: id, Signature: protocol.Signature{Signatory: "alice", Signature: sig}, Status: protocol.StatusSent,
		CreatedAt: time.Now().UTC()}
}

// TestBatchKeepsOthersWhenOneFails: writes committed together are each
// their own: one that fails halfway (a duplicate job, after its first
// statement would have run) is rolled back alone and answered with its
// error; the others commit and are answered with nil.
func TestBatchKeepsOthersWhenOneFails(t *testing.T) {
	d := openTest(t)
	ctx := t.Context()
	if err := d.CreateJob(ctx, job("dup", "s0")); err != nil {
		t.Fatal(err)
	}
	ops := []*writeOp{
		{ctx: ctx, fn: func(ctx context.Context, tx *stmtTx) error {
			_, err := tx.ExecContext(ctx, qPushOutbox, "first", 1)
			return err
		}},
		{ctx: ctx, fn: func(ctx context.Context, tx *stmtTx) error {
			// A write that did something, then failed: none of it stays.
			if _, err := tx.ExecContext(ctx, qPushOutbox, "half", 2); err != nil {
				return err
			}
			return errors.New("failed halfway")
		}},
		{ctx: ctx, fn: func(ctx context.Context, tx *stmtTx) error {
			_, err := tx.ExecContext(ctx, qPushOutbox, "third", 3)
			return err
		}},
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	ops = append(ops, &writeOp{ctx: cancelled, fn: func(ctx context.Context, tx *stmtTx) error {
		_, err := tx.ExecContext(ctx, qPushOutbox, "given up", 4)
		return err
	}})
	for _, op := range ops {
		op.done = make(chan error, 1)
	}
	d.w.run(ops)
	want := []string{"", "failed halfway", "", context.Canceled.Error()}
	for i, op := range ops {
		err := <-op.done
		if got := errString(err); got != want[i] {
			t.Errorf("op %d: %q, want %q", i, got, want[i])
		}
	}
	items, err := d.PeekOutbox(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, it := range items {
		got = append(got, string(it.Message))
	}
	if len(got) != 2 || got[0] != "first" || got[1] != "third" {
		t.Errorf("outbox = %q, want [first third]", got)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestConcurrentWrites: many writers at once each get their own answer,
// duplicates refused and the rest kept, whatever batches they fell in.
func TestConcurrentWrites(t *testing.T) {
	d := openTest(t)
	ctx := t.Context()
	const n = 64
	errs := make([]error, 2*n)
	var wg sync.WaitGroup
	for i := range n {
		// Two writers per uuid: one of each pair is a duplicate.
		for k := range 2 {
			wg.Go(func() {
				errs[2*i+k] = d.CreateJob(ctx, job(string(rune('A'+i)), string(rune('A'+i))+string(rune('0'+k))))
			})
		}
	}
	wg.Wait()
	for i := range n {
		a, b := errs[2*i], errs[2*i+1]
		refused := a
		if refused == nil {
			refused = b
		}
		if (a == nil) == (b == nil) || !errors.Is(refused, store.ErrDuplicate) {
			t.Errorf("job %d: %v and %v, want one nil and one duplicate", i, a, b)
		}
	}
	un, err := d.Unfinished(ctx)
	if err != nil || len(un) != n {
		t.Errorf("jobs kept = %d, %v; want %d", len(un), err, n)
	}
}

// TestWriteAfterClose is refused, not left waiting.
func TestWriteAfterClose(t *testing.T) {
	d, err := Open(t.Context(), filepath.Join(t.TempDir(), "w.db"))
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if err := d.PushOutbox(t.Context(), []byte("late")); !errors.Is(err, errClosed) {
		t.Errorf("write after close: %v", err)
	}
}
