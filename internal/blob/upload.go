package blob

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strconv"

	"github.com/horde-compute/horde/protocol"
)

// Uploader sends outputs where a client asked.
type Uploader struct {
	HTTP   *http.Client
	Limits Limits
}

func (u *Uploader) client() *http.Client {
	if u.HTTP != nil {
		return u.HTTP
	}
	return http.DefaultClient
}

// Upload sends the files of dir as up says and returns a result per upload
// (key: the relative path or "zip", value: the HTTP status).
func (u *Uploader) Upload(ctx context.Context, up *protocol.OutputUpload, dir string) (map[string]string, error) {
	if err := up.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUpload, err)
	}
	results := map[string]string{}
	if err := u.upload(ctx, up, dir, results); err != nil {
		return results, err
	}
	return results, nil
}

func (u *Uploader) upload(ctx context.Context, up *protocol.OutputUpload, dir string, results map[string]string) error {
	switch up.OutputUploadType {
	case protocol.UploadZipPut, protocol.UploadZipPost:
		body, err := ZipDir(dir, u.Limits)
		if err != nil {
			return err
		}
		status, err := u.send(ctx, up, "outputs.zip", body)
		results["outputs.zip"] = status
		return err
	case protocol.UploadSinglePut, protocol.UploadSinglePost:
		path, err := SafeJoin(dir, up.RelativePath)
		if err != nil {
			return err
		}
		info, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("%w: output %s: %v", ErrUpload, up.RelativePath, err)
		}
		if info.Size() > u.Limits.MaxOutputBytes {
			return fmt.Errorf("%w: output %s is %d bytes, limit %d", ErrTooLarge, up.RelativePath, info.Size(), u.Limits.MaxOutputBytes)
		}
		body, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		status, err := u.send(ctx, up, filepath.Base(path), body)
		results[up.RelativePath] = status
		return err
	case protocol.UploadMulti:
		for i := range up.Uploads {
			if err := u.upload(ctx, &up.Uploads[i], dir, results); err != nil {
				return err
			}
		}
		if up.SystemOutput != nil {
			return u.upload(ctx, up.SystemOutput, dir, results)
		}
		return nil
	}
	return fmt.Errorf("%w: type %q", ErrUpload, up.OutputUploadType)
}

// send PUTs or POSTs body, retrying transport errors and 5xx with backoff.
func (u *Uploader) send(ctx context.Context, up *protocol.OutputUpload, name string, body []byte) (string, error) {
	var last error
	status := ""
	for try := 0; try < max(1, u.Limits.Tries); try++ {
		if try > 0 {
			if err := sleep(ctx, u.Limits.Backoff<<(try-1)); err != nil {
				return status, err
			}
		}
		req, err := u.request(ctx, up, name, body)
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrUpload, err)
		}
		resp, err := u.client().Do(req)
		if err != nil {
			last = fmt.Errorf("%w: %s: %v", ErrUpload, redact(up.URL), stripURL(err))
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
	return status, fmt.Errorf("%w (after %d tries)", last, max(1, u.Limits.Tries))
}

func (u *Uploader) request(ctx context.Context, up *protocol.OutputUpload, name string, body []byte) (*http.Request, error) {
	post := up.OutputUploadType == protocol.UploadZipPost || up.OutputUploadType == protocol.UploadSinglePost
	if !post {
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, up.URL, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		for k, v := range up.SignedHeaders {
			req.Header.Set(k, v)
		}
		req.ContentLength = int64(len(body))
		return req, nil
	}
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for k, v := range up.FormFields {
		mw.WriteField(k, v)
	}
	fw, err := mw.CreateFormFile("file", name)
	if err != nil {
		return nil, err
	}
	fw.Write(body)
	mw.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, up.URL, &buf)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	for k, v := range up.SignedHeaders {
		req.Header.Set(k, v)
	}
	return req, nil
}
