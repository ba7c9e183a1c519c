package images

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// A binary that needs a dynamic loader cannot go into a FROM-scratch image:
// FromBinary says so before asking the engine for anything.
func TestCheckStatic(t *testing.T) {
	if err := checkStatic([]byte("#!/bin/sh\necho hi\n")); !errors.Is(err, ErrNotStatic) {
		t.Errorf("a script: %v, want ErrNotStatic", err)
	}
	sh, err := os.ReadFile("/bin/sh")
	if err != nil {
		t.Skip("no /bin/sh to read")
	}
	if err := checkStatic(sh); !errors.Is(err, ErrNotStatic) || !strings.Contains(err.Error(), "dynamic loader") {
		t.Errorf("/bin/sh: %v, want ErrNotStatic naming its loader", err)
	}
	if _, err := FromBinary(t.Context(), nil, "/bin/sh"); !errors.Is(err, ErrNotStatic) || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Errorf("FromBinary(/bin/sh): %v, want ErrNotStatic with how to build horde", err)
	}
}
