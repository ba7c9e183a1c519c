package postgres

import (
	"testing"

	"github.com/horde-compute/horde/internal/store/postgres/pgtest"
	"github.com/horde-compute/horde/internal/store/storetest"
)

func open(t *testing.T) *DB {
	t.Helper()
	db, err := Open(t.Context(), pgtest.Schema(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store { return open(t) })
}

func TestReopenKeepsData(t *testing.T) {
	url := pgtest.Schema(t)
	db, err := Open(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.db.Exec(`INSERT INTO jobs (uuid, spec, signature, signature_value, signatory, status, created_at, updated_at) VALUES ('x','{}','{}','','a','sent',0,0)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db, err = Open(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Job(t.Context(), "x"); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkIntake(b *testing.B) {
	storetest.BenchIntake(b, func(b *testing.B) storetest.Store {
		db, err := Open(b.Context(), pgtest.Schema(b))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { db.Close() })
		return db
	})
}

// BenchmarkIntakeAsyncCommit is BenchmarkIntake with synchronous_commit=off:
// a commit does not wait for its WAL to reach the disk, as SQLite's
// synchronous=NORMAL in WAL mode does not; a crash may lose the last
// commits, never the database.
func BenchmarkIntakeAsyncCommit(b *testing.B) {
	storetest.BenchIntake(b, func(b *testing.B) storetest.Store {
		db, err := Open(b.Context(), pgtest.Schema(b)+"&synchronous_commit=off")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { db.Close() })
		return db
	})
}
