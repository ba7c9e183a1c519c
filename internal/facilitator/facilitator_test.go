package facilitator

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

func TestConfig(t *testing.T) {
	db := struct{ Store }{}
	allow := func(string) bool { return true }
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no store", Config{AllowValidator: allow}, "Store"},
		{"no allow", Config{Store: db}, "AllowValidator"},
		{"negative skew", Config{Store: db, AllowValidator: allow, MaxSkew: -1}, "MaxSkew"},
		{"negative redispatch", Config{Store: db, AllowValidator: allow, Redispatch: -1}, "Redispatch"},
		{"negative tick", Config{Store: db, AllowValidator: allow, DispatchEvery: -1}, "DispatchEvery"},
		{"negative volume", Config{Store: db, AllowValidator: allow, VolumeTimeout: -1}, "VolumeTimeout"},
		{"negative body", Config{Store: db, AllowValidator: allow, MaxBody: -1}, "MaxBody"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New: %v, want an error naming %s", err, tt.want)
			}
		})
	}
	f, err := New(Config{Store: db, AllowValidator: allow})
	if err != nil {
		t.Fatal(err)
	}
	if f.cfg.MaxSkew != 5*time.Minute || f.cfg.Redispatch != 30*time.Second || f.cfg.DispatchEvery != 5*time.Second ||
		f.cfg.VolumeTimeout != 15*time.Minute || f.cfg.MaxBody != MaxBody || f.cfg.Log == nil {
		t.Errorf("defaults not set: %+v", f.cfg)
	}
}

// TestRunServes: Run serves on the configured listener, returns when its
// context ends, may run once, and the handler refuses requests after.
func TestRunServes(t *testing.T) {
	db := newHarness(t, Config{}).db // a store; this test runs its own facilitator
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := New(Config{Listener: ln, Store: db, AllowValidator: func(string) bool { return false }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	resp, err := http.Get("http://" + ln.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("healthz: %s", resp.Status)
	}
	if err := f.Run(ctx); err == nil {
		t.Error("a second Run was allowed")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	rec := httptestRecorder()
	f.Handler().ServeHTTP(rec, mustRequest(t, "GET", "/healthz"))
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("after Run: %d, want 503", rec.Code)
	}

	// A listener that cannot be made is Run's error.
	f, _ = New(Config{Listen: "127.0.0.1:-1", Store: db, AllowValidator: func(string) bool { return false }})
	if err := f.Run(t.Context()); err == nil {
		t.Error("Run on a bad address succeeded")
	}
}

func TestClientSignatures(t *testing.T) {
	h := newHarness(t, Config{MaxSkew: time.Minute, MaxSmallBody: 4 << 10})
	other := hotkey(t)
	job := body(t, spec("echo"))
	now := time.Now()
	list := h.url + protocol.RouteJobs
	type req = func() *http.Request
	tests := []struct {
		name string
		req  req
		want int
	}{
		{"good create", func() *http.Request { return createRequest(t, h.key, h.url, job, now) }, http.StatusCreated},
		{"good list", func() *http.Request { return signedRequest(t, h.key, "GET", list, nil, now) }, http.StatusOK},
		{"unsigned", func() *http.Request { return newRequest(t, "GET", list, nil) }, http.StatusUnauthorized},
		{"other signature type", func() *http.Request {
			r := signedRequest(t, h.key, "GET", list, nil, now)
			r.Header.Set(protocol.HeaderSignatureType, "ed25519")
			return r
		}, http.StatusUnauthorized},
		{"timestamp not a number", func() *http.Request {
			r := signedRequest(t, h.key, "GET", list, nil, now)
			r.Header.Set(protocol.HeaderTimestampNS, "yesterday")
			return r
		}, http.StatusUnauthorized},
		{"stale", func() *http.Request { return signedRequest(t, h.key, "GET", list, nil, now.Add(-2*time.Minute)) }, http.StatusUnauthorized},
		{"from the future", func() *http.Request { return signedRequest(t, h.key, "GET", list, nil, now.Add(2*time.Minute)) }, http.StatusUnauthorized},
		{"bad signatory", func() *http.Request {
			r := signedRequest(t, h.key, "GET", list, nil, now)
			r.Header.Set(protocol.HeaderSignatory, "5notanaddress")
			return r
		}, http.StatusUnauthorized},
		{"signature not base64", func() *http.Request {
			r := signedRequest(t, h.key, "GET", list, nil, now)
			r.Header.Set(protocol.HeaderSignature, "%%%")
			return r
		}, http.StatusUnauthorized},
		{"signed by another key", func() *http.Request {
			r := signedRequest(t, other, "GET", list, nil, now)
			r.Header.Set(protocol.HeaderSignatory, h.key.SS58())
			return r
		}, http.StatusUnauthorized},
		{"other path signed", func() *http.Request {
			r := newRequest(t, "GET", list, nil)
			return sign(r, h.key, protocol.ScopeHordeRequest, protocol.RequestPayload("GET", protocol.RouteScores, nil), now)
		}, http.StatusUnauthorized},
		{"GET signed with upstream's scope", func() *http.Request {
			return sign(newRequest(t, "GET", list, nil), h.key, protocol.ScopeSignedFields, []byte("GET "+protocol.RouteJobs), now)
		}, http.StatusUnauthorized},
		{"job altered after signing", func() *http.Request {
			r := createRequest(t, h.key, h.url, job, now)
			altered := body(t, spec("echo", "more"))
			r2 := newRequest(t, "POST", h.url+protocol.RouteCreateJob, altered)
			r2.Header = r.Header
			return r2
		}, http.StatusUnauthorized},
		{"job signed over the whole body", func() *http.Request {
			r := newRequest(t, "POST", h.url+protocol.RouteCreateJob, job)
			return sign(r, h.key, protocol.ScopeHordeRequest, protocol.RequestPayload("POST", protocol.RouteCreateJob, job), now)
		}, http.StatusUnauthorized},
		{"unknown field", func() *http.Request {
			b := []byte(`{"executor_class": "always_on.test", "docker_image": "x", "execution_time_limit": 1, "surprise": 1}`)
			return createRequest(t, h.key, h.url, b, now)
		}, http.StatusBadRequest},
		{"not JSON", func() *http.Request { return createRequest(t, h.key, h.url, []byte("{"), now) }, http.StatusBadRequest},
		{"too large", func() *http.Request {
			return signedRequest(t, h.key, "POST", h.url+protocol.RouteJobs+"x/pairs/", make([]byte, 4<<10+1), now)
		}, http.StatusRequestEntityTooLarge},
		{"bearer not a token", func() *http.Request {
			r := newRequest(t, "GET", list, nil)
			r.Header.Set("Authorization", "Bearer nope")
			return r
		}, http.StatusUnauthorized},
		{"basic auth", func() *http.Request {
			r := newRequest(t, "GET", list, nil)
			r.SetBasicAuth("a", "b")
			return r
		}, http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, b := do(t, tt.req())
			var e protocol.APIError
			json.Unmarshal(b, &e)
			if code != tt.want {
				t.Errorf("HTTP %d (%s), want %d", code, b, tt.want)
			}
			if tt.want >= 400 && (e.Error == "" || e.Code == "") {
				t.Errorf("error answer without a reason: %s", b)
			}
		})
	}
	// The same signed job twice is a replay.
	r1 := createRequest(t, h.key, h.url, job, now.Add(time.Second))
	r2 := createRequest(t, h.key, h.url, job, now.Add(time.Second))
	r2.Header.Set(protocol.HeaderSignature, r1.Header.Get(protocol.HeaderSignature))
	for i, r := range []*http.Request{r1, r2} {
		if code, b := do(t, r); code != []int{http.StatusCreated, http.StatusConflict}[i] {
			t.Errorf("submission %d: HTTP %d %s", i+1, code, b)
		}
	}
}

func TestCreateGetList(t *testing.T) {
	h := newHarness(t, Config{})
	var ids []string
	for i := range 3 {
		j := h.create(spec("echo", string(rune('a'+i))))
		if j.Status != protocol.StatusSent || len(j.StatusHistory) != 1 || j.Signatory != h.key.SS58() {
			t.Errorf("created job: %+v", j)
		}
		ids = append(ids, j.UUID)
	}
	got := h.job(ids[1])
	if diff := cmp.Diff([]string{"echo", "b"}, got.Args); diff != "" {
		t.Errorf("args (-want +got):\n%s", diff)
	}
	page, err := h.client.Jobs(h.ctx(), 0, 2)
	if err != nil {
		t.Fatal(err)
	}
	if page.Count != 3 || len(page.Results) != 2 || page.Results[0].UUID != ids[2] || page.Next == nil || page.Previous != nil {
		t.Errorf("first page: %+v", page)
	}
	page, err = h.client.Jobs(h.ctx(), 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Results) != 1 || page.Results[0].UUID != ids[0] || page.Next != nil || page.Previous == nil || len(page.Results[0].StatusHistory) != 1 {
		t.Errorf("last page: %+v", page)
	}

	// Another client sees none of them.
	stranger := client.New(h.url, hotkey(t))
	if _, err := stranger.Job(h.ctx(), ids[0]); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("another client's job: %v, want not found", err)
	}
	if page, err := stranger.Jobs(h.ctx(), 0, 10); err != nil || page.Count != 0 {
		t.Errorf("another client's list: %+v %v", page, err)
	}
	if _, err := h.client.Job(h.ctx(), "no-such-job"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("unknown job: %v", err)
	}
	if code, _ := do(t, signedRequest(t, h.key, "GET", h.url+protocol.RouteJobs+"?limit=many", nil, time.Now())); code != http.StatusBadRequest {
		t.Errorf("limit=many: HTTP %d", code)
	}
	// A spec that is signed but invalid is refused with the reason.
	bad := spec()
	bad.ExecutionTimeLimit = 0
	if code, msg := do(t, createRequest(t, h.key, h.url, body(t, bad), time.Now())); code != http.StatusBadRequest || !strings.Contains(string(msg), "execution_time_limit") {
		t.Errorf("invalid spec: HTTP %d %s", code, msg)
	}
	// A job for a validator that is none of this facilitator's.
	elsewhere := spec()
	elsewhere.TargetValidatorHotkey = hotkey(t).SS58()
	if code, msg := do(t, createRequest(t, h.key, h.url, body(t, elsewhere), time.Now())); code != http.StatusBadRequest || !strings.Contains(string(msg), "Could not select Validator") {
		t.Errorf("unknown target validator: HTTP %d %s", code, msg)
	}
}

func TestDispatchToConnectedValidator(t *testing.T) {
	h := newHarness(t, Config{})
	v := h.connect()
	s := spec("echo", "hi")
	s.Env = map[string]string{"A": "1"}
	j := h.create(s)
	got := v.nextJob()
	if got.UUID != j.UUID || got.DockerImage != s.DockerImage || !cmp.Equal(got.Args, s.Args) || got.Env["A"] != "1" {
		t.Errorf("validator got %+v", got)
	}
	// The client's signature reaches the validator intact: it verifies.
	if err := protocol.VerifyJobSignature(&got.JobSpec, got.Signature, time.Now(), time.Minute, time.Minute); err != nil {
		t.Errorf("client signature does not verify at the validator: %v", err)
	}
	if got.Signature.Signatory != h.key.SS58() || got.Signature.SignatureScope != protocol.ScopeSignedFields {
		t.Errorf("signature: %+v", got.Signature)
	}
	if vh := h.job(j.UUID).ValidatorHotkey; vh != v.key.SS58() {
		t.Errorf("job assigned to %q, want %s", vh, v.key.SS58())
	}
}

func TestJobsWaitForAValidator(t *testing.T) {
	h := newHarness(t, Config{})
	a, b := h.create(spec("a")), h.create(spec("b"))
	for _, j := range []*protocol.Job{a, b} {
		if got := h.job(j.UUID); got.Status != protocol.StatusSent || got.ValidatorHotkey != "" {
			t.Errorf("job waiting without a validator: %+v", got)
		}
	}
	v := h.connect()
	seen := map[string]bool{v.nextJob().UUID: true, v.nextJob().UUID: true}
	if !seen[a.UUID] || !seen[b.UUID] {
		t.Errorf("validator got %v, want both waiting jobs", seen)
	}
}

// TestRedispatchOnlyToTheSameValidator: an unacknowledged job is given
// again, to the validator that had it and never to another.
func TestRedispatchOnlyToTheSameValidator(t *testing.T) {
	h := newHarness(t, Config{Redispatch: time.Nanosecond, DispatchEvery: 20 * time.Millisecond})
	a, b := h.connect(), h.connect()
	j := h.create(spec())
	// One of the two gets it; which one is chance.
	var holder, other *fakeValidator
	var first protocol.Message
	select {
	case first = <-a.in:
		holder, other = a, b
	case first = <-b.in:
		holder, other = b, a
	case <-h.ctx().Done():
		t.Fatal("nobody got the job")
	}
	if got, ok := first.(*protocol.V2JobRequest); !ok || got.UUID != j.UUID {
		t.Fatalf("holder got %#v first", first)
	}
	for range 2 { // given again (twice) while not acknowledged
		if got := holder.nextJob(); got.UUID != j.UUID {
			t.Fatalf("holder got %s", got.UUID)
		}
	}
	// The other validator's first message is a job meant for it: it was
	// never given the unacknowledged one.
	mine := spec("for", "the", "other")
	mine.TargetValidatorHotkey = other.key.SS58()
	j2 := h.create(mine)
	if got := other.nextJob(); got.UUID != j2.UUID {
		t.Errorf("the other validator got %s first, want %s (the job meant for it)", got.UUID, j2.UUID)
	}
}

func TestStatusUpdates(t *testing.T) {
	h := newHarness(t, Config{})
	a := h.connect()
	j := h.create(spec())
	a.nextJob()
	b := h.connect()

	// Another validator may not report on a's job, nor anyone on a job that does not exist.
	if r := b.request(&protocol.V0JobStatusUpdate{UUID: j.UUID, Status: protocol.StatusCompleted}); r.Status != "error" ||
		len(r.Errors) == 0 || !strings.Contains(r.Errors[0].Msg, "not given") {
		t.Errorf("update from the wrong validator: %+v", r)
	}
	if r := a.request(&protocol.V0JobStatusUpdate{UUID: "nope", Status: protocol.StatusAccepted}); r.Status != "error" {
		t.Errorf("update of an unknown job: %+v", r)
	}
	if got := h.job(j.UUID); got.Status != protocol.StatusSent {
		t.Errorf("status after refused updates: %s", got.Status)
	}

	miner := hotkey(t).SS58()
	a.status(j.UUID, protocol.StatusAccepted, &protocol.StatusMetadata{MinerHotkey: miner})
	a.status(j.UUID, protocol.StatusCompleted, &protocol.StatusMetadata{MinerResponse: &protocol.MinerResponse{DockerProcessStdout: "hi\n"}})
	// News after the end changes nothing.
	a.status(j.UUID, protocol.StatusFailed, nil)
	got := h.job(j.UUID)
	var statuses []protocol.JobStatus
	for _, e := range got.StatusHistory {
		statuses = append(statuses, e.Status)
	}
	if diff := cmp.Diff([]protocol.JobStatus{protocol.StatusSent, protocol.StatusAccepted, protocol.StatusCompleted}, statuses); diff != "" {
		t.Errorf("history (-want +got):\n%s", diff)
	}
	if got.Status != protocol.StatusCompleted {
		t.Errorf("status %s, want completed", got.Status)
	}
	rec, err := h.db.Job(h.ctx(), j.UUID)
	if err != nil || rec.MinerHotkey != miner {
		t.Errorf("miner not recorded: %+v %v", rec, err)
	}
}

func TestValidatorLink(t *testing.T) {
	h := newHarness(t, Config{})
	v := h.connect()
	if r := v.request(&protocol.V0Heartbeat{}); r.Status != "success" {
		t.Errorf("heartbeat: %+v", r)
	}
	if r := v.request(&protocol.V0MachineSpecsUpdate{MinerHotkey: "m"}); r.Status != "success" {
		t.Errorf("machine specs: %+v", r)
	}
	// A message a validator should not send is answered with an error.
	if r := v.request(&protocol.V2JobRequest{UUID: "x", JobSpec: *spec()}); r.Status != "error" || !strings.Contains(r.Errors[0].Msg, "V2JobRequest") {
		t.Errorf("unexpected message answered with %+v", r)
	}
	if r := v.request(&protocol.V0JobStatusUpdate{UUID: "x", Status: "unknown"}); r.Status != "error" {
		t.Errorf("a status the SDK cannot read: %+v", r)
	}

	// A hotkey that is not allowed is refused, and its session closed.
	conn, r, err := h.dial(hotkey(t), protocol.FacilitatorCapabilities)
	if err != nil || r.Status != "error" || r.Errors[0].Type != "auth.validator_not_found" {
		t.Fatalf("unknown validator: %+v %v", r, err)
	}
	if m, err := conn.Recv(h.ctx()); err == nil {
		t.Errorf("refused session goes on: %+v", m)
	}
	// So is a session whose first message is not an authentication.
	conn, err = wsconn.DialWith(h.ctx(), h.wsURL(), wsconn.Options{Decode: protocol.DecodeFacilitatorFrame, BadFrame: wsconn.NoAnswer}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Send(h.ctx(), &protocol.V0Heartbeat{}); err != nil {
		t.Fatal(err)
	}
	if m, err := conn.Recv(h.ctx()); err != nil || m.(*protocol.Response).Status != "error" {
		t.Errorf("session without auth: %+v %v", m, err)
	}
	if m, err := conn.Recv(h.ctx()); err == nil {
		t.Errorf("session without auth goes on: %+v", m)
	}

	// A validator from before negotiation (horde auth, no header) speaks
	// every extension.
	k := hotkey(t)
	h.allow(k)
	legacy := h.connectWith(k, nil)
	if r := legacy.request(&protocol.V0Heartbeat{}); r.Status != "success" {
		t.Errorf("legacy heartbeat: %+v", r)
	}
}

func TestEventsFeedWatchers(t *testing.T) {
	h := newHarness(t, Config{})
	v := h.connect()
	j := h.create(spec())
	v.nextJob()

	type watched struct {
		seen []protocol.JobStatus
		job  *protocol.Job
		err  error
	}
	started := make(chan struct{})
	done := make(chan watched, 1)
	go func() {
		var w watched
		w.job, w.err = h.client.Watch(h.ctx(), j.UUID, func(e protocol.StatusEntry) {
			w.seen = append(w.seen, e.Status)
			if e.Status == protocol.StatusSent {
				close(started)
			}
		})
		done <- w
	}()
	<-started // the history has been sent: what follows arrives live
	v.status(j.UUID, protocol.StatusReceived, nil)
	v.status(j.UUID, protocol.StatusAccepted, nil)
	v.status(j.UUID, protocol.StatusCompleted, nil)
	w := <-done
	if w.err != nil {
		t.Fatal(w.err)
	}
	want := []protocol.JobStatus{protocol.StatusSent, protocol.StatusReceived, protocol.StatusAccepted, protocol.StatusCompleted}
	if diff := cmp.Diff(want, w.seen); diff != "" {
		t.Errorf("statuses watched (-want +got):\n%s", diff)
	}
	if w.job.Status != protocol.StatusCompleted {
		t.Errorf("watch returned %s", w.job.Status)
	}

	// An ended job's events are its history, then the end of the stream.
	resp, err := http.DefaultClient.Do(signedRequest(t, h.key, "GET", h.url+protocol.RouteJobs+j.UUID+"/events", nil, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Header.Get("Content-Type") != "text/event-stream" || strings.Count(string(b), "event: status\ndata: ") != 4 || strings.Contains(string(b), "event: job") {
		t.Errorf("events of an ended job: %s\n%s", resp.Header.Get("Content-Type"), b)
	}
	// Asked for (?job=1, as horde's client does), the job itself ends the
	// stream: the client need not ask for it again.
	resp, err = http.DefaultClient.Do(signedRequest(t, h.key, "GET", h.url+protocol.RouteJobs+j.UUID+"/events?job=1", nil, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	last, ok := strings.CutPrefix(string(b[strings.LastIndex(string(b), "event: "):]), "event: job\ndata: ")
	var ended protocol.Job
	if !ok || json.Unmarshal([]byte(strings.TrimSpace(last)), &ended) != nil || ended.UUID != j.UUID || ended.Status != protocol.StatusCompleted || len(ended.StatusHistory) != 4 {
		t.Errorf("events?job=1 of an ended job:\n%s", b)
	}
	// Another client's job has no events for it.
	resp, err = http.DefaultClient.Do(signedRequest(t, hotkey(t), "GET", h.url+protocol.RouteJobs+j.UUID+"/events", nil, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("events of another's job: HTTP %d", resp.StatusCode)
	}
}

func TestCancel(t *testing.T) {
	h := newHarness(t, Config{})
	// Not yet with a validator: cancelled here, at once.
	j := h.create(spec())
	got, err := h.client.Cancel(h.ctx(), j.UUID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != protocol.StatusCancelled {
		t.Errorf("cancelled waiting job: %s", got.Status)
	}
	if _, err := h.client.Cancel(h.ctx(), j.UUID); err == nil || !strings.Contains(err.Error(), "already ended") {
		t.Errorf("cancel an ended job: %v", err)
	}
	// With its validator: the validator is told, and reports the end.
	v := h.connect()
	j = h.create(spec())
	v.nextJob()
	if _, err := h.client.Cancel(h.ctx(), j.UUID); err != nil {
		t.Fatal(err)
	}
	if m, ok := v.next().(*protocol.V0CancelJobByFacilitator); !ok || m.UUID != j.UUID {
		t.Errorf("validator got %+v, want a cancel of %s", m, j.UUID)
	}
	if _, err := client.New(h.url, hotkey(t)).Cancel(h.ctx(), j.UUID); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("a stranger cancelled the job: %v", err)
	}
}

// streamingReady makes j a serving streaming job of v's, on a miner whose
// hotkey vouches for the job's key; it returns the job's key and the miner.
func streamingReady(t *testing.T, v *fakeValidator, id string) (*jobKey, *sig.Hotkey) {
	t.Helper()
	miner := hotkey(t)
	k := newJobKey(t)
	d := &protocol.StreamingServerDetails{StreamingServerCert: string(k.cert), StreamingServerAddress: "127.0.0.1", StreamingServerPort: 4443}
	d.MinerSignature = miner.SignHex(protocol.StreamingReadyMessage(id, d.StreamingServerAddress, d.StreamingServerPort, d.StreamingServerCert))
	v.status(id, protocol.StatusStreaming, &protocol.StatusMetadata{StreamingDetails: d, MinerHotkey: miner.SS58()})
	return k, miner
}

func TestStopAndVolumes(t *testing.T) {
	h := newHarness(t, Config{})
	v := h.connect()
	j := h.create(spec())
	v.nextJob()
	if _, err := h.client.Stop(h.ctx(), j.UUID); err == nil || !strings.Contains(err.Error(), "not a serving streaming job") {
		t.Errorf("stop a job that does not serve: %v", err)
	}
	streamingReady(t, v, j.UUID)

	// A volume message reaches the validator; its result is the client's answer.
	type acked struct {
		ack *protocol.VolumeAck
		err error
	}
	done := make(chan acked, 1)
	go func() {
		ack, err := h.client.SendVolume(h.ctx(), j.UUID, &protocol.VolumeMessage{Volume: &protocol.Volume{VolumeType: protocol.VolumeZipURL, Contents: "http://127.0.0.1/v.zip"}})
		done <- acked{ack, err}
	}()
	m, ok := v.next().(*protocol.V0JobVolumeRequest)
	if !ok || m.UUID != j.UUID || m.Volume == nil || m.Volume.Contents != "http://127.0.0.1/v.zip" {
		t.Fatalf("validator got %+v", m)
	}
	if r := v.request(&protocol.V0JobVolumeResult{UUID: j.UUID, MessageID: m.MessageID, Success: true, UploadResults: map[string]string{"a": "200"}}); r.Status != "success" {
		t.Errorf("volume result: %+v", r)
	}
	got := <-done
	if got.err != nil || got.ack.MessageID != m.MessageID || got.ack.UploadResults["a"] != "200" {
		t.Errorf("ack: %+v %v", got.ack, got.err)
	}
	// A volume message with neither volume nor upload is refused here.
	if _, err := h.client.SendVolume(h.ctx(), j.UUID, &protocol.VolumeMessage{}); err == nil || !strings.Contains(err.Error(), "HTTP 400") {
		t.Errorf("empty volume message: %v", err)
	}

	if _, err := h.client.Stop(h.ctx(), j.UUID); err != nil {
		t.Fatal(err)
	}
	if m, ok := v.next().(*protocol.V0StopJobByFacilitator); !ok || m.UUID != j.UUID {
		t.Errorf("validator got %+v, want a stop", m)
	}

	// A job whose validator is away cannot be reached: try later (503).
	away := h.create(spec())
	v.nextJob()
	if err := h.db.SetAssignment(h.ctx(), away.UUID, hotkey(t).SS58(), ""); err != nil {
		t.Fatal(err)
	}
	if err := h.db.AddStatus(h.ctx(), away.UUID, protocol.StatusEntry{Status: protocol.StatusStreaming, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	var ae *client.APIError
	if _, err := h.client.Stop(h.ctx(), away.UUID); !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable {
		t.Errorf("stop with the validator away: %v, want HTTP 503", err)
	}
	_, err := h.client.SendVolume(h.ctx(), away.UUID, &protocol.VolumeMessage{Volume: &protocol.Volume{VolumeType: protocol.VolumeZipURL, Contents: "http://127.0.0.1/v.zip"}})
	if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable {
		t.Errorf("volume with the validator away: %v, want HTTP 503", err)
	}
}

func TestScores(t *testing.T) {
	h := newHarness(t, Config{})
	v := h.connect()
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if r := v.request(&protocol.V0ValidatorReport{Cycle: 7, At: at, Scores: json.RawMessage(`[{"miner":"m","score":1}]`)}); r.Status != "success" {
		t.Fatalf("report: %+v", r)
	}
	got, err := h.client.Scores(h.ctx())
	if err != nil {
		t.Fatal(err)
	}
	s, ok := got[v.key.SS58()]
	if !ok || s.Cycle != 7 || !s.At.Equal(at) || string(s.Scores) != `[{"miner":"m","score":1}]` {
		t.Errorf("scores: %+v", got)
	}
}

func TestStatusOf(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{ErrBadRequest, 400}, {ErrUnauthorized, 401}, {ErrForbidden, 403}, {store.ErrNotFound, 404}, {store.ErrDuplicate, 409},
		{ErrReplayed, 409}, {ErrTooLarge, 413},
		{ErrUnavailable, 503}, {ErrTimeout, 504}, {errors.New("disk on fire"), 500},
	}
	for _, tt := range tests {
		if got, _ := statusOf(errors.Join(errors.New("context"), tt.err)); got != tt.want {
			t.Errorf("%v: %d, want %d", tt.err, got, tt.want)
		}
	}
}
