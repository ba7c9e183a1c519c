package cli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/internal/facilitator"
	"github.com/horde-compute/horde/internal/store/sqlite"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
	sr "github.com/horde-compute/horde/streamreceipt"
)

// These tests need no Docker: a real facilitator runs in-process over a
// SQLite file, with no validator; jobs wait there, and can be cancelled.

// facilitatorEnv is a running facilitator and a client wallet, as the
// environment variables a user would set.
type facilitatorEnv struct {
	env    map[string]string
	client *client.Client
}

func startFacilitator(t *testing.T) *facilitatorEnv {
	t.Helper()
	db, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "facilitator.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	f, err := facilitator.New(facilitator.Config{Store: db, AllowValidator: func(string) bool { return false }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f.Handler())
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }() // owned: waited for below
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("facilitator: %v", err)
		}
	})
	wallets := t.TempDir()
	k, phrase, err := sig.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if err := sig.WriteKeyfile(sig.HotkeyPath(wallets, "client", "default"), k, phrase); err != nil {
		t.Fatal(err)
	}
	return &facilitatorEnv{client: client.New(srv.URL, k), env: map[string]string{"HORDE_FACILITATOR": srv.URL,
		"HORDE_WALLET_PATH": wallets, "HORDE_WALLET": "client", "HORDE_STATE_DIR": t.TempDir()}}
}

func (fe *facilitatorEnv) create(t *testing.T) *protocol.Job {
	t.Helper()
	j, err := fe.client.CreateJob(t.Context(), &protocol.JobSpec{ExecutorClass: protocol.ClassTest, DockerImage: "horde/job:dev",
		Args: []string{"echo", "hi"}, ExecutionTimeLimit: 30})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func TestParse(t *testing.T) {
	tests := []struct {
		args  []string
		pos   []string
		json  bool
		data  string
		image string
	}{
		{args: []string{"ID", "--json"}, pos: []string{"ID"}, json: true},
		{args: []string{"--json", "ID"}, pos: []string{"ID"}, json: true},
		{args: []string{"A", "--data", "x", "B"}, pos: []string{"A", "B"}, data: "x"},
		{args: []string{"--image", "i", "--", "echo", "--json"}, pos: []string{"echo", "--json"}, image: "i"},
		{args: []string{"--image", "i", "echo", "hi", "--json"}, pos: []string{"echo", "hi"}, image: "i", json: true},
		{args: []string{"--data", "--", "ID"}, pos: []string{"ID"}, data: "--"},
		{args: []string{"--data=--", "--", "-x"}, pos: []string{"-x"}, data: "--"},
		{args: []string{"-json", "ID", "-", "--"}, pos: []string{"ID", "-"}, json: true},
		{args: []string{"--json=false", "ID"}, pos: []string{"ID"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			e := &env{ctx: t.Context(), stdout: new(bytes.Buffer), stderr: new(bytes.Buffer)}
			fs := e.flags("test")
			j, d, im := fs.Bool("json", false, ""), fs.String("data", "", ""), fs.String("image", "", "")
			pos, err := e.parse(fs, tt.args)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.pos, pos); diff != "" {
				t.Errorf("positional (-want +got):\n%s", diff)
			}
			if *j != tt.json || *d != tt.data || *im != tt.image {
				t.Errorf("json %v data %q image %q", *j, *d, *im)
			}
		})
	}
}

// TestFlagsAfterArguments runs commands as users type them, flags last.
func TestFlagsAfterArguments(t *testing.T) {
	fe := startFacilitator(t)
	waiting, toCancel := fe.create(t), fe.create(t)
	wallets := fe.env["HORDE_WALLET_PATH"]
	tests := []struct {
		args []string
		want string // in stdout
	}{
		{[]string{"job", "status", waiting.UUID, "--json"}, `"uuid":"` + waiting.UUID + `"`},
		{[]string{"job", "status", "--json", waiting.UUID}, `"uuid":"` + waiting.UUID + `"`},
		{[]string{"job", "status", waiting.UUID, "--wallet", "client", "--json"}, `"status":"sent"`},
		{[]string{"job", "list", "--json", "--limit", "1"}, `"count":2`},
		{[]string{"job", "cancel", toCancel.UUID, "--wallet-path", wallets}, "cancelled"},
		{[]string{"stream", "receipts", waiting.UUID, "--json"}, "no receipts kept"},
		{[]string{"keys", "show", "--wallet", "client", "--json"}, `"ss58Address":"` + fe.client.Hotkey.SS58() + `"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, errs, code := run(t, fe.env, tt.args...)
			if code != 0 || !strings.Contains(out, tt.want) {
				t.Errorf("exit %d, stdout lacks %q:\n%s%s", code, tt.want, out, errs)
			}
		})
	}
	// Commands without positional arguments refuse stray ones.
	for _, args := range [][]string{{"job", "list", "extra"}, {"keys", "show", "extra", "--json"}, {"job", "status", "a", "b"}} {
		if _, errs, code := run(t, fe.env, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2\n%s", args, code, errs)
		}
	}
}

func TestHelpShowsEnvironment(t *testing.T) {
	env := map[string]string{"HORDE_FACILITATOR": "http://facilitator.example:9000", "HORDE_PASSWORD": "hunter2"}
	_, errs, code := run(t, env, "job", "status", "--help")
	if code != 0 {
		t.Fatalf("--help: exit %d\n%s", code, errs)
	}
	for _, want := range []string{
		"Usage: horde job status JOB_ID [flags]",
		"--facilitator string",
		`$HORDE_FACILITATOR="http://facilitator.example:9000": used unless --facilitator is given`,
		"  --json\n", "        $HORDE_JSON\n", "default \"client\"; $HORDE_WALLET\n",
		"$HORDE_PASSWORD is set (value hidden)",
	} {
		if !strings.Contains(errs, want) {
			t.Errorf("help lacks %q:\n%s", want, errs)
		}
	}
	if strings.Contains(errs, "hunter2") {
		t.Errorf("help shows a password:\n%s", errs)
	}
	// A variable's value is used, and a flag wins over it.
	fe := startFacilitator(t)
	j := fe.create(t)
	env = fe.env
	out, errs, code := run(t, env, "job", "status", j.UUID, "--json")
	if code != 0 || !strings.Contains(out, j.UUID) {
		t.Errorf("from the environment: exit %d\n%s%s", code, out, errs)
	}
	_, errs, code = run(t, env, "job", "status", j.UUID, "--facilitator", "http://127.0.0.1:1")
	if code != 1 || !strings.Contains(errs, "127.0.0.1:1") {
		t.Errorf("the flag did not win: exit %d %s", code, errs)
	}
	// A variable that does not parse is a usage error naming it.
	_, errs, code = run(t, map[string]string{"HORDE_LIMIT": "many"}, "job", "list")
	if code != 2 || !strings.Contains(errs, "HORDE_LIMIT") {
		t.Errorf("bad HORDE_LIMIT: exit %d %s", code, errs)
	}
}

// TestStreamCallAfterTheJobEnded: a call to a job that no longer serves says
// so, with the job's final status, instead of "connection refused".
func TestStreamCallAfterTheJobEnded(t *testing.T) {
	fe := startFacilitator(t)
	j := fe.create(t)
	if _, err := fe.client.Cancel(t.Context(), j.UUID); err != nil {
		t.Fatal(err)
	}
	key, clientCert, err := sr.NewKeyPair("client", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, jobCert, err := sr.NewKeyPair("job", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	st := &client.Stream{JobUUID: j.UUID, URL: "https://127.0.0.1:1", JobCert: string(jobCert), ClientCert: string(clientCert),
		ClientKey: pemKey(t, key)}
	if err := (streamState{fe.env["HORDE_STATE_DIR"]}).save(st); err != nil {
		t.Fatal(err)
	}
	_, errs, code := run(t, fe.env, "stream", "call", j.UUID, "/v1/completions", "--data", "{}")
	if code != 1 || !strings.Contains(errs, "has ended (cancelled: cancelled by the client)") || !strings.Contains(errs, "nothing serves at https://127.0.0.1:1") {
		t.Errorf("call after the end: exit %d %s", code, errs)
	}
}

func TestJobRunUsage(t *testing.T) {
	for _, args := range [][]string{
		{"job", "run", "--image", "x", "--artifacts-dir", "artifacts"},
		{"job", "run", "--image", "x", "--artifacts-dir", "/a:rw"},
		{"job", "run", "--image", "x", "--save-artifacts", "out"},
		{"job", "run", "--image", "x", "echo", "-n"},
	} {
		if _, errs, code := run(t, map[string]string{"HORDE_WALLET_PATH": t.TempDir()}, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2\n%s", args, code, errs)
		}
	}
}

func pemKey(t *testing.T, k ed25519.PrivateKey) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}
