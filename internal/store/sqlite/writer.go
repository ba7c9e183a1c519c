package sqlite

import (
	"context"
	"errors"
	"sync"
)

// This file: group commit. The busy writes (jobs, statuses, receipts, the
// outbox) of concurrent callers are run by one goroutine in one
// transaction, each inside a savepoint of its own, and committed together:
// a commit is the costly part of a small write in SQLite (the WAL frames of
// every page it dirtied, written one by one, and the WAL index), and
// writers that share a commit share the pages they dirty. Batches form by
// themselves: the writes that arrive while a batch commits make the next
// one; nothing waits on a timer. Durability is a single write's: a caller
// returns only after the commit that holds its write (or with the write's
// own error, its savepoint rolled back and the others kept).

// maxBatch bounds the writes committed together, and so the time the one
// connection is held from readers.
const maxBatch = 128

// errClosed is returned for writes made after Close.
var errClosed = errors.New("sqlite store: closed")

// writeOp is one caller's write, run inside the batch's transaction.
type writeOp struct {
	ctx  context.Context
	fn   func(ctx context.Context, tx *stmtTx) error
	done chan error
}

// writer owns the goroutine that runs batches.
type writer struct {
	db     *stmtDB
	ops    chan *writeOp
	closed chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
}

func newWriter(db *stmtDB) *writer {
	w := &writer{db: db, ops: make(chan *writeOp), closed: make(chan struct{})}
	w.wg.Go(w.loop)
	return w
}

// close stops the writer after the batch it runs, and waits for it.
func (w *writer) close() {
	w.once.Do(func() { close(w.closed) })
	w.wg.Wait()
}

// write runs fn in a transaction, with other callers' writes, and returns
// once that transaction committed (fn's error, or the commit's).
func (w *writer) write(ctx context.Context, fn func(ctx context.Context, tx *stmtTx) error) error {
	op := &writeOp{ctx: ctx, fn: fn, done: make(chan error, 1)}
	select {
	case w.ops <- op: // taken: it runs, and its answer comes
	case <-ctx.Done():
		return ctx.Err()
	case <-w.closed:
		return errClosed
	}
	return <-op.done
}

func (w *writer) loop() {
	batch := make([]*writeOp, 0, maxBatch)
	for {
		select {
		case op := <-w.ops:
			batch = append(batch[:0], op)
		case <-w.closed:
			return
		}
	more:
		for len(batch) < maxBatch {
			select {
			case op := <-w.ops:
				batch = append(batch, op)
			default:
				break more
			}
		}
		w.run(batch)
		clear(batch)
	}
}

// Savepoint statements, prepared when the store opens.
const (
	qSavepoint  = `SAVEPOINT w`
	qRollbackTo = `ROLLBACK TO w`
	qRelease    = `RELEASE w`
)

// run commits a batch. A write that fails is rolled back to its savepoint
// and answered with its error; the others commit. One write alone needs no
// savepoint: its failure rolls the transaction back.
func (w *writer) run(batch []*writeOp) {
	errs := make([]error, len(batch))
	answer := func(commitErr error) {
		for i, op := range batch {
			if errs[i] == nil {
				errs[i] = commitErr
			}
			op.done <- errs[i]
		}
	}
	bg := context.Background() // the batch is not one caller's to cancel
	tx, err := w.db.BeginTx(bg, nil)
	if err != nil {
		answer(err)
		return
	}
	if len(batch) == 1 {
		op := batch[0]
		if errs[0] = op.ctx.Err(); errs[0] == nil {
			errs[0] = op.fn(context.WithoutCancel(op.ctx), tx)
		}
		if errs[0] != nil {
			tx.Rollback()
			answer(nil)
			return
		}
		answer(tx.Commit())
		return
	}
	for i, op := range batch {
		if errs[i] = op.ctx.Err(); errs[i] != nil {
			continue // given up on before it ran
		}
		if _, err := tx.ExecContext(bg, qSavepoint); err != nil {
			errs[i] = err
			continue
		}
		errs[i] = op.fn(context.WithoutCancel(op.ctx), tx)
		if errs[i] != nil {
			if _, err := tx.ExecContext(bg, qRollbackTo); err != nil {
				// The transaction cannot be trusted: none of it commits.
				tx.Rollback()
				answer(err)
				return
			}
		}
		if _, err := tx.ExecContext(bg, qRelease); err != nil {
			tx.Rollback()
			answer(err)
			return
		}
	}
	answer(tx.Commit())
}
