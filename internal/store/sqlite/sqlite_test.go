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
