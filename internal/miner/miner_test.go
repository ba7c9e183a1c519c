package miner

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/blob"
	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/executor/fakert"
	"github.com/horde-compute/horde/internal/store/sqlite"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
	"github.com/horde-compute/horde/sig"
)

// The miner over real sockets, without Docker: executors run on the fake
// runtime, and the test plays the validator on a real WebSocket.

const (
	echoImage  = "test/echo:1"  // prints its arguments and exits 0
	blockImage = "test/block:1" // says it runs, then runs until killed
)

type harness struct {
	t       *testing.T
	key     *sig.Hotkey // the miner's
	v       *sig.Hotkey // a validator it serves
	m       *Miner
	rt      *fakert.Runtime
	db      *sqlite.DB
	addr    string
	backend *recorder
	running chan string // ids of blockImage containers that run
	cancel  context.CancelFunc
	errc    chan error
}

// recorder is a back-end that tells the test when executors end.
type recorder struct {
	Backend
	ended chan string // job uuids, as their executors end
}

func (r *recorder) Start(ctx context.Context, spec ExecutorSpec) (<-chan struct{}, error) {
	done, err := r.Backend.Start(ctx, spec)
	if err != nil {
		return nil, err
	}
	out := make(chan struct{})
	go func() { // owned: ends with the executor, which Backend.Wait waits for
		<-done
		r.ended <- spec.JobUUID
		close(out)
	}()
	return out, nil
}

// start runs a miner serving one validator (trusted, unless edit says
// otherwise) with the test class and executors on the fake runtime.
func start(t *testing.T, edit func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, key: newKey(t), v: newKey(t), rt: fakert.New(), running: make(chan string, 4), errc: make(chan error, 1)}
	h.rt.Register(echoImage, func(ctx context.Context, c *fakert.Container) int {
		fmt.Fprintln(c.Stdout, strings.Join(c.Args, " "))
		return 0
	})
	h.rt.Register(blockImage, func(ctx context.Context, c *fakert.Container) int {
		fmt.Fprintln(c.Stdout, "running")
		h.running <- c.ID
		<-ctx.Done()
		return 0
	})
	db, err := sqlite.Open(t.Context(), t.TempDir()+"/miner.db")
	if err != nil {
		t.Fatal(err)
	}
	h.db = db
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = ln.Addr().String()
	log := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	h.backend = &recorder{Backend: &Local{Runtime: h.rt, DataDir: t.TempDir(), Owner: h.key.SS58(), Log: log},
		ended: make(chan string, 8)}
	cfg := Config{Hotkey: h.key, Listener: ln, Manifest: map[string]int{protocol.ClassTest: 1}, Classes: DefaultClasses(),
		TrustedValidator: h.v.SS58(), Store: db, Backend: h.backend, Log: log}
	if edit != nil {
		edit(&cfg)
	}
	h.m, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.errc <- h.m.Run(ctx) }() // owned: the cleanup waits for errc
	t.Cleanup(func() {
		h.stop()
		h.rt.Close(context.Background())
		db.Close()
	})
	return h
}

// stop ends the miner and returns what Run returned (once; later calls nil).
func (h *harness) stop() error {
	h.cancel()
	select {
	case err, ok := <-h.errc:
		if ok {
			close(h.errc)
		}
		return err
	case <-time.After(time.Minute):
		h.t.Fatal("the miner did not stop")
		return nil
	}
}

// validator is the test's side of a validator session.
type validator struct {
	t    *testing.T
	h    *harness
	k    *sig.Hotkey
	conn *wsconn.Conn
}

// connect opens an authenticated session as k and returns it with the
// miner's first answer.
func (h *harness) connect(k *sig.Hotkey) (*validator, protocol.Message) {
	h.t.Helper()
	conn, err := wsconn.Dial(h.t.Context(), "ws://"+h.addr+protocol.ValidatorAuthPath+k.SS58(), nil)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { conn.Close("") })
	v := &validator{t: h.t, h: h, k: k, conn: conn}
	v.send(wsconn.NewValidatorAuth(k, h.key.SS58(), time.Now()))
	return v, v.recv()
}

// session opens the trusted validator's session and reads the miner's greeting.
func (h *harness) session() *validator {
	h.t.Helper()
	v, first := h.connect(h.v)
	if m, ok := first.(*protocol.V0ExecutorManifestRequest); !ok || m.Manifest[protocol.ClassTest] != 1 {
		h.t.Fatalf("first message %#v, want the manifest", first)
	}
	if m, ok := v.recv().(*protocol.V0MainHotkeyMessage); !ok || m.MainHotkey != h.key.SS58() {
		h.t.Fatalf("second message %#v, want the main hotkey", m)
	}
	return v
}

func (v *validator) send(m protocol.Message) {
	v.t.Helper()
	if err := v.conn.Send(v.t.Context(), m); err != nil {
		v.t.Fatal(err)
	}
}

func (v *validator) recv() protocol.Message {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(v.t.Context(), time.Minute)
	defer cancel()
	m, err := v.conn.Recv(ctx)
	if err != nil {
		v.t.Fatalf("receive from miner: %v", err)
	}
	return m
}

// offer offers a job of image and returns the miner's answer.
func (v *validator) offer(uuid, class, image string, organic bool) protocol.Message {
	v.t.Helper()
	req := startedOffer(v.t, v.k, v.h.key.SS58(), uuid, class, organic, time.Now())
	req.DockerImage = image
	v.send(req)
	return v.answer(uuid)
}

// answer reads messages up to the miner's answer to the offer of uuid,
// skipping what running jobs report meanwhile.
func (v *validator) answer(uuid string) protocol.Message {
	v.t.Helper()
	for {
		switch m := v.recv().(type) {
		case *protocol.V0AcceptJobRequest:
			if m.JobUUID == uuid {
				return m
			}
		case *protocol.V0DeclineJobRequest:
			if m.JobUUID == uuid {
				return m
			}
		}
	}
}

func (v *validator) accepted(uuid, image string) {
	v.t.Helper()
	if m, ok := v.offer(uuid, protocol.ClassTest, image, true).(*protocol.V0AcceptJobRequest); !ok || m.JobUUID != uuid {
		v.t.Fatalf("offer of %s: %#v, want accepted", uuid, m)
	}
}

// until reads messages up to one of job uuid of type T, which it returns,
// with the types of those it skipped.
func until[T protocol.Message](v *validator) (T, []string) {
	v.t.Helper()
	var seen []string
	for {
		m := v.recv()
		if m, ok := m.(T); ok {
			return m, seen
		}
		seen = append(seen, m.MessageType())
	}
}

// ended waits until the executor of job uuid has ended and the miner has
// released the job.
func (h *harness) ended(uuid string) {
	h.t.Helper()
	select {
	case got := <-h.backend.ended:
		if got != uuid {
			h.t.Fatalf("executor of %s ended, want %s", got, uuid)
		}
	case <-time.After(time.Minute):
		h.t.Fatalf("executor of %s did not end", uuid)
	}
	// The miner sees the end on its own: wait until it has released the
	// job (its watcher returned), or an offer made next could find the
	// executor still taken. Only for a job running alone.
	released := make(chan struct{})
	go func() { h.m.watchers.Wait(); close(released) }() // owned: ends once the job's watcher has returned
	select {
	case <-released:
	case <-time.After(time.Minute):
		h.t.Fatalf("the miner did not release %s", uuid)
	}
}

// Who may connect: the trusted validator of a trusted miner, validators
// with a permit in the metagraph otherwise; nobody else.
func TestValidatorAuth(t *testing.T) {
	t.Run("trusted", func(t *testing.T) {
		h := start(t, nil)
		h.session()
		if _, first := h.connect(newKey(t)); first.MessageType() != "UnauthorizedError" {
			t.Errorf("another validator got %s", first.MessageType())
		}
	})
	t.Run("metagraph", func(t *testing.T) {
		permitted, unpermitted := newKey(t), newKey(t)
		h := start(t, func(c *Config) {
			c.TrustedValidator = ""
			c.Metagraph = metagraph{Neurons: []chain.Neuron{{Hotkey: permitted.SS58(), ValidatorPermit: true}, {Hotkey: unpermitted.SS58()}}}
		})
		for k, want := range map[*sig.Hotkey]string{permitted: "V0ExecutorManifestRequest", unpermitted: "UnauthorizedError", newKey(t): "UnauthorizedError"} {
			if _, first := h.connect(k); first.MessageType() != want {
				t.Errorf("%s got %s, want %s", k.SS58()[:8], first.MessageType(), want)
			}
		}
	})
	t.Run("auth first", func(t *testing.T) {
		h := start(t, nil)
		conn, err := wsconn.Dial(t.Context(), "ws://"+h.addr+protocol.ValidatorAuthPath+h.v.SS58(), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close("")
		conn.Send(t.Context(), &protocol.V0CancelJobRequest{JobUUID: "x"})
		if m, err := conn.Recv(t.Context()); err != nil || m.MessageType() != "UnauthorizedError" {
			t.Errorf("got %v %v", m, err)
		}
	})
}

type metagraph chain.Metagraph

func (m metagraph) Metagraph(context.Context) (*chain.Metagraph, error) {
	mg := chain.Metagraph(m)
	return &mg, nil
}

// Offers over the socket: what is declined and why, with a busy miner's
// excuses; the executor is free again once a job ends.
func TestOffers(t *testing.T) {
	h := start(t, nil)
	v := h.session()
	decline := func(m protocol.Message) *protocol.V0DeclineJobRequest {
		t.Helper()
		d, ok := m.(*protocol.V0DeclineJobRequest)
		if !ok {
			t.Fatalf("got %#v, want a decline", m)
		}
		return d
	}
	if d := decline(v.offer("gpu", protocol.ClassGPU24, echoImage, true)); d.Reason != protocol.RejectUnknown {
		t.Errorf("unknown class: %s %s", d.Reason, d.Message)
	}
	bad := startedOffer(t, v.k, h.key.SS58(), "forged", protocol.ClassTest, true, time.Now())
	bad.JobStartedReceiptSignature = newKey(t).SignHex([]byte("forged"))
	v.send(bad)
	if d := decline(v.answer("forged")); d.Reason != protocol.RejectInvalidSignature {
		t.Errorf("bad signature: %s %s", d.Reason, d.Message)
	}
	v.accepted("long", blockImage)
	v.send(&protocol.V0JobRequest{JobUUID: "long", ExecutorClass: protocol.ClassTest, DockerImage: blockImage})
	<-h.running
	d := decline(v.offer("second", protocol.ClassTest, echoImage, false))
	if d.Reason != protocol.RejectBusy || len(d.Receipts) != 1 {
		t.Fatalf("busy: %s %q, %d excuses", d.Reason, d.Message, len(d.Receipts))
	}
	excuse, err := receipt.ParseLine(d.Receipts[0])
	if err != nil {
		t.Fatal(err)
	}
	if p, err := excuse.Decode(); err != nil || p.(*receipt.StartedPayload).JobUUID != "long" {
		t.Errorf("excuse %v %v", p, err)
	}
	if d := decline(v.offer("long", protocol.ClassTest, echoImage, false)); d.Reason != protocol.RejectUnknown {
		t.Errorf("same uuid again: %s %s", d.Reason, d.Message)
	}
	v.send(&protocol.V0CancelJobRequest{JobUUID: "long"})
	h.ended("long")
	v.accepted("third", echoImage)
}

// A job from offer to receipts: the executor gets the job request, the
// validator its messages (without the executor's token) and the result;
// the miner countersigns the receipts and serves them.
func TestJobFlow(t *testing.T) {
	h := start(t, nil)
	v := h.session()
	v.accepted("j1", echoImage)
	v.send(&protocol.V0JobRequest{JobUUID: "j1", ExecutorClass: protocol.ClassTest, DockerImage: echoImage, DockerRunCmd: []string{"hello", "miner"}})
	f, seen := until[*protocol.V0JobFinishedRequest](v)
	if got := strings.Join(seen, " "); !strings.Contains(got, "V0ExecutorReadyRequest") || !strings.Contains(got, "V0ExecutionDoneRequest") {
		t.Errorf("messages before the result: %s", got)
	}
	if f.JobUUID != "j1" || f.ExecutorToken != "" || !strings.Contains(f.DockerProcessStdout, "hello miner") {
		t.Errorf("finished %+v", f)
	}
	h.ended("j1")

	now := time.Now()
	accepted := &receipt.AcceptedPayload{Base: receipt.Base{JobUUID: "j1", MinerHotkey: h.key.SS58(), ValidatorHotkey: v.k.SS58(), Timestamp: receipt.At(now)},
		TimeAccepted: receipt.At(now), TTL: 60}
	finished := &receipt.FinishedPayload{Base: receipt.Base{JobUUID: "j1", MinerHotkey: h.key.SS58(), ValidatorHotkey: v.k.SS58(), Timestamp: receipt.At(now)},
		TimeStarted: receipt.At(now), TimeTookUS: 1000, ScoreStr: "1"}
	for _, p := range []receipt.Payload{accepted, finished} {
		b, _ := receipt.Bytes(p)
		s, _ := receipt.Sign(v.k, p)
		if p == receipt.Payload(accepted) {
			v.send(&protocol.V0JobAcceptedReceiptRequest{Payload: b, Signature: s})
		} else {
			v.send(&protocol.V0JobFinishedReceiptRequest{Payload: b, Signature: s})
		}
	}
	// A forged receipt is refused, and says so; being answered also tells
	// the test the two before it were handled.
	b, _ := receipt.Bytes(finished)
	v.send(&protocol.V0JobFinishedReceiptRequest{Payload: b, Signature: newKey(t).SignHex(b)})
	if e, ok := v.recv().(*protocol.GenericError); !ok || !strings.Contains(e.Details, "receipt refused") {
		t.Errorf("forged receipt: %#v", e)
	}
	var types []string
	for _, r := range h.receipts(0, 0) {
		p, err := r.Decode()
		if err != nil {
			t.Fatal(err)
		}
		if err := receipt.VerifyBy(h.key.SS58(), p, r.MinerSignature); err != nil {
			t.Errorf("%s: %v", r.Type, err)
		}
		types = append(types, string(r.Type))
	}
	if got := strings.Join(types, " "); got != "JobStartedReceipt JobAcceptedReceipt JobFinishedReceipt" {
		t.Errorf("receipts served: %s", got)
	}
	if rs := h.receipts(0, 1); len(rs) != 1 {
		t.Errorf("limit 1: %d receipts", len(rs))
	}
}

// receipts reads GET /receipts.
func (h *harness) receipts(after, limit int) []receipt.Receipt {
	h.t.Helper()
	q := url.Values{"after": {fmt.Sprint(after)}}
	if limit > 0 {
		q.Set("limit", fmt.Sprint(limit))
	}
	resp, err := http.Get("http://" + h.addr + "/receipts?" + q.Encode())
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []receipt.Receipt
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var line struct {
			Receipt receipt.Receipt `json:"receipt"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			h.t.Fatalf("%s: %v", sc.Bytes(), err)
		}
		out = append(out, line.Receipt)
	}
	return out
}

// Messages for a job the validator does not have here are answered with
// an error; an unexpected message too.
func TestUnknownJob(t *testing.T) {
	h := start(t, nil)
	v := h.session()
	v.send(&protocol.V0JobRequest{JobUUID: "nope"})
	if e, ok := v.recv().(*protocol.GenericError); !ok || !strings.Contains(e.Details, "no such job") {
		t.Errorf("got %#v", e)
	}
	v.send(&protocol.V0AcceptJobRequest{JobUUID: "nope"})
	if e, ok := v.recv().(*protocol.GenericError); !ok || !strings.Contains(e.Details, "unexpected") {
		t.Errorf("got %#v", e)
	}
}

// When the validator goes, its jobs stop; the executor is freed.
func TestValidatorGoneStopsJobs(t *testing.T) {
	h := start(t, nil)
	v := h.session()
	v.accepted("j", blockImage)
	v.send(&protocol.V0JobRequest{JobUUID: "j", ExecutorClass: protocol.ClassTest, DockerImage: blockImage})
	<-h.running
	v.conn.Close("bye")
	h.ended("j")
	h.session().accepted("k", echoImage)
}

// An executor that never connects is given up after the spin-up timeout,
// and the validator told.
func TestSpinUpTimeout(t *testing.T) {
	never := &neverBackend{stop: make(chan struct{})}
	h := start(t, func(c *Config) { c.Backend, c.SpinUpTimeout = never, time.Millisecond })
	v := h.session()
	v.accepted("j", echoImage)
	f, _ := until[*protocol.V0HordeFailedRequest](v)
	if f.Reason != protocol.HordeSpinupFailed || f.ReportedBy != protocol.ByMiner {
		t.Errorf("got %+v", f)
	}
}

// neverBackend starts executors that never connect and end only when their
// job's context does (stuck: never, unless stop is closed).
type neverBackend struct {
	stuck bool
	stop  chan struct{}
	wg    sync.WaitGroup
	start chan struct{}
}

func (b *neverBackend) Start(ctx context.Context, spec ExecutorSpec) (<-chan struct{}, error) {
	done := make(chan struct{})
	b.wg.Go(func() {
		defer close(done)
		if b.start != nil {
			b.start <- struct{}{}
		}
		if b.stuck {
			<-b.stop
			return
		}
		select {
		case <-ctx.Done():
		case <-b.stop:
		}
	})
	return done, nil
}

func (b *neverBackend) Wait() { b.wg.Wait() }

// On shutdown the miner stops within StopTimeout whatever its jobs do:
// here an executor that ignores its context is abandoned, and Run says so.
func TestStopAbandonsStuckJobs(t *testing.T) {
	stuck := &neverBackend{stuck: true, stop: make(chan struct{}), start: make(chan struct{}, 1)}
	t.Cleanup(func() { close(stuck.stop); stuck.Wait() })
	h := start(t, func(c *Config) { c.Backend, c.StopTimeout = stuck, 10*time.Millisecond })
	v := h.session()
	v.accepted("j", echoImage)
	<-stuck.start
	if err := h.stop(); !errors.Is(err, ErrStopTimeout) {
		t.Errorf("Run returned %v, want ErrStopTimeout", err)
	}
}

// A job whose output upload hangs does not hold up shutdown: the upload
// is cut off and Run returns, without abandoning anything.
func TestStopWhileUploadHangs(t *testing.T) {
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release); hang.Close() })
	u, _ := url.Parse(hang.URL)
	guard, err := blob.NewDialGuard(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	h := start(t, func(c *Config) {
		c.Backend.(*recorder).Backend.(*Local).Net = guard
		c.StopTimeout = time.Minute // far longer than the test may take
	})
	v := h.session()
	v.accepted("j", echoImage)
	v.send(&protocol.V0JobRequest{JobUUID: "j", ExecutorClass: protocol.ClassTest, DockerImage: echoImage, DockerRunCmd: []string{"out"},
		OutputUpload: &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: hang.URL + "/out.zip"}})
	<-arrived
	if err := h.stop(); err != nil {
		t.Errorf("Run returned %v", err)
	}
}

// New names a bad config; Run runs once; without a listener the handler
// needs to be told where executors reach it.
func TestConfig(t *testing.T) {
	k := newKey(t)
	ok := Config{Hotkey: k, Manifest: map[string]int{protocol.ClassTest: 1}, Backend: &neverBackend{}, Store: nil, TrustedValidator: "v"}
	for name, edit := range map[string]func(*Config){
		"Hotkey":   func(c *Config) { c.Hotkey = nil },
		"Manifest": func(c *Config) { c.Manifest = map[string]int{protocol.ClassTest: -1} },
		"Backend":  func(c *Config) { c.Backend = nil },
		"Store":    func(c *Config) {},
		"Metagraph": func(c *Config) {
			c.TrustedValidator = ""
		},
	} {
		c := ok
		edit(&c)
		if name != "Store" {
			c.Store = (*sqlite.DB)(nil)
		}
		if _, err := New(c); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v", name, err)
		}
	}
	c := ok
	c.Store = (*sqlite.DB)(nil)
	m, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "ExecutorBaseURL") {
		t.Errorf("Run without listener or URL: %v", err)
	}
	if err := m.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("Run again: %v", err)
	}
}

// The handler served by the caller, as any http.Handler: Run without a
// listener runs the jobs; once Run has returned the handler refuses.
func TestHandlerServedElsewhere(t *testing.T) {
	var m *Miner
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { m.Handler().ServeHTTP(w, r) }))
	defer srv.Close()
	h := start(t, func(c *Config) {
		c.Listener.Close()
		c.Listener, c.ExecutorBaseURL = nil, "ws"+strings.TrimPrefix(srv.URL, "http")
	})
	m = h.m
	h.addr = strings.TrimPrefix(srv.URL, "http://")
	v := h.session()
	v.accepted("j", echoImage)
	v.send(&protocol.V0JobRequest{JobUUID: "j", ExecutorClass: protocol.ClassTest, DockerImage: echoImage, DockerRunCmd: []string{"elsewhere"}})
	if f, _ := until[*protocol.V0JobFinishedRequest](v); !strings.Contains(f.DockerProcessStdout, "elsewhere") {
		t.Errorf("finished %+v", f)
	}
	h.ended("j")
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(srv.URL + "/receipts")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("after Run: %s", resp.Status)
	}
}
