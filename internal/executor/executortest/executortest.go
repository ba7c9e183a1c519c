// Package executortest is the conformance suite of executor back-ends: the
// same jobs, played by a test that is the miner on a real WebSocket, run on
// any executor.Runtime (the Docker Engine, a Kubernetes cluster, the
// in-process fake) and must end the same way.
package executortest

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/internal/blob"
	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
	sr "github.com/horde-compute/horde/streamreceipt"
)

// Target is a back-end under test.
type Target struct {
	Runtime executor.Runtime
	// Image is the job image (package jobprog's program) on the back-end.
	Image string
	// Owner labels the jobs' containers; unique to the test run.
	Owner string
	// DataDir is where executors keep job directories (visible to the back-end).
	DataDir string
	// HostIP is an address of this machine that a container with a network
	// would reach; the network job dials a listener there and must fail.
	HostIP string
	// MergedLogs says the back-end keeps one log (stderr in stdout).
	MergedLogs bool
	// Edit changes each executor's config (nil: none).
	Edit func(*executor.Config)
	// LLMImage is the demo streaming service (images.LLMImage's program)
	// on the back-end, and LLMDigest the digest a whitelist pins it by;
	// without them the streaming job is skipped.
	LLMImage, LLMDigest string
}

// Harness plays the miner for executors on a Target.
type Harness struct {
	T       Target
	Objects *devstack.Objects
	url     string
	conns   chan *wsconn.Conn
}

// NewHarness serves the miner's executor route and an object server.
func NewHarness(t testing.TB, tg Target) *Harness {
	t.Helper()
	h := &Harness{T: tg, conns: make(chan *wsconn.Conn, 1)}
	objects, err := devstack.ServeObjects(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	h.Objects = objects
	released := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := wsconn.Accept(w, r, nil)
		if err != nil {
			return
		}
		h.conns <- conn
		<-released // the test owns the connection until it ends
	}))
	h.url = "ws" + strings.TrimPrefix(srv.URL, "http") + protocol.ExecutorPath + "token"
	t.Cleanup(func() {
		close(released)
		srv.Close()
		objects.Close()
	})
	return h
}

// Job is one executor run as the miner sees it.
type Job struct {
	t    testing.TB
	conn *wsconn.Conn
	errc chan error
	// Patience bounds the wait for each message (default two minutes).
	Patience time.Duration
	// Messages are the types of what the executor sent, in order.
	Messages []string
}

// Start runs an executor against the harness; it returns once it connected.
func (h *Harness) Start(t testing.TB) *Job {
	t.Helper()
	u, _ := url.Parse(h.Objects.URL)
	guard, err := blob.NewDialGuard(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	cfg := executor.Config{MinerURL: h.url, DataDir: h.T.DataDir, Runtime: h.T.Runtime, Owner: h.T.Owner,
		StartupTimeout: 30 * time.Second, Net: guard}
	if h.T.Edit != nil {
		h.T.Edit(&cfg)
	}
	ctx, cancel := context.WithCancel(t.Context())
	j := &Job{t: t, errc: make(chan error, 1), Patience: 2 * time.Minute}
	go func() { j.errc <- executor.Run(ctx, cfg) }() // owned: End waits on errc
	t.Cleanup(cancel)
	select {
	case j.conn = <-h.conns:
	case err := <-j.errc:
		t.Fatalf("executor ended before connecting: %v", err)
	}
	return j
}

// Send sends m to the executor.
func (j *Job) Send(m protocol.Message) {
	j.t.Helper()
	if err := j.conn.Send(j.t.Context(), m); err != nil {
		j.t.Fatal(err)
	}
}

// Recv receives the executor's next message.
func (j *Job) Recv() protocol.Message {
	j.t.Helper()
	ctx, cancel := context.WithTimeout(j.t.Context(), j.Patience)
	defer cancel()
	m, err := j.conn.Recv(ctx)
	if err != nil {
		j.t.Fatalf("receive from executor (after %v): %v", j.Messages, err)
	}
	j.Messages = append(j.Messages, m.MessageType())
	return m
}

// Until receives messages up to a terminal one, which it returns.
func (j *Job) Until() protocol.Message {
	j.t.Helper()
	for {
		m := j.Recv()
		switch m.(type) {
		case *protocol.V0JobFinishedRequest, *protocol.V0JobFailedRequest, *protocol.V0HordeFailedRequest:
			return m
		}
	}
}

// End waits for the executor to return, reading what else it sends.
func (j *Job) End() error {
	j.t.Helper()
	drained := make(chan struct{})
	go func() { // owned: ends when the executor closes the connection, waited for below
		defer close(drained)
		for {
			if _, err := j.conn.Recv(context.Background()); err != nil {
				return
			}
		}
	}()
	select {
	case err := <-j.errc:
		<-drained
		return err
	case <-time.After(2 * time.Minute):
		j.t.Fatal("the executor did not end")
		return nil
	}
}

// Timing is the stages' limits of the suite's jobs.
var Timing = protocol.ExecutorTiming{AllowedLeeway: 5, DownloadTimeLimit: 60, ExecutionTimeLimit: 120, UploadTimeLimit: 60}

// Initial is the initial request of a job of the suite.
func (h *Harness) Initial(uuid string, timing protocol.ExecutorTiming) *protocol.V0InitialJobRequest {
	return &protocol.V0InitialJobRequest{JobUUID: uuid, ExecutorClass: protocol.ClassTest, DockerImage: h.T.Image, ExecutorTiming: &timing}
}

// Request is the job request of a job of the suite running args.
func (h *Harness) Request(uuid string, args ...string) *protocol.V0JobRequest {
	return &protocol.V0JobRequest{JobUUID: uuid, ExecutorClass: protocol.ClassTest, DockerImage: h.T.Image, DockerRunCmd: args}
}

// Run plays a whole job and returns its terminal message; the executor must end without error.
func (h *Harness) Run(t *testing.T, in *protocol.V0InitialJobRequest, req *protocol.V0JobRequest) (protocol.Message, *Job) {
	t.Helper()
	j := h.Start(t)
	j.Send(in)
	if m := j.Recv(); m.MessageType() != "V0ExecutorReadyRequest" {
		t.Fatalf("after the initial request: %#v", m)
	}
	j.Send(req)
	last := j.Until()
	if err := j.End(); err != nil {
		t.Fatalf("executor: %v", err)
	}
	return last, j
}

// AssertClean checks that no container of the owner and no job directory is left.
func (h *Harness) AssertClean(t *testing.T) {
	t.Helper()
	label := executor.LabelOwner + "=" + h.T.Owner
	if cs, err := h.T.Runtime.ContainerList(context.Background(), label); err != nil || len(cs) != 0 {
		t.Errorf("containers left: %+v %v", cs, err)
	}
	if ns, err := h.T.Runtime.NetworkList(context.Background(), label); err != nil || len(ns) != 0 {
		t.Errorf("networks left: %+v %v", ns, err)
	}
	if ents, _ := os.ReadDir(h.T.DataDir); len(ents) != 0 {
		t.Errorf("job directories left: %v", ents)
	}
}

func failed(t *testing.T, m protocol.Message) *protocol.V0JobFailedRequest {
	t.Helper()
	f, ok := m.(*protocol.V0JobFailedRequest)
	if !ok {
		t.Fatalf("got %#v, want V0JobFailedRequest", m)
	}
	return f
}

func zipOf(files map[string]string) []byte {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for name, data := range files {
		w, _ := zw.Create(name)
		w.Write([]byte(data))
	}
	zw.Close()
	return buf.Bytes()
}

var seq atomic.Int64

// uuid is a job id unique to this process, valid as a Pod name's part.
func uuid(name string) string {
	return fmt.Sprintf("%s-%d-%d", name, os.Getpid(), seq.Add(1))
}

// Run runs the suite against tg: each job as a subtest, one after another.
func Run(t *testing.T, tg Target) {
	h := NewHarness(t, tg)
	t.Run("Success", func(t *testing.T) { h.success(t) })
	t.Run("NonzeroExit", func(t *testing.T) { h.nonzero(t) })
	t.Run("Timeout", func(t *testing.T) { h.timeout(t) })
	t.Run("Cancel", func(t *testing.T) { h.cancel(t) })
	t.Run("NoNetwork", func(t *testing.T) { h.noNetwork(t) })
	t.Run("Streaming", func(t *testing.T) { h.streaming(t) })
}

// streaming: the demo LLM serves behind the signing proxy; a client's call
// through the proxy comes back with a receipt that verifies (client.Stream.Do
// checks its signature, both hashes and the timestamps); stopping the job
// finishes it.
func (h *Harness) streaming(t *testing.T) {
	if h.T.LLMImage == "" {
		t.Skip("the target has no streaming image")
	}
	ck, cc, err := sr.NewKeyPair("client", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	id := uuid("stream")
	timing := Timing
	timing.StreamingStartTimeLimit = 120
	in := h.Initial(id, timing)
	in.DockerImage = h.T.LLMImage
	in.StreamingDetails = &protocol.StreamingDetails{PublicKey: string(cc)}
	in.ImageDigest = h.T.LLMDigest
	j := h.Start(t)
	j.Send(in)
	if m := j.Recv(); m.MessageType() != "V0ExecutorReadyRequest" {
		t.Fatalf("after the initial request: %#v", m)
	}
	req := h.Request(id)
	req.DockerImage, req.DockerRunCmd = h.T.LLMImage, nil
	j.Send(req)
	var ready *protocol.V0StreamingJobReadyRequest
	for ready == nil {
		switch m := j.Recv().(type) {
		case *protocol.V0VolumesReadyRequest:
		case *protocol.V0StreamingJobReadyRequest:
			ready = m
		default:
			t.Fatalf("while starting the stream: %#v", m)
		}
	}
	der, err := x509.MarshalPKCS8PrivateKey(ck)
	if err != nil {
		t.Fatal(err)
	}
	st := &client.Stream{JobUUID: id, URL: "https://" + net.JoinHostPort(ready.IP, strconv.Itoa(ready.Port)), JobCert: ready.PublicKey,
		ClientCert: string(cc), ClientKey: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))}
	hc, err := st.HTTPClient()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res, err := st.Call(t.Context(), hc, http.MethodPost, "/v1/completions", []byte(`{"prompt": "the horde", "max_tokens": 8}`), &out)
	if err != nil {
		t.Fatalf("call through the proxy: %v\n%s", err, out.String())
	}
	if res.Status != http.StatusOK || res.Receipt == nil || out.Len() == 0 {
		t.Errorf("call: status %d receipt %+v body %q", res.Status, res.Receipt, out.String())
	}
	j.Send(&protocol.V0StopJobRequest{JobUUID: id})
	if _, ok := j.Until().(*protocol.V0JobFinishedRequest); !ok {
		t.Errorf("after stop: %v", j.Messages)
	}
	if err := j.End(); err != nil {
		t.Fatal(err)
	}
	h.AssertClean(t)
}

// success: a volume in, the demo job, an output and the system output uploaded.
func (h *Harness) success(t *testing.T) {
	id := uuid("ok")
	req := h.Request(id, "demo")
	req.Volume = &protocol.Volume{VolumeType: protocol.VolumeInline, Contents: base64.StdEncoding.EncodeToString(zipOf(map[string]string{"a.txt": "hello horde world"}))}
	req.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadMulti,
		Uploads:      []protocol.OutputUpload{{OutputUploadType: protocol.UploadSinglePut, URL: h.Objects.URL + "/" + id + "/result.json", RelativePath: "result.json"}},
		SystemOutput: &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: h.Objects.URL + "/" + id + "/system.zip"}}
	last, j := h.Run(t, h.Initial(id, Timing), req)
	f, ok := last.(*protocol.V0JobFinishedRequest)
	if !ok {
		t.Fatalf("got %#v", last)
	}
	if got := strings.Join(j.Messages, " "); got != "V0ExecutorReadyRequest V0VolumesReadyRequest V0ExecutionDoneRequest V0JobFinishedRequest" {
		t.Errorf("messages: %s", got)
	}
	if !strings.Contains(f.DockerProcessStdout, "processed 1 input files") {
		t.Errorf("stdout %q", f.DockerProcessStdout)
	}
	if f.UploadResults["result.json"] != "200" {
		t.Errorf("upload results %v", f.UploadResults)
	}
	if b, ok := h.Objects.Get(id + "/result.json"); !ok || !strings.Contains(string(b), `"a.txt"`) {
		t.Errorf("result.json = %s", b)
	}
	if _, ok := h.Objects.Get(id + "/system.zip"); !ok {
		t.Error("system output not uploaded")
	}
	h.AssertClean(t)
}

// nonzero: the job's exit code and stderr come back.
func (h *Harness) nonzero(t *testing.T) {
	id := uuid("exit")
	last, _ := h.Run(t, h.Initial(id, Timing), h.Request(id, "exit", "3"))
	f := failed(t, last)
	if f.Stage != protocol.StageExecution || f.Reason != protocol.FailureNonzeroReturn || f.DockerProcessExitStatus == nil || *f.DockerProcessExitStatus != 3 {
		t.Errorf("failure %+v", f)
	}
	logs := f.DockerProcessStderr
	if h.T.MergedLogs {
		logs = f.DockerProcessStdout
	}
	if !strings.Contains(logs, "exiting with 3") {
		t.Errorf("stdout %q stderr %q", f.DockerProcessStdout, f.DockerProcessStderr)
	}
	h.AssertClean(t)
}

// timeout: a job past its execution limit is killed; what it printed counts.
func (h *Harness) timeout(t *testing.T) {
	id := uuid("slow")
	timing := Timing
	timing.ExecutionTimeLimit = 3
	last, _ := h.Run(t, h.Initial(id, timing), h.Request(id, "sleep", "600"))
	f := failed(t, last)
	if f.Stage != protocol.StageExecution || f.Reason != protocol.FailureTimeout || f.Context["horde_reason"] != "timeout:execute" {
		t.Errorf("failure %+v", f)
	}
	h.AssertClean(t)
}

// cancel: the validator cancels a running job; the executor ends quietly
// and leaves nothing.
func (h *Harness) cancel(t *testing.T) {
	id := uuid("cancel")
	j := h.Start(t)
	j.Send(h.Initial(id, Timing))
	if m := j.Recv(); m.MessageType() != "V0ExecutorReadyRequest" {
		t.Fatalf("after the initial request: %#v", m)
	}
	j.Send(h.Request(id, "sleep", "600"))
	if m := j.Recv(); m.MessageType() != "V0VolumesReadyRequest" {
		t.Fatalf("after the job request: %#v", m)
	}
	j.Send(&protocol.V0CancelJobRequest{JobUUID: id})
	if err := j.End(); err != nil {
		t.Fatalf("executor after cancel: %v", err)
	}
	h.AssertClean(t)
}

// noNetwork: the job tries to reach a listener on this machine and a route
// out; both must fail, and the listener must see no connection.
func (h *Harness) noNetwork(t *testing.T) {
	ln, err := net.Listen("tcp", net.JoinHostPort(h.T.HostIP, "0"))
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int64
	done := make(chan struct{})
	defer func() { ln.Close(); <-done }()
	go func() { // owned: ends when ln closes, waited for above
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	for _, args := range [][]string{{"dial", ln.Addr().String()}, {"net"}} {
		id := uuid("net")
		last, _ := h.Run(t, h.Initial(id, Timing), h.Request(id, args...))
		f := failed(t, last)
		if f.DockerProcessExitStatus == nil || *f.DockerProcessExitStatus != 7 {
			t.Errorf("%v: the job reached the network: %+v", args, f)
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("the listener on %s accepted %d connections from jobs", ln.Addr(), n)
	}
	h.AssertClean(t)
}

// HostIP is this machine's address on its default route (no packet is sent).
func HostIP(t testing.TB) string {
	t.Helper()
	c, err := net.Dial("udp", "192.0.2.1:9")
	if err != nil {
		t.Fatalf("no default route: %v", err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String()
}
