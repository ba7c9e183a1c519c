package blob

import (
	"archive/zip"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/horde-compute/horde/protocol"
)

// sink is an upload target that records what it received.
type sink struct {
	mu   sync.Mutex
	got  map[string][]byte
	srv  *httptest.Server
	hits int
}

func newSink(t *testing.T) *sink {
	s := &sink{got: map[string][]byte{}}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.hits++
		s.got[r.URL.Path] = b
		s.mu.Unlock()
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *sink) received() (int, map[string][]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits, s.got
}

// hostFile is a secret of the miner's host: outside the job's directory, mode 600.
func hostFile(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "host-secret")
	if err := os.WriteFile(p, []byte("root's secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// logLines collects what an Uploader logs.
type logLines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// TestOutputSymlinkNotUploaded is issue #15 row 1: a job writes a symlink in
// /output to a host file (mode 600, root's) and asks for a single-file
// upload of it. The host file is not uploaded: refused with the path and
// kind. Nor through a linked directory, nor inside a zip.
func TestOutputSymlinkNotUploaded(t *testing.T) {
	secret := hostFile(t)
	out := t.TempDir()
	must(t, os.Symlink(secret, filepath.Join(out, "result.txt")))
	must(t, os.Symlink(filepath.Dir(secret), filepath.Join(out, "hostdir")))
	must(t, os.WriteFile(filepath.Join(out, "real.txt"), []byte("job output"), 0o644))
	must(t, os.WriteFile(filepath.Join(out, "target.txt"), []byte("inside"), 0o644))
	must(t, os.Symlink("target.txt", filepath.Join(out, "inside-link"))) // stays inside: still a link
	s := newSink(t)
	var logs logLines
	u := &Uploader{Limits: testLimits(), Log: slog.New(slog.NewTextHandler(&logs, nil))}
	for _, tc := range []struct{ rel, kind string }{
		{"result.txt", "symbolic link"},
		{"hostdir/host-secret", "hostdir is a symbolic link, not a directory"},
		{"inside-link", "symbolic link"},
	} {
		for _, typ := range []string{protocol.UploadSinglePut, protocol.UploadSinglePost} {
			_, err := u.Upload(t.Context(), &protocol.OutputUpload{OutputUploadType: typ, URL: s.srv.URL + "/single", RelativePath: tc.rel}, out)
			var ke *KindError
			if !errors.Is(err, ErrUnsafe) || !errors.As(err, &ke) || !strings.Contains(err.Error(), tc.kind) || !strings.Contains(err.Error(), strings.SplitN(tc.rel, "/", 2)[0]) {
				t.Errorf("%s %s: err = %v, want refused as %q naming the path", typ, tc.rel, err, tc.kind)
			}
		}
	}
	if hits, _ := s.received(); hits != 0 {
		t.Fatalf("%d single-file uploads reached the server", hits)
	}
	if _, err := u.Upload(t.Context(), &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: s.srv.URL + "/all.zip"}, out); err != nil {
		t.Fatal(err)
	}
	_, got := s.received()
	names := zipNames(t, got["/all.zip"])
	if strings.Join(names, ",") != "real.txt,target.txt" {
		t.Errorf("zip holds %v, want only the regular files", names)
	}
	if bytes.Contains(got["/all.zip"], []byte("root's secret")) {
		t.Error("the host file's content was uploaded")
	}
	for _, p := range []string{"result.txt", "hostdir", "inside-link"} {
		if !strings.Contains(logs.String(), "path="+p) {
			t.Errorf("log does not say %s was left out:\n%s", p, logs.String())
		}
	}
}

// TestOutputFIFODoesNotHang is issue #15 row 2: a job writes a FIFO in
// /output and asks for a single-file (or zip) upload of it. The upload
// returns, refused, without opening the FIFO: a writer that waits for a
// reader to open it would be released if the uploader did, and the test
// fails on that event rather than hanging.
func TestOutputFIFODoesNotHang(t *testing.T) {
	out := t.TempDir()
	fifo := filepath.Join(out, "result.txt")
	must(t, unix.Mkfifo(fifo, 0o644))
	must(t, os.WriteFile(filepath.Join(out, "real.txt"), []byte("ok"), 0o644))
	opened := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		w, err := os.OpenFile(fifo, os.O_WRONLY, 0) // blocks until a reader opens it
		if err == nil {
			close(opened)
			w.Close()
		}
	}()
	t.Cleanup(func() {
		// Release the writer: open a reader ourselves (never blocks).
		if r, err := os.OpenFile(fifo, os.O_RDONLY|unix.O_NONBLOCK, 0); err == nil {
			<-writerDone
			r.Close()
		}
	})
	s := newSink(t)
	u := &Uploader{Limits: testLimits()}
	done := make(chan error, 1)
	go func() {
		_, err := u.Upload(t.Context(), &protocol.OutputUpload{OutputUploadType: protocol.UploadSinglePut, URL: s.srv.URL + "/single", RelativePath: "result.txt"}, out)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), "result.txt is a FIFO") {
			t.Errorf("err = %v, want refused naming the FIFO", err)
		}
	case <-opened:
		t.Fatal("the uploader opened the FIFO")
	}
	// A zip upload leaves it out and returns.
	if _, err := u.Upload(t.Context(), &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: s.srv.URL + "/all.zip"}, out); err != nil {
		t.Fatal(err)
	}
	_, got := s.received()
	if names := zipNames(t, got["/all.zip"]); strings.Join(names, ",") != "real.txt" {
		t.Errorf("zip holds %v", names)
	}
	select {
	case <-opened:
		t.Fatal("the zip upload opened the FIFO")
	default:
	}
}

// The check after open is enough on its own: a regular file swapped for a
// FIFO between the look and the open is refused without blocking.
func TestOpenAfterSwapToFIFO(t *testing.T) {
	dir := t.TempDir()
	must(t, unix.Mkfifo(filepath.Join(dir, "f"), 0o644))
	tr, err := openTree(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	_, _, err = openRegularNoCheck(tr.fd, "f", "f")
	if ke := (*KindError)(nil); !errors.As(err, &ke) || ke.Kind != "FIFO" {
		t.Errorf("err = %v, want a FIFO refused", err)
	}
	must(t, os.Symlink("/etc/passwd", filepath.Join(dir, "l")))
	_, _, err = openRegularNoCheck(tr.fd, "l", "l")
	if ke := (*KindError)(nil); !errors.As(err, &ke) || ke.Kind != "symbolic link" {
		t.Errorf("err = %v, want a link refused", err)
	}
}

// Every other kind is refused by name too: a socket, a directory, a device.
func TestOutputSpecialFilesRefused(t *testing.T) {
	out := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(out, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	must(t, os.Mkdir(filepath.Join(out, "dir"), 0o755))
	cases := map[string]string{"sock": "socket", "dir": "directory"}
	if err := unix.Mknod(filepath.Join(out, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err == nil {
		cases["null"] = "character device"
	} else {
		t.Logf("no device test: mknod: %v", err)
	}
	s := newSink(t)
	u := &Uploader{Limits: testLimits()}
	for rel, k := range cases {
		_, err := u.Upload(t.Context(), &protocol.OutputUpload{OutputUploadType: protocol.UploadSinglePut, URL: s.srv.URL + "/x", RelativePath: rel}, out)
		if !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), rel+" is a "+k) {
			t.Errorf("%s: err = %v, want refused as a %s", rel, err, k)
		}
	}
	if hits, _ := s.received(); hits != 0 {
		t.Errorf("%d uploads reached the server", hits)
	}
}

// A serving job may plant links in /volume before a later volume arrives:
// the download replaces a link, never writes through it, and refuses a path
// through a linked directory.
func TestVolumeNotWrittenThroughLinks(t *testing.T) {
	secret := hostFile(t)
	vol := t.TempDir()
	must(t, os.Symlink(secret, filepath.Join(vol, "weights.bin")))
	must(t, os.Symlink(filepath.Dir(secret), filepath.Join(vol, "models")))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/a.zip" {
			w.Write(mkzip(t, map[string][]byte{"models/host-secret": []byte("overwritten")}))
			return
		}
		w.Write([]byte("overwritten"))
	}))
	defer srv.Close()
	f := &Fetcher{Limits: testLimits()}
	if err := f.Download(t.Context(), &protocol.Volume{VolumeType: protocol.VolumeSingleFile, URL: srv.URL + "/w", RelativePath: "weights.bin"}, vol); err != nil {
		t.Fatal(err)
	}
	if info, err := os.Lstat(filepath.Join(vol, "weights.bin")); err != nil || !info.Mode().IsRegular() {
		t.Errorf("weights.bin is not a regular file now: %v %v", info, err)
	}
	for _, v := range []protocol.Volume{
		{VolumeType: protocol.VolumeSingleFile, URL: srv.URL + "/w", RelativePath: "models/host-secret"},
		{VolumeType: protocol.VolumeZipURL, Contents: srv.URL + "/a.zip"},
	} {
		err := f.Download(t.Context(), &v, vol)
		if !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), "models is a symbolic link") {
			t.Errorf("%s: err = %v, want refused through the linked directory", v.VolumeType, err)
		}
	}
	if b, _ := os.ReadFile(secret); string(b) != "root's secret" {
		t.Errorf("host file now holds %q", b)
	}
}

func zipNames(t *testing.T, b []byte) []string {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("not a zip: %v", err)
	}
	var names []string
	for _, f := range zr.File {
		names = append(names, f.Name)
	}
	return names
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// WalkRegular (for artifacts) sees regular files only, and hears of the rest.
func TestWalkRegular(t *testing.T) {
	dir := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(dir, "a/b"), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "a/b/f.txt"), []byte("1"), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "z.txt"), []byte("22"), 0o644))
	must(t, os.Symlink(hostFile(t), filepath.Join(dir, "a/link")))
	must(t, unix.Mkfifo(filepath.Join(dir, "fifo"), 0o644))
	var seen, skipped []string
	err := WalkRegular(t.Context(), dir, testLimits(), func(p string, f *os.File, size int64) error {
		b, _ := io.ReadAll(f)
		seen = append(seen, p+"="+string(b))
		return nil
	}, func(p, kind string) { skipped = append(skipped, p+":"+kind) })
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(seen, ","); got != "a/b/f.txt=1,z.txt=22" {
		t.Errorf("seen %s", got)
	}
	if got := strings.Join(skipped, ","); got != "a/link:symbolic link,fifo:FIFO" {
		t.Errorf("skipped %s", got)
	}
}
