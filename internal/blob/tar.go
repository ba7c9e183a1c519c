package blob

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// A job's directories cross between hosts as tar streams (package kube
// copies them into and out of a job's Pod through the Kubernetes API):
// each directory under a top-level name of its own ("0/a.txt" is a.txt of
// the directory named "0"), regular files and directories only. The side
// that writes reads a hostile directory as the uploader does (WriteTar);
// the side that reads takes a hostile stream (ExtractTar).

// TarDir is one directory ExtractTar fills, and the bytes it may take.
type TarDir struct {
	Path string
	// MaxBytes bounds the file content beneath Path (zero: no bound).
	MaxBytes int64
}

// DirFullError says a tar stream held more than one directory may take.
// It wraps ErrTooLarge.
type DirFullError struct {
	Dir   string // the directory's name in the stream
	Limit int64
}

func (e *DirFullError) Error() string {
	return fmt.Sprintf("%s: more than %d bytes for %s", ErrTooLarge, e.Limit, e.Dir)
}

func (e *DirFullError) Unwrap() error { return ErrTooLarge }

// WriteTar writes the regular files beneath each of dirs (name → path) to w
// as one tar stream, each under its name, streamed from disk in name order.
// Links, FIFOs, devices and sockets are never opened nor followed (skipped,
// if not nil, hears of each); at most maxFiles files in all (zero: no
// bound). A file that grows while read is cut at the size it had when
// opened (its header is written first). It stops when ctx is done.
func WriteTar(ctx context.Context, w io.Writer, dirs map[string]string, maxFiles int, skipped func(path, kind string)) error {
	if skipped == nil {
		skipped = func(string, string) {}
	}
	tw := tar.NewWriter(w)
	files := 0
	lim := Limits{MaxFiles: maxFiles}
	for _, name := range slices.Sorted(maps.Keys(dirs)) {
		if err := checkTopName(name); err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o755, Format: tar.FormatPAX}); err != nil {
			return err
		}
		t, err := openTree(dirs[name])
		if err != nil {
			return err
		}
		err = t.walk(ctx, lim.maxEntries(), func(rel string, f *os.File, size int64) error {
			if files++; maxFiles > 0 && files > maxFiles {
				return fmt.Errorf("%w: more than %d files", ErrTooLarge, maxFiles)
			}
			hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name + "/" + rel, Mode: 0o644, Size: size, Format: tar.FormatPAX}
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			// Exactly size bytes: a file that shrank meanwhile is an error,
			// one that grew is cut.
			if _, err := io.CopyN(tw, ctxReader{ctx, f}, size); err != nil {
				return fmt.Errorf("tar %s/%s: %w", name, rel, err)
			}
			return nil
		}, func(rel, kind string) { skipped(name+"/"+rel, kind) })
		t.Close()
		if err != nil {
			return err
		}
	}
	return tw.Close()
}

// ExtractTar unpacks the tar stream r into dirs (name → directory): an
// entry "name/rest" becomes rest beneath dirs[name]. The stream is hostile:
// only regular files and directories are taken (a link, device or FIFO
// entry, an absolute path, one with "..", or one under a name not in dirs
// is refused with ErrUnsafe); files are created beneath each directory's
// descriptor, through no link, replacing whatever was there; more than a
// directory's MaxBytes is refused with a *DirFullError, more than maxFiles
// files in all (zero: no bound) with ErrTooLarge. Permission bits are not
// kept (files 0644, directories 0755). It stops when ctx is done.
func ExtractTar(ctx context.Context, r io.Reader, dirs map[string]TarDir, maxFiles int) error {
	trees := map[string]*tree{}
	defer func() {
		for _, t := range trees {
			t.Close()
		}
	}()
	used := map[string]int64{}
	files := 0
	tr := tar.NewReader(ctxReader{ctx, r})
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		top, rest, _ := strings.Cut(strings.TrimPrefix(hdr.Name, "./"), "/")
		d, ok := dirs[top]
		if !ok {
			return fmt.Errorf("%w: %q is in no directory of the stream", ErrUnsafe, hdr.Name)
		}
		t := trees[top]
		if t == nil {
			if t, err = openTree(d.Path); err != nil {
				return err
			}
			trees[top] = t
		}
		rest = strings.TrimSuffix(rest, "/")
		switch hdr.Typeflag {
		case tar.TypeDir:
			if files++; maxFiles > 0 && files > maxFiles { // each costs an inode too
				return fmt.Errorf("%w: more than %d files", ErrTooLarge, maxFiles)
			}
			if err := t.mkdirAll(rest); err != nil {
				return err
			}
			continue
		case tar.TypeReg:
		default:
			return fmt.Errorf("%w: %q is a link or special file (tar type %q)", ErrUnsafe, hdr.Name, hdr.Typeflag)
		}
		if rest == "" {
			return fmt.Errorf("%w: %q names no file", ErrUnsafe, hdr.Name)
		}
		if files++; maxFiles > 0 && files > maxFiles {
			return fmt.Errorf("%w: more than %d files", ErrTooLarge, maxFiles)
		}
		if hdr.Size < 0 || (d.MaxBytes > 0 && hdr.Size > d.MaxBytes-used[top]) { // no sum: it could wrap
			return &DirFullError{Dir: top, Limit: d.MaxBytes}
		}
		used[top] += hdr.Size
		if err := extractFile(t, rest, tr); err != nil {
			if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
				return fmt.Errorf("%w: %s: %w", &DirFullError{Dir: top, Limit: d.MaxBytes}, hdr.Name, err)
			}
			return err
		}
	}
}

// extractFile writes the current entry of tr to rel beneath t.
func extractFile(t *tree, rel string, tr *tar.Reader) error {
	f, err := t.create(rel) // its directories made, through no link
	if err != nil {
		return err
	}
	_, err = io.Copy(f, tr)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", rel, err)
	}
	return nil
}

// checkTopName refuses a directory name that is not one path component.
func checkTopName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\\") {
		return fmt.Errorf("%w: %q is not a directory name of a stream", ErrUnsafe, name)
	}
	return nil
}
