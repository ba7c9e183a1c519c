// Package blob moves job data: it downloads and unpacks input volumes with
// size and path checks, and uploads outputs to the URLs a client gave,
// retrying with backoff.
package blob

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/horde-compute/horde/protocol"
)

// Errors callers branch on.
var (
	ErrTooLarge  = errors.New("too large")
	ErrUnsafe    = errors.New("unsafe path")
	ErrDownload  = errors.New("download failed")
	ErrUpload    = errors.New("upload failed")
	ErrBadVolume = errors.New("invalid volume")
)

// Limits bound what a job may bring in and send out.
type Limits struct {
	MaxVolumeBytes int64 // per volume, unpacked
	MaxFiles       int   // per archive / output set
	MaxOutputBytes int64
	Tries          int
	Backoff        time.Duration
}

// DefaultLimits are upstream's: 2 GiB a volume, 1000 output files, 2 GiB of outputs, 3 tries.
func DefaultLimits() Limits {
	return Limits{MaxVolumeBytes: 2 << 30, MaxFiles: 1000, MaxOutputBytes: 2 << 30, Tries: 3, Backoff: 500 * time.Millisecond}
}

// Fetcher downloads volumes.
type Fetcher struct {
	HTTP   *http.Client
	Limits Limits
	// HuggingFaceEndpoint is the base URL of a Hugging Face compatible hub.
	HuggingFaceEndpoint string
}

func (f *Fetcher) client() *http.Client {
	if f.HTTP != nil {
		return f.HTTP
	}
	return http.DefaultClient
}

// Download fetches and unpacks v into dir.
func (f *Fetcher) Download(ctx context.Context, v *protocol.Volume, dir string) error {
	if err := v.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadVolume, err)
	}
	target, err := SafeJoin(dir, v.RelativePath)
	if err != nil {
		return err
	}
	switch v.VolumeType {
	case protocol.VolumeInline:
		raw, err := base64.StdEncoding.DecodeString(v.Contents)
		if err != nil {
			return fmt.Errorf("%w: inline contents are not base64: %v", ErrBadVolume, err)
		}
		return Unzip(raw, target, f.Limits)
	case protocol.VolumeZipURL:
		raw, err := f.get(ctx, v.Contents)
		if err != nil {
			return err
		}
		return Unzip(raw, target, f.Limits)
	case protocol.VolumeSingleFile:
		raw, err := f.get(ctx, v.URL)
		if err != nil {
			return err
		}
		return writeFile(target, raw)
	case protocol.VolumeHuggingFace:
		return f.huggingFace(ctx, v, target)
	case protocol.VolumeMulti:
		for i := range v.Volumes {
			if err := f.Download(ctx, &v.Volumes[i], dir); err != nil {
				return fmt.Errorf("volume %d: %w", i, err)
			}
		}
		return nil
	}
	return fmt.Errorf("%w: type %q", ErrBadVolume, v.VolumeType)
}

// get downloads url with retries, refusing bodies over the volume limit.
func (f *Fetcher) get(ctx context.Context, url string) ([]byte, error) {
	var last error
	for try := 0; try < max(1, f.Limits.Tries); try++ {
		if try > 0 {
			if err := sleep(ctx, f.Limits.Backoff<<(try-1)); err != nil {
				return nil, err
			}
		}
		b, err, retry := f.getOnce(ctx, url)
		if err == nil {
			return b, nil
		}
		last = err
		if !retry {
			break
		}
	}
	return nil, last
}

func (f *Fetcher) getOnce(ctx context.Context, url string) ([]byte, error, bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: bad URL: %v", ErrDownload, err), false
	}
	resp, err := f.client().Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrDownload, redact(url), stripURL(err)), ctx.Err() == nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: %s: HTTP %d", ErrDownload, redact(url), resp.StatusCode), resp.StatusCode >= 500 || resp.StatusCode == 429
	}
	if resp.ContentLength > f.Limits.MaxVolumeBytes {
		return nil, fmt.Errorf("%w: %s declares %d bytes, limit %d", ErrTooLarge, redact(url), resp.ContentLength, f.Limits.MaxVolumeBytes), false
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, f.Limits.MaxVolumeBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrDownload, redact(url), err), ctx.Err() == nil
	}
	if int64(len(b)) > f.Limits.MaxVolumeBytes {
		return nil, fmt.Errorf("%w: %s is over %d bytes", ErrTooLarge, redact(url), f.Limits.MaxVolumeBytes), false
	}
	return b, nil, false
}

// redact drops the query (presigned secrets) from a URL for messages.
func redact(u string) string {
	if i := strings.IndexByte(u, '?'); i >= 0 {
		return u[:i] + "?…"
	}
	return u
}

// stripURL removes the URL that net/http puts in its errors.
func stripURL(err error) error {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil {
			return inner
		}
	}
	return err
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// SafeJoin joins rel under dir, refusing absolute paths and paths that escape dir.
func SafeJoin(dir, rel string) (string, error) {
	if rel == "" {
		return dir, nil
	}
	if filepath.IsAbs(rel) || strings.HasPrefix(rel, "/") || strings.Contains(rel, "\\") {
		return "", fmt.Errorf("%w: %q is absolute", ErrUnsafe, rel)
	}
	clean := filepath.Clean(rel)
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return "", fmt.Errorf("%w: %q escapes the volume", ErrUnsafe, rel)
	}
	return filepath.Join(dir, clean), nil
}

func writeFile(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// Unzip unpacks a zip archive into dir. Entries that escape dir, links and
// special files are refused; the declared and the actual unpacked sizes are
// both held to the limit, so a zip bomb stops at the limit.
func Unzip(raw []byte, dir string, lim Limits) error {
	zr, err := zip.NewReader(bytes.NewReader(raw), int64(len(raw)))
	if err != nil {
		return fmt.Errorf("%w: not a zip archive: %v", ErrBadVolume, err)
	}
	if lim.MaxFiles > 0 && len(zr.File) > lim.MaxFiles {
		return fmt.Errorf("%w: %d files, limit %d", ErrTooLarge, len(zr.File), lim.MaxFiles)
	}
	var declared uint64
	for _, f := range zr.File {
		declared += f.UncompressedSize64
		if _, err := SafeJoin(dir, f.Name); err != nil {
			return err
		}
		if m := f.Mode(); m&os.ModeSymlink != 0 || (m.Type() != 0 && !m.IsDir()) {
			return fmt.Errorf("%w: %q is a link or special file", ErrUnsafe, f.Name)
		}
	}
	if declared > uint64(lim.MaxVolumeBytes) {
		return fmt.Errorf("%w: archive declares %d bytes unpacked, limit %d", ErrTooLarge, declared, lim.MaxVolumeBytes)
	}
	budget := lim.MaxVolumeBytes
	for _, f := range zr.File {
		path, _ := SafeJoin(dir, f.Name)
		if f.FileInfo().IsDir() {
			if err := os.MkdirAll(path, 0o755); err != nil {
				return err
			}
			continue
		}
		n, err := unzipFile(f, path, budget)
		if err != nil {
			return err
		}
		budget -= n
	}
	return nil
}

func unzipFile(f *zip.File, path string, budget int64) (int64, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return 0, err
	}
	rc, err := f.Open()
	if err != nil {
		return 0, fmt.Errorf("%w: %s: %v", ErrBadVolume, f.Name, err)
	}
	defer rc.Close()
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, io.LimitReader(rc, budget+1))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return n, fmt.Errorf("%w: %s: %v", ErrBadVolume, f.Name, err)
	}
	if n > budget {
		return n, fmt.Errorf("%w: %s unpacks past the volume limit (declared sizes lie)", ErrTooLarge, f.Name)
	}
	return n, nil
}

// ZipDir packs dir (recursively) into a zip archive, within the output limits.
func ZipDir(dir string, lim Limits) ([]byte, error) {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	files, total := 0, int64(0)
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if !d.Type().IsRegular() {
			return nil // links and special files are never shipped
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		files++
		total += info.Size()
		if lim.MaxFiles > 0 && files > lim.MaxFiles {
			return fmt.Errorf("%w: more than %d output files", ErrTooLarge, lim.MaxFiles)
		}
		if lim.MaxOutputBytes > 0 && total > lim.MaxOutputBytes {
			return fmt.Errorf("%w: outputs exceed %d bytes", ErrTooLarge, lim.MaxOutputBytes)
		}
		rel, _ := filepath.Rel(dir, path)
		w, err := zw.Create(filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		_, err = io.Copy(w, in)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
