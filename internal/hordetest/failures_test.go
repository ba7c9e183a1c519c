package hordetest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/internal/blob"
	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/executor/fakert"
	"github.com/horde-compute/horde/internal/miner"
	"github.com/horde-compute/horde/internal/store/sqlite"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// Each bad input ends in a clear terminal status with a machine-readable reason.
func TestBadJobs(t *testing.T) {
	lim := blob.DefaultLimits()
	lim.MaxOutputBytes = 1 << 20
	lim.Backoff = 10 * time.Millisecond
	h := Start(t, devstack.Config{Manifest: map[string]int{protocol.ClassTest: 4}, Limits: lim})
	h.Objects.Fail("/denied", http.StatusForbidden)
	slip := base64.StdEncoding.EncodeToString(zipOf(t, map[string]string{"../../escape.txt": "x"}))
	tooLarge := "upload_failed"
	if h.BoundDisks {
		tooLarge = "output_too_large"
	}

	tests := []struct {
		name   string
		spec   func() *protocol.JobSpec
		status protocol.JobStatus
		code   string // the comment (horde reason) or rejection reason
		check  func(t *testing.T, last protocol.StatusEntry)
	}{
		{"nonzero exit", func() *protocol.JobSpec { return Spec("exit", "3") }, protocol.StatusFailed, "nonzero_exit",
			func(t *testing.T, e protocol.StatusEntry) {
				d := e.Metadata.JobFailureDetails
				if d.Reason != protocol.FailureNonzeroReturn || d.DockerProcessExitStatus == nil || *d.DockerProcessExitStatus != 3 ||
					!strings.Contains(d.DockerProcessStderr, "exiting with 3") {
					t.Errorf("details = %+v", d)
				}
			}},
		{"time limit", func() *protocol.JobSpec { s := Spec("sleep", "60"); s.ExecutionTimeLimit = 1; return s }, protocol.StatusFailed, "timeout:execute",
			func(t *testing.T, e protocol.StatusEntry) {
				if d := e.Metadata.JobFailureDetails; d.Reason != protocol.FailureTimeout || d.Stage != protocol.StageExecution {
					t.Errorf("details = %+v", d)
				}
			}},
		{"network", func() *protocol.JobSpec { return Spec("net") }, protocol.StatusFailed, "nonzero_exit",
			func(t *testing.T, e protocol.StatusEntry) {
				if d := e.Metadata.JobFailureDetails; !strings.Contains(d.DockerProcessStdout, "network unreachable") {
					t.Errorf("the job found a network: %q", d.DockerProcessStdout)
				}
			}},
		{"missing image", func() *protocol.JobSpec { s := Spec("echo"); s.DockerImage = "horde/not-here:1"; return s }, protocol.StatusFailed, "image_pull_failed",
			func(t *testing.T, e protocol.StatusEntry) {
				if d := e.Metadata.JobFailureDetails; d.Stage != protocol.StageExecutorStartup || !strings.Contains(d.Message, "not present") {
					t.Errorf("details = %+v", d)
				}
			}},
		{"unknown class", func() *protocol.JobSpec { s := Spec("echo"); s.ExecutorClass = protocol.ClassGPU24; return s }, protocol.StatusRejected, "no_miner_for_job", nil},
		{"volume 404", func() *protocol.JobSpec {
			s := Spec("demo")
			s.Volume = &protocol.Volume{VolumeType: protocol.VolumeZipURL, Contents: h.Objects.URL + "/missing.zip"}
			return s
		}, protocol.StatusFailed, "volume_invalid", func(t *testing.T, e protocol.StatusEntry) {
			if d := e.Metadata.JobFailureDetails; d.Reason != protocol.FailureDownload || !strings.Contains(d.Message, "HTTP 404") {
				t.Errorf("details = %+v", d)
			}
		}},
		{"zip slip", func() *protocol.JobSpec {
			s := Spec("demo")
			s.Volume = &protocol.Volume{VolumeType: protocol.VolumeInline, Contents: slip}
			return s
		}, protocol.StatusFailed, "volume_invalid", func(t *testing.T, e protocol.StatusEntry) {
			if d := e.Metadata.JobFailureDetails; !strings.Contains(d.Message, "unsafe path") {
				t.Errorf("details = %+v", d)
			}
		}},
		{"upload refused", func() *protocol.JobSpec {
			s := Spec("write", "out.bin", "10")
			s.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: h.Objects.URL + "/denied?X-Amz-Signature=secret"}
			return s
		}, protocol.StatusFailed, "upload_failed", func(t *testing.T, e protocol.StatusEntry) {
			d := e.Metadata.JobFailureDetails
			if d.Stage != protocol.StageResultUpload || !strings.Contains(d.Message, "HTTP 403") || strings.Contains(d.Message, "secret") {
				t.Errorf("details = %+v", d)
			}
		}},
		{"outputs too large", func() *protocol.JobSpec {
			s := Spec("write", "big.bin", strconv.Itoa(3<<20))
			s.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: h.Objects.URL + "/big.zip"}
			return s
		}, protocol.StatusFailed, tooLarge, func(t *testing.T, e protocol.StatusEntry) {
			// Bounded disks stop the job at the bound; without, the upload refuses.
			want := "too large"
			if h.BoundDisks {
				want = "/output than its limit of 1048576 bytes"
			}
			if d := e.Metadata.JobFailureDetails; !strings.Contains(d.Message, want) {
				t.Errorf("details = %+v", d)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			job := h.Run(t, tt.spec())
			last := Last(job)
			if job.Status != tt.status {
				b, _ := json.Marshal(last)
				t.Fatalf("status = %s, want %s: %s", job.Status, tt.status, b)
			}
			code := last.Metadata.Comment
			if r := last.Metadata.JobRejectionDetails; r != nil {
				code = string(r.Reason)
			}
			if code != tt.code {
				t.Errorf("reason = %q, want %q", code, tt.code)
			}
			if tt.check != nil {
				tt.check(t, last)
			}
			assertNoContainers(t, h.Runtime, job.UUID)
		})
	}
}

// assertNoContainers checks that nothing of the job (container or network)
// is left on the runtime.
func assertNoContainers(t *testing.T, rt executor.Runtime, uuid string) {
	t.Helper()
	// The executor removes them after the job's last status; a loaded
	// engine can take seconds.
	deadline := time.Now().Add(time.Minute)
	for {
		cs, err := rt.ContainerList(context.Background(), executor.LabelJob+"="+uuid)
		if err != nil {
			t.Fatal(err)
		}
		ns, err := rt.NetworkList(context.Background(), executor.LabelJob+"="+uuid)
		if err != nil {
			t.Fatal(err)
		}
		if len(cs)+len(ns) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d containers and %d networks of job %s left behind", len(cs), len(ns), uuid)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitRunning waits until the job's container runs.
func waitRunning(t *testing.T, rt executor.Runtime, uuid string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		cs, err := rt.ContainerList(t.Context(), executor.LabelJob+"="+uuid)
		if err != nil {
			t.Fatal(err)
		}
		if len(cs) == 1 && cs[0].State == "running" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the container of job %s does not run: %+v", uuid, cs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A running job cancelled by its client: its container is gone within
// seconds and the executor takes the next job. Timing-sensitive (mildly):
// the cancelled status must come within 5 s of the cancel.
func TestCancelKillsWithinSeconds(t *testing.T) {
	for _, rt := range []Runtime{OnFake, OnDocker} {
		t.Run(rt.Name, func(t *testing.T) {
			h := rt.Start(t, devstack.Config{})
			ctx := t.Context()
			job, err := h.Client.CreateJob(ctx, Spec("sleep", "120"))
			if err != nil {
				t.Fatal(err)
			}
			h.WaitStatus(t, job.UUID, protocol.StatusVolumesReady)
			waitRunning(t, h.Runtime, job.UUID)
			start := time.Now()
			if _, err := h.Client.Cancel(ctx, job.UUID); err != nil {
				t.Fatal(err)
			}
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			done, err := h.Client.Watch(wctx, job.UUID, func(protocol.StatusEntry) {})
			if err != nil {
				t.Fatal(err)
			}
			if done.Status != protocol.StatusCancelled {
				t.Fatalf("status = %s", done.Status)
			}
			assertNoContainers(t, h.Runtime, job.UUID)
			t.Logf("cancel to container gone: %s", time.Since(start))
			if _, err := h.Client.Cancel(ctx, job.UUID); err == nil {
				t.Error("cancelling an ended job succeeded")
			}
			// The executor is free again: a new job runs.
			if j := h.Run(t, Spec("echo", "again")); j.Status != protocol.StatusCompleted {
				t.Errorf("after cancel: %s", j.Status)
			}
		})
	}
}

func TestRetryOnAnotherMiner(t *testing.T) {
	for _, mode := range []string{"busy", "refuse", "vanish"} {
		t.Run(mode, func(t *testing.T) {
			fake := NewFakeMiner(t, mode)
			h := StartFake(t, devstack.Config{ExtraNeurons: []chain.Neuron{fake.Neuron}})
			job := h.Run(t, Spec("echo", "hi"))
			if job.Status != protocol.StatusCompleted {
				t.Fatalf("status = %s: %+v", job.Status, Last(job).Metadata)
			}
			if fake.Offers.Load() != 1 {
				t.Errorf("fake miner got %d offers, want 1 (tried first, then retried elsewhere)", fake.Offers.Load())
			}
			var retried bool
			for _, e := range job.StatusHistory {
				if e.Metadata != nil && strings.HasPrefix(e.Metadata.Comment, "retrying: miner "+fake.Hotkey.SS58()) {
					retried = true
				}
			}
			if !retried && mode != "busy" { // a busy miner costs no attempt and is not news
				t.Error("history does not show the retry")
			}
			if got := Last(job).Metadata.MinerHotkey; got != h.Miners[0].SS58() {
				t.Errorf("served by %s", got)
			}
		})
	}
}

func TestClientAPIRefusesBadRequests(t *testing.T) {
	h := StartFake(t, devstack.Config{})
	ctx := t.Context()
	stranger, _ := sig.FromSeed(sig.RandomSeed())
	spec := Spec("echo")
	body, _ := json.Marshal(spec)
	signed, _ := spec.SignedBytes()
	var postSigned func(ts int64, body []byte, signature string) *http.Response
	post := func(k *sig.Hotkey, ts int64, payload, body []byte) *http.Response {
		return postSigned(ts, body, base64.StdEncoding.EncodeToString(k.Sign(protocol.SignedMessage(ts, payload))))
	}
	postSigned = func(ts int64, body []byte, signature string) *http.Response {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.FacilitatorURL+protocol.RouteCreateJob, bytes.NewReader(body))
		req.Header.Set(protocol.HeaderSignatureType, "bittensor")
		req.Header.Set(protocol.HeaderSignatory, h.Client.Hotkey.SS58())
		req.Header.Set(protocol.HeaderTimestampNS, strconv.FormatInt(ts, 10))
		req.Header.Set(protocol.HeaderSignature, signature)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	now := time.Now().UnixNano()
	if r := post(stranger, now, signed, body); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("wrong key: %d", r.StatusCode)
	}
	if r := post(h.Client.Hotkey, time.Now().Add(-time.Hour).UnixNano(), signed, body); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("stale: %d", r.StatusCode)
	}
	if r := post(h.Client.Hotkey, now, signed, []byte(`{"docker_image": "x", "nope": 1}`)); r.StatusCode != http.StatusBadRequest {
		t.Errorf("unknown field: %d", r.StatusCode)
	}
	good := base64.StdEncoding.EncodeToString(h.Client.Hotkey.Sign(protocol.SignedMessage(now, signed)))
	if r := postSigned(now, body, good); r.StatusCode != http.StatusCreated {
		t.Errorf("good: %d", r.StatusCode)
	}
	if r := postSigned(now, body, good); r.StatusCode != http.StatusConflict {
		t.Errorf("replayed: %d", r.StatusCode)
	}
	// Other clients cannot see the job.
	other := client.New(h.FacilitatorURL, stranger)
	list, err := h.Client.Jobs(ctx, 0, 10)
	if err != nil || list.Count != 1 {
		t.Fatalf("list: %+v %v", list, err)
	}
	if _, err := other.Job(ctx, list.Results[0].UUID); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("stranger reads job: %v", err)
	}
	bad := Spec("echo")
	bad.ExecutionTimeLimit = 0
	if _, err := h.Client.CreateJob(ctx, bad); err == nil {
		t.Error("zero time limit accepted")
	}
}

// A container an executor left behind (it crashed) is reaped by its miner.
func TestMinerReapsLeftovers(t *testing.T) {
	cli := Docker(t)
	image := JobImage(t, cli)
	dir := t.TempDir()
	k, err := devstack.LoadOrCreate(dir+"/wallets", devstack.WalletMiner+"0")
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	id, err := cli.ContainerCreate(ctx, "", &docker.ContainerConfig{Image: image, Cmd: []string{"sleep", "300"},
		Labels: map[string]string{executor.LabelOwner: k.SS58(), executor.LabelJob: "crashed-job"}, HostConfig: docker.HostConfig{NetworkMode: "none"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.ContainerRemove(context.Background(), id) })
	if err := cli.ContainerStart(ctx, id); err != nil {
		t.Fatal(err)
	}
	Start(t, devstack.Config{DataDir: dir, ReapEvery: 500 * time.Millisecond})
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := cli.ContainerInspect(ctx, id); errors.Is(err, docker.ErrNotFound) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("leftover container not reaped")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// With one executor, a second job waits for it rather than being rejected.
func TestJobWaitsForBusyExecutor(t *testing.T) {
	h := StartFake(t, devstack.Config{Manifest: map[string]int{protocol.ClassTest: 1}})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	first, err := h.Client.CreateJob(ctx, Spec("sleep", "1"))
	if err != nil {
		t.Fatal(err)
	}
	h.WaitStatus(t, first.UUID, protocol.StatusVolumesReady) // the one executor is taken
	type result struct {
		job *protocol.Job
		err error
	}
	second := make(chan result, 1)
	go func() {
		j, err := h.RunJob(ctx, Spec("echo", "second"))
		second <- result{j, err}
	}()
	j1, err := h.Client.Watch(ctx, first.UUID, func(protocol.StatusEntry) {})
	if err != nil {
		t.Fatal(err)
	}
	r := <-second
	if r.err != nil {
		t.Fatal(r.err)
	}
	for _, j := range []*protocol.Job{j1, r.job} {
		if j.Status != protocol.StatusCompleted {
			t.Errorf("job %v: %s %+v", j.Args, j.Status, Last(j).Metadata)
		}
	}
}

// The miner refuses stale, replayed, wrongly signed and unknown validators
// with UnauthorizedError; a good auth gets the manifest.
func TestMinerRefusesBadAuth(t *testing.T) {
	h := StartFake(t, devstack.Config{})
	ctx := t.Context()
	miner := h.Miners[0].SS58()
	url := "ws://" + h.MinerAddrs[0] + protocol.ValidatorAuthPath
	stranger, _ := sig.FromSeed(sig.RandomSeed())
	try := func(hotkey string, m protocol.Message) protocol.Message {
		conn, err := wsconn.Dial(ctx, url+hotkey, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close("")
		conn.Send(ctx, m)
		got, err := conn.Recv(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	good := wsconn.NewValidatorAuth(h.Validator, miner, time.Now())
	if _, ok := try(h.Validator.SS58(), good).(*protocol.V0ExecutorManifestRequest); !ok {
		t.Fatal("good auth refused")
	}
	forged := *wsconn.NewValidatorAuth(h.Validator, miner, time.Now())
	forged.Signature = stranger.SignHex(forged.AuthMessage())
	for name, c := range map[string]struct {
		hotkey string
		m      protocol.Message
	}{
		"replayed":  {h.Validator.SS58(), good},
		"stale":     {h.Validator.SS58(), wsconn.NewValidatorAuth(h.Validator, miner, time.Now().Add(-time.Minute))},
		"forged":    {h.Validator.SS58(), &forged},
		"no permit": {stranger.SS58(), wsconn.NewValidatorAuth(stranger, miner, time.Now())},
		"not auth":  {h.Validator.SS58(), &protocol.V0AcceptJobRequest{JobUUID: "x"}},
	} {
		got := try(c.hotkey, c.m)
		if u, ok := got.(*protocol.UnauthorizedError); !ok || u.Details == "" {
			t.Errorf("%s: got %#v, want UnauthorizedError with details", name, got)
		}
	}
}

// A horde stopped while a job runs and started again on the same data
// directory tells the client how the job ended; nothing accepted is lost.
func TestRestartLosesNothing(t *testing.T) {
	for _, rt := range []Runtime{OnFake, OnDocker} {
		t.Run(rt.Name, func(t *testing.T) {
			dir := t.TempDir()
			h := rt.Start(t, devstack.Config{DataDir: dir})
			ctx := t.Context()
			running, err := h.Client.CreateJob(ctx, Spec("sleep", "60"))
			if err != nil {
				t.Fatal(err)
			}
			h.WaitStatus(t, running.UUID, protocol.StatusVolumesReady)
			if err := h.Stop(); err != nil {
				t.Fatal(err)
			}
			assertNoContainers(t, h.Runtime, running.UUID)

			h2 := rt.Start(t, devstack.Config{DataDir: dir})
			wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			j, err := h2.Client.Watch(wctx, running.UUID, func(protocol.StatusEntry) {})
			if err != nil {
				t.Fatal(err)
			}
			d := Last(j).Metadata.HordeFailureDetails
			if j.Status != protocol.StatusHordeFailed || d == nil || !strings.Contains(d.Message, "validator") {
				t.Errorf("after restart: %s %+v", j.Status, Last(j).Metadata)
			}
			// And the restarted horde serves new jobs.
			if j := h2.Run(t, Spec("echo", "again")); j.Status != protocol.StatusCompleted {
				t.Errorf("new job after restart: %s", j.Status)
			}
		})
	}
}

// A trusted miner is outside the metagraph and serves only its validator.
func TestTrustedMinerServesOnlyItsValidator(t *testing.T) {
	rt := fakert.New()
	mine, _ := sig.FromSeed(sig.RandomSeed())
	pinned, _ := sig.FromSeed(sig.RandomSeed())
	other, _ := sig.FromSeed(sig.RandomSeed())
	db, err := sqlite.Open(t.Context(), t.TempDir()+"/miner.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	m, err := miner.New(miner.Config{Hotkey: mine, Listener: ln, Manifest: map[string]int{protocol.ClassTest: 1},
		TrustedValidator: pinned.SS58(), Store: db, Backend: &miner.Local{Runtime: rt, DataDir: t.TempDir(), Owner: mine.SS58(), Log: slog.New(slog.DiscardHandler)}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for _, tc := range []struct {
		k    *sig.Hotkey
		want string
	}{{pinned, "V0ExecutorManifestRequest"}, {other, "UnauthorizedError"}} {
		conn, err := wsconn.Dial(ctx, "ws://"+ln.Addr().String()+protocol.ValidatorAuthPath+tc.k.SS58(), nil)
		if err != nil {
			t.Fatal(err)
		}
		conn.Send(ctx, wsconn.NewValidatorAuth(tc.k, mine.SS58(), time.Now()))
		m, err := conn.Recv(ctx)
		if err != nil || m.MessageType() != tc.want {
			t.Errorf("%s: got %v %v, want %s", tc.k.SS58()[:8], m, err, tc.want)
		}
		conn.Close("")
	}
}
