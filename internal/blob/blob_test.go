package blob

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/horde-compute/horde/protocol"
)

func mkzip(t *testing.T, files map[string][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for name, data := range files {
		w, err := zw.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
	}
	zw.Close()
	return buf.Bytes()
}

func testLimits() Limits {
	return Limits{MaxVolumeBytes: 1 << 20, MaxFiles: 10, MaxOutputBytes: 1 << 20, Tries: 3, Backoff: time.Millisecond}
}

func TestDownloadInlineAndMulti(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/a.zip":
			w.Write(mkzip(t, map[string][]byte{"x/y.txt": []byte("from zip url")}))
		case "/file":
			w.Write([]byte("single"))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	dir := t.TempDir()
	f := &Fetcher{Limits: testLimits()}
	v := &protocol.Volume{VolumeType: protocol.VolumeMulti, Volumes: []protocol.Volume{
		{VolumeType: protocol.VolumeInline, Contents: base64.StdEncoding.EncodeToString(mkzip(t, map[string][]byte{"in.txt": []byte("inline")})), RelativePath: "i"},
		{VolumeType: protocol.VolumeZipURL, Contents: srv.URL + "/a.zip"},
		{VolumeType: protocol.VolumeSingleFile, URL: srv.URL + "/file", RelativePath: "s/one.bin"},
	}}
	if err := f.Download(t.Context(), v, dir); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{"i/in.txt": "inline", "x/y.txt": "from zip url", "s/one.bin": "single"} {
		got, err := os.ReadFile(filepath.Join(dir, path))
		if err != nil || string(got) != want {
			t.Errorf("%s = %q, %v", path, got, err)
		}
	}
}

func TestDownloadErrors(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		switch r.URL.Path {
		case "/big":
			w.Write(make([]byte, 2<<20))
		case "/slow":
			time.Sleep(2 * time.Second)
		case "/flaky":
			w.WriteHeader(503)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	f := &Fetcher{Limits: testLimits(), HTTP: &http.Client{Timeout: 200 * time.Millisecond}}
	bomb := mkzip(t, map[string][]byte{"zeros": make([]byte, 8<<20)})
	tests := []struct {
		name string
		v    protocol.Volume
		want error
	}{
		{"404", protocol.Volume{VolumeType: protocol.VolumeSingleFile, URL: srv.URL + "/missing?X-Amz-Signature=secret", RelativePath: "f"}, ErrDownload},
		{"timeout", protocol.Volume{VolumeType: protocol.VolumeZipURL, Contents: srv.URL + "/slow"}, ErrDownload},
		{"oversized body", protocol.Volume{VolumeType: protocol.VolumeSingleFile, URL: srv.URL + "/big", RelativePath: "f"}, ErrTooLarge},
		{"zip slip", protocol.Volume{VolumeType: protocol.VolumeInline, Contents: base64.StdEncoding.EncodeToString(mkzip(t, map[string][]byte{"../../etc/x": nil}))}, ErrUnsafe},
		{"absolute", protocol.Volume{VolumeType: protocol.VolumeInline, Contents: base64.StdEncoding.EncodeToString(mkzip(t, map[string][]byte{"/etc/x": nil}))}, ErrUnsafe},
		{"relative path escapes", protocol.Volume{VolumeType: protocol.VolumeSingleFile, URL: srv.URL + "/x", RelativePath: "../x"}, ErrUnsafe},
		{"zip bomb", protocol.Volume{VolumeType: protocol.VolumeInline, Contents: base64.StdEncoding.EncodeToString(bomb)}, ErrTooLarge},
		{"not a zip", protocol.Volume{VolumeType: protocol.VolumeInline, Contents: base64.StdEncoding.EncodeToString([]byte("hello"))}, ErrBadVolume},
		{"not base64", protocol.Volume{VolumeType: protocol.VolumeInline, Contents: "!!"}, ErrBadVolume},
		{"no hub", protocol.Volume{VolumeType: protocol.VolumeHuggingFace, RepoID: "a/b"}, ErrDownload},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := f.Download(t.Context(), &tt.v, t.TempDir())
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if bytes.Contains([]byte(err.Error()), []byte("secret")) {
				t.Errorf("error leaks the presigned query: %v", err)
			}
		})
	}
	hits.Store(0)
	err := f.Download(t.Context(), &protocol.Volume{VolumeType: protocol.VolumeZipURL, Contents: srv.URL + "/flaky"}, t.TempDir())
	if !errors.Is(err, ErrDownload) || hits.Load() != 3 {
		t.Errorf("5xx: err = %v after %d tries, want 3 tries", err, hits.Load())
	}
}

// A zip whose headers under-declare the sizes is stopped by the actual byte count.
func TestUnzipLyingSizes(t *testing.T) {
	raw := mkzip(t, map[string][]byte{"a": make([]byte, 3<<20)})
	// Overwrite the declared uncompressed size (local header offset 22, central dir) with 10.
	patched := bytes.ReplaceAll(raw, []byte{0x00, 0x00, 0x30, 0x00}, []byte{0x0a, 0x00, 0x00, 0x00})
	if bytes.Equal(patched, raw) {
		t.Fatal("size fields not found to patch")
	}
	err := Unzip(patched, t.TempDir(), testLimits())
	if err == nil {
		t.Fatal("lying zip unpacked")
	}
	if !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrBadVolume) {
		t.Errorf("err = %v", err)
	}
}

func TestHuggingFace(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			w.WriteHeader(401)
			return
		}
		switch r.URL.Path {
		case "/api/models/org/m/revision/main":
			w.Write([]byte(`{"siblings":[{"rfilename":"config.json"},{"rfilename":"w/model.bin"},{"rfilename":"README.md"}]}`))
		case "/org/m/resolve/main/config.json":
			w.Write([]byte("{}"))
		case "/org/m/resolve/main/w/model.bin":
			w.Write([]byte("weights"))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	dir := t.TempDir()
	f := &Fetcher{Limits: testLimits(), HuggingFaceEndpoint: srv.URL}
	v := &protocol.Volume{VolumeType: protocol.VolumeHuggingFace, RepoID: "org/m", Token: "tok", AllowPattern: []string{"*.json", "w/*"}, RelativePath: "model"}
	if err := f.Download(t.Context(), v, dir); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "model/w/model.bin")); string(b) != "weights" {
		t.Errorf("model.bin = %q", b)
	}
	if _, err := os.Stat(filepath.Join(dir, "model/README.md")); err == nil {
		t.Error("README.md downloaded despite allow_patterns")
	}
}

func TestUpload(t *testing.T) {
	var got = map[string][]byte{}
	var fails atomic.Int32
	fails.Store(2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/flaky" && fails.Add(-1) >= 0 {
			w.WriteHeader(500)
			return
		}
		if r.URL.Path == "/denied" {
			w.WriteHeader(403)
			return
		}
		if r.Method == http.MethodPost {
			f, _, err := r.FormFile("file")
			if err != nil || r.FormValue("key") != "k1" {
				w.WriteHeader(400)
				return
			}
			got[r.URL.Path], _ = io.ReadAll(f)
		} else {
			got[r.URL.Path], _ = io.ReadAll(r.Body)
		}
	}))
	defer srv.Close()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "result.txt"), []byte("42"), 0o644)
	u := &Uploader{Limits: testLimits()}
	up := &protocol.OutputUpload{OutputUploadType: protocol.UploadMulti, Uploads: []protocol.OutputUpload{
		{OutputUploadType: protocol.UploadSinglePut, URL: srv.URL + "/flaky", RelativePath: "result.txt"},
		{OutputUploadType: protocol.UploadSinglePost, URL: srv.URL + "/post", RelativePath: "result.txt", FormFields: map[string]string{"key": "k1"}},
	}, SystemOutput: &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: srv.URL + "/all.zip"}}
	res, err := u.Upload(t.Context(), up, dir)
	if err != nil {
		t.Fatal(err)
	}
	if string(got["/flaky"]) != "42" || string(got["/post"]) != "42" || res["result.txt"] != "200" {
		t.Errorf("uploads: %q %q %v", got["/flaky"], got["/post"], res)
	}
	zr, err := zip.NewReader(bytes.NewReader(got["/all.zip"]), int64(len(got["/all.zip"])))
	if err != nil || len(zr.File) != 1 || zr.File[0].Name != "result.txt" {
		t.Errorf("zip upload: %v", err)
	}
	// A 403 is not retried and is reported clearly.
	_, err = u.Upload(t.Context(), &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: srv.URL + "/denied"}, dir)
	if !errors.Is(err, ErrUpload) {
		t.Errorf("denied: %v", err)
	}
	// Outputs over the limit are refused before any upload.
	os.WriteFile(filepath.Join(dir, "huge"), make([]byte, 2<<20), 0o644)
	_, err = u.Upload(context.Background(), &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: srv.URL + "/x"}, dir)
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("huge: %v", err)
	}
}
