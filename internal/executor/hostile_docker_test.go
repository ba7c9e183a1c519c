package executor_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/executor/docker/dockertest"
	"github.com/horde-compute/horde/internal/executor/jobdisk"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/protocol"
	"golang.org/x/sys/unix"
)

// The attacks of hostile_test again, on the Docker Engine: the job is a
// real container, which writes its link, FIFO or gigabytes from inside.

var (
	imageOnce sync.Once
	imageTag  string
	imageErr  error
)

// jobImage builds the job image from this source under a tag of this test
// binary's own (other test binaries may rebuild horde/job:dev from other
// source meanwhile) and removes it when the binary ends (see TestMain).
func jobImage(t *testing.T, cli *docker.Client) string {
	t.Helper()
	imageOnce.Do(func() {
		b := make([]byte, 6)
		rand.Read(b)
		imageTag = "horde/job:executor-test-" + hex.EncodeToString(b)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		imageErr = images.Build(ctx, cli, "github.com/horde-compute/horde/internal/images/jobimage", imageTag)
		if imageErr == nil {
			atEnd(func() { cli.ImageRemove(context.Background(), imageTag) })
		}
	})
	if imageErr != nil {
		t.Fatal(imageErr)
	}
	return imageTag
}

// runID makes this binary's job ids its own: containers are named after
// their jobs, and other test binaries may share the engine.
var runID = func() string { b := make([]byte, 4); rand.Read(b); return hex.EncodeToString(b) }()

func jobID(name string) string { return name + "-" + runID }

// cleanups run after every test of the binary.
var (
	cleanupsMu sync.Mutex
	cleanups   []func()
)

// atEnd adds f to the cleanups (tests run in parallel).
func atEnd(f func()) {
	cleanupsMu.Lock()
	defer cleanupsMu.Unlock()
	cleanups = append(cleanups, f)
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, f := range cleanups {
		f()
	}
	os.Exit(code)
}

// dockerHarness plays the miner for executors on the Docker Engine, with
// an owner label of its own.
func dockerHarness(t *testing.T) (*harness, string) {
	t.Helper()
	cli := dockertest.Engine(t)
	image := jobImage(t, cli)
	b := make([]byte, 6)
	rand.Read(b)
	h := serveMiner(t, cli, "executor-test-"+hex.EncodeToString(b))
	// Whatever a failed test left, on the shared engine and host: its own
	// objects only, by its owner label and data directory.
	t.Cleanup(func() {
		ctx := context.Background()
		label := executor.LabelOwner + "=" + h.owner
		if cs, err := cli.ContainerList(ctx, label); err == nil {
			for _, c := range cs {
				cli.ContainerRemove(ctx, c.ID)
			}
		}
		if ns, err := cli.NetworkList(ctx, label); err == nil {
			for _, n := range ns {
				cli.NetworkRemove(ctx, n.ID)
			}
		}
		jobdisk.UnmountBeneath(h.dataDir)
	})
	return h, image
}

// runOn runs one job on h with cfg edited and returns its last message.
func runOn(t *testing.T, h *harness, edit func(*executor.Config), in *protocol.V0InitialJobRequest, req *protocol.V0JobRequest) protocol.Message {
	t.Helper()
	j := h.start(t, edit)
	// Gigabytes go through these jobs (slowly under -race): the stages'
	// own limits bound the wait.
	j.patience = 10 * time.Minute
	j.send(in)
	if m := j.recv(); m.MessageType() != "V0ExecutorReadyRequest" {
		t.Fatalf("after the initial request: %#v", m)
	}
	j.send(req)
	last, _ := j.until()
	if err := j.end(); err != nil {
		t.Fatal(err)
	}
	return last
}

// Rows 1 and 2 on Docker: the container links /output/leak to a root-only
// host file outside /output, or makes /output/pipe a FIFO; a single-file
// upload of either is refused with its kind, nothing is uploaded, the
// executor ends and leaves nothing behind.
func TestDockerLinkAndFIFORefused(t *testing.T) {
	t.Parallel() // containers of its own (owner label, data directory, tags)
	h, image := dockerHarness(t)
	secret, content := hostSecret(t)
	for _, tt := range []struct {
		args []string
		name string
		kind string
	}{
		{[]string{"symlink", "leak", secret}, "leak", "symbolic link"},
		{[]string{"fifo", "pipe"}, "pipe", "FIFO"},
	} {
		t.Run(tt.kind, func(t *testing.T) {
			in := initial(jobID("d-"+tt.name), image)
			in.ExecutorTiming = &protocol.ExecutorTiming{DownloadTimeLimit: 30, ExecutionTimeLimit: 60, UploadTimeLimit: 86400}
			req := request(in.JobUUID, image, tt.args...)
			req.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadSinglePut, URL: h.objects.URL + "/out/" + tt.name, RelativePath: tt.name}
			last := runOn(t, h, func(c *executor.Config) { c.BoundDisks = jobdisk.Check() == nil }, in, req)
			f := failed(t, last)
			if f.Stage != protocol.StageResultUpload || !strings.Contains(f.Message, tt.name+" is a "+tt.kind) {
				t.Errorf("failure %s: %s", f.Stage, f.Message)
			}
			if _, ok := h.objects.Get("out/" + tt.name); ok {
				t.Error("something was uploaded")
			}
			if strings.Contains(fmt.Sprintf("%#v", last), content) {
				t.Error("the host file's content left the host")
			}
			h.assertClean(t)
		})
	}
}

// freeBytes is the free space of the file system holding dir.
func freeBytes(t *testing.T, dir string) int64 {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// Row 10 on Docker, as the attack was made: a job writes 2.6 GB to /output
// under the default limits. The kernel stops it at the 2 GiB bound, the
// job fails naming the bound, and the host disk gets back what it gave.
func TestDockerOutputBound(t *testing.T) {
	t.Parallel() // containers of its own (owner label, data directory, tags)
	if err := jobdisk.Check(); err != nil {
		t.Skip(err)
	}
	h, image := dockerHarness(t)
	before := freeBytes(t, h.dataDir)
	// Watch the host's free space while the job writes (a figure for the
	// report; other work on this machine moves it too).
	low := atomic.Int64{}
	low.Store(before)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if f := freeBytes(t, h.dataDir); f < low.Load() {
					low.Store(f)
				}
			}
		}
	})
	in := initial(jobID("bound"), image)
	in.ExecutorTiming = &protocol.ExecutorTiming{DownloadTimeLimit: 30, ExecutionTimeLimit: 600, UploadTimeLimit: 60}
	last := runOn(t, h, func(c *executor.Config) { c.BoundDisks = true }, in, request(in.JobUUID, image, "write", "big", "2600000000"))
	close(stop)
	wg.Wait()
	f := failed(t, last)
	limit := int64(2 << 30)
	if f.Stage != protocol.StageExecution || f.Context["horde_reason"] != "output_too_large" ||
		!strings.Contains(f.Message, "/output than its limit of "+strconv.FormatInt(limit, 10)+" bytes") {
		t.Errorf("failure %s/%v: %s", f.Stage, f.Context["horde_reason"], f.Message)
	}
	var wrote int64
	fmt.Sscanf(f.DockerProcessStdout, "wrote %d", &wrote)
	if wrote < limit || wrote > limit+64<<20 || !strings.Contains(f.DockerProcessStderr, "no space left on device") {
		t.Errorf("the job wrote %d bytes (stdout %q, stderr %q)", wrote, f.DockerProcessStdout, f.DockerProcessStderr)
	}
	after := freeBytes(t, h.dataDir)
	t.Logf("job wrote %d of 2600000000 bytes; host free space: %d before, lowest %d (-%d MiB), %d after",
		wrote, before, low.Load(), (before-low.Load())>>20, after)
	h.assertClean(t)
}

// sink is an upload destination that keeps nothing: it counts what it
// receives and keeps the last bytes (a zip's end record).
type sink struct {
	*httptest.Server
	n    atomic.Int64
	mu   sync.Mutex
	tail []byte
}

func newSink(t *testing.T) *sink {
	s := &sink{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 1<<20)
		var last []byte
		for {
			k, err := r.Body.Read(buf)
			s.n.Add(int64(k))
			if k > 0 {
				last = append(last[:0], buf[max(0, k-64):k]...)
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
		}
		s.mu.Lock()
		s.tail = last
		s.mu.Unlock()
	}))
	t.Cleanup(s.Close)
	return s
}

// Row 9 on Docker: 1.5 GB of incompressible output sent as a zip. The
// executor zips through a file on disk and streams it: its peak memory
// stays small. It runs as its own process ('horde executor', built
// without the race detector: deflating 1.5 GB under -race took minutes),
// so that its peak resident set is its own.
func TestDockerBigZipUploadStaysSmall(t *testing.T) {
	t.Parallel() // containers of its own (owner label, data directory, tags)
	h, image := dockerHarness(t)
	up := newSink(t)
	bin, err := images.BuildStatic(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	hostOf := func(u string) string { return strings.TrimPrefix(u, "http://") }
	child := exec.Command(bin, "executor", "--miner-url", h.url, "--owner", h.owner, "--data-dir", h.dataDir,
		"--allow-private", hostOf(h.objects.URL)+","+hostOf(up.URL), "--bound-disks="+strconv.FormatBool(jobdisk.Check() == nil),
		"--streaming-listen", "127.0.0.1:0")
	logFile, err := os.Create(filepath.Join(t.TempDir(), "executor.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	child.Stdout, child.Stderr = logFile, logFile
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }() // owned: read below, or by the deferred kill
	ended := false
	childLog := func() string { b, _ := os.ReadFile(logFile.Name()); return string(b) }
	defer func() {
		if !ended {
			child.Process.Kill()
			<-exited
			t.Logf("executor's log:\n%s", childLog())
		}
	}()
	var j *job
	select {
	case c := <-h.conns:
		j = &job{t: t, conn: c}
	case err := <-exited:
		ended = true
		t.Fatalf("the executor ended before connecting: %v\n%s", err, childLog())
	}
	// Gigabytes go through this job: the stages' own limits bound the wait.
	j.patience = 10 * time.Minute
	const size = 1_500_000_000
	in := initial(jobID("zip"), image)
	in.ExecutorTiming = &protocol.ExecutorTiming{DownloadTimeLimit: 30, ExecutionTimeLimit: 600, UploadTimeLimit: 600}
	req := request(in.JobUUID, image, "random", "noise.bin", strconv.Itoa(size))
	req.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: up.URL + "/outputs.zip"}
	start := time.Now()
	j.send(in)
	if m := j.recv(); m.MessageType() != "V0ExecutorReadyRequest" {
		t.Fatalf("after the initial request: %#v", m)
	}
	j.send(req)
	last, _ := j.until()
	// The executor ends after the job; what it sends meanwhile is read.
	go func() { // owned: ends when the executor closes the connection (its exit, awaited below)
		for {
			if _, err := j.conn.Recv(context.Background()); err != nil {
				return
			}
		}
	}()
	select {
	case err := <-exited:
		ended = true
		if err != nil {
			t.Fatalf("executor: %v\n%s", err, childLog())
		}
	case <-time.After(time.Minute):
		t.Fatal("the executor did not end")
	}
	if f, ok := last.(*protocol.V0JobFinishedRequest); !ok || f.UploadResults["outputs.zip"] != "200" {
		t.Fatalf("got %#v", last)
	}
	got := up.n.Load()
	up.mu.Lock()
	tail := up.tail
	up.mu.Unlock()
	if got < size || !bytes.Contains(tail, []byte("PK\x05\x06")) {
		t.Errorf("the sink got %d bytes ending %q", got, tail)
	}
	peak := int64(child.ProcessState.SysUsage().(*syscall.Rusage).Maxrss) << 10 // KiB on Linux
	t.Logf("1.5 GB incompressible zip upload: %d bytes sent in %s; the executor's peak RSS %d MiB",
		got, time.Since(start).Round(time.Second), peak>>20)
	if peak > 256<<20 {
		t.Errorf("the executor's peak resident set was %d MiB", peak>>20)
	}
	h.assertClean(t)
}
