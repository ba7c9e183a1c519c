// Package hordetest is the integration harness: a whole horde on loopback
// (real WebSockets, real Docker, real SQLite files) plus an HTTP object
// server for volumes and outputs, for tests to drive through the client SDK.
package hordetest

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/protocol"
)

// Horde is a running test horde.
type Horde struct {
	*devstack.Stack
	Client  *client.Client
	Docker  *docker.Client
	Objects *devstack.Objects
}

// Docker returns a client of the local engine, skipping the test if there is none.
func Docker(t testing.TB) *docker.Client {
	t.Helper()
	cli, err := docker.New("")
	if err != nil {
		t.Fatal(err)
	}
	if err := cli.Ping(context.Background()); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI needs a Docker Engine: %v", err)
		}
		t.Skipf("no Docker Engine: %v", err)
	}
	return cli
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

// Start runs a horde for the test; it stops when the test ends.
func Start(t testing.TB, cfg devstack.Config) *Horde {
	t.Helper()
	cli := Docker(t)
	JobImage(t, cli)
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	if cfg.Refresh == 0 {
		cfg.Refresh = time.Second
	}
	s, err := devstack.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	objects, err := devstack.ServeObjects(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	h := &Horde{Stack: s, Client: client.New(s.FacilitatorURL, s.Client), Docker: cli, Objects: objects}
	t.Cleanup(func() {
		objects.Close()
		if err := s.Stop(); err != nil {
			t.Errorf("stop horde: %v", err)
		}
	})
	return h
}

// Run submits spec and waits for the job to end.
func (h *Horde) Run(t testing.TB, spec *protocol.JobSpec) *protocol.Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	job, err := h.Client.CreateJob(ctx, spec)
	if err != nil {
		t.Fatalf("create job: %v", err)
	}
	done, err := h.Client.Watch(ctx, job.UUID, func(protocol.StatusEntry) {})
	if err != nil {
		t.Fatalf("watch job %s: %v", job.UUID, err)
	}
	return done
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
