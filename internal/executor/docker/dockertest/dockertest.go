// Package dockertest is the one gate of the tests that need a Docker Engine.
// Such a test calls Engine first. With HORDE_DOCKER_TESTS=off it skips and
// says why; otherwise an engine that does not answer fails it with a clear
// message: a machine without Docker never passes those tests silently.
package dockertest

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/executor/docker"
)

// Env is the environment variable that, set to "off", skips the tests that need Docker.
const Env = "HORDE_DOCKER_TESTS"

var (
	once   sync.Once
	client *docker.Client
	err    error
)

// Engine returns a client of the local Docker Engine ($DOCKER_HOST or the
// default socket), or skips the test if HORDE_DOCKER_TESTS=off, or fails it
// if the engine does not answer.
func Engine(t testing.TB) *docker.Client {
	t.Helper()
	switch v := os.Getenv(Env); v {
	case "off":
		t.Skipf("%s=off: skipping a test that needs the Docker Engine", Env)
	case "", "on":
	default:
		t.Fatalf("%s=%q: want off (skip the tests that need Docker), on or unset", Env, v)
	}
	once.Do(func() {
		client, err = docker.New("")
		if err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = client.Ping(ctx)
	})
	if err != nil {
		t.Fatalf("this test needs a Docker Engine, and none answers: %v\n(set %s=off to skip the tests that need Docker)", err, Env)
	}
	return client
}
