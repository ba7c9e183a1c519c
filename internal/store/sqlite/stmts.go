package sqlite

import (
	"context"
	"database/sql"
	"sync"
)

// stmtDB is the database with its statements prepared once and kept: SQLite
// otherwise parses and plans every query on every call, which is a tenth of
// a busy horde's CPU. Queries are the package's own constants, so the cache
// is bounded.
type stmtDB struct {
	*sql.DB
	mu    sync.Mutex
	stmts map[string]*sql.Stmt
}

// stmt returns q prepared, preparing it the first time. It must not be
// called inside a transaction (the one connection is the transaction's).
func (d *stmtDB) stmt(ctx context.Context, q string) (*sql.Stmt, error) {
	d.mu.Lock()
	s := d.stmts[q]
	d.mu.Unlock()
	if s != nil {
		return s, nil
	}
	s, err := d.DB.PrepareContext(context.WithoutCancel(ctx), q)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if old := d.stmts[q]; old != nil {
		s.Close()
		return old, nil
	}
	d.stmts[q] = s
	return s, nil
}

// cached returns q if it was prepared already, else nil.
func (d *stmtDB) cached(q string) *sql.Stmt {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stmts[q]
}

func (d *stmtDB) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	s, err := d.stmt(ctx, q)
	if err != nil {
		return nil, err
	}
	return s.ExecContext(ctx, args...)
}

func (d *stmtDB) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	s, err := d.stmt(ctx, q)
	if err != nil {
		return nil, err
	}
	return s.QueryContext(ctx, args...)
}

func (d *stmtDB) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	s, err := d.stmt(ctx, q)
	if err != nil {
		return d.DB.QueryRowContext(ctx, q, args...) // the same error, as a Row
	}
	return s.QueryRowContext(ctx, args...)
}

func (d *stmtDB) BeginTx(ctx context.Context, opts *sql.TxOptions) (*stmtTx, error) {
	tx, err := d.DB.BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	return &stmtTx{Tx: tx, d: d}, nil
}

// Close closes the statements, then the database.
func (d *stmtDB) Close() error {
	d.mu.Lock()
	for q, s := range d.stmts {
		s.Close()
		delete(d.stmts, q)
	}
	d.mu.Unlock()
	return d.DB.Close()
}

// stmtTx is a transaction that uses the statements prepared already (see
// txQueries); others it runs unprepared.
type stmtTx struct {
	*sql.Tx
	d *stmtDB
}

func (t *stmtTx) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	if s := t.d.cached(q); s != nil {
		return t.Tx.StmtContext(ctx, s).ExecContext(ctx, args...)
	}
	return t.Tx.ExecContext(ctx, q, args...)
}

func (t *stmtTx) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	if s := t.d.cached(q); s != nil {
		return t.Tx.StmtContext(ctx, s).QueryContext(ctx, args...)
	}
	return t.Tx.QueryContext(ctx, q, args...)
}

func (t *stmtTx) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	if s := t.d.cached(q); s != nil {
		return t.Tx.StmtContext(ctx, s).QueryRowContext(ctx, args...)
	}
	return t.Tx.QueryRowContext(ctx, q, args...)
}
