// Package backend opens the store a --db value names: a PostgreSQL
// database for a postgres:// (or postgresql://) URL, else a SQLite file at
// that path. Every role opens its store here, so each takes both.
package backend

import (
	"context"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/store/postgres"
	"github.com/horde-compute/horde/internal/store/sqlite"
)

// Store is every store a role may keep, and Close.
type Store interface {
	store.Jobs
	store.Receipts
	store.Outbox
	store.Scores
	store.Reports
	store.Pairs
	store.Validations
	store.CheatReports
	store.Ledger
	store.Excuses
	Close() error
}

var (
	_ Store = (*sqlite.DB)(nil)
	_ Store = (*postgres.DB)(nil)
)

// Open opens the store named by db: PostgreSQL for a URL, SQLite for a path.
func Open(ctx context.Context, db string) (Store, error) {
	if postgres.IsURL(db) {
		return postgres.Open(ctx, db)
	}
	return sqlite.Open(ctx, db)
}
