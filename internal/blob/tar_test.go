package blob

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A directory crosses as a tar stream and arrives the same: files,
// nesting, empty directories; what is not a regular file stays behind.
func TestTarRoundTrip(t *testing.T) {
	src, art := t.TempDir(), t.TempDir()
	must(t, os.MkdirAll(filepath.Join(src, "sub", "deeper"), 0o755))
	must(t, os.MkdirAll(filepath.Join(src, "empty"), 0o755))
	must(t, os.WriteFile(filepath.Join(src, "a.txt"), []byte("hello"), 0o600))
	must(t, os.WriteFile(filepath.Join(src, "sub", "deeper", "b.bin"), bytes.Repeat([]byte{7}, 100_000), 0o644))
	must(t, os.WriteFile(filepath.Join(art, "c.txt"), nil, 0o644))
	secret := filepath.Join(t.TempDir(), "secret")
	must(t, os.WriteFile(secret, []byte("host secret"), 0o600))
	must(t, os.Symlink(secret, filepath.Join(src, "link")))
	must(t, unix.Mkfifo(filepath.Join(src, "fifo"), 0o644))

	var buf bytes.Buffer
	var skipped []string
	err := WriteTar(t.Context(), &buf, map[string]string{"1": src, "2": art}, 10, func(p, kind string) { skipped = append(skipped, p+" "+kind) })
	must(t, err)
	if got := strings.Join(skipped, ","); got != "1/fifo FIFO,1/link symbolic link" {
		t.Errorf("skipped %q", got)
	}
	dst, dart := t.TempDir(), t.TempDir()
	must(t, ExtractTar(t.Context(), &buf, map[string]TarDir{"1": {Path: dst, MaxBytes: 200_000}, "2": {Path: dart}}, 10))
	for rel, want := range map[string]string{"a.txt": "hello", "sub/deeper/b.bin": strings.Repeat("\x07", 100_000)} {
		b, err := os.ReadFile(filepath.Join(dst, rel))
		if err != nil || string(b) != want {
			t.Errorf("%s: %d bytes, %v", rel, len(b), err)
		}
	}
	if _, err := os.Stat(filepath.Join(dart, "c.txt")); err != nil {
		t.Error(err)
	}
	for _, gone := range []string{"link", "fifo"} {
		if _, err := os.Lstat(filepath.Join(dst, gone)); !os.IsNotExist(err) {
			t.Errorf("%s crossed: %v", gone, err)
		}
	}
}

// More files than allowed stop the writer.
func TestWriteTarMaxFiles(t *testing.T) {
	src := t.TempDir()
	for _, n := range []string{"a", "b", "c"} {
		must(t, os.WriteFile(filepath.Join(src, n), nil, 0o644))
	}
	err := WriteTar(t.Context(), &bytes.Buffer{}, map[string]string{"0": src}, 2, nil)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
	if err := WriteTar(t.Context(), &bytes.Buffer{}, map[string]string{"../x": src}, 0, nil); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("name ../x: got %v, want ErrUnsafe", err)
	}
}

// A hostile stream: every entry that is not a plain file or directory
// beneath a known directory is refused, and nothing is written outside.
func TestExtractTarHostile(t *testing.T) {
	type entry struct {
		hdr  tar.Header
		data string
	}
	file := func(name, data string) entry {
		return entry{tar.Header{Typeflag: tar.TypeReg, Name: name, Size: int64(len(data)), Mode: 0o644}, data}
	}
	for _, tc := range []struct {
		name    string
		entries []entry
		want    error
	}{
		{"symlink", []entry{{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "0/l", Linkname: "/etc/passwd"}}}, ErrUnsafe},
		{"hard link", []entry{{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "0/l", Linkname: "0/a"}}}, ErrUnsafe},
		{"char device", []entry{{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "0/null", Devmajor: 1, Devminor: 3}}}, ErrUnsafe},
		{"fifo", []entry{{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "0/p"}}}, ErrUnsafe},
		{"dot dot", []entry{file("0/../escaped", "x")}, ErrUnsafe},
		{"absolute", []entry{file("/0/abs", "x")}, ErrUnsafe},
		{"unknown directory", []entry{file("9/x", "x")}, ErrUnsafe},
		{"top itself a file", []entry{file("0", "x")}, ErrUnsafe},
		{"over the bound", []entry{file("0/a", strings.Repeat("a", 60)), file("0/b", strings.Repeat("b", 60))}, ErrTooLarge},
		{"too many files", []entry{file("0/a", ""), file("0/b", ""), file("0/c", ""), file("0/d", "")}, ErrTooLarge},
		{"deep", []entry{file("0/"+strings.Repeat("d/", 70)+"f", "x")}, ErrUnsafe},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			for _, e := range tc.entries {
				must(t, tw.WriteHeader(&e.hdr))
				tw.Write([]byte(e.data))
			}
			must(t, tw.Close())
			root := t.TempDir()
			dir := filepath.Join(root, "0")
			must(t, os.Mkdir(dir, 0o755))
			err := ExtractTar(context.Background(), &buf, map[string]TarDir{"0": {Path: dir, MaxBytes: 100}}, 3)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if tc.want == ErrTooLarge && tc.name == "over the bound" {
				var full *DirFullError
				if !errors.As(err, &full) || full.Dir != "0" || full.Limit != 100 {
					t.Errorf("got %#v, want a DirFullError of 0", err)
				}
			}
			ents, _ := os.ReadDir(root)
			if len(ents) != 1 {
				t.Errorf("written outside the directory: %v", ents)
			}
		})
	}
}

// A link the destination already holds is replaced, never written through.
func TestExtractTarReplacesPlantedLink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	must(t, os.WriteFile(victim, []byte("keep"), 0o644))
	must(t, os.Symlink(victim, filepath.Join(dir, "a")))
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	must(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "0/a", Size: 3, Mode: 0o644}))
	tw.Write([]byte("new"))
	must(t, tw.Close())
	must(t, ExtractTar(t.Context(), &buf, map[string]TarDir{"0": {Path: dir}}, 0))
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Errorf("written through the link: victim holds %q", b)
	}
	if fi, err := os.Lstat(filepath.Join(dir, "a")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("a: %v %v", fi, err)
	}
}

// A header whose size, added to what the directory already took, wraps
// past the largest int64 (a sparse file of 2^63-1 bytes costs a job
// nothing to make) is refused by its size, before any byte is written.
func TestExtractTarSizeDoesNotWrap(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	must(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "0/a", Size: 1, Mode: 0o644}))
	tw.Write([]byte("a"))
	must(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "0/b", Size: math.MaxInt64, Mode: 0o644}))
	tw.Flush() // the huge file's bytes never follow: the header must be enough to refuse it
	dir := filepath.Join(t.TempDir(), "0")
	must(t, os.Mkdir(dir, 0o755))
	err := ExtractTar(t.Context(), &buf, map[string]TarDir{"0": {Path: dir, MaxBytes: 100}}, 0)
	var full *DirFullError
	if !errors.As(err, &full) {
		t.Fatalf("got %v, want a DirFullError", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "b")); err == nil {
		t.Errorf("the huge file was created (%d bytes)", fi.Size())
	}
}
