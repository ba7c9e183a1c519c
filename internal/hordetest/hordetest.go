// Package hordetest is the integration harness: a whole horde on loopback
// (real WebSockets, real SQLite files, real signatures) plus an HTTP object
// server for volumes and outputs, for tests to drive through the client SDK.
// Its containers run on the Docker Engine (Start, behind the one Docker gate
// of package dockertest) or, with no Docker at all, on the in-process fake
// runtime (StartFake), which runs the images' very programs but isolates
// nothing.
package hordetest

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/executor/docker/dockertest"
	"github.com/horde-compute/horde/internal/executor/fakert"
	"github.com/horde-compute/horde/internal/executor/jobdisk"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/protocol"
)

// Horde is a running test horde.
type Horde struct {
	*devstack.Stack
	Client *client.Client
	// Runtime runs the containers: Docker (then Docker is set too) or Fake.
	Runtime executor.Runtime
	Docker  *docker.Client
	Fake    *fakert.Runtime
	Objects *devstack.Objects
	// BoundDisks says whether job directories are bounded file systems
	// (on Docker, where the host can): a job writing too much then fails
	// in execution (output_too_large), not at upload.
	BoundDisks bool
}

// Docker returns a client of the local engine; it is the Docker gate (see
// package dockertest): with HORDE_DOCKER_TESTS=off the test skips, and
// otherwise fails if no engine answers.
func Docker(t testing.TB) *docker.Client {
	t.Helper()
	return dockertest.Engine(t)
}

var buildOnce sync.Once
var buildErr error

// JobImage builds the test job image once per test binary.
func JobImage(t testing.TB, cli *docker.Client) string {
	t.Helper()
	buildOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		buildErr = images.EnsureJobImage(ctx, cli)
	})
	if buildErr != nil {
		t.Fatalf("build job image: %v", buildErr)
	}
	return images.JobImage
}

var llmOnce sync.Once
var llmDigest string
var llmErr error

// LLMImage builds the demo streaming service image once per test binary and
// returns its digest.
func LLMImage(t testing.TB, cli *docker.Client) string {
	t.Helper()
	llmOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		llmDigest, llmErr = images.EnsureLLMImage(ctx, cli)
	})
	if llmErr != nil {
		t.Fatalf("build llm image: %v", llmErr)
	}
	return llmDigest
}

// Start runs a horde on the Docker Engine for the test, behind the Docker
// gate; it stops when the test ends.
func Start(t testing.TB, cfg devstack.Config) *Horde {
	t.Helper()
	cli := Docker(t)
	JobImage(t, cli)
	cfg.Runtime = cli
	// As a miner would, where the host can: bounded job disks.
	cfg.BoundDisks = jobdisk.Check() == nil
	h := start(t, cfg)
	h.Docker = cli
	return h
}

// StartFake runs a horde whose containers run on the in-process fake
// runtime, with horde's images registered (images.RegisterFake): no Docker
// needed. It stops when the test ends, and the test fails if any container
// is left behind.
func StartFake(t testing.TB, cfg devstack.Config) *Horde {
	t.Helper()
	rt := fakert.New()
	images.RegisterFake(rt)
	cfg.Runtime = rt
	h := start(t, cfg)
	h.Fake = rt
	return h
}

func start(t testing.TB, cfg devstack.Config) *Horde {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	if cfg.Refresh == 0 {
		cfg.Refresh = time.Second
	}
	objects, err := devstack.ServeObjects(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// Executors reach the object server, and nothing else on loopback.
	cfg.AllowPrivate = append(cfg.AllowPrivate, strings.TrimPrefix(objects.URL, "http://"))
	s, err := devstack.Start(context.Background(), cfg)
	if err != nil {
		objects.Close()
		t.Fatal(err)
	}
	h := &Horde{Stack: s, Client: client.New(s.FacilitatorURL, s.Client), Runtime: cfg.Runtime, Objects: objects, BoundDisks: cfg.BoundDisks}
	t.Cleanup(func() {
		objects.Close()
		if err := s.Stop(); err != nil {
			t.Errorf("stop horde: %v", err)
		}
		if h.Fake == nil {
			return
		}
		// Every executor has ended: each must have removed what it made.
		if cs := h.Fake.Containers(); len(cs) > 0 {
			t.Errorf("fake runtime: %d containers left behind after the horde stopped: %+v", len(cs), cs)
		}
		if ns, _ := h.Fake.NetworkList(context.Background(), ""); len(ns) > 0 {
			t.Errorf("fake runtime: %d networks left behind after the horde stopped: %+v", len(ns), ns)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := h.Fake.Close(ctx); err != nil {
			t.Errorf("fake runtime: %v", err)
		}
	})
	return h
}

// A Runtime is where a test horde runs its containers, for tests that run
// on both.
type Runtime struct {
	Name string
	// Start runs a horde on this runtime for the test.
	Start func(testing.TB, devstack.Config) *Horde
	// LLMDigest is the digest of the demo LLM image on this runtime (built
	// from source on Docker), for streaming whitelists.
	LLMDigest func(testing.TB) string
}

// OnFake and OnDocker are the two runtimes.
var (
	OnFake   = Runtime{Name: "fake", Start: StartFake, LLMDigest: func(testing.TB) string { return fakert.ImageID(images.LLMImage) }}
	OnDocker = Runtime{Name: "docker", Start: Start, LLMDigest: func(t testing.TB) string { return LLMImage(t, Docker(t)) }}
)

// Run submits spec and waits (two minutes at most) for the job to end.
func (h *Horde) Run(t testing.TB, spec *protocol.JobSpec) *protocol.Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	job, err := h.RunJob(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	return job
}

// RunJob submits spec and waits for the job to end; for goroutines of a
// test, which must not call t.Fatal.
func (h *Horde) RunJob(ctx context.Context, spec *protocol.JobSpec) (*protocol.Job, error) {
	job, err := h.Client.CreateJob(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("create job: %w", err)
	}
	done, err := h.Client.Watch(ctx, job.UUID, func(protocol.StatusEntry) {})
	if err != nil {
		return nil, fmt.Errorf("watch job %s: %w", job.UUID, err)
	}
	return done, nil
}

// WaitStatus waits (a minute at most) until job uuid has reached status,
// and fails the test if it ends without.
func (h *Horde) WaitStatus(t testing.TB, uuid string, status protocol.JobStatus) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	reached := false
	j, err := h.Client.Watch(ctx, uuid, func(e protocol.StatusEntry) {
		if e.Status == status {
			reached = true
			cancel()
		}
	})
	switch {
	case reached:
	case err != nil:
		t.Fatalf("waiting for job %s to be %s: %v", uuid, status, err)
	default:
		t.Fatalf("job %s ended %s without being %s", uuid, j.Status, status)
	}
}

// Spec returns a job spec for the test image running args.
func Spec(args ...string) *protocol.JobSpec {
	return &protocol.JobSpec{ExecutorClass: protocol.ClassTest, DockerImage: images.JobImage, Args: args,
		DownloadTimeLimit: 30, ExecutionTimeLimit: 30, UploadTimeLimit: 30}
}

// Last returns the last status entry of a job.
func Last(j *protocol.Job) protocol.StatusEntry {
	if len(j.StatusHistory) == 0 {
		return protocol.StatusEntry{}
	}
	return j.StatusHistory[len(j.StatusHistory)-1]
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
