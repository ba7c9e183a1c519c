//go:build !linux

package cli

// stopWithParent does nothing where the kernel cannot signal a child when
// its parent exits; there, stop 'horde dev' with Ctrl-C.
func stopWithParent() error { return nil }
