// Package pgtest is the one gate of the tests that need a PostgreSQL
// server. Such a test calls Schema (or URL) first. With
// HORDE_POSTGRES_TESTS=off it skips and says why; otherwise a missing
// HORDE_TEST_POSTGRES, or a server that does not answer, fails it with a
// clear message: a machine without PostgreSQL never passes those tests
// silently. `eval "$(bash .ci/postgres)"` starts a throwaway server and sets
// HORDE_TEST_POSTGRES.
package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
)

// Env is the environment variable that, set to "off", skips the tests that need PostgreSQL.
const Env = "HORDE_POSTGRES_TESTS"

// URLEnv names the database the tests use (each in schemas of its own).
const URLEnv = "HORDE_TEST_POSTGRES"

var (
	once sync.Once
	db   *sql.DB
	err  error
)

// URL returns $HORDE_TEST_POSTGRES, or skips the test if
// HORDE_POSTGRES_TESTS=off, or fails it if the variable is unset or the
// server does not answer.
func URL(t testing.TB) string {
	t.Helper()
	switch v := os.Getenv(Env); v {
	case "off":
		t.Skipf("%s=off: skipping a test that needs PostgreSQL", Env)
	case "", "on":
	default:
		t.Fatalf("%s=%q: want off (skip the tests that need PostgreSQL), on or unset", Env, v)
	}
	u := os.Getenv(URLEnv)
	if u == "" {
		t.Fatalf("this test needs PostgreSQL and %s is unset: run `eval \"$(bash .ci/postgres)\"` first\n(set %s=off to skip the tests that need PostgreSQL)", URLEnv, Env)
	}
	once.Do(func() {
		if db, err = sql.Open("pgx", u); err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = db.PingContext(ctx)
	})
	if err != nil {
		t.Fatalf("this test needs PostgreSQL, and %s=%s does not answer: %v\n(set %s=off to skip the tests that need PostgreSQL)", URLEnv, u, err, Env)
	}
	return u
}

// Schema creates an empty schema of the test's own, dropped when the test
// ends, and returns a URL of $HORDE_TEST_POSTGRES that works in it.
func Schema(t testing.TB) string {
	t.Helper()
	base := URL(t)
	b := make([]byte, 6)
	rand.Read(b)
	name := "t_" + hex.EncodeToString(b)
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, `CREATE SCHEMA `+name); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		if _, err := db.ExecContext(context.Background(), `DROP SCHEMA `+name+` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", name, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("%s: %v", URLEnv, err)
	}
	q := u.Query()
	q.Set("search_path", name)
	u.RawQuery = q.Encode()
	return u.String()
}
