package blob

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/horde-compute/horde/protocol"
)

// Uploader sends outputs where a client asked. Outputs are what the job
// wrote: only regular files beneath the directory are read, through no link
// (see tree); a single-file upload of anything else is refused with the
// path and its kind, and a zip upload leaves such entries out (Log hears
// of each). Everything is streamed from disk: a zip upload is written to a
// temporary file first (S3 wants its length), never held in memory.
type Uploader struct {
	// HTTP is used when Net is nil (tests, trusted URLs).
	HTTP *http.Client
	// Net, when set, checks where every request and redirect goes (see
	// DialGuard), and HTTP is not used. Set it whenever URLs come from
	// clients; nil means no check at all.
	Net    *DialGuard
	Limits Limits
	// TempDir holds zip archives while they are sent; default: the parent
	// of the directory uploaded (on the same disk, not seen by the job).
	TempDir string
	// Log hears of outputs left out of a zip; nil discards.
	Log *slog.Logger
}

func (u *Uploader) client() *http.Client {
	if u.Net != nil {
		return u.Net.Client()
	}
	if u.HTTP != nil {
		return u.HTTP
	}
	return http.DefaultClient
}

// uploadState is one Upload call: its directory and what it has sent.
type uploadState struct {
	t       *tree
	dir     string
	files   int
	bytes   int64
	results map[string]string
}

// Upload sends the files of dir as up says and returns a result per upload
// (key: the relative path or "outputs.zip", value: the HTTP status). All
// of it, reading included, stops when ctx is done. Together the uploads
// send at most Limits.MaxFiles files and MaxOutputBytes bytes (zero: no
// limit).
func (u *Uploader) Upload(ctx context.Context, up *protocol.OutputUpload, dir string) (map[string]string, error) {
	if err := up.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUpload, err)
	}
	t, err := openTree(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUpload, err)
	}
	defer t.Close()
	st := &uploadState{t: t, dir: dir, results: map[string]string{}}
	if err := u.upload(ctx, up, st); err != nil {
		return st.results, err
	}
	return st.results, nil
}

func (u *Uploader) count(st *uploadState, files int, n int64, what string) error {
	st.files += files
	st.bytes += n
	if u.Limits.MaxFiles > 0 && st.files > u.Limits.MaxFiles {
		return fmt.Errorf("%w: more than %d output files", ErrTooLarge, u.Limits.MaxFiles)
	}
	if u.Limits.MaxOutputBytes > 0 && st.bytes > u.Limits.MaxOutputBytes {
		return fmt.Errorf("%w: %s takes the outputs past %d bytes", ErrTooLarge, what, u.Limits.MaxOutputBytes)
	}
	return nil
}

func (u *Uploader) upload(ctx context.Context, up *protocol.OutputUpload, st *uploadState) error {
	switch up.OutputUploadType {
	case protocol.UploadZipPut, protocol.UploadZipPost:
		tmpDir := u.TempDir
		if tmpDir == "" {
			tmpDir = filepath.Dir(filepath.Clean(st.dir))
		}
		zf, err := os.CreateTemp(tmpDir, ".horde-outputs-*.zip")
		if err != nil {
			return fmt.Errorf("%w: %w", ErrUpload, err)
		}
		defer os.Remove(zf.Name())
		defer zf.Close()
		lim := u.Limits
		if lim.MaxOutputBytes > 0 {
			lim.MaxOutputBytes -= st.bytes
		}
		if lim.MaxFiles > 0 {
			lim.MaxFiles -= st.files
		}
		files, n, err := writeZip(ctx, zf, st.t, lim, func(p, kind string) {
			u.log().Warn("output not uploaded: not a regular file", "path", p, "kind", kind)
		})
		if err != nil {
			return err
		}
		if err := u.count(st, files, n, "the zip"); err != nil {
			return err
		}
		info, err := zf.Stat()
		if err != nil {
			return err
		}
		status, err := u.send(ctx, up, "outputs.zip", zf, info.Size())
		st.results["outputs.zip"] = status
		return err
	case protocol.UploadSinglePut, protocol.UploadSinglePost:
		f, size, err := st.t.openRegular(up.RelativePath)
		if err != nil {
			return fmt.Errorf("%w: output %s: %w", ErrUpload, up.RelativePath, err)
		}
		defer f.Close()
		if err := u.count(st, 1, size, up.RelativePath); err != nil {
			return err
		}
		status, err := u.send(ctx, up, path.Base(up.RelativePath), f, size)
		st.results[up.RelativePath] = status
		return err
	case protocol.UploadMulti:
		for i := range up.Uploads {
			if err := u.upload(ctx, &up.Uploads[i], st); err != nil {
				return err
			}
		}
		if up.SystemOutput != nil {
			return u.upload(ctx, up.SystemOutput, st)
		}
		return nil
	}
	return fmt.Errorf("%w: type %q", ErrUpload, up.OutputUploadType)
}

func (u *Uploader) log() *slog.Logger {
	if u.Log != nil {
		return u.Log
	}
	return slog.New(slog.DiscardHandler)
}

// send PUTs or POSTs the first size bytes of f, retrying transport errors
// and 5xx with backoff; each try reads f afresh from the start.
func (u *Uploader) send(ctx context.Context, up *protocol.OutputUpload, name string, f *os.File, size int64) (string, error) {
	if _, err := parseURL(up.URL); err != nil {
		return "", fmt.Errorf("%w: %w", ErrUpload, err)
	}
	var last error
	status := ""
	for try := 0; try < max(1, u.Limits.Tries); try++ {
		if try > 0 {
			if err := sleep(ctx, u.Limits.Backoff<<(try-1)); err != nil {
				return status, err
			}
		}
		req, err := u.request(ctx, up, name, f, size)
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrUpload, err)
		}
		resp, err := u.client().Do(req)
		if err != nil {
			last = fmt.Errorf("%w: %s: %w", ErrUpload, redact(up.URL), stripURL(err))
			if ctx.Err() != nil || errors.Is(err, ErrDestination) {
				break
			}
			continue
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		status = strconv.Itoa(resp.StatusCode)
		if resp.StatusCode < 300 {
			return status, nil
		}
		last = fmt.Errorf("%w: %s: HTTP %d", ErrUpload, redact(up.URL), resp.StatusCode)
		if resp.StatusCode < 500 && resp.StatusCode != 429 {
			break
		}
	}
	return status, fmt.Errorf("%w (after at most %d tries)", last, max(1, u.Limits.Tries))
}

// request builds one try's request; its body (and GetBody, for redirects)
// reads the file from disk.
func (u *Uploader) request(ctx context.Context, up *protocol.OutputUpload, name string, f *os.File, size int64) (*http.Request, error) {
	post := up.OutputUploadType == protocol.UploadZipPost || up.OutputUploadType == protocol.UploadSinglePost
	var head, tail []byte
	method := http.MethodPut
	contentType := ""
	if post {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		keys := make([]string, 0, len(up.FormFields))
		for k := range up.FormFields {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if err := mw.WriteField(k, up.FormFields[k]); err != nil {
				return nil, err
			}
		}
		if _, err := mw.CreateFormFile("file", name); err != nil {
			return nil, err
		}
		n := buf.Len()
		if err := mw.Close(); err != nil { // writes the closing boundary
			return nil, err
		}
		head, tail = buf.Bytes()[:n], buf.Bytes()[n:]
		method, contentType = http.MethodPost, mw.FormDataContentType()
	}
	body := func() io.Reader {
		return io.MultiReader(bytes.NewReader(head), io.NewSectionReader(f, 0, size), bytes.NewReader(tail))
	}
	req, err := http.NewRequestWithContext(ctx, method, up.URL, body())
	if err != nil {
		return nil, fmt.Errorf("bad URL %s", redact(up.URL))
	}
	req.ContentLength = int64(len(head)) + size + int64(len(tail))
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(body()), nil }
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range up.SignedHeaders {
		req.Header.Set(k, v)
	}
	return req, nil
}
