// Package jobdisk bounds the size of a job's directories in the kernel. A
// job container writes /output (and /volume, and its artifacts directory)
// straight to the miner's disk through bind mounts, where no byte count of
// horde's can stop it; so each such directory is made its own small file
// system: ext4 in a sparse file of the bound's size, mounted over the
// directory through a loop device. A job that writes past the bound gets
// ENOSPC from the kernel, and the host disk gives up at most the bound.
//
// Why this and not another bound: the Docker storage driver here is
// fuse-overlayfs and the root file system ext4 without project quotas, so
// Docker's --storage-opt size and XFS project quotas are out; a tmpfs with
// size= would hold outputs in memory, charged to the job's memory cgroup (a
// 2 GiB output would need a 2 GiB memory class). A loop-mounted ext4 works
// with any engine that shares the host's mount namespace, costs one mkfs
// (some 20 ms: no journal, inode tables left to initialise lazily, never
// written) and takes disk only for what is written.
//
// The image file is unlinked as soon as it is mounted and the loop device
// clears itself when the file system is unmounted: a crashed executor leaves
// only a mount, which UnmountBeneath removes (the miner's reaper calls it).
// Mounting needs root (CAP_SYS_ADMIN), /dev/loop-control and mkfs.ext4
// (Debian's e2fsprogs); Check says whether they are there.
package jobdisk

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrUnavailable says that this host cannot bound job directories.
var ErrUnavailable = errors.New("job directories cannot be size-bounded here")

// Check reports whether Mount can work here: root, loop devices, mkfs.ext4.
func Check() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: mounting loop devices needs root", ErrUnavailable)
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return fmt.Errorf("%w: no loop devices (%v)", ErrUnavailable, err)
	}
	if _, err := mkfs(); err != nil {
		return err
	}
	return nil
}

func mkfs() (string, error) {
	for _, name := range []string{"mkfs.ext4", "mke2fs"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
		for _, dir := range []string{"/usr/sbin", "/sbin"} {
			if p := filepath.Join(dir, name); isExec(p) {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("%w: mkfs.ext4 not found (install e2fsprogs)", ErrUnavailable)
}

func isExec(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// Disk is a directory made a file system of bounded size.
type Disk struct {
	dir   string
	limit int64
	base  int64 // bytes in use when it was made (the file system's own)
}

// Dir returns the directory the disk is mounted on.
func (d *Disk) Dir() string { return d.dir }

// Limit returns the bound: what its users may write.
func (d *Disk) Limit() int64 { return d.limit }

// fsSize is the size of the file system that gives users limit bytes: ext4
// keeps inode tables, bitmaps and superblock copies besides (no journal,
// no reserved blocks).
func fsSize(limit int64) (size int64, inodes int64) {
	inodes = min(max(limit/(16<<10), 4096), 1<<18)
	size = limit + inodes*256 + limit/64 + 8<<20
	return (size + 4095) &^ 4095, inodes
}

// Mount makes dir, an empty directory, a file system on which at least
// limit bytes (and not much more) can be written. The image lives, until
// mounted, beside dir. Its root is mode 0777 and empty.
func Mount(ctx context.Context, dir string, limit int64) (*Disk, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("jobdisk: bound of %d bytes", limit)
	}
	bin, err := mkfs()
	if err != nil {
		return nil, err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	size, inodes := fsSize(limit)
	img := filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+".ext4")
	f, err := os.OpenFile(img, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("jobdisk: %w", err)
	}
	defer os.Remove(img) // once mounted, the loop device holds it
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return nil, fmt.Errorf("jobdisk: %w", err)
	}
	cmd := exec.CommandContext(ctx, bin, "-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0", "-N", strconv.FormatInt(inodes, 10),
		"-O", "^has_journal,^resize_inode", "-E", "lazy_itable_init=1,nodiscard,root_owner=0:0", img)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("jobdisk: mkfs: %v: %s", err, strings.TrimSpace(string(out)))
	}
	dev, loop, err := attach(f)
	if err != nil {
		return nil, err
	}
	// noinit_itable: the kernel does not zero the inode tables behind our
	// back (mkfs left them to initialise lazily: they stay unwritten).
	err = unix.Mount(dev, dir, "ext4", unix.MS_NOSUID|unix.MS_NODEV, "noinit_itable")
	// With AUTOCLEAR, closing the last descriptor of an unmounted device
	// detaches it; a mounted one is held by its mount from now on.
	unix.Close(loop)
	if err != nil {
		return nil, fmt.Errorf("jobdisk: mount %s: %w", dev, err)
	}
	d := &Disk{dir: dir, limit: limit}
	if err := d.prepare(); err != nil {
		d.Unmount()
		return nil, err
	}
	return d, nil
}

// prepare opens the file system's root to everyone (a job's user may not be
// root), removes lost+found and notes what the file system itself takes.
func (d *Disk) prepare() error {
	if err := os.Chmod(d.dir, 0o777); err != nil {
		return fmt.Errorf("jobdisk: %w", err)
	}
	if err := unix.Rmdir(filepath.Join(d.dir, "lost+found")); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("jobdisk: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(d.dir, &st); err != nil {
		return fmt.Errorf("jobdisk: %w", err)
	}
	d.base = int64(st.Blocks-st.Bfree) * st.Bsize
	if avail := int64(st.Bavail) * st.Bsize; avail < d.limit {
		return fmt.Errorf("jobdisk: made %d bytes for a bound of %d", avail, d.limit)
	}
	return nil
}

// attach puts f on a free loop device that clears itself once unmounted
// and no longer open, and returns the device's path and an open
// descriptor of it, which holds it until closed.
func attach(f *os.File) (string, int, error) {
	ctl, err := unix.Open("/dev/loop-control", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", -1, fmt.Errorf("jobdisk: %w", err)
	}
	defer unix.Close(ctl)
	cfg := unix.LoopConfig{Fd: uint32(f.Fd())}
	cfg.Info.Flags = unix.LO_FLAGS_AUTOCLEAR
	copy(cfg.Info.File_name[:], "horde-job")
	for try := 0; try < 16; try++ { // another process may take the device we were told is free
		n, err := unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", -1, fmt.Errorf("jobdisk: no free loop device: %w", err)
		}
		dev := "/dev/loop" + strconv.Itoa(n)
		fd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) {
			// No devtmpfs to make the node: make it (block major 7).
			if err = unix.Mknod(dev, unix.S_IFBLK|0o660, int(unix.Mkdev(7, uint32(n)))); err == nil || errors.Is(err, unix.EEXIST) {
				fd, err = unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
			}
		}
		if err != nil {
			return "", -1, fmt.Errorf("jobdisk: %s: %w", dev, err)
		}
		err = unix.IoctlLoopConfigure(fd, &cfg)
		if err == nil {
			return dev, fd, nil
		}
		unix.Close(fd)
		if !errors.Is(err, unix.EBUSY) {
			return "", -1, fmt.Errorf("jobdisk: configure %s: %w", dev, err)
		}
	}
	return "", -1, errors.New("jobdisk: every free loop device was taken by someone else")
}

// Used returns the bytes its users have written to the disk.
func (d *Disk) Used() (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(d.dir, &st); err != nil {
		return 0, fmt.Errorf("jobdisk: %w", err)
	}
	return max(int64(st.Blocks-st.Bfree)*st.Bsize-d.base, 0), nil
}

// Over reports whether more than the bound was written (or could not be,
// the disk being full).
func (d *Disk) Over() bool {
	used, err := d.Used()
	return err == nil && used > d.limit
}

// Unmount detaches the file system; the loop device and the image's space
// are freed once nothing (a container not yet removed) uses it.
func (d *Disk) Unmount() error {
	if err := unix.Unmount(d.dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("jobdisk: unmount: %w", err)
	}
	return nil
}

// UnmountBeneath detaches every mount at or beneath dir, deepest first:
// what a crashed executor left. Nothing mounted is not an error.
func UnmountBeneath(dir string) error {
	root, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if r, err := filepath.EvalSymlinks(root); err == nil {
		root = r
	}
	points, err := mountPoints()
	if err != nil {
		return err
	}
	var under []string
	for _, p := range points {
		if p == root || strings.HasPrefix(p, root+"/") {
			under = append(under, p)
		}
	}
	// Deepest first; a point mounted twice is unmounted twice.
	slices.SortFunc(under, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	var errs []error
	for _, p := range under {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// mountPoints lists this process's mount points (field 5 of mountinfo).
func mountPoints() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 {
			out = append(out, unescape(fields[4]))
		}
	}
	return out, sc.Err()
}

// unescape undoes mountinfo's octal escapes (\040 for a space, …).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
