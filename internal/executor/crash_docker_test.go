package executor_test

import (
	"bufio"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/executor/docker/dockertest"
	"github.com/horde-compute/horde/internal/executor/jobdisk"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/internal/miner"
	"github.com/horde-compute/horde/protocol"
	sr "github.com/horde-compute/horde/streamreceipt"
)

// Issue 15, row 12: kill -9 of the process that runs a streaming job (a
// miner runs its executors in its own process), then a restart on the same
// data directory with the same owner label: the container, its network,
// the job directory and its bounded disks are all reaped.
//
// The executor runs in a child process (this test binary again, as
// TestCrashChild) against this test playing the miner; once the job
// serves, the child gets SIGKILL, and what it left is checked and then
// handed to the reaper a restarted miner runs first.
func TestDockerCrashLeftoversReaped(t *testing.T) {
	t.Parallel() // containers of its own (owner label, data directory, tags)
	h, _ := dockerHarness(t)
	cli := dockertest.Engine(t)
	llm, digest := llmImage(t, cli)
	_, clientCert, err := sr.NewKeyPair("client", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bound := jobdisk.Check() == nil

	child := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.v")
	child.Env = append(os.Environ(), "HORDE_CRASH_CHILD=1", "HORDE_CRASH_MINER_URL="+h.url,
		"HORDE_CRASH_DATA_DIR="+h.dataDir, "HORDE_CRASH_OWNER="+h.owner)
	out, err := os.Create(filepath.Join(t.TempDir(), "child.log"))
	if err != nil {
		t.Fatal(err)
	}
	child.Stdout, child.Stderr = out, out
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }() // owned: read below
	killed := false
	defer func() {
		if !killed {
			child.Process.Kill()
			<-exited
		}
	}()
	var conn = func() *job {
		select {
		case c := <-h.conns:
			return &job{t: t, conn: c}
		case err := <-exited:
			killed = true
			b, _ := os.ReadFile(out.Name())
			t.Fatalf("the child ended before connecting: %v\n%s", err, b)
			return nil
		}
	}()
	in := initial(jobID("crash"), llm)
	in.StreamingDetails = &protocol.StreamingDetails{PublicKey: string(clientCert)}
	in.ImageDigest = digest
	in.ExecutorTiming = &protocol.ExecutorTiming{DownloadTimeLimit: 30, ExecutionTimeLimit: 600, UploadTimeLimit: 30, StreamingStartTimeLimit: 60}
	conn.send(in)
	if m := conn.recv(); m.MessageType() != "V0ExecutorReadyRequest" {
		t.Fatalf("after the initial request: %#v", m)
	}
	conn.send(request(in.JobUUID, llm))
	for {
		m := conn.recv()
		if m.MessageType() == "V0StreamingJobReadyRequest" {
			break
		}
		if m.MessageType() != "V0VolumesReadyRequest" {
			t.Fatalf("while starting the stream: %#v", m)
		}
	}

	// The job serves: crash.
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-exited; err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("child: %v", err)
	}
	killed = true

	label := executor.LabelOwner + "=" + h.owner
	ctx := t.Context()
	cs, _ := cli.ContainerList(ctx, label)
	ns, _ := cli.NetworkList(ctx, label)
	dirs, _ := os.ReadDir(h.dataDir)
	mounts := mountsBeneath(t, h.dataDir)
	t.Logf("left by the crash: %d containers, %d networks, %d job directories, %d mounts", len(cs), len(ns), len(dirs), len(mounts))
	if len(cs) != 1 || len(ns) != 1 || len(dirs) != 1 || (bound && len(mounts) != 2) {
		t.Fatalf("the crash left %+v, %+v, %v, %v: not what a killed executor leaves", cs, ns, dirs, mounts)
	}
	if cs[0].Labels[executor.LabelJob] != in.JobUUID || ns[0].Labels[executor.LabelJob] != in.JobUUID {
		t.Errorf("labels %v %v", cs[0].Labels, ns[0].Labels)
	}

	// The restarted miner's reaper, on the same data directory and owner
	// (spare nothing for age: the crash is known).
	r := &miner.Reaper{Runtime: cli, Owner: h.owner, DataDir: h.dataDir, MinAge: -1, Log: slog.New(slog.NewTextHandler(testLog{t}, nil))}
	r.Reap(ctx, nil)
	h.assertClean(t)
	if m := mountsBeneath(t, h.dataDir); len(m) != 0 {
		t.Errorf("mounts left: %v", m)
	}
	if _, err := cli.ContainerInspect(ctx, cs[0].ID); err == nil {
		t.Error("the container is still there")
	}
}

// TestCrashChild is the executor process of TestDockerCrashLeftoversReaped;
// it runs only as that test's child.
func TestCrashChild(t *testing.T) {
	if os.Getenv("HORDE_CRASH_CHILD") != "1" {
		t.Skip("the child process of TestDockerCrashLeftoversReaped")
	}
	cli, err := docker.New("")
	if err != nil {
		t.Fatal(err)
	}
	err = executor.Run(context.Background(), executor.Config{MinerURL: os.Getenv("HORDE_CRASH_MINER_URL"), DataDir: os.Getenv("HORDE_CRASH_DATA_DIR"),
		Runtime: cli, Owner: os.Getenv("HORDE_CRASH_OWNER"), BoundDisks: jobdisk.Check() == nil, StreamingListen: "127.0.0.1:0",
		Log: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	t.Fatalf("the executor returned (it should have been killed): %v", err)
}

var (
	llmOnce       sync.Once
	llmTag, llmID string
	llmErr        error
)

// llmImage builds the demo LLM image under a tag of this test binary's own
// (once per binary; removed when it ends) and returns the tag and its digest.
func llmImage(t *testing.T, cli *docker.Client) (string, string) {
	t.Helper()
	jobTag := jobImage(t, cli)
	llmOnce.Do(func() {
		tag := strings.Replace(jobTag, "horde/job:", "horde/llm:", 1)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if llmErr = images.Build(ctx, cli, "github.com/horde-compute/horde/internal/images/llmimage", tag); llmErr != nil {
			return
		}
		atEnd(func() { cli.ImageRemove(context.Background(), tag) })
		img, err := cli.ImageInspect(ctx, tag)
		if err != nil {
			llmErr = err
			return
		}
		llmTag, llmID = tag, img.ID
	})
	if llmErr != nil {
		t.Fatal(llmErr)
	}
	return llmTag, llmID
}

// mountsBeneath lists the mount points at or beneath dir.
func mountsBeneath(t *testing.T, dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			out = append(out, fields[4])
		}
	}
	return out
}

// testLog writes log lines to the test's log.
type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
