package backend

import (
	"path/filepath"
	"testing"

	"github.com/horde-compute/horde/internal/store/postgres"
	"github.com/horde-compute/horde/internal/store/postgres/pgtest"
	"github.com/horde-compute/horde/internal/store/sqlite"
)

func TestOpenPicksTheBackend(t *testing.T) {
	lite, err := Open(t.Context(), filepath.Join(t.TempDir(), "x.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer lite.Close()
	if _, ok := lite.(*sqlite.DB); !ok {
		t.Errorf("a path opened %T, want SQLite", lite)
	}
	pg, err := Open(t.Context(), pgtest.Schema(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	if _, ok := pg.(*postgres.DB); !ok {
		t.Errorf("a postgres:// URL opened %T, want PostgreSQL", pg)
	}
	if _, err := Open(t.Context(), "postgres://nobody@127.0.0.1:1/none?connect_timeout=1"); err == nil {
		t.Errorf("a server that is not there opened")
	}
}
