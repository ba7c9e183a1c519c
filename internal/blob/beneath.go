package blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// A job writes /output and, while it serves, /volume: every path in them
// may be a symlink to a host file, a FIFO that blocks whoever opens it, a
// device. A tree touches such a directory only through *at system calls
// relative to directory descriptors it holds, with O_NOFOLLOW on every
// component: links are never followed, anywhere in a path; non-regular files
// are named and refused, checked before opening (so a FIFO or device is not
// even opened) and again with fstat after (so a swap in between is caught;
// O_NONBLOCK keeps that open from blocking on a FIFO).

// tree is a directory opened for safe access beneath it.
type tree struct {
	fd   int
	name string // for messages: the directory as the caller named it
}

// maxDepth bounds directory nesting (each level holds a descriptor).
const maxDepth = 64

func openTree(dir string) (*tree, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	return &tree{fd: fd, name: dir}, nil
}

func (t *tree) Close() error { return unix.Close(t.fd) }

// kind names a file type for messages.
func kind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symbolic link"
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFSOCK:
		return "socket"
	}
	return "special file"
}

// KindError says that a path beneath a job's directory is not the kind of
// file expected (a link, a FIFO, a device, a socket, a directory); it is
// ErrUnsafe.
type KindError struct {
	Path string // relative to the directory
	Kind string // what it is: "symbolic link", "FIFO", …
	Want string // what was expected: "regular file" or "directory"
}

func (e *KindError) Error() string {
	return fmt.Sprintf("%v: %s is a %s, not a %s (links and special files are refused)", ErrUnsafe, e.Path, e.Kind, e.Want)
}

func (e *KindError) Unwrap() error { return ErrUnsafe }

func notRegular(rel, k, want string) error { return &KindError{Path: rel, Kind: k, Want: want} }

// components splits a relative path, refusing absolute paths and "..".
func components(rel string) ([]string, error) {
	if rel == "" || rel == "." {
		return nil, nil
	}
	if strings.HasPrefix(rel, "/") || strings.Contains(rel, "\\") {
		return nil, fmt.Errorf("%w: %q is absolute", ErrUnsafe, rel)
	}
	clean := path.Clean(rel)
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return nil, fmt.Errorf("%w: %q escapes the directory", ErrUnsafe, rel)
	}
	if clean == "." {
		return nil, nil
	}
	return strings.Split(clean, "/"), nil
}

// describe says what name beneath dirfd is, without following it.
func describe(dirfd int, name string) (string, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return "", err
	}
	return kind(st.Mode), nil
}

// openDir opens directory name beneath dirfd, never through a link; with
// create, a missing directory is made.
func openDir(dirfd int, name, rel string, create bool) (int, error) {
	for try := 0; ; try++ {
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == nil {
			return fd, nil
		}
		if errors.Is(err, unix.ENOENT) && create && try == 0 {
			if err := unix.Mkdirat(dirfd, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
				return -1, fmt.Errorf("mkdir %s: %w", rel, err)
			}
			continue
		}
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			if k, derr := describe(dirfd, name); derr == nil {
				return -1, notRegular(rel, k, "directory")
			}
		}
		return -1, fmt.Errorf("open %s: %w", rel, err)
	}
}

// parent opens the directory that holds rel's last component and returns
// its descriptor (the caller closes it unless it is t.fd) and that name.
func (t *tree) parent(rel string, create bool) (int, string, error) {
	parts, err := components(rel)
	if err != nil {
		return -1, "", err
	}
	if len(parts) == 0 {
		return -1, "", fmt.Errorf("%w: %q names the directory itself", ErrUnsafe, rel)
	}
	if len(parts) > maxDepth {
		return -1, "", fmt.Errorf("%w: %s is nested deeper than %d directories", ErrUnsafe, rel, maxDepth)
	}
	fd := t.fd
	for i, p := range parts[:len(parts)-1] {
		next, err := openDir(fd, p, strings.Join(parts[:i+1], "/"), create)
		if fd != t.fd {
			unix.Close(fd)
		}
		if err != nil {
			return -1, "", err
		}
		fd = next
	}
	return fd, parts[len(parts)-1], nil
}

func (t *tree) release(fd int) {
	if fd != t.fd {
		unix.Close(fd)
	}
}

// mkdirAll makes rel (and its parents) beneath t, through no link.
func (t *tree) mkdirAll(rel string) error {
	parts, err := components(rel)
	if err != nil || len(parts) == 0 {
		return err
	}
	fd, name, err := t.parent(rel, true)
	if err != nil {
		return err
	}
	defer t.release(fd)
	dfd, err := openDir(fd, name, rel, true)
	if err != nil {
		return err
	}
	return unix.Close(dfd)
}

// openRegular opens rel for reading if it is a regular file beneath t,
// reached through no link; anything else is refused with its kind. It never
// blocks on a FIFO.
func (t *tree) openRegular(rel string) (*os.File, int64, error) {
	fd, name, err := t.parent(rel, false)
	if err != nil {
		return nil, 0, err
	}
	defer t.release(fd)
	return openRegularAt(fd, name, rel)
}

// openRegularAt opens name beneath dirfd as openRegular does.
func openRegularAt(dirfd int, name, rel string) (*os.File, int64, error) {
	// Look first, so that a FIFO or device is not even opened.
	k, err := describe(dirfd, name)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", rel, err)
	}
	if k != "regular file" {
		return nil, 0, notRegular(rel, k, "regular file")
	}
	return openRegularNoCheck(dirfd, name, rel)
}

// openRegularNoCheck opens and then checks: it is safe on its own (the
// swap of a regular file for a FIFO or a link between look and open lands
// here) and tests call it directly on special files.
func openRegularNoCheck(dirfd int, name, rel string) (*os.File, int64, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, 0, notRegular(rel, "symbolic link", "regular file")
		}
		if errors.Is(err, unix.ENXIO) { // a socket
			return nil, 0, notRegular(rel, "socket", "regular file")
		}
		return nil, 0, fmt.Errorf("open %s: %w", rel, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("stat %s: %w", rel, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, 0, notRegular(rel, kind(st.Mode), "regular file")
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("open %s: %w", rel, err)
	}
	return os.NewFile(uintptr(fd), rel), st.Size, nil
}

// create makes rel a new regular file beneath t for writing, making its
// directories. Whatever was at rel (a file, a link the job planted) is
// replaced, never written through; a directory there is refused.
func (t *tree) create(rel string) (*os.File, error) {
	fd, name, err := t.parent(rel, true)
	if err != nil {
		return nil, err
	}
	defer t.release(fd)
	if err := unix.Unlinkat(fd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		if k, derr := describe(fd, name); derr == nil && k != "regular file" {
			return nil, notRegular(rel, k, "regular file")
		}
		return nil, fmt.Errorf("replace %s: %w", rel, err)
	}
	nfd, err := unix.Openat(fd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", rel, err)
	}
	return os.NewFile(uintptr(nfd), rel), nil
}

// remove deletes the file rel beneath t, if it is there.
func (t *tree) remove(rel string) {
	fd, name, err := t.parent(rel, false)
	if err != nil {
		return
	}
	defer t.release(fd)
	unix.Unlinkat(fd, name, 0)
}

// walkFunc receives each regular file beneath a tree, open for reading.
type walkFunc func(rel string, f *os.File, size int64) error

// skipFunc hears of each entry that is not a regular file or directory,
// with its kind; it is never opened.
type skipFunc func(rel, kind string)

// walk visits the regular files beneath t in name order, descending into
// directories (never through links), and tells skip of everything else.
// At most maxEntries entries are looked at.
func (t *tree) walk(ctx context.Context, maxEntries int, fn walkFunc, skip skipFunc) error {
	seen := 0
	return t.walkDir(ctx, t.fd, "", 0, &seen, maxEntries, fn, skip)
}

func (t *tree) walkDir(ctx context.Context, dirfd int, prefix string, depth int, seen *int, maxEntries int, fn walkFunc, skip skipFunc) error {
	names, err := readNames(dirfd, prefix, maxEntries-*seen)
	if err != nil {
		return err
	}
	*seen += len(names)
	if *seen > maxEntries {
		return fmt.Errorf("%w: more than %d entries under %s", ErrTooLarge, maxEntries, t.name)
	}
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return err
		}
		rel := prefix + name
		var st unix.Stat_t
		if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // removed meanwhile
			}
			return fmt.Errorf("stat %s: %w", rel, err)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if depth+1 >= maxDepth {
				return fmt.Errorf("%w: %s is nested deeper than %d directories", ErrUnsafe, rel, maxDepth)
			}
			sub, err := openDir(dirfd, name, rel, false)
			if err != nil {
				return err
			}
			err = t.walkDir(ctx, sub, rel+"/", depth+1, seen, maxEntries, fn, skip)
			unix.Close(sub)
			if err != nil {
				return err
			}
		case unix.S_IFREG:
			f, size, err := openRegularNoCheck(dirfd, name, rel)
			if ke := (*KindError)(nil); errors.As(err, &ke) {
				skip(rel, ke.Kind) // swapped since the look
				continue
			}
			if err != nil {
				return err
			}
			err = fn(rel, f, size)
			f.Close()
			if err != nil {
				return err
			}
		default:
			skip(rel, kind(st.Mode))
		}
	}
	return nil
}

// readNames lists a directory's entries, sorted, refusing more than max.
func readNames(dirfd int, rel string, max int) ([]string, error) {
	fd, err := unix.Dup(dirfd)
	if err != nil {
		return nil, err
	}
	d := os.NewFile(uintptr(fd), rel)
	defer d.Close()
	if _, err := d.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	var names []string
	for {
		batch, err := d.Readdirnames(256)
		names = append(names, batch...)
		if len(names) > max {
			return names, nil // the caller reports the excess
		}
		if err == io.EOF || len(batch) == 0 {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", rel, err)
		}
	}
	slices.Sort(names)
	return names, nil
}
