package miner

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/go-cmp/cmp"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/miner/decide"
	"github.com/horde-compute/horde/internal/schematest"
	"github.com/horde-compute/horde/internal/store/sqlite"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
	"github.com/horde-compute/horde/sig"
)

type metagraphFunc func() *chain.Metagraph

func (f metagraphFunc) Metagraph(context.Context) (*chain.Metagraph, error) { return f(), nil }

// idleBackend starts executors that never connect; each ends with its job.
type idleBackend struct{ started chan ExecutorSpec }

func (b idleBackend) Start(ctx context.Context, spec ExecutorSpec) (<-chan struct{}, error) {
	done := make(chan struct{})
	go func() { <-ctx.Done(); close(done) }()
	if b.started != nil {
		b.started <- spec
	}
	return done, nil
}

func (idleBackend) Wait() {}

// testMiner runs a miner for the test and returns its address.
func testMiner(t *testing.T, cfg Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Store == nil {
		cfg.Store = openStore(t)
	}
	if cfg.Backend == nil {
		cfg.Backend = idleBackend{}
	}
	cfg.Listener = ln
	cfg.SpinUpTimeout = time.Hour
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The listener queues connections until Run serves it.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("miner: %v", err)
		}
	})
	return ln.Addr().String()
}

func openStore(t *testing.T) *sqlite.DB {
	t.Helper()
	st, err := sqlite.Open(t.Context(), t.TempDir()+"/miner.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// rawSession is a validator's WebSocket to the miner, frames as bytes.
type rawSession struct {
	t  *testing.T
	ws *websocket.Conn
}

func dialRaw(t *testing.T, addr, pathHotkey string) *rawSession {
	t.Helper()
	ws, _, err := websocket.Dial(t.Context(), "ws://"+addr+protocol.ValidatorAuthPath+pathHotkey, nil)
	if err != nil {
		t.Fatal(err)
	}
	ws.SetReadLimit(1 << 24)
	t.Cleanup(func() { ws.CloseNow() })
	return &rawSession{t: t, ws: ws}
}

func (s *rawSession) send(m protocol.Message) {
	s.t.Helper()
	b, err := protocol.Encode(m)
	if err != nil {
		s.t.Fatal(err)
	}
	if err := s.ws.Write(s.t.Context(), websocket.MessageText, b); err != nil {
		s.t.Fatal(err)
	}
}

// recv reads a frame, checks it against upstream validator's parser (the
// MinerToValidatorMessage union) and decodes it.
func (s *rawSession) recv() (protocol.Message, []byte) {
	s.t.Helper()
	_, b, err := s.ws.Read(s.t.Context())
	if err != nil {
		s.t.Fatalf("read: %v", err)
	}
	schematest.Valid(s.t, "protocol_messages.MinerToValidatorMessage.union", b)
	m, err := protocol.Decode(b)
	if err != nil {
		s.t.Fatalf("decode %s: %v", b, err)
	}
	return m, b
}

// A refused validator gets UnauthorizedError with upstream's code for why.
func TestUpstreamAuthRefusals(t *testing.T) {
	mk, v, inactive, stranger := hotkey(t, 10), hotkey(t, 11), hotkey(t, 12), hotkey(t, 13)
	mg := &chain.Metagraph{Neurons: []chain.Neuron{
		{UID: 0, Hotkey: v.SS58(), ValidatorPermit: true},
		{UID: 1, Hotkey: inactive.SS58()},
		{UID: 2, Hotkey: mk.SS58(), AxonInfo: chain.AxonInfo{IP: "127.0.0.1", Port: 1}},
	}}
	addr := testMiner(t, Config{Hotkey: mk, Manifest: map[string]int{protocol.ClassTest: 1}, Metagraph: metagraphFunc(func() *chain.Metagraph { return mg })})

	fresh := wsconn.NewValidatorAuth(v, mk.SS58(), time.Now())
	forged := *fresh
	forged.Signature = stranger.SignHex(fresh.AuthMessage())
	for _, c := range []struct {
		name string
		auth protocol.Message
		path string
		code string
	}{
		// fresh first: it must still be within its age when it is sent
		{"accepted", fresh, v.SS58(), ""},
		{"replayed", fresh, v.SS58(), protocol.UnauthorizedTokenTooOld},
		{"stale", wsconn.NewValidatorAuth(v, mk.SS58(), time.Now().Add(-time.Minute)), v.SS58(), protocol.UnauthorizedTokenTooOld},
		{"unregistered", wsconn.NewValidatorAuth(stranger, mk.SS58(), time.Now()), stranger.SS58(), protocol.UnauthorizedUnknownValidator},
		{"no permit", wsconn.NewValidatorAuth(inactive, mk.SS58(), time.Now()), inactive.SS58(), protocol.UnauthorizedValidatorInactive},
		{"forged", &forged, v.SS58(), protocol.UnauthorizedUnknownValidator},
		{"for another miner", wsconn.NewValidatorAuth(v, stranger.SS58(), time.Now()), v.SS58(), protocol.UnauthorizedUnknownValidator},
		{"not an auth", &protocol.GenericError{Details: "hi"}, v.SS58(), protocol.UnauthorizedUnknownValidator},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := dialRaw(t, addr, c.path)
			s.send(c.auth)
			m, b := s.recv()
			if c.code == "" {
				if _, ok := m.(*protocol.V0ExecutorManifestRequest); !ok {
					t.Fatalf("got %s, want the manifest", b)
				}
				return
			}
			u, ok := m.(*protocol.UnauthorizedError)
			if !ok || u.Code != c.code {
				t.Fatalf("got %s, want UnauthorizedError %s", b, c.code)
			}
			schematest.Valid(t, "protocol_messages.UnauthorizedError", b)
		})
	}
}

// The manifest is what upstream's validator parses (upstream's classes
// only) and carries the miner's extensions, which upstream ignores; a class
// upstream does not know is refused at start.
func TestManifestForUpstream(t *testing.T) {
	man := map[string]int{protocol.ClassTest: 2, protocol.ClassGPU24: 1}
	b, _ := protocol.Encode(manifestFor(man, false))
	schematest.Valid(t, "protocol_messages.V0ExecutorManifestRequest", b)
	if !strings.Contains(string(b), `"horde_capabilities":[`) {
		t.Errorf("manifest without capabilities: %s", b)
	}
	if b, _ := protocol.Encode(manifestFor(man, true)); strings.Contains(string(b), "horde_capabilities") {
		t.Errorf("upstream-only manifest: %s", b)
	}
	man["horde.cpu.2c"] = 3
	b, _ = protocol.Encode(manifestFor(man, false))
	schematest.Invalid(t, "protocol_messages.V0ExecutorManifestRequest", b) // why the class is refused
	cfg := Config{Hotkey: hotkey(t, 1), Manifest: man, Backend: idleBackend{}, Store: openStore(t), TrustedValidator: "v"}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "horde.cpu.2c") {
		t.Errorf("Validate = %v", err)
	}
}

func startedReceipt(t *testing.T, v *sig.Hotkey, minerHotkey, uuid string, at time.Time, organic bool) (json.RawMessage, string) {
	t.Helper()
	p := &receipt.StartedPayload{Base: receipt.Base{JobUUID: uuid, MinerHotkey: minerHotkey, ValidatorHotkey: v.SS58(), Timestamp: receipt.At(at)},
		ExecutorClass: protocol.ClassTest, IsOrganic: organic, TTL: 300}
	s, err := receipt.Sign(v, p)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(p)
	return b, s
}

// An upstream validator's jobs: accepted; when all executors are taken,
// declined as busy with the running organic job's countersigned started
// receipt in upstream's Receipt shape (a synthetic job's is no excuse); a
// streaming job whose image is not on the allow-list is declined before
// an executor is taken.
func TestUpstreamDeclines(t *testing.T) {
	mk, v := hotkey(t, 20), hotkey(t, 21)
	started := make(chan ExecutorSpec, 4)
	addr := testMiner(t, Config{Hotkey: mk, Manifest: map[string]int{protocol.ClassTest: 1}, TrustedValidator: v.SS58(),
		Backend: idleBackend{started: started}, StreamingImages: []string{"ok/stream:1"}})
	s := dialRaw(t, addr, v.SS58())
	s.send(wsconn.NewValidatorAuth(v, mk.SS58(), time.Now()))
	if m, b := s.recv(); m.MessageType() != "V0ExecutorManifestRequest" {
		t.Fatalf("got %s", b)
	}
	s.recv() // V0MainHotkeyMessage

	now := time.Now()
	offer := func(uuid string, organic bool, streaming *protocol.StreamingDetails, image string) (protocol.Message, []byte) {
		p, sg := startedReceipt(t, v, mk.SS58(), uuid, now, organic)
		s.send(&protocol.V0InitialJobRequest{JobUUID: uuid, ExecutorClass: protocol.ClassTest, DockerImage: image,
			JobStartedReceiptPayload: p, JobStartedReceiptSignature: sg, StreamingDetails: streaming})
		return s.recv()
	}
	if m, b := offer("stream-1", true, &protocol.StreamingDetails{PublicKey: "k"}, "other/stream:1"); m.MessageType() != "V0DeclineJobRequest" || !strings.Contains(string(b), "allow-list") {
		t.Fatalf("streaming job with an image not on the allow-list: %s", b)
	}
	if m, b := offer("job-1", true, nil, "img"); m.MessageType() != "V0AcceptJobRequest" {
		t.Fatalf("first job: %s", b)
	}
	<-started
	m, b := offer("job-2", true, nil, "img")
	d, ok := m.(*protocol.V0DeclineJobRequest)
	if !ok || d.Reason != protocol.RejectBusy || len(d.Receipts) != 1 {
		t.Fatalf("second job: %s", b)
	}
	schematest.Valid(t, "protocol_messages.V0DeclineJobRequest", b)
	schematest.Valid(t, "receipts.Receipt", d.Receipts[0])
	if strings.Contains(string(d.Receipts[0]), `{"receipt_type"`) || !strings.HasPrefix(string(d.Receipts[0]), `{"payload":{"job_uuid":"job-1"`) {
		t.Errorf("excuse is not in upstream's shape: %s", d.Receipts[0])
	}
	r, err := receipt.ParseLine(d.Receipts[0])
	if err != nil || r.Verify() != nil || r.MinerSignature == "" {
		t.Errorf("excuse %s: %v", d.Receipts[0], err)
	}
}

// The miner's image policy, as the executor sees the initial request.
func TestImagePolicy(t *testing.T) {
	digest := "sha256:" + strings.Repeat("ab", 32)
	stream := &protocol.StreamingDetails{PublicKey: "k"}
	for _, c := range []struct {
		name       string
		p          imagePolicy
		req        protocol.V0InitialJobRequest
		pull       bool
		allow      []string
		refusal    bool
		wantPinned string
	}{
		{name: "upstream validator, default policy", p: imagePolicy{}, req: protocol.V0InitialJobRequest{DockerImage: "a"}},
		{name: "horde validator allows", p: imagePolicy{}, req: protocol.V0InitialJobRequest{DockerImage: "a", AllowPull: true}, pull: true},
		{name: "always", p: imagePolicy{pull: protocol.PullAlways}, req: protocol.V0InitialJobRequest{DockerImage: "a"}, pull: true},
		{name: "never", p: imagePolicy{pull: protocol.PullNever}, req: protocol.V0InitialJobRequest{DockerImage: "a", AllowPull: true}},
		{name: "validator's allow-list is dropped", p: imagePolicy{}, req: protocol.V0InitialJobRequest{DockerImage: "a", ImageAllowList: []string{"a"}}},
		{name: "streaming by name", p: imagePolicy{streaming: []string{"llm:1"}}, req: protocol.V0InitialJobRequest{DockerImage: "docker.io/library/llm:1", StreamingDetails: stream}, allow: []string{"llm:1"}},
		{name: "streaming by digest", p: imagePolicy{streaming: []string{digest}}, req: protocol.V0InitialJobRequest{DockerImage: "llm:1", StreamingDetails: stream}, allow: []string{digest}},
		{name: "streaming, name not listed", p: imagePolicy{streaming: []string{"llm:2"}}, req: protocol.V0InitialJobRequest{DockerImage: "llm:1", StreamingDetails: stream}, allow: []string{"llm:2"}, refusal: true},
		{name: "streaming, no allow-list", p: imagePolicy{}, req: protocol.V0InitialJobRequest{DockerImage: "llm:1", StreamingDetails: stream}, refusal: true},
		{name: "streaming pinned by a horde validator", p: imagePolicy{streaming: []string{"x"}}, req: protocol.V0InitialJobRequest{DockerImage: "llm:1", StreamingDetails: stream, ImageDigest: digest}, wantPinned: digest},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := c.p.forExecutor(&c.req)
			if got.AllowPull != c.pull || !cmp.Equal(got.ImageAllowList, c.allow) || got.ImageDigest != c.wantPinned {
				t.Errorf("for executor: pull %v allow %v pinned %q", got.AllowPull, got.ImageAllowList, got.ImageDigest)
			}
			if r := c.p.streamingRefusal(&c.req); (r != "") != c.refusal {
				t.Errorf("refusal = %q", r)
			}
		})
	}
	for _, c := range []struct {
		a, b string
		same bool
	}{{"llm", "llm:latest", true}, {"docker.io/library/llm:1", "llm:1", true}, {"ghcr.io/x/llm:1", "llm:1", false}, {"localhost:5000/llm", "localhost:5000/llm:latest", true}, {"", "", false}} {
		if protocol.SameImageName(c.a, c.b) != c.same {
			t.Errorf("SameImageName(%q, %q) != %v", c.a, c.b, c.same)
		}
	}
}

// Every message upstream's validator sends a miner decodes; the main
// hotkey request (main_hotkey null) is answered with the miner's hotkey.
func TestUpstreamValidatorMessages(t *testing.T) {
	f, err := os.Open("../../protocol/testdata/upstream/messages.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	n := 0
	for sc.Scan() {
		var v struct {
			Name, Link string
			JSON       json.RawMessage
		}
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatal(err)
		}
		if v.Link != "validator->miner" && v.Link != "both" {
			continue
		}
		n++
		schematest.Valid(t, "protocol_messages.ValidatorToMinerMessage.union", v.JSON)
		if _, err := protocol.Decode(v.JSON); err != nil {
			t.Errorf("%s: %v", v.Name, err)
		}
	}
	if n < 20 {
		t.Errorf("only %d validator→miner vectors", n)
	}

	mk, v := hotkey(t, 30), hotkey(t, 31)
	addr := testMiner(t, Config{Hotkey: mk, Manifest: map[string]int{protocol.ClassTest: 1}, TrustedValidator: v.SS58()})
	s := dialRaw(t, addr, v.SS58())
	s.send(wsconn.NewValidatorAuth(v, mk.SS58(), time.Now()))
	s.recv() // manifest
	s.recv() // the miner's main hotkey, unasked
	if err := s.ws.Write(t.Context(), websocket.MessageText, []byte(`{"message_type": "V0MainHotkeyMessage", "main_hotkey": null}`)); err != nil {
		t.Fatal(err)
	}
	if m, b := s.recv(); m.MessageType() != "V0MainHotkeyMessage" || m.(*protocol.V0MainHotkeyMessage).MainHotkey != mk.SS58() {
		t.Errorf("answer to the main hotkey request: %s", b)
	}
}

// Every message a horde miner sends a validator, as it sends it (the
// executor's relayed through fromExecutor), is one upstream's validator
// parses: each validates against upstream's MinerToValidatorMessage union.
func TestMinerFramesAreUpstreams(t *testing.T) {
	k := hotkey(t, 50)
	exit := 3
	fromExec := []protocol.Message{
		&protocol.V0ExecutorReadyRequest{JobUUID: "j", ExecutorToken: "t"},
		&protocol.V0VolumesReadyRequest{JobUUID: "j", ExecutorToken: "t"},
		&protocol.V0ExecutionDoneRequest{JobUUID: "j", ExecutorToken: "t"},
		&protocol.V0StreamingJobReadyRequest{JobUUID: "j", ExecutorToken: "t", PublicKey: "PEM", IP: "1.2.3.4", Port: 8443},
		&protocol.V0StreamingJobNotReadyRequest{JobUUID: "j", ExecutorToken: "t"},
		&protocol.V0MachineSpecsRequest{JobUUID: "j", ExecutorToken: "t", Specs: map[string]any{"specs": map[string]any{"gpu": map[string]any{"count": 1}}}}, // upstream nests them (MachineSpecs); horde's executor sends none
		&protocol.V0JobFinishedRequest{JobUUID: "j", ExecutorToken: "t", DockerProcessStdout: "o", DockerProcessStderr: "e",
			Artifacts: map[string]string{"/a/x": "eA=="}, UploadResults: map[string]string{"r": "{}"}, Timings: map[string]int64{"execute": 5}},
		&protocol.V0JobFailedRequest{JobUUID: "j", ExecutorToken: "t", Message: "m", Reason: protocol.FailureNonzeroReturn, Stage: protocol.StageExecution,
			DockerProcessExitStatus: &exit, DockerProcessStdout: "o", Context: map[string]any{"horde_reason": "nonzero_exit"}},
		&protocol.V0HordeFailedRequest{JobUUID: "j", ExecutorToken: "t", Message: "m", Reason: protocol.HordeStreamingFailed, Context: map[string]any{"x": 1}},
		&protocol.V0ExecutorFailedRequest{JobUUID: "j", ExecutorToken: "t"},
	}
	var sent []protocol.Message
	for _, m := range fromExec {
		out, _, ok := decide.FromExecutor(k, m)
		if !ok {
			t.Fatalf("%s not relayed", m.MessageType())
		}
		sent = append(sent, out)
	}
	sent = append(sent,
		&protocol.V0AcceptJobRequest{JobUUID: "j"},
		decide.DeclineMessage(&protocol.V0InitialJobRequest{JobUUID: "j"}, decide.Declined(protocol.RejectInvalidSignature, "bad"), nil),
		&protocol.V0HordeFailedRequest{JobUUID: "j", ReportedBy: protocol.ByMiner, Reason: protocol.HordeExecutorDisconnected, Message: "m"},
		&protocol.V0MainHotkeyMessage{MainHotkey: k.SS58()},
		&protocol.GenericError{Details: "d"},
		authRefusal(wsconn.ErrStale, false),
		manifestFor(map[string]int{protocol.ClassGPU24: 1}, false),
	)
	for _, m := range sent {
		b, err := protocol.Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		schematest.Valid(t, "protocol_messages.MinerToValidatorMessage.union", b)
		if strings.Contains(string(b), "executor_token") {
			t.Errorf("executor token relayed: %s", b)
		}
	}
}
