package podfiles

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// What send writes, receive takes: the Pod's two ends of a directory.
func TestSendReceive(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "a.txt"), []byte("hi"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(src, "l")); err != nil {
		t.Fatal(err)
	}
	var tarb, errb bytes.Buffer
	if code := Main(t.Context(), Args("send", map[string]string{"1": src}), nil, &tarb, &errb); code != 0 {
		t.Fatalf("send: %d %s", code, errb.String())
	}
	if !strings.Contains(errb.String(), "left out 1/l: a symbolic link") {
		t.Errorf("send's stderr %q", errb.String())
	}
	if code := Main(t.Context(), Args("receive", map[string]string{"1": dst}), &tarb, nil, &errb); code != 0 {
		t.Fatalf("receive: %d %s", code, errb.String())
	}
	if b, err := os.ReadFile(filepath.Join(dst, "a.txt")); err != nil || string(b) != "hi" {
		t.Errorf("a.txt: %q %v", b, err)
	}
	for _, bad := range [][]string{nil, {"nope"}, {"receive"}, {"receive", "x"}, {"send", "1=relative"}} {
		if code := Main(t.Context(), bad, nil, &bytes.Buffer{}, &bytes.Buffer{}); code == 0 {
			t.Errorf("%q: exit 0", bad)
		}
	}
}
