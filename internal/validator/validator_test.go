package validator

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/schematest"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/store/sqlite"
	"github.com/horde-compute/horde/internal/synthetic"
	"github.com/horde-compute/horde/internal/validator/minertest"
	"github.com/horde-compute/horde/internal/validator/windows"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// queue is one direction of an in-memory session.
type queue struct {
	mu     sync.Mutex
	msgs   []protocol.Message
	closed bool
	signal chan struct{}
}

func newQueue() *queue { return &queue{signal: make(chan struct{}, 1)} }

func (q *queue) put(m protocol.Message) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.closed {
		q.msgs = append(q.msgs, m)
	}
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

func (q *queue) next(ctx context.Context) (protocol.Message, error) {
	for {
		q.mu.Lock()
		if len(q.msgs) > 0 {
			m := q.msgs[0]
			q.msgs = q.msgs[1:]
			q.mu.Unlock()
			return m, nil
		}
		closed := q.closed
		q.mu.Unlock()
		if closed {
			return nil, errors.New("session closed")
		}
		select {
		case <-q.signal:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// facilitator plays the facilitator in memory: it authenticates the
// validator (after refusing the first `refuse` tries and failing the first
// `fail` dials), acknowledges every message, and keeps them. An upstream
// one negotiates nothing, answers no heartbeat, checks every frame against
// upstream's models (violations) and refuses a job's status twice.
type facilitator struct {
	mu         sync.Mutex
	silent     bool // answers nothing but authentication
	fail       int
	refuse     int
	upstream   bool
	dials      []time.Time
	got        []protocol.Message
	current    *fconn
	violations []string
	seen       map[string]bool
}

type fconn struct {
	f    *facilitator
	toV  *queue
	auth bool
}

func (f *facilitator) dial(ctx context.Context, url string) (conn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dials = append(f.dials, time.Now())
	if f.fail > 0 {
		f.fail--
		return nil, errors.New("connection refused")
	}
	if f.refuse > 0 {
		f.refuse--
		return nil, errors.New("facilitator refused the authentication")
	}
	c := &fconn{f: f, toV: newQueue(), auth: true}
	f.current = c
	return c, nil
}

func (c *fconn) Has(capability string) bool {
	return !c.f.upstream && slices.Contains(protocol.FacilitatorCapabilities, capability)
}

func wire(m protocol.Message) protocol.Message {
	b, err := protocol.Encode(m)
	if err != nil {
		panic(err)
	}
	m, err = protocol.Decode(b)
	if err != nil {
		panic(err)
	}
	return m
}

func (c *fconn) Send(ctx context.Context, m protocol.Message) error {
	f := c.f
	if f.upstream {
		b, err := protocol.Encode(m)
		if err != nil {
			return err
		}
		name := map[string]string{"V0JobStatusUpdate": "JobStatusUpdate"}[m.MessageType()]
		if name == "" {
			name = m.MessageType()
		}
		if err := schematest.Check("fv_validator_requests."+name, b); err != nil {
			f.mu.Lock()
			f.violations = append(f.violations, fmt.Sprintf("%s: %v", b, err))
			f.mu.Unlock()
		}
	}
	m = wire(m)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.upstream {
		switch m := m.(type) {
		case *protocol.V0Heartbeat, *protocol.V0MachineSpecsUpdate:
			f.got = append(f.got, m)
			return nil // upstream answers neither
		case *protocol.V0JobStatusUpdate:
			key := m.UUID + " " + string(m.Status)
			if f.seen[key] {
				f.violations = append(f.violations, "status sent twice: "+key)
				c.toV.put(&protocol.Response{Status: "error"})
				return nil
			}
			if f.seen == nil {
				f.seen = map[string]bool{}
			}
			f.seen[key] = true
		}
	}
	switch m.(type) {
	case *protocol.V0AuthenticationRequest, *protocol.V0HordeAuthenticationRequest:
		if f.refuse > 0 {
			f.refuse--
			c.toV.put(&protocol.Response{Status: "error"})
			return nil
		}
		c.auth = true
		c.toV.put(&protocol.Response{Status: "success"})
		return nil
	}
	f.got = append(f.got, m)
	if !f.silent {
		c.toV.put(&protocol.Response{Status: "success"})
	}
	return nil
}

func (c *fconn) Recv(ctx context.Context) (protocol.Message, error) { return c.toV.next(ctx) }
func (c *fconn) Close(string) error                                 { c.toV.close(); return nil }

// send delivers m from the facilitator to the validator.
func (f *facilitator) send(m protocol.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.current.toV.put(wire(m))
}

// statuses returns the statuses the facilitator heard of job uuid.
func (f *facilitator) statuses(uuid string) []*protocol.V0JobStatusUpdate {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*protocol.V0JobStatusUpdate
	for _, m := range f.got {
		if u, ok := m.(*protocol.V0JobStatusUpdate); ok && u.UUID == uuid {
			out = append(out, u)
		}
	}
	return out
}

func (f *facilitator) messages(typ string) []protocol.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []protocol.Message
	for _, m := range f.got {
		if m.MessageType() == typ {
			out = append(out, m)
		}
	}
	return out
}

type metagraph struct{ mg *chain.Metagraph }

func (m metagraph) Metagraph(context.Context) (*chain.Metagraph, error) { return m.mg, nil }

// harness is a validator with in-memory miners and facilitator; it must be
// made in a bubble.
type harness struct {
	v      *Validator
	st     *sqlite.DB
	fac    *facilitator
	net    *minertest.Net
	client *sig.Hotkey
	stop   func()
}

func newHarness(t *testing.T, cfg Config, miners ...*minertest.Miner) *harness {
	return newHarnessWith(t, cfg, &facilitator{}, miners...)
}

// newHarnessWith is newHarness with the facilitator fac.
func newHarnessWith(t *testing.T, cfg Config, fac *facilitator, miners ...*minertest.Miner) *harness {
	h := &harness{fac: fac, net: &minertest.Net{}, client: minertest.Hotkey(t)}
	jobKey := streamingJobs(t, miners...)
	var err error
	h.st, err = sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "validator.db"))
	if err != nil {
		t.Fatal(err)
	}
	mg := &chain.Metagraph{}
	if cfg.Hotkey == nil {
		cfg.Hotkey = minertest.Hotkey(t)
	}
	mg.Neurons = append(mg.Neurons, chain.Neuron{Hotkey: cfg.Hotkey.SS58(), ValidatorPermit: true, AxonInfo: chain.AxonInfo{IP: "192.0.2.250", Port: 1}})
	for i, m := range miners {
		n := h.net.Add(m)
		n.UID = i + 1
		mg.Neurons = append(mg.Neurons, n)
	}
	cfg.Metagraph, cfg.Store, cfg.FacilitatorURL = metagraph{mg}, h.st, "ws://facilitator/"
	if cfg.Synthetic.Params == nil {
		cfg.Synthetic.Params = map[string]synthetic.Params{protocol.ClassTest: {SearchSpace: 100, MatrixN: 4, Expected: 5 * time.Second, Weight: 1}}
	}
	h.v, err = newValidator(cfg, transport{miners: h.net, receipts: &http.Client{Transport: h.net}, facilitator: h.fac.dial,
		streams: func(st *client.Stream) (windows.Caller, error) { return echo{jobKey, st}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- h.v.Run(ctx) }()
	h.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
		h.st.Close()
	}
	synctest.Wait()
	return h
}

// streamingJobs makes the miners' streaming jobs serve with one job key.
func streamingJobs(t *testing.T, miners ...*minertest.Miner) *minertest.JobKey {
	k := minertest.NewJobKey(t)
	for _, m := range miners {
		m.JobCert = k.Cert
	}
	return k
}

// echo answers every streaming request to job st with its body, signed by key.
type echo struct {
	key *minertest.JobKey
	st  *client.Stream
}

func (e echo) Call(_ context.Context, q client.Request) ([]byte, *client.Result, error) {
	return q.Body, e.key.Answer(e.st.JobUUID, q, q.Body), nil
}

// job makes a client's signed job request.
func (h *harness) job(t *testing.T, uuid string, spec protocol.JobSpec) *protocol.V2JobRequest {
	spec.Nonce = uuid
	payload, err := spec.SignedBytes()
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Now().UnixNano()
	return &protocol.V2JobRequest{UUID: uuid, JobSpec: spec, Signature: &protocol.Signature{SignatureType: protocol.SignatureTypeBittensor,
		Signatory: h.client.SS58(), TimestampNS: ts, Signature: base64.StdEncoding.EncodeToString(h.client.Sign(protocol.SignedMessage(ts, payload)))}}
}

func spec() protocol.JobSpec {
	return protocol.JobSpec{ExecutorClass: protocol.ClassTest, DockerImage: "img", Args: []string{"echo", "hi"}, ExecutionTimeLimit: 10}
}

func statusList(us []*protocol.V0JobStatusUpdate) []protocol.JobStatus {
	var out []protocol.JobStatus
	for _, u := range us {
		out = append(out, u.Status)
	}
	return out
}

func last(t *testing.T, us []*protocol.V0JobStatusUpdate) *protocol.V0JobStatusUpdate {
	t.Helper()
	if len(us) == 0 {
		t.Fatal("no status")
	}
	return us[len(us)-1]
}

func TestJobThroughTheValidator(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, map[string]int{protocol.ClassTest: 1})
		h := newHarness(t, Config{}, m)
		defer h.stop()
		h.fac.send(h.job(t, "j1", spec()))
		synctest.Wait()
		got := statusList(h.fac.statuses("j1"))
		want := []protocol.JobStatus{protocol.StatusReceived, protocol.StatusAccepted, protocol.StatusExecutorReady, protocol.StatusVolumesReady,
			protocol.StatusExecutionDone, protocol.StatusCompleted}
		if strings.Join(asStrings(got), ",") != strings.Join(asStrings(want), ",") {
			t.Fatalf("statuses %v", got)
		}
		fin := last(t, h.fac.statuses("j1"))
		if fin.Metadata.MinerHotkey != m.Hotkey.SS58() || fin.Metadata.MinerResponse.DockerProcessStdout != "hi\n" || len(fin.Metadata.Receipts) != 3 {
			t.Errorf("final %+v", fin.Metadata)
		}
		rec, err := h.st.Job(t.Context(), "j1")
		if err != nil || rec.Status != protocol.StatusCompleted {
			t.Errorf("stored %s %v", rec.Status, err)
		}
		// The facilitator re-sends it (its answer was slow): nothing happens.
		h.fac.send(h.job(t, "j1", spec()))
		synctest.Wait()
		if n := len(h.fac.statuses("j1")); n != len(want) {
			t.Errorf("re-sent job produced %d statuses", n)
		}
		if len(m.Offers()) != 1 {
			t.Errorf("%d offers", len(m.Offers()))
		}
	})
}

func asStrings(s []protocol.JobStatus) []string {
	var out []string
	for _, x := range s {
		out = append(out, string(x))
	}
	return out
}

func TestIntakeRefuses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, map[string]int{protocol.ClassTest: 1})
		h := newHarness(t, Config{StreamingWhitelist: map[string]string{"llm": "sha256:1"}}, m)
		defer h.stop()
		good := h.job(t, "ok", spec())
		h.fac.send(good)
		synctest.Wait()

		forged := h.job(t, "forged", spec())
		forged.Args = []string{"rm", "-rf"} // not what the client signed
		unsigned := h.job(t, "unsigned", spec())
		unsigned.Signature = nil
		stale := h.job(t, "stale", spec())
		stale.Signature.TimestampNS = time.Now().Add(-time.Hour).UnixNano()
		badType := h.job(t, "type", spec())
		badType.Signature.SignatureType = "ethereum"
		invalid := spec()
		invalid.ExecutionTimeLimit = 0
		streaming := spec()
		streaming.StreamingDetails = &protocol.StreamingDetails{PublicKey: "k"}
		replayed := *good
		replayed.UUID = "replayed"
		for _, tt := range []struct {
			req    *protocol.V2JobRequest
			reason protocol.JobRejectionReason
			code   string // horde's specific reason, where upstream's enum says less
			msg    string
		}{
			{forged, protocol.RejectInvalidSignature, "invalid_signature", "client signature is invalid"},
			{unsigned, protocol.RejectInvalidSignature, "invalid_signature", "no signature"},
			{stale, protocol.RejectInvalidSignature, "invalid_signature", "ago, limit"},
			{badType, protocol.RejectInvalidSignature, "invalid_signature", "not supported"},
			{h.job(t, "invalid", invalid), protocol.RejectUnknown, "invalid_job", "invalid job: execution_time_limit"},
			{h.job(t, "streaming", streaming), protocol.RejectUnknown, "image_not_whitelisted", "not whitelisted"},
			{&replayed, protocol.RejectInvalidSignature, "replayed_job", "already received"},
		} {
			h.fac.send(tt.req)
			synctest.Wait()
			u := h.fac.statuses(tt.req.UUID)
			if len(u) != 1 || u[0].Status != protocol.StatusRejected || u[0].Metadata.JobRejectionDetails.Reason != tt.reason ||
				protocol.ReasonCode(u[0].Metadata.JobRejectionDetails.Context) != tt.code ||
				!strings.Contains(u[0].Metadata.JobRejectionDetails.Message, tt.msg) {
				t.Errorf("%s: %+v", tt.req.UUID, u)
			}
		}
		if len(m.Offers()) != 1 {
			t.Errorf("a refused job reached the miner: %d offers", len(m.Offers()))
		}
	})
}

// A streaming job serves until the client stops it; volume messages reach
// it meanwhile and their results come back.
func TestStreamingJobControl(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, map[string]int{protocol.ClassTest: 2})
		h := newHarness(t, Config{StreamingWhitelist: map[string]string{"llm": "sha256:1"}}, m)
		defer h.stop()
		s := spec()
		s.DockerImage = "llm"
		s.StreamingDetails = &protocol.StreamingDetails{PublicKey: "client-cert"}
		h.fac.send(h.job(t, "s", s))
		synctest.Wait()
		if u := last(t, h.fac.statuses("s")); u.Status != protocol.StatusStreaming || u.Metadata.StreamingDetails.StreamingServerPort != 8443 {
			t.Fatalf("not serving: %+v", u)
		}
		vol := &protocol.Volume{VolumeType: protocol.VolumeInline, Contents: "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="}
		h.fac.send(&protocol.V0JobVolumeRequest{UUID: "s", MessageID: "m1", Volume: vol})
		h.fac.send(&protocol.V0JobVolumeRequest{UUID: "nope", MessageID: "m2", Volume: vol})
		h.fac.send(&protocol.V0StopJobByFacilitator{UUID: "nope"})
		h.fac.send(&protocol.V0CancelJobByFacilitator{UUID: "nope"})
		h.fac.send(&protocol.V0StreamPairReport{UUID: "nope"})
		h.fac.send(&protocol.V0StreamPairReport{UUID: "nope", ID: 7})
		synctest.Wait()
		// A pair with an id is acknowledged through the outbox, here as
		// refused for good; one without (an older facilitator) is not.
		acks := h.fac.messages("V0StreamPairAck")
		if len(acks) != 1 || acks[0].(*protocol.V0StreamPairAck).ID != 7 || !strings.Contains(acks[0].(*protocol.V0StreamPairAck).Error, "does not know") {
			t.Errorf("pair acks %+v, want one refusing pair 7", acks)
		}
		results := map[string]*protocol.V0JobVolumeResult{}
		for _, r := range h.fac.messages("V0JobVolumeResult") {
			results[r.(*protocol.V0JobVolumeResult).MessageID] = r.(*protocol.V0JobVolumeResult)
		}
		if r := results["m1"]; r == nil || !r.Success || r.UUID != "s" {
			t.Errorf("volume result %+v", r)
		}
		if r := results["m2"]; r == nil || r.Success || !strings.Contains(r.Error, "not running") {
			t.Errorf("volume result for an unknown job %+v", r)
		}
		h.fac.send(&protocol.V0StopJobByFacilitator{UUID: "s"})
		synctest.Wait()
		if u := last(t, h.fac.statuses("s")); u.Status != protocol.StatusCompleted {
			t.Errorf("after stop: %s", u.Status)
		}
		if h.v.StopJob("s") {
			t.Error("stopped a job that ended")
		}

		// Cancelled by the client while it serves.
		h.fac.send(h.job(t, "c", s))
		synctest.Wait()
		h.fac.send(&protocol.V0CancelJobByFacilitator{UUID: "c"})
		synctest.Wait()
		if u := last(t, h.fac.statuses("c")); u.Status != protocol.StatusCancelled {
			t.Errorf("after cancel: %s", u.Status)
		}
		if h.v.CancelJob("c") {
			t.Error("cancelled a job that ended")
		}
	})
}

// A job left unfinished by a previous run fails with a clear reason.
func TestRecoverUnfinished(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		st, err := sqlite.Open(t.Context(), filepath.Join(dir, "validator.db"))
		if err != nil {
			t.Fatal(err)
		}
		err = st.CreateJob(t.Context(), store.JobRecord{UUID: "old", Spec: spec(), Signature: protocol.Signature{Signature: "s"}, Status: protocol.StatusAccepted, CreatedAt: time.Now()})
		st.Close()
		if err != nil {
			t.Fatal(err)
		}
		h := &harness{fac: &facilitator{}, net: &minertest.Net{}}
		h.st, _ = sqlite.Open(t.Context(), filepath.Join(dir, "validator.db"))
		defer h.st.Close()
		v, err := newValidator(Config{Hotkey: minertest.Hotkey(t), Metagraph: metagraph{&chain.Metagraph{}}, Store: h.st, FacilitatorURL: "ws://f/"},
			transport{miners: h.net, facilitator: h.fac.dial})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- v.Run(ctx) }()
		synctest.Wait()
		if err := v.Run(ctx); err == nil {
			t.Error("a second Run was allowed")
		}
		cancel()
		<-done
		u := h.fac.statuses("old")
		if len(u) != 1 || u[0].Status != protocol.StatusHordeFailed || !strings.Contains(u[0].Metadata.HordeFailureDetails.Message, "validator restarted") {
			t.Errorf("statuses %+v", u)
		}
	})
}

// The link reconnects with doubling backoff after failed dials and refused
// authentication; nothing queued meanwhile is lost.
func TestFacilitatorReconnects(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fac := &facilitator{fail: 2, refuse: 1}
		st, _ := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "v.db"))
		defer st.Close()
		v, err := newValidator(Config{Hotkey: minertest.Hotkey(t), Metagraph: metagraph{&chain.Metagraph{}}, Store: st, FacilitatorURL: "ws://f/"},
			transport{miners: &minertest.Net{}, facilitator: fac.dial})
		if err != nil {
			t.Fatal(err)
		}
		v.out.Push(&protocol.V0JobStatusUpdate{UUID: "queued", Status: protocol.StatusReceived})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- v.Run(ctx) }()
		time.Sleep(2 * time.Second)
		synctest.Wait()
		var gaps []time.Duration
		for _, d := range fac.dials {
			gaps = append(gaps, d.Sub(start))
		}
		// Failed, failed, refused, then up: after 200, 400 and 800 ms.
		want := []time.Duration{0, 200 * time.Millisecond, 600 * time.Millisecond, 1400 * time.Millisecond}
		if len(gaps) != len(want) {
			t.Fatalf("dials at %v, want %v", gaps, want)
		}
		for i := range want {
			if gaps[i] != want[i] {
				t.Errorf("dials at %v, want %v", gaps, want)
				break
			}
		}
		if len(fac.statuses("queued")) != 1 {
			t.Errorf("queued update not delivered after reconnecting")
		}
		rec := httptest.NewRecorder()
		v.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		var health map[string]any
		json.Unmarshal(rec.Body.Bytes(), &health)
		if rec.Code != 200 || health["facilitator_connected"] != true || health["running"] != true {
			t.Errorf("health %d %v", rec.Code, health)
		}
		// Heartbeats keep the link warm.
		time.Sleep(heartbeatEvery)
		synctest.Wait()
		if len(fac.messages("V0Heartbeat")) == 0 {
			t.Error("no heartbeat")
		}
		cancel()
		<-done
	})
}

// A session the facilitator drops while an update awaits its answer ends at
// once: the validator redials after its first backoff, not after the
// answer's timeout, and sends the unanswered update again.
func TestFacilitatorDropsSessionAwaitingAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fac := &facilitator{silent: true}
		st, _ := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "v.db"))
		defer st.Close()
		v, err := newValidator(Config{Hotkey: minertest.Hotkey(t), Metagraph: metagraph{&chain.Metagraph{}}, Store: st, FacilitatorURL: "ws://f/"},
			transport{miners: &minertest.Net{}, facilitator: fac.dial})
		if err != nil {
			t.Fatal(err)
		}
		v.out.Push(&protocol.V0JobStatusUpdate{UUID: "queued", Status: protocol.StatusReceived})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- v.Run(ctx) }()
		synctest.Wait() // connected; the update awaits its answer
		fac.mu.Lock()
		fac.silent = false
		c := fac.current
		fac.mu.Unlock()
		dropped := time.Now()
		c.toV.close() // the facilitator restarts
		time.Sleep(time.Second)
		synctest.Wait()
		fac.mu.Lock()
		dials := append([]time.Time(nil), fac.dials...)
		fac.mu.Unlock()
		if len(dials) != 2 || dials[1].Sub(dropped) != backoffFirst {
			t.Errorf("redialled at %v after the drop (%d dials), want after %v", dials[len(dials)-1].Sub(dropped), len(dials), backoffFirst)
		}
		if n := len(fac.statuses("queued")); n != 2 {
			t.Errorf("the unanswered update was sent %d times, want twice (again on the new session)", n)
		}
		cancel()
		<-done
	})
}

// The loops run rounds, validation windows and canaries on their own.
func TestLoops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, map[string]int{protocol.ClassTest: 1})
		trustedMiner := minertest.New(t, map[string]int{protocol.ClassTest: 1})
		cfg := Config{StreamingWhitelist: map[string]string{"llm": "sha256:1"},
			Synthetic: SyntheticConfig{Every: time.Minute, Image: "img"},
			Validation: ValidationConfig{Every: time.Minute, Threshold: 1, Sample: 1, CanaryEvery: 25 * time.Second,
				Canaries: map[string]CanarySpec{"llm": {Path: "/v1/completions", Requests: [][]byte{[]byte("hello")}}}}}
		h := newTrustedHarness(t, cfg, trustedMiner, m)
		defer h.stop()
		time.Sleep(time.Minute + time.Second)
		synctest.Wait()
		scores, err := h.st.LatestScores(t.Context(), 1)
		if err != nil || len(scores) != 1 || scores[0].Miner != m.Hotkey.SS58() {
			t.Errorf("scores %+v %v", scores, err)
		}
		if len(h.fac.messages("V0ValidatorReport")) != 1 {
			t.Error("no report sent")
		}
		ws, err := h.st.Windows(t.Context(), 10)
		if err != nil || len(ws) != 1 || ws[0].Image != "llm" {
			t.Errorf("windows %+v %v", ws, err)
		}
		// The methods callers use, directly.
		if n, err := h.v.PairsWaiting(t.Context(), "llm"); err != nil || n != 0 {
			t.Errorf("pairs waiting %d %v", n, err)
		}
		if n, err := h.v.Canary(t.Context(), "llm", [][]byte{[]byte("x")}, "/"); err != nil || n != 1 {
			t.Errorf("canary %d %v", n, err)
		}
		if rep, err := h.v.OpenWindow(t.Context(), "llm"); err != nil || rep.Checked != 1 || rep.Failed != 0 {
			t.Errorf("window %+v %v", rep, err)
		}
		if rep, err := h.v.Round(t.Context()); err != nil || len(rep.Results) != 1 || !rep.Results[0].Passed {
			t.Errorf("round %+v %v", rep, err)
		}
		// Reports carry the latest validation windows, for operators' dashboards.
		synctest.Wait()
		reps := h.fac.messages("V0ValidatorReport")
		var reported []protocol.ReportedWindow
		if err := json.Unmarshal(reps[len(reps)-1].(*protocol.V0ValidatorReport).Windows, &reported); err != nil || len(reported) != 2 || reported[0].Image != "llm" {
			t.Errorf("the last report's windows: %+v %v", reported, err)
		}
	})
}

// newTrustedHarness is newHarness with trusted as the validator's trusted miner.
func newTrustedHarness(t *testing.T, cfg Config, trusted *minertest.Miner, miners ...*minertest.Miner) *harness {
	// The trusted miner lives on the same in-memory network as the others;
	// it is added first so that its address is known before the validator is made.
	net := &minertest.Net{}
	jobKey := streamingJobs(t, append(miners, trusted)...)
	tn := net.Add(trusted)
	cfg.Validation.TrustedMiner = &tn
	h := &harness{fac: &facilitator{}, net: net, client: minertest.Hotkey(t)}
	var err error
	h.st, err = sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "validator.db"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Hotkey = minertest.Hotkey(t)
	mg := &chain.Metagraph{}
	for i, m := range miners {
		n := net.Add(m)
		n.UID = i + 1
		mg.Neurons = append(mg.Neurons, n)
	}
	cfg.Metagraph, cfg.Store, cfg.FacilitatorURL = metagraph{mg}, h.st, "ws://facilitator/"
	cfg.Synthetic.Params = map[string]synthetic.Params{protocol.ClassTest: {SearchSpace: 100, MatrixN: 4, Expected: 5 * time.Second, Weight: 1}}
	h.v, err = newValidator(cfg, transport{miners: net, receipts: &http.Client{Transport: net}, facilitator: h.fac.dial,
		streams: func(st *client.Stream) (windows.Caller, error) { return echo{jobKey, st}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- h.v.Run(ctx) }()
	h.stop = func() {
		cancel()
		<-done
		h.st.Close()
	}
	synctest.Wait()
	return h
}

func TestConfig(t *testing.T) {
	k := minertest.Hotkey(t)
	mg := metagraph{&chain.Metagraph{}}
	st := &sqlite.DB{}
	for _, tt := range []struct {
		cfg  Config
		want string
	}{
		{Config{Metagraph: mg, Store: st}, "Hotkey"},
		{Config{Hotkey: k, Store: st}, "Metagraph"},
		{Config{Hotkey: k, Metagraph: mg}, "Store"},
		{Config{Hotkey: k, Metagraph: mg, Store: st, MaxAttempts: -1}, "MaxAttempts"},
		{Config{Hotkey: k, Metagraph: mg, Store: st, QueueTimeout: -1}, "QueueTimeout"},
		{Config{Hotkey: k, Metagraph: mg, Store: st, Validation: ValidationConfig{Sample: 2}}, "Sample"},
	} {
		if _, err := New(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("want an error naming %s, got %v", tt.want, err)
		}
	}
	if err := Run(t.Context(), Config{}); err == nil {
		t.Error("Run accepted an empty config")
	}
	v, err := New(Config{Hotkey: k, Metagraph: mg, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	c := v.cfg
	if c.MaxAttempts != 3 || c.QueueTimeout != 30*time.Second || c.Refresh != time.Minute || c.MaxJobAge != 10*time.Minute ||
		c.Timing.Reserve != 7*time.Second || c.Validation.Class != protocol.ClassTest || len(c.Synthetic.Generators) == 0 {
		t.Errorf("defaults %+v", c)
	}
	rec := httptest.NewRecorder()
	v.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"running":false`) {
		t.Errorf("health before Run: %d %s", rec.Code, rec.Body)
	}
}
