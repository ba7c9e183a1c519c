// Package pgtest is the one gate of the tests that need a PostgreSQL
// server. Such a test calls Schema (or URL) first. With
// HORDE_POSTGRES_TESTS=off it skips and says why; otherwise a missing
// HORDE_TEST_POSTGRES, or a server that does not answer, fails it with a
// clear message: a machine without PostgreSQL never passes those tests
// silently. `eval "$(bash .ci/postgres)"` starts a throwaway server and sets
// HORDE_TEST_POSTGRES; with the variable unset, the server that script
// keeps in its directory ($HORDE_PG_DIR, default /tmp/horde-postgres-$UID)
// is used if it has one, so later steps of the same CI run find it too.
package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

// URL returns $HORDE_TEST_POSTGRES (or the server .ci/postgres keeps), or
// skips the test if HORDE_POSTGRES_TESTS=off, or fails it if there is none
// or the server does not answer.
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
		u = scriptServer()
	}
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
		t.Fatalf("this test needs PostgreSQL, and %s does not answer: %v\n(run `eval \"$(bash .ci/postgres)\"`, or set %s=off to skip the tests that need PostgreSQL)", u, err, Env)
	}
	return u
}

// scriptServer is the URL of the server .ci/postgres keeps, or "".
func scriptServer() string {
	dir := os.Getenv("HORDE_PG_DIR")
	if dir == "" {
		dir = fmt.Sprintf("/tmp/horde-postgres-%d", os.Getuid())
	}
	b, err := os.ReadFile(filepath.Join(dir, "port"))
	if err != nil {
		return ""
	}
	port, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return ""
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/horde?sslmode=disable", port)
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
