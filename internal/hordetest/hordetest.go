// Package hordetest is the integration harness: a whole horde on loopback
// (real WebSockets, real Docker, real SQLite files) plus an HTTP object
// server for volumes and outputs, for tests to drive through the client SDK.
package hordetest

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
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
	Objects *Objects
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
	h := &Horde{Stack: s, Client: client.New(s.FacilitatorURL, s.Client), Docker: cli, Objects: NewObjects(t)}
	t.Cleanup(func() {
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

// Objects is an HTTP object server: GET serves what was put, PUT and POST store.
type Objects struct {
	URL string
	mu  sync.Mutex
	m   map[string][]byte
	// Fail maps a path to the status it answers instead.
	Fail map[string]int
}

// NewObjects starts an object server for the test.
func NewObjects(t testing.TB) *Objects {
	o := &Objects{m: map[string][]byte{}, Fail: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(o.serve))
	t.Cleanup(srv.Close)
	o.URL = srv.URL
	return o
}

func (o *Objects) serve(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	code := o.Fail[r.URL.Path]
	o.mu.Unlock()
	if code != 0 {
		w.WriteHeader(code)
		return
	}
	switch r.Method {
	case http.MethodGet:
		o.mu.Lock()
		b, ok := o.m[r.URL.Path]
		o.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	case http.MethodPut, http.MethodPost:
		var b []byte
		if strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/") {
			f, _, err := r.FormFile("file")
			if err != nil {
				w.WriteHeader(400)
				return
			}
			b, _ = io.ReadAll(f)
		} else {
			b, _ = io.ReadAll(r.Body)
		}
		o.Put(r.URL.Path, b)
	default:
		w.WriteHeader(405)
	}
}

// Put stores an object.
func (o *Objects) Put(path string, b []byte) {
	o.mu.Lock()
	o.m[path] = b
	o.mu.Unlock()
}

// Get returns an object.
func (o *Objects) Get(path string) ([]byte, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	b, ok := o.m[path]
	return b, ok
}
