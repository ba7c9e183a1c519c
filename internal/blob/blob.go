// Package blob moves job data between the miner's host and the URLs a
// client gave: it downloads volumes to disk and unpacks them with size and
// path checks, and uploads outputs streamed from disk, retrying with
// backoff. A job's directories are hostile (they hold what the job wrote):
// blob touches them only beneath directory descriptors, through no link,
// regular files only (see tree). Client URLs go only where a DialGuard lets
// them.
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
	"path"
	"path/filepath"
	"strings"
	"sync"
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
	MaxVolumeBytes int64 // per volume: downloaded, and unpacked
	// MaxJobVolumeBytes bounds the sum of a job's volumes, unpacked: all
	// parts of a multi_volume, and every later volume of a streaming job
	// that shares a Budget. Zero means MaxVolumeBytes.
	MaxJobVolumeBytes int64
	MaxFiles          int // per archive / output set
	MaxOutputBytes    int64
	Tries             int
	Backoff           time.Duration
}

// DefaultLimits are upstream's: 2 GiB a volume, 1000 output files, 2 GiB of
// outputs, 3 tries; and (horde) 2 GiB of volumes a job in all.
func DefaultLimits() Limits {
	return Limits{MaxVolumeBytes: 2 << 30, MaxJobVolumeBytes: 2 << 30, MaxFiles: 1000, MaxOutputBytes: 2 << 30, Tries: 3, Backoff: 500 * time.Millisecond}
}

func (l Limits) jobVolumeBytes() int64 {
	if l.MaxJobVolumeBytes > 0 {
		return l.MaxJobVolumeBytes
	}
	return l.MaxVolumeBytes
}

// Budget is what is left of one job's volume limit (Limits.MaxJobVolumeBytes
// and, per archive, MaxFiles). Share one across every Download of a job so
// that later volumes of a streaming job count too. Safe for concurrent use.
type Budget struct {
	mu    sync.Mutex
	bytes int64
	limit int64
}

// NewBudget returns a full budget for one job.
func NewBudget(lim Limits) *Budget {
	return &Budget{bytes: lim.jobVolumeBytes(), limit: lim.jobVolumeBytes()}
}

// Left returns the bytes left.
func (b *Budget) Left() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.bytes
}

func (b *Budget) take(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n > b.bytes {
		return false
	}
	b.bytes -= n
	return true
}

func (b *Budget) give(n int64) {
	b.mu.Lock()
	b.bytes += n
	b.mu.Unlock()
}

// volumeMeter counts what one volume writes against its own limit and the
// job's budget, refusing the write that would cross either.
type volumeMeter struct {
	job   *Budget
	left  int64 // of this volume's limit
	limit int64
}

func (m *volumeMeter) take(n int64, what string) error {
	if n > m.left {
		return fmt.Errorf("%w: %s goes past the volume limit of %d bytes", ErrTooLarge, what, m.limit)
	}
	if !m.job.take(n) {
		return fmt.Errorf("%w: %s goes past the job's volume limit of %d bytes (all volumes together)", ErrTooLarge, what, m.job.limit)
	}
	m.left -= n
	return nil
}

func (m *volumeMeter) give(n int64) {
	m.left += n
	m.job.give(n)
}

// dest is where a download goes: a file, or memory (memDest).
type dest interface {
	io.Writer
	Truncate(size int64) error
	Seek(offset int64, whence int) (int64, error)
}

// memDest holds a small download in memory.
type memDest struct{ bytes.Buffer }

func (d *memDest) Truncate(int64) error           { d.Reset(); return nil }
func (d *memDest) Seek(int64, int) (int64, error) { return 0, nil }

// meteredFile writes to a file, taking each write from a meter; reset
// truncates it and gives the bytes back (a retry starts over).
type meteredFile struct {
	f       dest
	m       *volumeMeter
	n       int64
	what    string
	tooMuch error
}

func (w *meteredFile) Write(p []byte) (int, error) {
	if err := w.m.take(int64(len(p)), w.what); err != nil {
		w.tooMuch = err
		return 0, err
	}
	n, err := w.f.Write(p)
	w.n += int64(n)
	if n < len(p) {
		w.m.give(int64(len(p) - n))
	}
	return n, err
}

func (w *meteredFile) reset() error {
	w.m.give(w.n)
	w.n = 0
	if err := w.f.Truncate(0); err != nil {
		return err
	}
	_, err := w.f.Seek(0, io.SeekStart)
	return err
}

// Fetcher downloads volumes.
type Fetcher struct {
	// HTTP is used when Net is nil (tests, trusted URLs).
	HTTP *http.Client
	// Net, when set, checks where every request and redirect goes (see
	// DialGuard), and HTTP is not used. Set it whenever URLs come from
	// clients; nil means no check at all.
	Net    *DialGuard
	Limits Limits
	// Budget, when set, is the job's volume budget, shared by every
	// Download of the job; nil gives each Download a full one of its own.
	Budget *Budget
	// TempDir holds archives while they download; default: the parent of
	// the directory volumes go to (on the same disk, not seen by the job).
	TempDir string
	// HuggingFaceEndpoint is the base URL of a Hugging Face compatible hub.
	HuggingFaceEndpoint string
}

func (f *Fetcher) client() *http.Client {
	if f.Net != nil {
		return f.Net.Client()
	}
	if f.HTTP != nil {
		return f.HTTP
	}
	return http.DefaultClient
}

// Download fetches v and unpacks it beneath dir, streaming through files on
// disk (never a whole volume in memory). dir is made if missing; beneath
// it nothing is written through a link (a serving job may have planted
// some): a link in the way is replaced, a directory in the way refused.
func (f *Fetcher) Download(ctx context.Context, v *protocol.Volume, dir string) error {
	if err := v.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadVolume, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("volume dir: %w", err)
	}
	t, err := openTree(dir)
	if err != nil {
		return fmt.Errorf("volume dir: %w", err)
	}
	defer t.Close()
	budget := f.Budget
	if budget == nil {
		budget = NewBudget(f.Limits)
	}
	tmp := f.TempDir
	if tmp == "" {
		tmp = filepath.Dir(filepath.Clean(dir))
	}
	return f.download(ctx, v, t, budget, tmp)
}

func (f *Fetcher) download(ctx context.Context, v *protocol.Volume, t *tree, budget *Budget, tmp string) error {
	if _, err := components(v.RelativePath); err != nil {
		return err
	}
	m := &volumeMeter{job: budget, left: f.Limits.MaxVolumeBytes, limit: f.Limits.MaxVolumeBytes}
	switch v.VolumeType {
	case protocol.VolumeInline:
		return f.viaTemp(ctx, tmp, func(w *meteredFile) error {
			_, err := io.Copy(w, base64.NewDecoder(base64.StdEncoding, strings.NewReader(v.Contents)))
			if err != nil && w.tooMuch == nil {
				return fmt.Errorf("%w: inline contents are not base64: %v", ErrBadVolume, err)
			}
			return err
		}, func(zf *os.File, size int64) error { return unzipTo(zf, size, t, v.RelativePath, m, f.Limits) })
	case protocol.VolumeZipURL:
		return f.viaTemp(ctx, tmp, func(w *meteredFile) error {
			return f.get(ctx, v.Contents, "", w)
		}, func(zf *os.File, size int64) error { return unzipTo(zf, size, t, v.RelativePath, m, f.Limits) })
	case protocol.VolumeSingleFile:
		return f.getFile(ctx, t, v.RelativePath, v.URL, "", m)
	case protocol.VolumeHuggingFace:
		return f.huggingFace(ctx, v, t, m)
	case protocol.VolumeMulti:
		for i := range v.Volumes {
			if err := f.download(ctx, &v.Volumes[i], t, budget, tmp); err != nil {
				return fmt.Errorf("volume %d: %w", i, err)
			}
		}
		return nil
	}
	return fmt.Errorf("%w: type %q", ErrBadVolume, v.VolumeType)
}

// viaTemp fills a temporary file (up to the volume limit, counted apart
// from the job's budget: it is not unpacked yet) and hands it to use.
func (f *Fetcher) viaTemp(ctx context.Context, dir string, fill func(*meteredFile) error, use func(*os.File, int64) error) error {
	zf, err := os.CreateTemp(dir, ".horde-volume-*.zip")
	if err != nil {
		return fmt.Errorf("volume download: %w", err)
	}
	defer os.Remove(zf.Name())
	defer zf.Close()
	lim := f.Limits.MaxVolumeBytes
	w := &meteredFile{f: zf, m: &volumeMeter{job: &Budget{bytes: lim, limit: lim}, left: lim, limit: lim}, what: "the archive"}
	if err := fill(w); err != nil {
		if w.tooMuch != nil {
			return w.tooMuch
		}
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return use(zf, w.n)
}

// getFile downloads url into the file rel beneath t.
func (f *Fetcher) getFile(ctx context.Context, t *tree, rel, url, token string, m *volumeMeter) error {
	out, err := t.create(rel)
	if err != nil {
		return err
	}
	w := &meteredFile{f: out, m: m, what: rel}
	err = f.get(ctx, url, token, w)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.remove(rel)
		m.give(w.n)
		if w.tooMuch != nil {
			return w.tooMuch
		}
	}
	return err
}

// get downloads url into w with retries (w is reset before each retry).
func (f *Fetcher) get(ctx context.Context, url, token string, w *meteredFile) error {
	var last error
	for try := 0; try < max(1, f.Limits.Tries); try++ {
		if try > 0 {
			if err := sleep(ctx, f.Limits.Backoff<<(try-1)); err != nil {
				return err
			}
			if err := w.reset(); err != nil {
				return err
			}
		}
		err, retry := f.getOnce(ctx, url, token, w)
		if err == nil {
			return nil
		}
		last = err
		if !retry {
			break
		}
	}
	return last
}

func (f *Fetcher) getOnce(ctx context.Context, rawURL, token string, w *meteredFile) (error, bool) {
	u, err := parseURL(rawURL)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrDownload, err), false
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("%w: bad URL %s", ErrDownload, redact(rawURL)), false
	}
	if token != "" {
		// On the request, not the transport: net/http drops it on a
		// redirect to another host.
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := f.client().Do(req)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrDownload, redact(rawURL), stripURL(err)), ctx.Err() == nil && !errors.Is(err, ErrDestination)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: %s: HTTP %d", ErrDownload, redact(rawURL), resp.StatusCode), resp.StatusCode >= 500 || resp.StatusCode == 429
	}
	if resp.ContentLength > w.m.left {
		return fmt.Errorf("%w: %s declares %d bytes, limit %d", ErrTooLarge, redact(rawURL), resp.ContentLength, w.m.left), false
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		if w.tooMuch != nil {
			return w.tooMuch, false
		}
		return fmt.Errorf("%w: %s: %v", ErrDownload, redact(rawURL), err), ctx.Err() == nil
	}
	return nil, false
}

// getSmall downloads a small document (a hub listing) into memory.
func (f *Fetcher) getSmall(ctx context.Context, url, token string, limit int64) ([]byte, error) {
	var d memDest
	w := &meteredFile{f: &d, m: &volumeMeter{job: &Budget{bytes: limit, limit: limit}, left: limit, limit: limit}, what: "the listing"}
	if err := f.get(ctx, url, token, w); err != nil {
		return nil, err
	}
	return d.Bytes(), nil
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

// Unzip unpacks a zip archive held in memory beneath dir (see unzipTo).
func Unzip(raw []byte, dir string, lim Limits) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	t, err := openTree(dir)
	if err != nil {
		return err
	}
	defer t.Close()
	m := &volumeMeter{job: NewBudget(lim), left: lim.MaxVolumeBytes, limit: lim.MaxVolumeBytes}
	return unzipTo(bytes.NewReader(raw), int64(len(raw)), t, "", m, lim)
}

// unzipTo unpacks a zip archive beneath t at rel. Entries that escape,
// links and special files are refused; the declared and the actual
// unpacked sizes are both held to the meter, so a zip bomb stops at the
// limit; nothing is written through a link.
func unzipTo(r io.ReaderAt, size int64, t *tree, rel string, m *volumeMeter, lim Limits) error {
	zr, err := zip.NewReader(r, size)
	if err != nil {
		return fmt.Errorf("%w: not a zip archive: %v", ErrBadVolume, err)
	}
	if lim.MaxFiles > 0 && len(zr.File) > lim.MaxFiles {
		return fmt.Errorf("%w: %d files, limit %d", ErrTooLarge, len(zr.File), lim.MaxFiles)
	}
	var declared uint64
	for _, f := range zr.File {
		declared += f.UncompressedSize64
		if _, err := components(f.Name); err != nil {
			return err
		}
		if m := f.Mode(); m&os.ModeSymlink != 0 || (m.Type() != 0 && !m.IsDir()) {
			return fmt.Errorf("%w: %q is a link or special file", ErrUnsafe, f.Name)
		}
	}
	if left := min(m.left, m.job.Left()); declared > uint64(left) {
		return fmt.Errorf("%w: archive declares %d bytes unpacked, %d left of the volume limits", ErrTooLarge, declared, left)
	}
	if err := t.mkdirAll(rel); err != nil {
		return err
	}
	for _, f := range zr.File {
		name := path.Join(rel, f.Name)
		if path.Clean(f.Name) == "." {
			continue
		}
		if f.FileInfo().IsDir() {
			if err := t.mkdirAll(name); err != nil {
				return err
			}
			continue
		}
		if err := unzipFile(f, t, name, m); err != nil {
			return err
		}
	}
	return nil
}

func unzipFile(f *zip.File, t *tree, name string, m *volumeMeter) error {
	rc, err := f.Open()
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrBadVolume, f.Name, err)
	}
	defer rc.Close()
	out, err := t.create(name)
	if err != nil {
		return err
	}
	w := &meteredFile{f: out, m: m, what: f.Name}
	_, err = io.Copy(w, rc)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if w.tooMuch != nil {
		return fmt.Errorf("%w (declared sizes lie)", w.tooMuch)
	}
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrBadVolume, f.Name, err)
	}
	return nil
}
