package sqlite

import (
	"path/filepath"
	"testing"

	"github.com/horde-compute/horde/internal/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store {
		db, err := Open(t.Context(), filepath.Join(t.TempDir(), "horde.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	})
}

func TestReopenKeepsData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "horde.db")
	db, err := Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	db.db.Exec(`INSERT INTO jobs (uuid, spec, signature, signature_value, signatory, status, created_at, updated_at) VALUES ('x','{}','{}','','a','sent',0,0)`)
	db.Close()
	db, err = Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Job(t.Context(), "x"); err != nil {
		t.Fatal(err)
	}
}

// Upgrading to the ledger (0008) does not count again what the scoring
// before it counted: finished receipts stored before the last scored cycle
// are marked counted; later ones wait for the next cycle.
func TestLedgerMigrationKeepsPastCycles(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "horde.db")
	db, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	// Back to the schema before 0008, with a scored cycle at t=2000 and
	// finished receipts stored before and after it.
	for _, q := range []string{
		`DROP TABLE counted`, `DROP INDEX receipts_uncounted`, `ALTER TABLE receipts DROP COLUMN counted_cycle`,
		`DELETE FROM schema_migrations WHERE version = '0008_counted'`,
		`INSERT INTO scores (cycle, miner, score, weight, details, at) VALUES (1, 'm', 1, 1, '{}', 2000)`,
		`INSERT INTO receipts (job_uuid, miner_hotkey, receipt_type, payload, validator_signature, stored_at) VALUES
			('old', 'm', 'JobFinishedReceipt', '{"job_uuid":"old"}', '0x', 1000),
			('new', 'm', 'JobFinishedReceipt', '{"job_uuid":"new"}', '0x', 3000),
			('new', 'm', 'JobStartedReceipt', '{"job_uuid":"new"}', '0x', 500)`,
	} {
		if _, err := db.db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()
	if db, err = Open(ctx, path); err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	work, err := db.Uncounted(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(work) != 1 || string(work[0].Finished.Payload) != `{"job_uuid":"new"}` || work[0].Started == nil {
		t.Errorf("uncounted after the upgrade = %+v, want the job stored after the last cycle", work)
	}
}

func BenchmarkIntake(b *testing.B) {
	storetest.BenchIntake(b, func(b *testing.B) storetest.Store {
		db, err := Open(b.Context(), filepath.Join(b.TempDir(), "horde.db"))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { db.Close() })
		return db
	})
}
