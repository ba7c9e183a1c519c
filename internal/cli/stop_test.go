package cli

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A command that ignores its stop signal (a job stuck in an upload, a peer
// that never reads) does not keep the process: once ctx ends, stopWithin
// returns ErrStopTimeout after the grace, and main exits.
func TestStopWithinGivesUpOnAStuckCommand(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	stuck := make(chan struct{})
	defer close(stuck)
	returned := make(chan error, 1)
	go func() {
		returned <- stopWithin(ctx, 10*time.Millisecond, func() error { <-stuck; return nil })
	}()
	select {
	case err := <-returned:
		t.Fatalf("returned before the stop signal: %v", err)
	default:
	}
	cancel()
	if err := <-returned; !errors.Is(err, ErrStopTimeout) {
		t.Fatalf("err = %v, want ErrStopTimeout", err)
	}
}

// A command that stops in time has its own result returned.
func TestStopWithinReturnsTheCommandsError(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	want := errors.New("stopped cleanly with this")
	returned := make(chan error, 1)
	go func() {
		returned <- stopWithin(ctx, time.Hour, func() error { <-ctx.Done(); return want })
	}()
	cancel()
	if err := <-returned; err != want {
		t.Fatalf("err = %v, want %v", err, want)
	}
}
