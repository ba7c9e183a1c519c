package blob

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/horde-compute/horde/protocol"
)

func TestDialGuardCheck(t *testing.T) {
	g, err := NewDialGuard("10.1.0.0/16", "192.168.7.7", "127.0.0.1:9000", "[::1]:9001", "Minio:9002", "::ffff:172.16.5.0/120")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		host, addr string
		want       string // "" allowed, else the kind in the error
	}{
		{"h", "8.8.8.8:443", ""},
		{"h", "[2606:4700::1111]:443", ""},
		{"h", "127.0.0.1:80", "loopback"},
		{"h", "127.255.0.1:80", "loopback"},
		{"h", "[::1]:80", "loopback"},
		{"h", "0.0.0.0:80", "unspecified"},
		{"h", "[::]:80", "unspecified"},
		{"h", "169.254.169.254:80", "link-local"}, // cloud metadata
		{"h", "[fe80::1%eth0]:80", "link-local"},
		{"h", "10.0.0.1:80", "private"},
		{"h", "172.16.0.1:80", "private"},
		{"h", "172.31.255.255:80", "private"},
		{"h", "192.168.1.1:80", "private"},
		{"h", "100.64.0.1:80", "shared (CGNAT)"},
		{"h", "100.127.255.254:80", "shared (CGNAT)"},
		{"h", "[fd00::1]:80", "unique-local"},
		{"h", "224.0.0.1:80", "multicast"},
		{"h", "[ff02::1]:80", "multicast"},
		{"h", "255.255.255.255:80", "reserved"},
		{"h", "[::ffff:127.0.0.1]:80", "loopback"},
		{"h", "[::ffff:10.0.0.1]:80", "private"},
		{"h", "[::ffff:169.254.169.254]:80", "link-local"},
		{"h", "[64:ff9b::7f00:1]:80", "loopback (through NAT64)"},
		{"h", "[2002:7f00:1::1]:80", "loopback (through 6to4)"},
		{"h", "[::127.0.0.1]:80", "reserved"},
		{"h", "100.128.0.1:80", ""},
		{"h", "172.32.0.1:80", ""},
		// the allow-list
		{"h", "10.1.2.3:80", ""},
		{"h", "10.2.0.1:80", "private"},
		{"h", "192.168.7.7:1", ""},
		{"h", "[::ffff:192.168.7.7]:1", ""},
		{"h", "127.0.0.1:9000", ""},
		{"h", "127.0.0.1:9001", "loopback"},
		{"h", "[::1]:9001", ""},
		{"minio", "127.0.0.1:9002", ""},
		{"MINIO", "10.9.9.9:9002", ""},
		{"minio", "10.9.9.9:9003", "private"},
		{"other", "127.0.0.1:9002", "loopback"},
		{"h", "172.16.5.9:80", ""},
	} {
		err := g.Check(tt.host, netip.MustParseAddrPort(tt.addr))
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s (%s): refused: %v", tt.addr, tt.host, err)
		case tt.want != "" && (!errors.Is(err, ErrDestination) || !strings.Contains(err.Error(), "not a public address ("+tt.want+")")):
			t.Errorf("%s (%s): err = %v, want refused as %s", tt.addr, tt.host, err, tt.want)
		}
	}
	var none *DialGuard
	if err := none.Check("h", netip.MustParseAddrPort("127.0.0.1:9000")); !errors.Is(err, ErrDestination) {
		t.Errorf("nil guard allowed loopback: %v", err)
	}
	for _, bad := range []string{"10.0.0.0/33", "host", "host:0", "host:99999", ":80", "a b:1"} {
		if _, err := NewDialGuard(bad); err == nil {
			t.Errorf("allow-list entry %q accepted", bad)
		}
	}
}

// counted is a test server on loopback that counts the requests it gets.
func counted(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int32) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

// TestLoopbackVolumesAndUploadsRefused is issue #15 row 3: volume, upload
// and hub URLs on loopback (the miner's own services, 0.0.0.0, a local
// name) are refused when dialled, with no retry; the same server on the
// operator's allow-list works; a redirect from an allowed server to an
// unlisted loopback one is refused.
func TestLoopbackVolumesAndUploadsRefused(t *testing.T) {
	secret, secretHits := counted(t, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("miner's receipts")) })
	_, port, _ := net.SplitHostPort(secret.Listener.Addr().String())
	allowed, allowedHits := counted(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/redirect":
			http.Redirect(w, r, secret.URL+"/receipts/1.jsonl", http.StatusFound)
		case "/a.zip":
			w.Write(mkzip(t, map[string][]byte{"x": []byte("zipped")}))
		default:
			w.Write([]byte("fine"))
		}
	})
	guard, err := NewDialGuard(allowed.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	f := &Fetcher{Net: guard, Limits: testLimits(), HuggingFaceEndpoint: secret.URL}
	kind := map[string]string{"0.0.0.0": "(unspecified)"}
	for name, v := range map[string]protocol.Volume{
		"single_file":    {VolumeType: protocol.VolumeSingleFile, URL: secret.URL + "/receipts/1.jsonl", RelativePath: "f"},
		"zip_url":        {VolumeType: protocol.VolumeZipURL, Contents: secret.URL + "/a.zip"},
		"0.0.0.0":        {VolumeType: protocol.VolumeSingleFile, URL: "http://0.0.0.0:" + port + "/receipts", RelativePath: "f"},
		"localhost":      {VolumeType: protocol.VolumeSingleFile, URL: "http://localhost:" + port + "/receipts", RelativePath: "f"},
		"mapped":         {VolumeType: protocol.VolumeSingleFile, URL: "http://[::ffff:127.0.0.1]:" + port + "/", RelativePath: "f"},
		"redirect":       {VolumeType: protocol.VolumeSingleFile, URL: allowed.URL + "/redirect", RelativePath: "f"},
		"huggingface":    {VolumeType: protocol.VolumeHuggingFace, RepoID: "org/m"},
		"multi, 2nd bad": {VolumeType: protocol.VolumeMulti, Volumes: []protocol.Volume{{VolumeType: protocol.VolumeSingleFile, URL: allowed.URL + "/ok", RelativePath: "ok"}, {VolumeType: protocol.VolumeSingleFile, URL: secret.URL + "/", RelativePath: "f"}}},
	} {
		dir := t.TempDir()
		err := f.Download(t.Context(), &v, dir)
		want := kind[name]
		if want == "" {
			want = "(loopback)"
		}
		if !errors.Is(err, ErrDestination) || !errors.Is(err, ErrDownload) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want the destination refused as %s", name, err, want)
		}
	}
	for name, raw := range map[string]string{"file": "file:///etc/passwd", "ftp": "ftp://example.com/x", "gopher": "gopher://127.0.0.1:" + port + "/"} {
		err := f.Download(t.Context(), &protocol.Volume{VolumeType: protocol.VolumeSingleFile, URL: raw, RelativePath: "f"}, t.TempDir())
		if !errors.Is(err, ErrDestination) || !strings.Contains(err.Error(), "only http and https") {
			t.Errorf("%s: err = %v, want the scheme refused", name, err)
		}
	}
	u := &Uploader{Net: guard, Limits: testLimits()}
	out := t.TempDir()
	must(t, writeFileT(out, "r.txt", "result"))
	for _, typ := range []string{protocol.UploadSinglePut, protocol.UploadZipPost} {
		_, err := u.Upload(t.Context(), &protocol.OutputUpload{OutputUploadType: typ, URL: secret.URL + "/", RelativePath: "r.txt"}, out)
		if !errors.Is(err, ErrDestination) || !errors.Is(err, ErrUpload) {
			t.Errorf("upload %s to loopback: err = %v", typ, err)
		}
	}
	if n := secretHits.Load(); n != 0 {
		t.Fatalf("the loopback server got %d requests", n)
	}

	// The allow-listed loopback server works, for volumes and uploads.
	dir := t.TempDir()
	ok := &protocol.Volume{VolumeType: protocol.VolumeMulti, Volumes: []protocol.Volume{
		{VolumeType: protocol.VolumeSingleFile, URL: allowed.URL + "/ok", RelativePath: "ok"},
		{VolumeType: protocol.VolumeZipURL, Contents: allowed.URL + "/a.zip"}}}
	if err := f.Download(t.Context(), ok, dir); err != nil {
		t.Fatalf("allow-listed server: %v", err)
	}
	if res, err := u.Upload(t.Context(), &protocol.OutputUpload{OutputUploadType: protocol.UploadSinglePut, URL: allowed.URL + "/up", RelativePath: "r.txt"}, out); err != nil || res["r.txt"] != "200" {
		t.Fatalf("upload to the allow-listed server: %v %v", res, err)
	}
	if allowedHits.Load() == 0 {
		t.Fatal("the allowed server got nothing")
	}
	// A client on the host itself may dial loopback: the nil guard's client
	// does not, whatever the URL.
	if _, err := (*DialGuard)(nil).Client().Get(secret.URL); !errors.Is(err, ErrDestination) {
		t.Errorf("nil guard client: %v", err)
	}
}

func writeFileT(dir, name, s string) error {
	return os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644)
}

// The hub token goes to the hub only: a redirect to another host (a CDN)
// gets no Authorization header.
func TestHuggingFaceTokenNotSentOnRedirect(t *testing.T) {
	var cdnAuth atomic.Value
	cdnAuth.Store("")
	cdn, _ := counted(t, func(w http.ResponseWriter, r *http.Request) {
		cdnAuth.Store(r.Header.Get("Authorization"))
		w.Write([]byte("weights"))
	})
	hub, _ := counted(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			w.WriteHeader(401)
			return
		}
		if r.URL.Path == "/api/models/org/m/revision/main" {
			w.Write([]byte(`{"siblings":[{"rfilename":"w.bin"}]}`))
			return
		}
		// Another host: a name for the same loopback address.
		http.Redirect(w, r, strings.Replace(cdn.URL, "127.0.0.1", "localhost", 1)+"/blob", http.StatusFound)
	})
	guard, err := NewDialGuard("127.0.0.0/8", "::1")
	if err != nil {
		t.Fatal(err)
	}
	f := &Fetcher{Net: guard, Limits: testLimits(), HuggingFaceEndpoint: hub.URL}
	dir := t.TempDir()
	if err := f.Download(t.Context(), &protocol.Volume{VolumeType: protocol.VolumeHuggingFace, RepoID: "org/m", Token: "tok"}, dir); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "w.bin")); string(b) != "weights" {
		t.Fatalf("w.bin = %q", b)
	}
	if got := cdnAuth.Load().(string); got != "" {
		t.Errorf("the redirect target got Authorization %q", got)
	}
}
