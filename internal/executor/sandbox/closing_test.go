package sandbox_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"

	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/executor/fakert"
	"github.com/horde-compute/horde/internal/executor/sandbox"
)

// lateEngine is an engine whose container creation, once its caller has
// given up, still happens, later: as Docker's, which finishes a create
// whose HTTP request was cancelled — here after a removal of the container
// that came too early (not found) and before the next request.
type lateEngine struct {
	*fakert.Runtime
	closing func() // the pool is stopped while its holder is being created

	mu   sync.Mutex
	late []func()
}

func (e *lateEngine) ContainerCreate(ctx context.Context, name string, cfg *docker.ContainerConfig) (string, error) {
	e.closing()
	if err := ctx.Err(); err != nil {
		e.mu.Lock()
		e.late = append(e.late, func() { e.Runtime.ContainerCreate(context.Background(), name, cfg) })
		e.mu.Unlock()
		return "", err
	}
	return e.Runtime.ContainerCreate(ctx, name, cfg)
}

func (e *lateEngine) NetworkRemove(ctx context.Context, id string) error {
	e.mu.Lock()
	late := e.late
	e.late = nil
	e.mu.Unlock()
	for _, create := range late {
		create()
	}
	return e.Runtime.NetworkRemove(ctx, id)
}

// A pool stopped while it makes a sandbox leaves nothing on the engine,
// even when the engine finishes a creation its caller gave up on.
func TestPoolStoppedWhileMaking(t *testing.T) {
	rt := fakert.New()
	defer rt.Close(context.Background())
	rt.Register("holder", func(ctx context.Context, c *fakert.Container) int { <-ctx.Done(); return 0 })
	ctx, stop := context.WithCancel(t.Context())
	e := &lateEngine{Runtime: rt, closing: stop}
	p := &sandbox.Pool{Runtime: e, Owner: "me", Size: 1, Image: "holder", Log: slog.New(slog.DiscardHandler)}
	p.Run(ctx) // returns once stopped, the pool drained
	ns, _ := rt.NetworkList(context.Background(), "")
	if cs := rt.Containers(); len(cs)+len(ns) != 0 {
		t.Errorf("left on the engine: %d containers %+v, %d networks %+v", len(cs), cs, len(ns), ns)
	}
}
