package cli

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// startParent is the parent this process started with, read as early as Go
// allows, before the parent could have gone.
var startParent = os.Getppid()

// stopWithParent has the kernel send this process SIGTERM when its parent
// exits: 'go run ./cmd/horde dev' runs horde as a child, and when the go
// command is killed (an editor stopping it, a terminal closed) the dev stack
// must not run on, holding its port, without anyone to stop it. SIGTERM
// ends it as Ctrl-C does, cleaning up its containers.
//
// The request takes effect only from the moment it is made: a parent that
// exited before (the process was re-parented) is detected by comparing the
// parent with the one it started with, and then the signal is sent here.
func stopWithParent() error {
	return stopWith(startParent)
}

func stopWith(parent int) error {
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGTERM), 0, 0, 0); err != nil {
		return fmt.Errorf("ask to stop with the parent process: %w", err)
	}
	if os.Getppid() != parent {
		return unix.Kill(os.Getpid(), unix.SIGTERM)
	}
	return nil
}
