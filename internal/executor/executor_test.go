package executor_test

import (
	"archive/zip"
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/blob"
	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/executor/fakert"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
)

// The executor's own logic over the fake runtime: the test plays the miner
// on a real WebSocket and runs the image's real programs in-process.

// blockImage is an image whose program says it started, then runs until killed.
const blockImage = "test/block:1"

type harness struct {
	rt *fakert.Runtime // nil on Docker
	// runtime is where executors run containers: rt, or the Docker Engine.
	runtime executor.Runtime
	owner   string // executors' owner label
	dataDir string
	objects *devstack.Objects
	started chan string // ids of blockImage containers that run
	conns   chan *wsconn.Conn
	url     string
}

func newHarness(t *testing.T) *harness {
	rt := fakert.New()
	h := serveMiner(t, rt, "miner-key")
	h.rt = rt
	t.Cleanup(func() {
		if err := h.rt.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	images.RegisterFake(h.rt)
	h.rt.Register(blockImage, func(ctx context.Context, c *fakert.Container) int {
		fmt.Fprintln(c.Stdout, "running")
		h.started <- c.ID
		<-ctx.Done()
		return 0
	})
	h.rt.RegisterPullable("test/pullable:1", func(ctx context.Context, c *fakert.Container) int {
		fmt.Fprintln(c.Stdout, "pulled and ran")
		return 0
	})
	return h
}

// serveMiner starts the harness's side of things: the miner's executor
// route (a real WebSocket, played by the test) and an object server.
func serveMiner(t *testing.T, rt executor.Runtime, owner string) *harness {
	h := &harness{runtime: rt, owner: owner, dataDir: t.TempDir(), started: make(chan string, 4), conns: make(chan *wsconn.Conn, 1)}
	objects, err := devstack.ServeObjects(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	h.objects = objects
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

// job is one executor run as the miner sees it.
type job struct {
	t    *testing.T
	conn *wsconn.Conn
	errc chan error
	// patience bounds the wait for each message (default a minute).
	patience time.Duration
}

// start runs an executor with cfg (edited, when given) against the harness.
func (h *harness) start(t *testing.T, edit func(*executor.Config)) *job {
	t.Helper()
	cfg := executor.Config{MinerURL: h.url, DataDir: h.dataDir, Runtime: h.runtime, Owner: h.owner, StartupTimeout: 10 * time.Second,
		Net: allow(t, h.objects.URL)}
	if edit != nil {
		edit(&cfg)
	}
	ctx, cancel := context.WithCancel(t.Context())
	j := &job{t: t, errc: make(chan error, 1)}
	go func() { j.errc <- executor.Run(ctx, cfg) }() // owned: end waits on errc
	t.Cleanup(cancel)
	select {
	case j.conn = <-h.conns:
	case err := <-j.errc:
		t.Fatalf("executor ended before connecting: %v", err)
	}
	return j
}

// allow returns a dial guard that lets the executor reach the servers at
// urls (on loopback, as a miner's operator would list them), and no other
// address that is not public.
func allow(t *testing.T, urls ...string) *blob.DialGuard {
	t.Helper()
	var hostPorts []string
	for _, u := range urls {
		p, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		hostPorts = append(hostPorts, p.Host)
	}
	g, err := blob.NewDialGuard(hostPorts...)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func (j *job) send(m protocol.Message) {
	j.t.Helper()
	if err := j.conn.Send(j.t.Context(), m); err != nil {
		j.t.Fatal(err)
	}
}

func (j *job) recv() protocol.Message {
	j.t.Helper()
	ctx, cancel := context.WithTimeout(j.t.Context(), cmp.Or(j.patience, time.Minute))
	defer cancel()
	m, err := j.conn.Recv(ctx)
	if err != nil {
		j.t.Fatalf("receive from executor: %v", err)
	}
	return m
}

// until receives messages up to a terminal one, which it returns.
func (j *job) until() (protocol.Message, []string) {
	j.t.Helper()
	var seen []string
	for {
		m := j.recv()
		seen = append(seen, m.MessageType())
		switch m.(type) {
		case *protocol.V0JobFinishedRequest, *protocol.V0JobFailedRequest, *protocol.V0HordeFailedRequest:
			return m, seen
		}
	}
}

// end waits for the executor to return, reading what else it sends as a
// miner does (so that closing the connection completes at once).
func (j *job) end() error {
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
	case <-time.After(time.Minute):
		j.t.Fatal("the executor did not end")
		return nil
	}
}

var timing = &protocol.ExecutorTiming{AllowedLeeway: 5, DownloadTimeLimit: 30, ExecutionTimeLimit: 30, UploadTimeLimit: 30}

// run plays a whole job: initial request, job request, and every message up
// to the terminal one, which it returns with the executor's error.
func (h *harness) run(t *testing.T, initial *protocol.V0InitialJobRequest, req *protocol.V0JobRequest) (protocol.Message, []string, error) {
	t.Helper()
	j := h.start(t, nil)
	j.send(initial)
	if m := j.recv(); m.MessageType() != "V0ExecutorReadyRequest" {
		if _, ok := m.(*protocol.V0JobFailedRequest); ok {
			return m, nil, j.end()
		}
		t.Fatalf("after the initial request: %#v", m)
	}
	j.send(req)
	last, seen := j.until()
	return last, seen, j.end()
}

func initial(uuid, image string) *protocol.V0InitialJobRequest {
	return &protocol.V0InitialJobRequest{JobUUID: uuid, ExecutorClass: protocol.ClassTest, DockerImage: image, ExecutorTiming: timing}
}

func request(uuid, image string, args ...string) *protocol.V0JobRequest {
	return &protocol.V0JobRequest{JobUUID: uuid, ExecutorClass: protocol.ClassTest, DockerImage: image, DockerRunCmd: args}
}

// assertClean checks that the job left no container, network or directory.
func (h *harness) assertClean(t *testing.T) {
	t.Helper()
	label := executor.LabelOwner + "=" + h.owner
	if cs, err := h.runtime.ContainerList(context.Background(), label); err != nil || len(cs) != 0 {
		t.Errorf("containers left: %+v %v", cs, err)
	}
	if ns, err := h.runtime.NetworkList(context.Background(), label); err != nil || len(ns) != 0 {
		t.Errorf("networks left: %+v %v", ns, err)
	}
	if h.rt != nil {
		if cs := h.rt.Containers(); len(cs) != 0 {
			t.Errorf("containers left, whatever their labels: %+v", cs)
		}
	}
	if ents, _ := os.ReadDir(h.dataDir); len(ents) != 0 {
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

func TestJobSucceeds(t *testing.T) {
	h := newHarness(t)
	req := request("ok", images.JobImage, "demo")
	req.Volume = &protocol.Volume{VolumeType: protocol.VolumeInline, Contents: base64.StdEncoding.EncodeToString(zipOf(map[string]string{"a.txt": "hello horde world"}))}
	req.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadMulti,
		Uploads:      []protocol.OutputUpload{{OutputUploadType: protocol.UploadSinglePut, URL: h.objects.URL + "/out/result.json", RelativePath: "result.json"}},
		SystemOutput: &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: h.objects.URL + "/out/system.zip"}}
	last, seen, err := h.run(t, initial("ok", images.JobImage), req)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(seen, " "); got != "V0VolumesReadyRequest V0ExecutionDoneRequest V0JobFinishedRequest" {
		t.Errorf("messages: %s", got)
	}
	f := last.(*protocol.V0JobFinishedRequest)
	if !strings.Contains(f.DockerProcessStdout, "processed 1 input files") || f.DockerProcessStderr != "" {
		t.Errorf("stdout %q stderr %q", f.DockerProcessStdout, f.DockerProcessStderr)
	}
	for _, stage := range []string{"startup", "download", "execute", "upload"} {
		if _, ok := f.Timings[stage]; !ok {
			t.Errorf("no timing for %s: %v", stage, f.Timings)
		}
	}
	if f.UploadResults["result.json"] != "200" {
		t.Errorf("upload results %v", f.UploadResults)
	}
	// The outputs are on the object server: the result and, zipped, stdout and stderr.
	if b, ok := h.objects.Get("out/result.json"); !ok || !strings.Contains(string(b), `"a.txt"`) {
		t.Errorf("result.json = %s", b)
	}
	sys, ok := h.objects.Get("out/system.zip")
	if !ok {
		t.Fatal("system output not uploaded")
	}
	zr, err := zip.NewReader(bytes.NewReader(sys), int64(len(sys)))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range zr.File {
		names = append(names, f.Name)
	}
	if strings.Join(names, " ") != "stderr.txt stdout.txt" && strings.Join(names, " ") != "stdout.txt stderr.txt" {
		t.Errorf("system output holds %v", names)
	}
	h.assertClean(t)
}

// Artifacts come back in the finished message, keyed by their container path.
func TestJobArtifacts(t *testing.T) {
	h := newHarness(t)
	req := request("art", images.JobImage, "matmul", "3", "8")
	req.ArtifactsDir = "/artifacts"
	last, _, err := h.run(t, initial("art", images.JobImage), req)
	if err != nil {
		t.Fatal(err)
	}
	f, ok := last.(*protocol.V0JobFinishedRequest)
	if !ok {
		t.Fatalf("got %#v", last)
	}
	b, err := base64.StdEncoding.DecodeString(f.Artifacts["/artifacts/c-000.bin"])
	if err != nil || len(b) != 4*8*8 {
		t.Errorf("artifacts %v: %d bytes, %v", f.Artifacts, len(b), err)
	}
	h.assertClean(t)
}

func TestJobFailures(t *testing.T) {
	tests := []struct {
		name    string
		initial func(h *harness) *protocol.V0InitialJobRequest
		req     func(h *harness) *protocol.V0JobRequest
		stage   protocol.JobStage
		reason  protocol.JobFailureReason
		code    string // horde_reason
		check   func(t *testing.T, f *protocol.V0JobFailedRequest)
	}{
		{name: "nonzero exit", req: func(*harness) *protocol.V0JobRequest { return request("j", images.JobImage, "exit", "3") },
			stage: protocol.StageExecution, reason: protocol.FailureNonzeroReturn, code: "nonzero_exit",
			check: func(t *testing.T, f *protocol.V0JobFailedRequest) {
				if f.DockerProcessExitStatus == nil || *f.DockerProcessExitStatus != 3 || f.DockerProcessStderr != "exiting with 3\n" {
					t.Errorf("exit %v stderr %q", f.DockerProcessExitStatus, f.DockerProcessStderr)
				}
			}},
		{name: "time limit", initial: func(*harness) *protocol.V0InitialJobRequest {
			i := initial("j", blockImage)
			i.ExecutorTiming = &protocol.ExecutorTiming{DownloadTimeLimit: 30, ExecutionTimeLimit: 1, UploadTimeLimit: 30}
			return i
		}, req: func(*harness) *protocol.V0JobRequest { return request("j", blockImage) },
			stage: protocol.StageExecution, reason: protocol.FailureTimeout, code: "timeout:execute",
			check: func(t *testing.T, f *protocol.V0JobFailedRequest) {
				if f.DockerProcessStdout != "running\n" {
					t.Errorf("logs so far not kept: %q", f.DockerProcessStdout)
				}
			}},
		{name: "missing image", initial: func(*harness) *protocol.V0InitialJobRequest { return initial("j", "test/none:1") },
			stage: protocol.StageExecutorStartup, code: "image_pull_failed",
			check: func(t *testing.T, f *protocol.V0JobFailedRequest) {
				if !strings.Contains(f.Message, "not present") {
					t.Errorf("message %q", f.Message)
				}
			}},
		{name: "pull refused", initial: func(*harness) *protocol.V0InitialJobRequest {
			i := initial("j", "test/none:1")
			i.AllowPull = true
			return i
		}, stage: protocol.StageExecutorStartup, code: "image_pull_failed",
			check: func(t *testing.T, f *protocol.V0JobFailedRequest) {
				if !strings.Contains(f.Message, "pull test/none:1") {
					t.Errorf("message %q", f.Message)
				}
			}},
		{name: "pullable but pulling not allowed", initial: func(*harness) *protocol.V0InitialJobRequest { return initial("j", "test/pullable:1") },
			stage: protocol.StageExecutorStartup, code: "image_pull_failed"},
		{name: "image mismatch", req: func(*harness) *protocol.V0JobRequest { return request("j", images.LLMImage) },
			stage: protocol.StageExecutorStartup, code: "image_mismatch"},
		{name: "streaming image not whitelisted", initial: func(*harness) *protocol.V0InitialJobRequest {
			i := initial("j", images.JobImage)
			i.StreamingDetails = &protocol.StreamingDetails{}
			i.ImageDigest = "sha256:other"
			return i
		}, stage: protocol.StageExecutorStartup, code: "image_not_whitelisted"},
		{name: "streaming image not on the miner's allow-list", initial: func(*harness) *protocol.V0InitialJobRequest {
			i := initial("j", images.JobImage)
			i.StreamingDetails = &protocol.StreamingDetails{}
			i.ImageAllowList = []string{"other/image:1", "sha256:" + strings.Repeat("0", 64)}
			return i
		}, stage: protocol.StageExecutorStartup, code: "image_not_whitelisted"},
		{name: "volume 404", req: func(h *harness) *protocol.V0JobRequest {
			r := request("j", images.JobImage, "demo")
			r.Volume = &protocol.Volume{VolumeType: protocol.VolumeZipURL, Contents: h.objects.URL + "/missing.zip"}
			return r
		}, stage: protocol.StageVolumeDownload, reason: protocol.FailureDownload, code: "volume_invalid",
			check: func(t *testing.T, f *protocol.V0JobFailedRequest) {
				if !strings.Contains(f.Message, "HTTP 404") {
					t.Errorf("message %q", f.Message)
				}
			}},
		{name: "zip slip", req: func(h *harness) *protocol.V0JobRequest {
			r := request("j", images.JobImage, "demo")
			r.Volume = &protocol.Volume{VolumeType: protocol.VolumeInline, Contents: base64.StdEncoding.EncodeToString(zipOf(map[string]string{"../../escape.txt": "x"}))}
			return r
		}, stage: protocol.StageVolumeDownload, reason: protocol.FailureDownload, code: "volume_invalid",
			check: func(t *testing.T, f *protocol.V0JobFailedRequest) {
				if !strings.Contains(f.Message, "unsafe path") {
					t.Errorf("message %q", f.Message)
				}
			}},
		{name: "volume from the initial request", initial: func(h *harness) *protocol.V0InitialJobRequest {
			i := initial("j", images.JobImage)
			i.Volume = &protocol.Volume{VolumeType: protocol.VolumeZipURL, Contents: h.objects.URL + "/missing-too.zip"}
			return i
		}, stage: protocol.StageVolumeDownload, reason: protocol.FailureDownload, code: "volume_invalid"},
		{name: "upload refused", req: func(h *harness) *protocol.V0JobRequest {
			h.objects.Fail("/denied", http.StatusForbidden)
			r := request("j", images.JobImage, "write", "o.bin", "5")
			r.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: h.objects.URL + "/denied?X-Amz-Signature=secret"}
			return r
		}, stage: protocol.StageResultUpload, reason: protocol.FailureUpload, code: "upload_failed",
			check: func(t *testing.T, f *protocol.V0JobFailedRequest) {
				if !strings.Contains(f.Message, "HTTP 403") || strings.Contains(f.Message, "secret") || f.DockerProcessStdout != "wrote 5\n" {
					t.Errorf("message %q stdout %q", f.Message, f.DockerProcessStdout)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			in := initial("j", images.JobImage)
			if tt.initial != nil {
				in = tt.initial(h)
			}
			req := request("j", in.DockerImage, "echo")
			if tt.req != nil {
				req = tt.req(h)
			}
			last, _, err := h.run(t, in, req)
			if err != nil {
				t.Fatalf("executor: %v", err)
			}
			f := failed(t, last)
			if f.Stage != tt.stage || (tt.reason != "" && f.Reason != tt.reason) || f.Context["horde_reason"] != tt.code {
				t.Errorf("failure %s/%s/%v (%s), want %s/%s/%s", f.Stage, f.Reason, f.Context["horde_reason"], f.Message, tt.stage, tt.reason, tt.code)
			}
			if tt.check != nil {
				tt.check(t, f)
			}
			h.assertClean(t)
		})
	}
}

// An image registered as pullable is pulled when the job allows it.
func TestJobPullsImage(t *testing.T) {
	h := newHarness(t)
	in := initial("p", "test/pullable:1")
	in.AllowPull = true
	last, _, err := h.run(t, in, request("p", "test/pullable:1"))
	if err != nil {
		t.Fatal(err)
	}
	if f, ok := last.(*protocol.V0JobFinishedRequest); !ok || f.DockerProcessStdout != "pulled and ran\n" {
		t.Errorf("got %#v", last)
	}
}

// The validator cancels a running job: the container is killed and removed,
// and the executor ends without reporting anything more.
func TestJobCancelled(t *testing.T) {
	h := newHarness(t)
	j := h.start(t, nil)
	j.send(initial("c", blockImage))
	j.recv() // ready
	j.send(request("c", blockImage))
	j.recv() // volumes ready
	<-h.started
	j.send(&protocol.V0CancelJobRequest{JobUUID: "c"})
	if err := j.end(); err != nil {
		t.Errorf("cancelled executor: %v", err)
	}
	h.assertClean(t)
}

// The miner's context ends (a shutdown): the executor stops the job and cleans up.
func TestJobShutdown(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	cfg := executor.Config{MinerURL: h.url, DataDir: h.dataDir, Runtime: h.rt, Owner: "m"}
	errc := make(chan error, 1)
	go func() { errc <- executor.Run(ctx, cfg) }()
	conn := <-h.conns
	conn.Send(ctx, initial("s", blockImage))
	conn.Recv(ctx)
	conn.Send(ctx, request("s", blockImage))
	<-h.started
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("executor after shutdown: %v", err)
	}
	h.assertClean(t)
}

// failingEngine is a runtime whose containers cannot be created.
type failingEngine struct{ executor.Runtime }

func (failingEngine) ContainerCreate(context.Context, string, *docker.ContainerConfig) (string, error) {
	return "", &docker.APIError{Status: 500, Message: "the engine broke"}
}

// When the engine fails, it is horde's fault, not the job's.
func TestEngineFailure(t *testing.T) {
	h := newHarness(t)
	j := h.start(t, func(c *executor.Config) { c.Runtime = failingEngine{h.rt} })
	j.send(initial("e", images.JobImage))
	j.recv()
	j.send(request("e", images.JobImage, "echo"))
	last, _ := j.until()
	f, ok := last.(*protocol.V0HordeFailedRequest)
	if !ok || f.Reason != protocol.HordeGenericError || !strings.Contains(f.Message, "the engine broke") {
		t.Errorf("got %#v", last)
	}
	if err := j.end(); err != nil {
		t.Fatal(err)
	}
	h.assertClean(t)
}

// Bad protocol from the miner ends the executor with an error.
func TestUnexpectedMessages(t *testing.T) {
	h := newHarness(t)
	j := h.start(t, nil)
	j.send(&protocol.V0JobRequest{JobUUID: "x"})
	if err := j.end(); err == nil || !strings.Contains(err.Error(), "expected V0InitialJobRequest") {
		t.Errorf("executor: %v", err)
	}
	j = h.start(t, func(c *executor.Config) { c.StartupTimeout = 100 * time.Millisecond })
	if err := j.end(); err == nil || !strings.Contains(err.Error(), "no message from miner") {
		t.Errorf("executor: %v", err)
	}
	if err := (&executor.Config{MinerURL: "ws://x", DataDir: "d"}).Validate(); err == nil || !strings.Contains(err.Error(), "Runtime") {
		t.Errorf("config without a runtime: %v", err)
	}
}

// slowEngine is a runtime whose container creation takes until release is
// closed. Like the Docker Engine, it makes the container even when the
// caller gives up waiting, and then only later.
type slowEngine struct {
	executor.Runtime
	called, release chan struct{}
	late            sync.WaitGroup // containers made after their caller gave up
}

func (e *slowEngine) ContainerCreate(ctx context.Context, name string, cfg *docker.ContainerConfig) (string, error) {
	close(e.called)
	select {
	case <-e.release:
		return e.Runtime.ContainerCreate(ctx, name, cfg)
	case <-ctx.Done():
		e.late.Go(func() {
			<-e.release
			e.Runtime.ContainerCreate(context.Background(), name, cfg)
		})
		return "", ctx.Err()
	}
}

// A shutdown while the engine creates the container leaves nothing behind:
// the executor waits for the creation and removes what it made.
func TestShutdownDuringCreate(t *testing.T) {
	h := newHarness(t)
	engine := &slowEngine{Runtime: h.rt, called: make(chan struct{}), release: make(chan struct{})}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		errc <- executor.Run(ctx, executor.Config{MinerURL: h.url, DataDir: h.dataDir, Runtime: engine, Owner: "m"})
	}()
	conn := <-h.conns
	conn.Send(ctx, initial("d", blockImage))
	conn.Recv(ctx)
	conn.Send(ctx, request("d", blockImage))
	<-engine.called
	cancel()
	close(engine.release)
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("executor after shutdown: %v", err)
	}
	engine.late.Wait()
	h.assertClean(t)
}
