package facilitator

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/internal/store/sqlite"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// failsafe bounds every wait for an event, so that a broken test fails
// instead of hanging; no assertion depends on it.
const failsafe = time.Minute

func hotkey(t testing.TB) *sig.Hotkey {
	t.Helper()
	k, err := sig.FromSeed(sig.RandomSeed())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// harness is a facilitator served by httptest over a SQLite file, with a
// client, and validators that may connect.
type harness struct {
	t   testing.TB
	f   *Facilitator
	db  Store
	url string
	// kill ends the facilitator at once, as if its process died: its
	// Run returns and its server closes every connection.
	kill   func()
	key    *sig.Hotkey
	client *client.Client

	mu      sync.Mutex
	allowed map[string]bool
}

func newHarness(t testing.TB, cfg Config) *harness {
	t.Helper()
	db, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "facilitator.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return newHarnessOn(t, cfg, db)
}

// newHarnessOn is newHarness over the store db.
func newHarnessOn(t testing.TB, cfg Config, db Store) *harness {
	t.Helper()
	var err error
	h := &harness{t: t, db: db, key: hotkey(t), allowed: map[string]bool{}}
	cfg.Store = db
	cfg.AllowValidator = func(hk string) bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.allowed[hk]
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	}
	if h.f, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h.f.Handler())
	t.Cleanup(srv.Close)
	h.url = srv.URL
	h.client = client.New(srv.URL, h.key)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.f.Run(ctx) }() // owned: kill waits for it
	var once sync.Once
	h.kill = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			srv.CloseClientConnections()
			srv.Close()
		})
	}
	t.Cleanup(h.kill)
	return h
}

// ctx is a context for one wait of the test.
func (h *harness) ctx() context.Context {
	ctx, cancel := context.WithTimeout(h.t.Context(), failsafe)
	h.t.Cleanup(cancel)
	return ctx
}

// create submits a job for the harness's client.
func (h *harness) create(spec *protocol.JobSpec) *protocol.Job {
	h.t.Helper()
	j, err := h.client.CreateJob(h.ctx(), spec)
	if err != nil {
		h.t.Fatalf("create job: %v", err)
	}
	return j
}

func (h *harness) job(id string) *protocol.Job {
	h.t.Helper()
	j, err := h.client.Job(h.ctx(), id)
	if err != nil {
		h.t.Fatalf("job %s: %v", id, err)
	}
	return j
}

func spec(args ...string) *protocol.JobSpec {
	return &protocol.JobSpec{ExecutorClass: protocol.ClassTest, DockerImage: "horde/job:dev", Args: args,
		DownloadTimeLimit: 30, ExecutionTimeLimit: 30, UploadTimeLimit: 30}
}

// fakeValidator dials the facilitator's real WebSocket route with real
// sr25519 authentication and records what it is sent.
type fakeValidator struct {
	t    testing.TB
	h    *harness
	key  *sig.Hotkey
	conn *wsconn.Conn
	in   chan protocol.Message   // everything but Responses
	resp chan *protocol.Response // answers to what it sent
	done chan struct{}
}

// connect allows a new validator and connects it as a horde validator
// that advertises every capability; it returns once the facilitator has
// answered its authentication with success.
func (h *harness) connect() *fakeValidator {
	h.t.Helper()
	k := hotkey(h.t)
	h.allow(k)
	return h.connectAs(k)
}

// allow lets k connect as a validator.
func (h *harness) allow(k *sig.Hotkey) {
	h.mu.Lock()
	h.allowed[k.SS58()] = true
	h.mu.Unlock()
}

func (h *harness) connectAs(k *sig.Hotkey) *fakeValidator {
	h.t.Helper()
	return h.connectWith(k, protocol.FacilitatorCapabilities)
}

// connectWith connects k advertising caps (nil: no header, as a horde
// validator from before negotiation).
func (h *harness) connectWith(k *sig.Hotkey, caps []string) *fakeValidator {
	h.t.Helper()
	conn, resp, err := h.dial(k, caps)
	if err != nil {
		h.t.Fatal(err)
	}
	if resp.Status != "success" {
		h.t.Fatalf("validator refused: %+v", resp)
	}
	v := &fakeValidator{t: h.t, h: h, key: k, conn: conn, in: make(chan protocol.Message, 64),
		resp: make(chan *protocol.Response, 64), done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { // owned: the cleanup below waits for done
		defer close(v.done)
		for {
			m, err := conn.Recv(ctx)
			if err != nil {
				return
			}
			if r, ok := m.(*protocol.Response); ok {
				v.resp <- r
			} else {
				v.in <- m
			}
		}
	}()
	h.t.Cleanup(func() {
		cancel()
		conn.Close("test over")
		<-v.done
	})
	return v
}

// wsURL is the facilitator's validator route.
func (h *harness) wsURL() string {
	return "ws" + strings.TrimPrefix(h.url, "http") + protocol.FacilitatorPath
}

// dial opens a session as k (horde auth) and returns the facilitator's
// answer to its auth.
func (h *harness) dial(k *sig.Hotkey, caps []string) (*wsconn.Conn, *protocol.Response, error) {
	ctx := h.ctx()
	conn, err := wsconn.DialWith(ctx, h.wsURL(), wsconn.Options{Capabilities: caps, Decode: protocol.DecodeFacilitatorFrame, BadFrame: wsconn.NoAnswer}, nil)
	if err != nil {
		return nil, nil, err
	}
	if err := conn.Send(ctx, wsconn.NewFacilitatorAuth(k, time.Now())); err != nil {
		return nil, nil, err
	}
	m, err := conn.Recv(ctx)
	if err != nil {
		return nil, nil, err
	}
	r, ok := m.(*protocol.Response)
	if !ok {
		return nil, nil, errors.New("first answer is " + m.MessageType())
	}
	return conn, r, nil
}

// next returns the next message the validator was sent.
func (v *fakeValidator) next() protocol.Message {
	v.t.Helper()
	select {
	case m := <-v.in:
		return m
	case <-v.h.ctx().Done():
		v.t.Fatal("validator: no message came")
	}
	return nil
}

// nextJob returns the next message, which must be a job.
func (v *fakeValidator) nextJob() *protocol.V2JobRequest {
	v.t.Helper()
	m := v.next()
	j, ok := m.(*protocol.V2JobRequest)
	if !ok {
		v.t.Fatalf("validator got %s, want V2JobRequest", m.MessageType())
	}
	return j
}

// request sends m and returns the facilitator's answer.
func (v *fakeValidator) request(m protocol.Message) *protocol.Response {
	v.t.Helper()
	ctx := v.h.ctx()
	if err := v.conn.Send(ctx, m); err != nil {
		v.t.Fatal(err)
	}
	select {
	case r := <-v.resp:
		return r
	case <-ctx.Done():
		v.t.Fatalf("validator: no answer to %s", m.MessageType())
	}
	return nil
}

// status reports a job's status and wants it accepted.
func (v *fakeValidator) status(id string, s protocol.JobStatus, meta *protocol.StatusMetadata) {
	v.t.Helper()
	if r := v.request(&protocol.V0JobStatusUpdate{UUID: id, Status: s, Metadata: meta}); r.Status != "success" {
		v.t.Fatalf("status %s of %s refused: %+v", s, id, r.Errors)
	}
}

// sign sets k's X-CH-* headers on req: a signature of scope over payload,
// stamped ts.
func sign(req *http.Request, k *sig.Hotkey, scope string, payload []byte, ts time.Time) *http.Request {
	n := ts.UnixNano()
	req.Header.Set(protocol.HeaderSignatureType, protocol.SignatureTypeBittensor)
	req.Header.Set(protocol.HeaderSignatory, k.SS58())
	req.Header.Set(protocol.HeaderTimestampNS, strconv.FormatInt(n, 10))
	req.Header.Set(protocol.HeaderSignature, base64.StdEncoding.EncodeToString(k.Sign(protocol.SignedMessage(n, payload))))
	req.Header.Set(protocol.HeaderSignatureScope, scope)
	return req
}

func newRequest(t *testing.T, method, url string, body []byte) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// signedRequest builds a request signed by k over its method, request
// target and body (scope HordeRequest), as horde's client signs it.
func signedRequest(t *testing.T, k *sig.Hotkey, method, url string, body []byte, ts time.Time) *http.Request {
	t.Helper()
	req := newRequest(t, method, url, body)
	return sign(req, k, protocol.ScopeHordeRequest, protocol.RequestPayload(method, req.URL.RequestURI(), body), ts)
}

// createRequest builds a job creation signed by k over the body's
// SignedFields, as upstream's SDK and horde's client sign it.
func createRequest(t *testing.T, k *sig.Hotkey, url string, body []byte, ts time.Time) *http.Request {
	t.Helper()
	j, err := protocol.SignedFieldsOfRequest(body)
	if err != nil {
		j = body // a body that has none: the facilitator refuses it
	}
	payload, _ := protocol.SignedPayload(j)
	return sign(newRequest(t, "POST", url+protocol.RouteCreateJob, body), k, protocol.ScopeSignedFields, payload, ts)
}

// do sends req and returns the status and body of the answer.
func do(t *testing.T, req *http.Request) (int, []byte) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func body(t testing.TB, s *protocol.JobSpec) []byte {
	t.Helper()
	b, err := s.RequestBody()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
