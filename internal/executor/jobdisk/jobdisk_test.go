package jobdisk

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func needLoop(t *testing.T) {
	t.Helper()
	if err := Check(); err != nil {
		t.Skipf("no bounded disks on this host: %v", err)
	}
}

func mounted(t *testing.T, dir string) bool {
	t.Helper()
	points, err := mountPoints()
	if err != nil {
		t.Fatal(err)
	}
	return slices.Contains(points, dir)
}

// A bounded directory takes what its limit allows and no more: the write
// past it fails with ENOSPC, Over says so, the host's directory holds no
// image, and unmounting gives everything back.
func TestMountBounds(t *testing.T) {
	needLoop(t)
	for _, limit := range []int64{1 << 20, 64 << 20, 2 << 30} {
		parent := t.TempDir()
		dir := filepath.Join(parent, "output")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		d, err := Mount(t.Context(), dir, limit)
		if err != nil {
			t.Fatal(err)
		}
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			t.Fatal(err)
		}
		avail := int64(st.Bavail) * st.Bsize
		t.Logf("limit %d: %d bytes available (%.2f%% over)", limit, avail, 100*float64(avail-limit)/float64(limit))
		if avail < limit || avail > limit+limit/20+16<<20 {
			t.Errorf("limit %d: %d bytes available", limit, avail)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("a new disk holds %v", ents)
		}
		if info, _ := os.Stat(dir); info.Mode().Perm() != 0o777 {
			t.Errorf("root mode %v", info.Mode())
		}
		if ents, _ := os.ReadDir(parent); len(ents) != 1 {
			t.Errorf("beside the disk: %v (the image should be unlinked)", ents)
		}
		if limit > 64<<20 {
			// The big one only checks its size: writing it is the executor's test.
			if err := d.Unmount(); err != nil {
				t.Fatal(err)
			}
			continue
		}
		f, err := os.Create(filepath.Join(dir, "big"))
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1<<20)
		var wrote int64
		for wrote < 2*limit+(32<<20) {
			n, err := f.Write(buf)
			wrote += int64(n)
			if err != nil {
				if !errors.Is(err, unix.ENOSPC) {
					t.Fatalf("write: %v", err)
				}
				break
			}
		}
		f.Close()
		if wrote < limit || wrote > avail {
			t.Errorf("limit %d: wrote %d before ENOSPC", limit, wrote)
		}
		if !d.Over() {
			used, err := d.Used()
			t.Errorf("limit %d: not over after %d bytes (used %d, %v)", limit, wrote, used, err)
		}
		if err := d.Unmount(); err != nil {
			t.Fatal(err)
		}
		if mounted(t, dir) {
			t.Errorf("%s still mounted", dir)
		}
		if err := os.RemoveAll(parent); err != nil {
			t.Errorf("remove after unmount: %v", err)
		}
	}
}

// A small disk is not over its bound while under it.
func TestUsedUnderLimit(t *testing.T) {
	needLoop(t)
	dir := filepath.Join(t.TempDir(), "v")
	os.Mkdir(dir, 0o755)
	d, err := Mount(t.Context(), dir, 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Unmount()
	if err := os.WriteFile(filepath.Join(dir, "a"), make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if used, err := d.Used(); err != nil || used < 4<<20 || used > 5<<20 || d.Over() {
		t.Errorf("used %d (%v), over %v", used, err, d.Over())
	}
}

// What a crash leaves (disks mounted beneath a job directory) goes with
// UnmountBeneath, deepest first, and then the directory can be removed.
func TestUnmountBeneath(t *testing.T) {
	needLoop(t)
	root := t.TempDir()
	job := filepath.Join(root, "job-x-1")
	var dirs []string
	for _, name := range []string{"volume", "output", "output/deeper"} {
		dirs = append(dirs, filepath.Join(job, name))
	}
	os.MkdirAll(dirs[0], 0o755)
	os.MkdirAll(dirs[1], 0o755)
	for _, d := range dirs {
		os.MkdirAll(d, 0o755) // output/deeper is made inside the mounted output
		if _, err := Mount(t.Context(), d, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	other := filepath.Join(root, "job-xy-2")
	os.Mkdir(other, 0o755)
	od, err := Mount(t.Context(), other, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer od.Unmount()
	if err := UnmountBeneath(job); err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if mounted(t, d) {
			t.Errorf("%s still mounted", d)
		}
	}
	if !mounted(t, other) {
		t.Error("a sibling whose name shares the prefix was unmounted")
	}
	if err := os.RemoveAll(job); err != nil {
		t.Error(err)
	}
	if err := UnmountBeneath(filepath.Join(root, "nothing-here")); err != nil {
		t.Errorf("nothing mounted: %v", err)
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{`/a/b`: "/a/b", `/a\040b`: "/a b", `/x\134y`: `/x\y`, `/t\011`: "/t\t", `/bad\9`: `/bad\9`, `/end\04`: `/end\04`} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
	if !strings.Contains(ErrUnavailable.Error(), "size-bounded") {
		t.Error(ErrUnavailable)
	}
}

func TestMountRefusesBadBounds(t *testing.T) {
	if _, err := Mount(t.Context(), t.TempDir(), 0); err == nil {
		t.Error("a zero bound was accepted")
	}
}
