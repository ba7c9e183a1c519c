package blob

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"context"
	"fmt"
	"io"
	"os"
)

// maxEntries bounds the directory entries a walk of outputs looks at (files,
// directories, skipped links): many times MaxFiles, so that a job cannot
// keep the uploader walking a million empty directories.
func (l Limits) maxEntries() int {
	if l.MaxFiles <= 0 {
		return 1 << 20
	}
	return max(64*l.MaxFiles, 4096)
}

// WriteZip writes the regular files beneath dir to w as a zip archive,
// each streamed from disk (nothing but a file's buffer is held in memory),
// within lim's MaxFiles and MaxOutputBytes (counted as read, so a file that
// grows meanwhile is caught). Links, FIFOs, devices and sockets are never
// opened nor followed: skipped, if not nil, hears of each with its kind. It
// stops when ctx is done.
func WriteZip(ctx context.Context, w io.Writer, dir string, lim Limits, skipped func(path, kind string)) error {
	t, err := openTree(dir)
	if err != nil {
		return err
	}
	defer t.Close()
	_, _, err = writeZip(ctx, w, t, lim, skipped)
	return err
}

// writeZip is WriteZip on an open tree; it returns the files and bytes zipped.
func writeZip(ctx context.Context, w io.Writer, t *tree, lim Limits, skipped func(path, kind string)) (int, int64, error) {
	if skipped == nil {
		skipped = func(string, string) {}
	}
	zw := zip.NewWriter(w)
	zw.RegisterCompressor(zip.Deflate, func(out io.Writer) (io.WriteCloser, error) {
		return flate.NewWriter(out, flate.BestSpeed)
	})
	files, total := 0, int64(0)
	over := func() error {
		if lim.MaxOutputBytes > 0 && total > lim.MaxOutputBytes {
			return fmt.Errorf("%w: outputs exceed %d bytes", ErrTooLarge, lim.MaxOutputBytes)
		}
		return nil
	}
	err := t.walk(ctx, lim.maxEntries(), func(rel string, f *os.File, size int64) error {
		if files++; lim.MaxFiles > 0 && files > lim.MaxFiles {
			return fmt.Errorf("%w: more than %d output files", ErrTooLarge, lim.MaxFiles)
		}
		if total += size; over() != nil {
			return over()
		}
		hdr := &zip.FileHeader{Name: rel, Method: zip.Deflate}
		if info, err := f.Stat(); err == nil {
			hdr.Modified = info.ModTime()
		}
		hdr.SetMode(0o644)
		zf, err := zw.CreateHeader(hdr)
		if err != nil {
			return err
		}
		// Read at most what is left of the limit, plus one byte to notice.
		r := io.Reader(f)
		if lim.MaxOutputBytes > 0 {
			r = io.LimitReader(f, lim.MaxOutputBytes-total+size+1)
		}
		n, err := io.Copy(zf, ctxReader{ctx, r})
		if err != nil {
			return fmt.Errorf("zip %s: %w", rel, err)
		}
		total += n - size
		return over()
	}, skipped)
	if err != nil {
		return files, total, err
	}
	return files, total, zw.Close()
}

// ZipDir packs the regular files beneath dir into a zip archive in memory
// (see WriteZip): for small trees a client sends inline. Outputs are
// uploaded with WriteZip through a file instead.
func ZipDir(dir string, lim Limits) ([]byte, error) {
	var buf bytes.Buffer
	if err := WriteZip(context.Background(), &buf, dir, lim, nil); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ctxReader stops a copy when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// WalkRegular calls fn with each regular file beneath dir, in name order,
// open for reading (fn must not keep it), reached through no link; skipped,
// if not nil, hears of every link, FIFO, device and socket, which are never
// opened. At most lim.MaxFiles files are visited (zero: no limit). For the
// executor's artifacts: a job's directory read the way outputs are.
func WalkRegular(ctx context.Context, dir string, lim Limits, fn func(path string, f *os.File, size int64) error, skipped func(path, kind string)) error {
	t, err := openTree(dir)
	if err != nil {
		return err
	}
	defer t.Close()
	if skipped == nil {
		skipped = func(string, string) {}
	}
	files := 0
	return t.walk(ctx, lim.maxEntries(), func(rel string, f *os.File, size int64) error {
		if files++; lim.MaxFiles > 0 && files > lim.MaxFiles {
			return fmt.Errorf("%w: more than %d files under %s", ErrTooLarge, lim.MaxFiles, dir)
		}
		return fn(rel, f, size)
	}, skipped)
}
