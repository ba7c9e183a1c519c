package devstack

import (
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/horde-compute/horde/internal/blob"
)

// Objects is a small HTTP object store on loopback for volumes and outputs:
// GET serves a file, PUT or POST (multipart field "file") stores one, under Dir.
type Objects struct {
	URL string
	Dir string
	srv *http.Server
	mu  sync.Mutex
	// fail maps a path to a status answered instead (for tests).
	fail map[string]int
}

// ServeObjects starts an object store on 127.0.0.1 over dir.
func ServeObjects(dir string) (*Objects, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	o := &Objects{URL: "http://" + ln.Addr().String(), Dir: dir, fail: map[string]int{}}
	o.srv = &http.Server{Handler: http.HandlerFunc(o.serve)}
	go o.srv.Serve(ln) // owned: Close shuts it down
	return o, nil
}

// Close stops the server.
func (o *Objects) Close() error { return o.srv.Close() }

// Fail makes path answer status from now on.
func (o *Objects) Fail(path string, status int) {
	o.mu.Lock()
	o.fail[path] = status
	o.mu.Unlock()
}

func (o *Objects) path(p string) (string, error) {
	return blob.SafeJoin(o.Dir, strings.TrimPrefix(p, "/"))
}

func (o *Objects) serve(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	code := o.fail[r.URL.Path]
	o.mu.Unlock()
	if code != 0 {
		w.WriteHeader(code)
		return
	}
	path, err := o.path(r.URL.Path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	switch r.Method {
	case http.MethodGet:
		http.ServeFile(w, r, path)
	case http.MethodPut, http.MethodPost:
		var body io.Reader = r.Body
		if strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/") {
			f, _, err := r.FormFile("file")
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			defer f.Close()
			body = f
		}
		os.MkdirAll(filepath.Dir(path), 0o755)
		out, err := os.Create(path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer out.Close()
		if _, err := io.Copy(out, body); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	default:
		w.WriteHeader(http.StatusMethodNotAllowed)
	}
}

// Put stores an object.
func (o *Objects) Put(name string, b []byte) error {
	path, err := o.path(name)
	if err != nil {
		return err
	}
	os.MkdirAll(filepath.Dir(path), 0o755)
	return os.WriteFile(path, b, 0o644)
}

// Get reads an object.
func (o *Objects) Get(name string) ([]byte, bool) {
	path, err := o.path(name)
	if err != nil {
		return nil, false
	}
	b, err := os.ReadFile(path)
	return b, err == nil
}
