package facilitator

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/horde-compute/horde/internal/schematest"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/pyjson"
	"github.com/horde-compute/horde/sig"
)

// These tests put upstream's parties in front of horde's facilitator, as
// upstream's code behaves (its SDK, its validator's facilitator client),
// and check every answer against upstream's own models (JSON schemas).

// upstreamValidator speaks the validator link as upstream's validator does:
// raw frames, no capabilities unless given.
type upstreamValidator struct {
	t      *testing.T
	h      *harness
	ws     *websocket.Conn
	frames chan []byte
	done   chan struct{}
}

func newUpstreamValidator(t *testing.T, h *harness, caps []string) *upstreamValidator {
	t.Helper()
	opts := &websocket.DialOptions{}
	if caps != nil {
		opts.HTTPHeader = http.Header{protocol.HeaderCapabilities: {protocol.FormatCapabilities(caps)}}
	}
	ws, resp, err := websocket.Dial(h.ctx(), h.wsURL(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := protocol.ParseCapabilities(resp.Header.Get(protocol.HeaderCapabilities)); strings.Join(got, ",") != strings.Join(protocol.FacilitatorCapabilities, ",") {
		t.Errorf("101 advertises %q", got)
	}
	ws.SetReadLimit(protocol.MaxMessageSize)
	u := &upstreamValidator{t: t, h: h, ws: ws, frames: make(chan []byte, 64), done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { // owned: the cleanup below waits for done
		defer close(u.done)
		defer close(u.frames)
		for {
			_, b, err := ws.Read(ctx)
			if err != nil {
				return
			}
			u.frames <- b
		}
	}()
	t.Cleanup(func() {
		cancel()
		ws.CloseNow()
		<-u.done
	})
	return u
}

func (u *upstreamValidator) send(m protocol.Message) {
	u.t.Helper()
	b, err := protocol.Encode(m)
	if err != nil {
		u.t.Fatal(err)
	}
	u.sendRaw(string(b))
}

func (u *upstreamValidator) sendRaw(frame string) {
	u.t.Helper()
	if err := u.ws.Write(u.h.ctx(), websocket.MessageText, []byte(frame)); err != nil {
		u.t.Fatal(err)
	}
}

// frame returns the next frame, checked against the model upstream's
// validator parses it with (facilitator_client: Response, V2JobRequest or
// V0JobCheated); anything else is a horde-only message it cannot read.
func (u *upstreamValidator) frame() []byte {
	u.t.Helper()
	select {
	case b, ok := <-u.frames:
		if !ok {
			u.t.Fatal("the facilitator closed the session")
		}
		var head struct {
			MessageType *string `json:"message_type"`
		}
		json.Unmarshal(b, &head)
		switch {
		case head.MessageType == nil:
			schematest.Valid(u.t, "fv_facilitator_requests.Response", b)
		case *head.MessageType == "V2JobRequest" || *head.MessageType == "V0JobCheated":
			schematest.Valid(u.t, "fv_facilitator_requests."+*head.MessageType, b)
		default:
			u.t.Errorf("sent %s to an upstream validator", b)
		}
		return b
	case <-u.h.ctx().Done():
		u.t.Fatal("upstream validator: no frame came")
	}
	return nil
}

// response returns the next frame, which must be a Response.
func (u *upstreamValidator) response() *protocol.Response {
	u.t.Helper()
	b := u.frame()
	m, err := protocol.DecodeFacilitatorFrame(b)
	r, ok := m.(*protocol.Response)
	if err != nil || !ok || strings.Contains(string(b), "message_type") {
		u.t.Fatalf("want a Response, got %s", b)
	}
	return r
}

func (u *upstreamValidator) auth(m *protocol.V0AuthenticationRequest) *protocol.Response {
	u.t.Helper()
	u.send(m)
	return u.response()
}

func (u *upstreamValidator) nextJob() *protocol.V2JobRequest {
	u.t.Helper()
	m, err := protocol.Decode(u.frame())
	j, ok := m.(*protocol.V2JobRequest)
	if err != nil || !ok {
		u.t.Fatalf("want a V2JobRequest: %T %v", m, err)
	}
	return j
}

// closed waits until the facilitator ends the session.
func (u *upstreamValidator) closed() {
	u.t.Helper()
	for {
		select {
		case _, ok := <-u.frames:
			if !ok {
				return
			}
		case <-u.h.ctx().Done():
			u.t.Fatal("the session was not closed")
		}
	}
}

// sdk is a client as upstream's SDK is one: it logs in for a bearer token,
// signs only job creation (SignedFields) and cheat reports (FullRequest),
// and reads answers with upstream's models.
type sdk struct {
	t     *testing.T
	h     *harness
	key   *sig.Hotkey
	token string
}

func (s *sdk) call(method, path string, body []byte, hdr http.Header) (int, []byte) {
	s.t.Helper()
	r := newRequest(s.t, method, s.h.url+path, body)
	for k, v := range hdr {
		r.Header[k] = v
	}
	if s.token != "" {
		r.Header.Set("Authorization", "Bearer "+s.token)
		r.Header.Set("Realm", "mainnet")
		r.Header.Set("SubnetID", "12")
	}
	if body != nil {
		r.Header.Set("Content-Type", "application/json")
	}
	return do(s.t, r)
}

// login does what the SDK's authenticate does.
func (s *sdk) login() {
	s.t.Helper()
	code, b := s.call("GET", "/auth/nonce", nil, nil)
	var n protocol.NonceResponse
	if code != http.StatusOK || json.Unmarshal(b, &n) != nil || n.Nonce == "" {
		s.t.Fatalf("nonce: HTTP %d %s", code, b)
	}
	sg := s.key.Sign([]byte(n.Nonce))
	body, _ := json.Marshal(map[string]string{"hotkey": s.key.SS58(), "signature": hexOf(sg), "nonce": n.Nonce})
	code, b = s.call("POST", "/auth/login", body, nil)
	var tok protocol.LoginResponse
	if code != http.StatusOK || json.Unmarshal(b, &tok) != nil || tok.Token == "" {
		s.t.Fatalf("login: HTTP %d %s", code, b)
	}
	s.token = tok.Token
}

func hexOf(b []byte) string {
	var s sig.Signature
	copy(s[:], b)
	return s.BareHex()
}

// signature returns the X-CH headers of a signature over payload.
func (s *sdk) signature(scope string, payload []byte) http.Header {
	ts := time.Now().UnixNano()
	return http.Header{
		protocol.HeaderSignatureType:  {"bittensor"},
		protocol.HeaderSignatory:      {s.key.SS58()},
		protocol.HeaderTimestampNS:    {strconv.FormatInt(ts, 10)},
		protocol.HeaderSignature:      {base64.StdEncoding.EncodeToString(s.key.Sign(protocol.SignedMessage(ts, payload)))},
		protocol.HeaderSignatureScope: {scope},
	}
}

// sdkVector is one of upstream's own signed job bodies: the body and the
// bytes upstream's SDK signed for it.
type sdkVector struct {
	body        string
	signedBytes []byte
}

func sdkVectors(t *testing.T) map[string]sdkVector {
	t.Helper()
	f, err := os.Open("testdata/signed_fields.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]sdkVector{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var line struct {
			Name        string          `json:"name"`
			Body        json.RawMessage `json:"sdk_body"`
			SignedBytes string          `json:"signed_bytes"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatal(err)
		}
		out[line.Name] = sdkVector{string(line.Body), []byte(line.SignedBytes)}
	}
	return out
}

// create submits an upstream vector's body (as the SDK's httpx writes it)
// for validator, signed over the bytes upstream's SDK computed for it.
func (s *sdk) create(v sdkVector, validator string) (int, []byte) {
	s.t.Helper()
	body := strings.Replace(v.body, "5H728gLgx4yuCSVEwGCAfLo3RtzTau9F6cTNqNJtrqqjACWq", validator, 1) // not signed
	return s.call("POST", protocol.RouteCreateJob, []byte(body), s.signature(protocol.ScopeSignedFields, v.signedBytes))
}

func (s *sdk) job(id string) *protocol.Job {
	s.t.Helper()
	code, b := s.call("GET", protocol.RouteJobs+id+"/", nil, nil)
	if code != http.StatusOK {
		s.t.Fatalf("job: HTTP %d %s", code, b)
	}
	schematest.Valid(s.t, "sdk_models.FacilitatorJobResponse", b)
	var j protocol.Job
	json.Unmarshal(b, &j)
	return &j
}

func last(j *protocol.Job) protocol.StatusEntry { return j.StatusHistory[len(j.StatusHistory)-1] }

// TestUpstreamSDK: upstream's SDK logs in, submits jobs signed as it signs
// them (upstream's own vectors), polls them to their end and reads them,
// streaming details and pages included, all answers valid to its models.
func TestUpstreamSDK(t *testing.T) {
	h := newHarness(t, Config{})
	v := h.connect()
	c := &sdk{t: t, h: h, key: h.key}
	c.login()
	vectors := sdkVectors(t)

	// A job with args, env (in the SDK's order, not sorted) and use_gpu.
	code, b := c.create(vectors["args_env_gpu"], v.key.SS58())
	if code != http.StatusCreated {
		t.Fatalf("create: HTTP %d %s", code, b)
	}
	schematest.Valid(t, "sdk_models.FacilitatorJobResponse", b)
	var created protocol.Job
	json.Unmarshal(b, &created)
	if last(&created).Status != protocol.StatusSent || created.Env["B"] != "2" || !created.UseGPU {
		t.Errorf("created: %+v", created)
	}
	got := v.nextJob()
	if err := protocol.VerifyJobSignature(&got.JobSpec, got.Signature, time.Now(), time.Minute, time.Minute); err != nil {
		t.Errorf("the validator cannot verify the SDK's signature: %v", err)
	}
	if !strings.Contains(got.SignedFields, `"env":{"B":"2","A":"1"}`) {
		t.Errorf("env order lost: %s", got.SignedFields)
	}
	// It runs to completion; the SDK reads the result from the top level.
	v.status(got.UUID, protocol.StatusReceived, nil)
	v.status(got.UUID, protocol.StatusAccepted, &protocol.StatusMetadata{MinerHotkey: hotkey(t).SS58()})
	v.status(got.UUID, protocol.StatusCompleted, &protocol.StatusMetadata{MinerResponse: &protocol.MinerResponse{
		DockerProcessStdout: "héllo\n", DockerProcessStderr: "warn\n", Artifacts: map[string]string{"/artifacts/a.txt": "aGk="},
		UploadResults: map[string]string{"o.txt": `{"headers": {}, "body": ""}`}}})
	j := c.job(got.UUID)
	if last(j).Status != protocol.StatusCompleted || j.Stdout != "héllo\n" || j.Stderr != "warn\n" || j.Artifacts["/artifacts/a.txt"] != "aGk=" || j.UploadResults["o.txt"] == "" {
		t.Errorf("completed job as the SDK sees it: %+v", j)
	}

	// A job the client cancels (horde's route, with its token) ends failed
	// for the SDK, which has no cancelled.
	code, b = c.create(vectors["minimal"], v.key.SS58())
	if code != http.StatusCreated {
		t.Fatalf("create: HTTP %d %s", code, b)
	}
	json.Unmarshal(b, &created)
	v.nextJob()
	if code, b := c.call("POST", protocol.RouteJobs+created.UUID+"/cancel/", nil, nil); code != http.StatusAccepted {
		t.Fatalf("cancel: HTTP %d %s", code, b)
	}
	v.next() // the cancel
	v.status(created.UUID, protocol.StatusCancelled, &protocol.StatusMetadata{Comment: "cancelled by the client"})
	j = c.job(created.UUID)
	if e := last(j); e.Status != protocol.StatusFailed || e.Metadata.JobFailureDetails == nil || e.Metadata.JobFailureDetails.Context["horde_reason"] != "cancelled" {
		t.Errorf("cancelled job as the SDK sees it: %+v", e)
	}
	if hj := h.job(created.UUID); last(hj).Status != protocol.StatusCancelled {
		t.Errorf("horde's client sees %s", last(hj).Status)
	}

	// A streaming job: the SDK's wait_for_streaming reads the server from
	// the top level once the last status is streaming_ready.
	stream := strings.Replace(vectors["minimal"].body, `"volumes": []`, `"streaming_details": {"public_key": "PEM"}, "volumes": []`, 1)
	stream = strings.Replace(stream, "5H728gLgx4yuCSVEwGCAfLo3RtzTau9F6cTNqNJtrqqjACWq", v.key.SS58(), 1)
	j2, _ := protocol.SignedFieldsOfRequest([]byte(stream))
	payload, _ := protocol.SignedPayload(j2)
	code, b = c.call("POST", protocol.RouteCreateJob, []byte(stream), c.signature(protocol.ScopeSignedFields, payload))
	if code != http.StatusCreated {
		t.Fatalf("streaming create: HTTP %d %s", code, b)
	}
	json.Unmarshal(b, &created)
	if s := v.nextJob(); s.StreamingDetails == nil || s.StreamingDetails.PublicKey != "PEM" {
		t.Errorf("streaming details: %+v", s.StreamingDetails)
	}
	if created.StreamingServerAddress != nil {
		t.Error("a server before streaming_ready")
	}
	streamingReady(t, v, created.UUID)
	j = c.job(created.UUID)
	if last(j).Status != protocol.StatusStreaming || j.StreamingServerAddress == nil || *j.StreamingServerAddress != "127.0.0.1" || *j.StreamingServerPort != 4443 {
		t.Errorf("streaming job: %+v", j)
	}

	// Pages, as iter_jobs and get_jobs ask for them.
	code, b = c.call("GET", protocol.RouteJobs+"?page=1&page_size=2", nil, nil)
	schematest.Valid(t, "sdk_models.FacilitatorJobsResponse", b)
	var page protocol.JobList
	json.Unmarshal(b, &page)
	if code != http.StatusOK || page.Count != 3 || len(page.Results) != 2 || page.Next == nil || page.Previous != nil {
		t.Errorf("page 1: HTTP %d %s", code, b)
	}
	code, b = c.call("GET", protocol.RouteJobs+"?page=2&page_size=2", nil, nil)
	json.Unmarshal(b, &page)
	if code != http.StatusOK || len(page.Results) != 1 || page.Next != nil || page.Previous == nil {
		t.Errorf("page 2: HTTP %d %s", code, b)
	}
	schematest.Valid(t, "sdk_models.FacilitatorJobsResponse", b)
	if code, _ := c.call("GET", protocol.RouteJobs+"?page=3&page_size=2", nil, nil); code != http.StatusNotFound {
		t.Errorf("page past the end: HTTP %d", code)
	}
	if code, _ := c.call("GET", protocol.RouteJobs+"?page=0", nil, nil); code != http.StatusNotFound {
		t.Errorf("page 0: HTTP %d", code)
	}
	code, b = c.call("GET", protocol.RouteJobs+"?page_size=1000", nil, nil)
	json.Unmarshal(b, &page)
	if code != http.StatusOK || len(page.Results) != 3 {
		t.Errorf("page_size=1000: HTTP %d %s", code, b)
	}
	if code, _ := c.call("GET", protocol.RouteJobs+"no-such-job/", nil, nil); code != http.StatusNotFound {
		t.Errorf("unknown job: HTTP %d", code)
	}
}

// TestSDKLogin: the SDK's login, and what it refuses: nonces used twice or
// too old, signatures in another encoding or by another key, hotkeys not
// allowed, tokens expired, forged or not the signer's. A refused token says
// "Token expired", on which the SDK logs in again.
func TestSDKLogin(t *testing.T) {
	stranger := hotkey(t)
	h := newHarness(t, Config{AllowClient: func(hk string) bool { return hk != stranger.SS58() }})
	c := &sdk{t: t, h: h, key: h.key}
	code, b := c.call("POST", "/auth/nonce", nil, nil) // the vectors' README says POST; the SDK GETs
	var n protocol.NonceResponse
	if code != http.StatusOK || json.Unmarshal(b, &n) != nil {
		t.Fatalf("POST nonce: HTTP %d %s", code, b)
	}
	login := func(hotkey, signature, nonce string) (int, []byte) {
		body, _ := json.Marshal(map[string]string{"hotkey": hotkey, "signature": signature, "nonce": nonce})
		return c.call("POST", "/auth/login", body, nil)
	}
	good := hexOf(h.key.Sign([]byte(n.Nonce)))
	other := hotkey(t)
	for name, tt := range map[string]struct {
		hotkey, signature, nonce string
		want                     int
	}{
		"missing hotkey":        {"", good, n.Nonce, 400},
		"missing signature":     {h.key.SS58(), "", n.Nonce, 400},
		"missing nonce":         {h.key.SS58(), good, "", 400},
		"0x signature":          {h.key.SS58(), "0x" + good, n.Nonce, 400},
		"upper-case signature":  {h.key.SS58(), strings.ToUpper(good), n.Nonce, 400},
		"another key's":         {h.key.SS58(), hexOf(other.Sign([]byte(n.Nonce))), n.Nonce, 401},
		"not our nonce":         {h.key.SS58(), good, "00000000000000000000000000000000:1:AAAA", 400},
		"expired nonce":         {h.key.SS58(), good, h.f.logins.nonce(time.Now().Add(-10 * time.Minute)), 400},
		"hotkey not an address": {"5nope", good, n.Nonce, 400},
	} {
		if code, b := login(tt.hotkey, tt.signature, tt.nonce); code != tt.want {
			t.Errorf("%s: HTTP %d %s, want %d", name, code, b, tt.want)
		}
	}
	if code, b := login(h.key.SS58(), good, n.Nonce); code != http.StatusOK {
		t.Fatalf("good login: HTTP %d %s", code, b)
	}
	if code, b := login(h.key.SS58(), good, n.Nonce); code != http.StatusBadRequest || !strings.Contains(string(b), "already used") {
		t.Errorf("nonce used twice: HTTP %d %s", code, b)
	}
	sn := h.f.logins.nonce(time.Now())
	if code, b := login(stranger.SS58(), hexOf(stranger.Sign([]byte(sn))), sn); code != http.StatusBadRequest || !strings.Contains(string(b), "Hotkey not allowed") {
		t.Errorf("stranger: HTTP %d %s", code, b)
	}

	// Tokens.
	c.login()
	if code, _ := c.call("GET", protocol.RouteJobs, nil, nil); code != http.StatusOK {
		t.Fatalf("with a token: HTTP %d", code)
	}
	parts := strings.Split(c.token, ".")
	for name, tok := range map[string]string{
		"expired":        h.f.logins.token(h.key.SS58(), time.Now().Add(-2*time.Hour)),
		"another hotkey": strings.Join([]string{parts[0], other.SS58(), parts[2], parts[3]}, "."),
		"later expiry":   strings.Join([]string{parts[0], parts[1], parts[2] + "0", parts[3]}, "."),
		"garbage":        "eyJhbGciOiJIUzI1NiJ9.e30.x",
		"another key's":  newLogins(make([]byte, 32), time.Minute, time.Hour).token(h.key.SS58(), time.Now()),
	} {
		forged := &sdk{t: t, h: h, key: h.key, token: tok}
		if code, b := forged.call("GET", protocol.RouteJobs, nil, nil); code != http.StatusUnauthorized || !strings.Contains(string(b), "Token expired") {
			t.Errorf("%s token: HTTP %d %s", name, code, b)
		}
	}
	// A token of one hotkey with a job signed by another.
	impostor := &sdk{t: t, h: h, key: other, token: c.token}
	if code, b := impostor.create(sdkVectors(t)["minimal"], ""); code != http.StatusUnauthorized || !strings.Contains(string(b), "token") {
		t.Errorf("token and signature of two hotkeys: HTTP %d %s", code, b)
	}
	// Job creation needs the job's signature, a token is not enough.
	if code, _ := c.call("POST", protocol.RouteCreateJob, []byte(sdkVectors(t)["minimal"].body), nil); code != http.StatusUnauthorized {
		t.Errorf("unsigned job with a token: HTTP %d", code)
	}
}

// TestCheatedJob: upstream's SDK reports a cheat (FullRequest signature);
// the job's upstream validator gets V0JobCheated in upstream's shape with
// that signature, which verifies; the checks of upstream's facilitator
// apply.
func TestCheatedJob(t *testing.T) {
	h := newHarness(t, Config{AllowUpstreamAuth: true})
	u := hotkey(t)
	h.allow(u)
	uv := newUpstreamValidator(t, h, nil)
	if r := uv.auth(wsconn.NewUpstreamFacilitatorAuth(u)); r.Status != "success" {
		t.Fatalf("auth: %+v", r)
	}
	c := &sdk{t: t, h: h, key: h.key}
	c.login()
	vectors := sdkVectors(t)
	ids := map[string]string{}
	for _, name := range []string{"minimal", "namespace_trusted"} {
		code, b := c.create(vectors[name], u.SS58())
		if code != http.StatusCreated {
			t.Fatalf("%s: HTTP %d %s", name, code, b)
		}
		var j protocol.Job
		json.Unmarshal(b, &j)
		ids[name] = j.UUID
		uv.nextJob()
	}
	report := func(job, trusted string, details string) (int, []byte) {
		body := []byte(`{"job_uuid": "` + job + `", "trusted_job_uuid": "` + trusted + `", "details": ` + details + `}`)
		payload, err := pyjson.Canonical(body) // Python's json.dumps(data, sort_keys=True)
		if err != nil {
			t.Fatal(err)
		}
		return c.call("POST", protocol.RouteCheatedJob, body, c.signature(protocol.ScopeFullRequest, payload))
	}
	if code, b := report(ids["minimal"], ids["namespace_trusted"], `{"score": 0.25, "why": "différent"}`); code != http.StatusCreated || !strings.Contains(string(b), "Job reported as cheated") {
		t.Fatalf("report: HTTP %d %s", code, b)
	}
	m, err := protocol.Decode(uv.frame())
	cheat, ok := m.(*protocol.V0JobCheated)
	if err != nil || !ok || cheat.JobUUID != ids["minimal"] {
		t.Fatalf("validator got %T %v", m, err)
	}
	if err := protocol.VerifyJobCheated(cheat, time.Now(), time.Minute, time.Minute); err != nil {
		t.Errorf("the validator cannot verify the report: %v", err)
	}
	for name, tt := range map[string]struct {
		job, trusted, details string
		want                  int
	}{
		"reported twice":         {ids["minimal"], ids["namespace_trusted"], "null", 400},
		"trusted job as the job": {ids["namespace_trusted"], ids["namespace_trusted"], "null", 404},
		"job as the trusted job": {ids["minimal"], ids["minimal"], "null", 404},
		"unknown job":            {"7b1c5e2a-0000-4000-8000-000000000009", ids["namespace_trusted"], "null", 404},
		"not a uuid":             {"x", ids["namespace_trusted"], "null", 400},
	} {
		if code, b := report(tt.job, tt.trusted, tt.details); code != tt.want {
			t.Errorf("%s: HTTP %d %s, want %d", name, code, b, tt.want)
		}
	}
	body := []byte(`{"job_uuid": "a", "trusted_job_uuid": "b"}`)
	payload, _ := pyjson.Canonical(body)
	if code, b := c.call("POST", protocol.RouteCheatedJob, body, c.signature(protocol.ScopeFullRequest, payload)); code != http.StatusBadRequest || !strings.Contains(string(b), "details") {
		t.Errorf("no details: HTTP %d %s", code, b)
	}
	// Another client's job is not found.
	other := &sdk{t: t, h: h, key: hotkey(t)}
	other.login()
	otherBody := []byte(`{"job_uuid": "` + ids["minimal"] + `", "trusted_job_uuid": "` + ids["namespace_trusted"] + `", "details": null}`)
	payload, _ = pyjson.Canonical(otherBody)
	if code, _ := other.call("POST", protocol.RouteCheatedJob, otherBody, other.signature(protocol.ScopeFullRequest, payload)); code != http.StatusNotFound {
		t.Errorf("another client's job: HTTP %d", code)
	}
}

// TestUpstreamValidatorSession: an unmodified upstream validator on
// horde's facilitator gets upstream's framing (Response without
// message_type, no answer to heartbeats or machine specs, Response(error)
// to what it cannot parse), upstream's V2JobRequest, and nothing horde-only.
func TestUpstreamValidatorSession(t *testing.T) {
	h := newHarness(t, Config{AllowUpstreamAuth: true})
	u := hotkey(t)
	h.allow(u)
	uv := newUpstreamValidator(t, h, nil)
	pk := u.Public()
	uv.sendRaw(`{"message_type": "V0AuthenticationRequest", "public_key": "` + pk.Hex() + `", "signature": "` + u.SignHex(pk[:]) + `"}`)
	if r := uv.response(); r.Status != "success" {
		t.Fatalf("auth: %+v", r)
	}
	uv.sendRaw(`{"message_type": "V0Heartbeat"}`)
	uv.sendRaw(`{"message_type": "V0MachineSpecsUpdate", "miner_hotkey": "m", "validator_hotkey": "` + u.SS58() + `", "specs": {"gpu": {"count": 1}}, "batch_id": "b1"}`)
	uv.sendRaw(`{"message_type": "V0JobStatusUpdate", "uuid": "7b1c5e2a-0000-4000-8000-000000000001", "status": "accepted", "metadata": null}`)
	if r := uv.response(); r.Status != "error" || r.Errors[0].Type != "job.not_found" {
		t.Errorf("the first answer is to the status update (none to the heartbeat or specs): %+v", r)
	}
	uv.sendRaw(`{{{`)
	if r := uv.response(); r.Status != "error" {
		t.Errorf("garbage: %+v", r)
	}
	uv.sendRaw(`{"message_type": "V0ValidatorReport", "cycle": 1, "at": "2026-01-01T00:00:00Z", "scores": []}`)
	if r := uv.response(); r.Status != "error" {
		t.Errorf("a horde-only message from an upstream validator: %+v", r)
	}

	forU := spec("x")
	forU.TargetValidatorHotkey = u.SS58()
	j := h.create(forU)
	got := uv.nextJob()
	if got.UUID != j.UUID {
		t.Fatalf("got %s", got.UUID)
	}
	if err := protocol.VerifyJobSignature(&got.JobSpec, got.Signature, time.Now(), time.Minute, time.Minute); err != nil {
		t.Errorf("horde client's signature at an upstream validator: %v", err)
	}
	uv.sendRaw(`{"message_type": "V0JobStatusUpdate", "uuid": "` + j.UUID + `", "status": "received", "metadata": null}`)
	if r := uv.response(); r.Status != "success" {
		t.Errorf("received: %+v", r)
	}
	uv.sendRaw(`{"message_type": "V0JobStatusUpdate", "uuid": "` + j.UUID + `", "status": "unknown", "metadata": null}`)
	if r := uv.response(); r.Status != "error" {
		t.Errorf("unknown status: %+v", r)
	}
	// The client cancels: upstream has no cancel, so the job ends here and
	// the validator is sent nothing; its next frame is its next job.
	if _, err := h.client.Cancel(h.ctx(), j.UUID); err != nil {
		t.Fatal(err)
	}
	j2 := h.create(forU)
	if got := uv.nextJob(); got.UUID != j2.UUID {
		t.Errorf("after a cancel the validator got %s", got.UUID)
	}
	uv.sendRaw(`{"message_type": "V0JobStatusUpdate", "uuid": "` + j2.UUID + `", "status": "completed", "metadata": {"miner_response": {"docker_process_stderr": "e", "docker_process_stdout": "o", "artifacts": {}, "upload_results": {}}, "job_rejection_details": null, "job_failure_details": null, "horde_failure_details": null, "streaming_details": null}}`)
	if r := uv.response(); r.Status != "success" {
		t.Errorf("completed: %+v", r)
	}
	if got := h.job(j2.UUID); got.Status != protocol.StatusCompleted || got.Stdout != "o" {
		t.Errorf("job after upstream's completed: %+v", got)
	}
	uv.send(wsconn.NewUpstreamFacilitatorAuth(u))
	if r := uv.response(); r.Status != "error" || r.Errors[0].Type != "auth.already_authenticated" {
		t.Errorf("second auth on a session: %+v", r)
	}
}

// TestCapabilityNegotiation: a horde validator speaks only the extensions
// both ends advertised; without one, the facilitator does without it.
func TestCapabilityNegotiation(t *testing.T) {
	h := newHarness(t, Config{})
	k := hotkey(t)
	h.allow(k)
	// auth-v1 only: horde's auth, upstream's framing, no horde messages.
	v := h.connectWith(k, []string{protocol.CapAuthV1})
	if got := v.conn.PeerCapabilities(); strings.Join(got, ",") != strings.Join(protocol.FacilitatorCapabilities, ",") {
		t.Errorf("the facilitator advertised %q", got)
	}
	j := h.create(spec())
	v.nextJob()
	if err := v.conn.Send(h.ctx(), &protocol.V0Heartbeat{}); err != nil {
		t.Fatal(err)
	}
	if r := v.request(&protocol.V0JobStatusUpdate{UUID: j.UUID, Status: protocol.StatusReceived}); r.Status != "success" {
		t.Errorf("the first answer is the update's: %+v", r)
	}
	if got, err := h.client.Cancel(h.ctx(), j.UUID); err != nil || got.Status != protocol.StatusCancelled {
		t.Errorf("cancel without the cancel extension ends the job here: %+v %v", got, err)
	}
	j2 := h.create(spec())
	if got := v.nextJob(); got.UUID != j2.UUID {
		t.Errorf("a horde-only message before the next job: %s", got.UUID)
	}
	streamingReady(t, v, j2.UUID)
	if _, err := h.client.Stop(h.ctx(), j2.UUID); err == nil || !strings.Contains(err.Error(), protocol.CapStop) {
		t.Errorf("stop without the stop extension: %v", err)
	}
}

// TestDialFacilitator: the validator side's helper negotiates with horde's
// facilitator (horde's auth, the capabilities both list) and, without
// horde's auth, is refused unless the operator allows upstream's.
func TestDialFacilitator(t *testing.T) {
	h := newHarness(t, Config{})
	k := hotkey(t)
	h.allow(k)
	s, err := wsconn.DialFacilitator(h.ctx(), h.wsURL(), k, []string{protocol.CapAuthV1, protocol.CapResponses, "future"}, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(s.Capabilities, ",") != protocol.CapAuthV1+","+protocol.CapResponses {
		t.Errorf("capabilities %q", s.Capabilities)
	}
	if err := s.Send(h.ctx(), &protocol.V0Heartbeat{}); err != nil {
		t.Fatal(err)
	}
	if m, err := s.Recv(h.ctx()); err != nil || m.(*protocol.Response).Status != "success" {
		t.Errorf("heartbeat answer: %+v %v", m, err)
	}
	s.Close("done")
	other := hotkey(t)
	h.allow(other)
	if _, err := wsconn.DialFacilitator(h.ctx(), h.wsURL(), other, nil, false, nil); !errors.Is(err, wsconn.ErrRefused) {
		t.Errorf("upstream auth where it is not allowed: %v", err)
	}
}
