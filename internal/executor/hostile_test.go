package executor_test

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/horde-compute/horde/internal/blob"
	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/executor/jobdisk"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/protocol"
)

// Attacks of issue 15 on the executor, made as they were (a job image that
// writes a link, a FIFO, too much; a client that names loopback URLs or a
// bad artifacts_dir), here on the fake runtime (the job's programs run
// in-process and write the host directories themselves); hostile_docker_test
// makes them again on Docker.

// hostSecret is a file of the miner's host outside the job's directories,
// readable by root only.
func hostSecret(t *testing.T) (path, content string) {
	t.Helper()
	content = "miner-host-secret-" + t.Name()
	path = filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, content
}

// loopbackService stands for a service of the miner's host that only
// loopback should reach (the miner's own port, a metadata endpoint): it
// counts every request and answers with a secret.
type loopbackService struct {
	*httptest.Server
	hits atomic.Int64
}

func newLoopbackService(t *testing.T) *loopbackService {
	s := &loopbackService{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		fmt.Fprint(w, "loopback-only-secret")
	}))
	t.Cleanup(s.Close)
	return s
}

// Row 1: a job links /output/leak to a root-only host file and asks for it
// as a single-file upload: refused with the link named, nothing uploaded.
// As a zip, the link is left out; in the artifacts directory, not collected.
func TestOutputLinkToHostFileRefused(t *testing.T) {
	secret, content := hostSecret(t)
	for _, tt := range []struct {
		name   string
		args   []string
		upload func(h *harness) *protocol.OutputUpload
		art    bool
	}{
		{name: "single file", args: []string{"symlink", "leak", secret},
			upload: func(h *harness) *protocol.OutputUpload {
				return &protocol.OutputUpload{OutputUploadType: protocol.UploadSinglePut, URL: h.objects.URL + "/out/leak", RelativePath: "leak"}
			}},
		{name: "zip", args: []string{"symlink", "leak", secret},
			upload: func(h *harness) *protocol.OutputUpload {
				return &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: h.objects.URL + "/out/all.zip"}
			}},
		{name: "artifact", args: []string{"symlink", "/artifacts/leak", secret}, art: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			req := request("l", images.JobImage, tt.args...)
			if tt.upload != nil {
				req.OutputUpload = tt.upload(h)
			}
			if tt.art {
				req.ArtifactsDir = "/artifacts"
			}
			last, _, err := h.run(t, initial("l", images.JobImage), req)
			if err != nil {
				t.Fatal(err)
			}
			switch tt.name {
			case "single file":
				f := failed(t, last)
				if f.Stage != protocol.StageResultUpload || f.Context["horde_reason"] != "upload_failed" ||
					!strings.Contains(f.Message, "leak is a symbolic link") {
					t.Errorf("failure %s/%v: %s", f.Stage, f.Context["horde_reason"], f.Message)
				}
				if _, ok := h.objects.Get("out/leak"); ok {
					t.Error("something was uploaded")
				}
			case "zip":
				if _, ok := last.(*protocol.V0JobFinishedRequest); !ok {
					t.Fatalf("got %#v", last)
				}
				b, _ := h.objects.Get("out/all.zip")
				zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
				if err != nil || len(zr.File) != 0 {
					t.Errorf("zip: %v, %d entries", err, len(zr.File))
				}
			case "artifact":
				f, ok := last.(*protocol.V0JobFinishedRequest)
				if !ok || len(f.Artifacts) != 0 {
					t.Errorf("got %#v", last)
				}
			}
			if strings.Contains(fmt.Sprintf("%#v", last), content) || strings.Contains(fmt.Sprintf("%#v", last), base64.StdEncoding.EncodeToString([]byte(content))) {
				t.Error("the host file's content left the host")
			}
			h.assertClean(t)
		})
	}
}

// Row 2: a FIFO in /output asked for as a single-file upload is refused at
// once (it is never opened, so nothing blocks); in a zip or among
// artifacts it is left out. Either way the executor ends and frees its slot.
func TestOutputFIFORefused(t *testing.T) {
	for _, tt := range []struct {
		name     string
		args     []string
		upload   func(h *harness) *protocol.OutputUpload
		artifact bool
	}{
		{name: "single file", args: []string{"fifo", "pipe"}, upload: func(h *harness) *protocol.OutputUpload {
			return &protocol.OutputUpload{OutputUploadType: protocol.UploadSinglePut, URL: h.objects.URL + "/out/pipe", RelativePath: "pipe"}
		}},
		{name: "zip", args: []string{"fifo", "pipe"}, upload: func(h *harness) *protocol.OutputUpload {
			return &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: h.objects.URL + "/out/all.zip"}
		}},
		{name: "artifact", args: []string{"fifo", "/artifacts/pipe"}, artifact: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			in := initial("f", images.JobImage)
			// A day to upload: only a refusal ends this job soon.
			in.ExecutorTiming = &protocol.ExecutorTiming{DownloadTimeLimit: 30, ExecutionTimeLimit: 30, UploadTimeLimit: 86400}
			req := request("f", images.JobImage, tt.args...)
			if tt.upload != nil {
				req.OutputUpload = tt.upload(h)
			}
			if tt.artifact {
				req.ArtifactsDir = "/artifacts"
			}
			last, _, err := h.run(t, in, req)
			if err != nil {
				t.Fatal(err)
			}
			if tt.name == "single file" {
				f := failed(t, last)
				if f.Stage != protocol.StageResultUpload || !strings.Contains(f.Message, "pipe is a FIFO") {
					t.Errorf("failure %s: %s", f.Stage, f.Message)
				}
			} else if f, ok := last.(*protocol.V0JobFinishedRequest); !ok || len(f.Artifacts) != 0 {
				t.Errorf("got %#v", last)
			}
			h.assertClean(t)
		})
	}
}

// Row 3: volume and upload URLs on loopback (a service of the miner's host),
// on 0.0.0.0, or reached by a redirect from an allowed server, and a hub on
// loopback, are refused before a byte is sent; the service sees no request.
func TestClientURLsToTheHostRefused(t *testing.T) {
	svc := newLoopbackService(t)
	port := svc.Listener.Addr().(*net.TCPAddr).Port
	for _, tt := range []struct {
		name  string
		edit  func(h *harness, redirect string, r *protocol.V0JobRequest)
		hub   bool
		stage protocol.JobStage
	}{
		{name: "zip volume on loopback", stage: protocol.StageVolumeDownload, edit: func(h *harness, redirect string, r *protocol.V0JobRequest) {
			r.Volume = &protocol.Volume{VolumeType: protocol.VolumeZipURL, Contents: svc.URL + "/receipts"}
		}},
		{name: "file volume on 0.0.0.0", stage: protocol.StageVolumeDownload, edit: func(h *harness, redirect string, r *protocol.V0JobRequest) {
			r.Volume = &protocol.Volume{VolumeType: protocol.VolumeSingleFile, URL: fmt.Sprintf("http://0.0.0.0:%d/x", port), RelativePath: "x"}
		}},
		{name: "volume on localhost by name", stage: protocol.StageVolumeDownload, edit: func(h *harness, redirect string, r *protocol.V0JobRequest) {
			r.Volume = &protocol.Volume{VolumeType: protocol.VolumeSingleFile, URL: fmt.Sprintf("http://localhost:%d/x", port), RelativePath: "x"}
		}},
		{name: "volume redirected to loopback", stage: protocol.StageVolumeDownload, edit: func(h *harness, redirect string, r *protocol.V0JobRequest) {
			r.Volume = &protocol.Volume{VolumeType: protocol.VolumeSingleFile, URL: redirect + "/redirect", RelativePath: "x"}
		}},
		{name: "hub on loopback", stage: protocol.StageVolumeDownload, hub: true, edit: func(h *harness, redirect string, r *protocol.V0JobRequest) {
			r.Volume = &protocol.Volume{VolumeType: protocol.VolumeHuggingFace, RepoID: "org/model"}
		}},
		{name: "upload to loopback", stage: protocol.StageResultUpload, edit: func(h *harness, redirect string, r *protocol.V0JobRequest) {
			r.DockerRunCmd = []string{"write", "o.bin", "5"}
			r.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: svc.URL + "/receipts"}
		}},
		{name: "upload to 0.0.0.0", stage: protocol.StageResultUpload, edit: func(h *harness, redirect string, r *protocol.V0JobRequest) {
			r.DockerRunCmd = []string{"write", "o.bin", "5"}
			r.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadSinglePut, URL: fmt.Sprintf("http://0.0.0.0:%d/o", port), RelativePath: "o.bin"}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			redirector := httptest.NewServer(http.RedirectHandler(svc.URL+"/receipts", http.StatusFound))
			defer redirector.Close()
			j := h.start(t, func(c *executor.Config) {
				c.Net = allow(t, h.objects.URL, redirector.URL)
				if tt.hub {
					c.HuggingFaceEndpoint = svc.URL
				}
			})
			req := request("u", images.JobImage, "echo")
			tt.edit(h, redirector.URL, req)
			j.send(initial("u", images.JobImage))
			j.recv()
			j.send(req)
			last, _ := j.until()
			if err := j.end(); err != nil {
				t.Fatal(err)
			}
			f := failed(t, last)
			if f.Stage != tt.stage || !strings.Contains(f.Message, "destination refused") || !strings.Contains(f.Message, "allow-list") {
				t.Errorf("failure %s: %s", f.Stage, f.Message)
			}
			if n := svc.hits.Load(); n != 0 {
				t.Errorf("the loopback service got %d requests", n)
			}
			h.assertClean(t)
		})
	}
}

// Row 11: an artifacts_dir that would inject mount options or cover a
// reserved mount is refused before anything is made, with a reason that
// names no host path.
func TestArtifactsDirRefused(t *testing.T) {
	for _, dir := range []string{"/art:ro", "/art,ro", "/output", "/volume", "art", "/art/../etc", "/proc/self", "/tmp"} {
		t.Run(strings.ReplaceAll(dir, "/", "_"), func(t *testing.T) {
			h := newHarness(t)
			req := request("a", images.JobImage, "echo")
			req.ArtifactsDir = dir
			last, _, err := h.run(t, initial("a", images.JobImage), req)
			if err != nil {
				t.Fatal(err)
			}
			f := failed(t, last)
			if f.Stage != protocol.StageExecutorStartup || f.Context["horde_reason"] != "artifacts_dir_invalid" || !strings.Contains(f.Message, "artifacts_dir") {
				t.Errorf("failure %s/%v: %s", f.Stage, f.Context["horde_reason"], f.Message)
			}
			if strings.Contains(f.Message, h.dataDir) {
				t.Errorf("message names a host path: %s", f.Message)
			}
			h.assertClean(t)
		})
	}
}

// pathEngine is a runtime whose engine refuses containers naming their binds.
type pathEngine struct{ executor.Runtime }

func (pathEngine) ContainerCreate(_ context.Context, _ string, cfg *docker.ContainerConfig) (string, error) {
	return "", &docker.APIError{Status: 400, Message: "invalid mount config: " + strings.Join(cfg.HostConfig.Binds, " ")}
}

// An engine's error that names the job's host directories reaches the
// client without them.
func TestHostPathsKeptInside(t *testing.T) {
	h := newHarness(t)
	j := h.start(t, func(c *executor.Config) { c.Runtime = pathEngine{h.rt} })
	j.send(initial("p", images.JobImage))
	j.recv()
	j.send(request("p", images.JobImage, "echo"))
	last, _ := j.until()
	if err := j.end(); err != nil {
		t.Fatal(err)
	}
	f, ok := last.(*protocol.V0HordeFailedRequest)
	if !ok || strings.Contains(f.Message, h.dataDir) || !strings.Contains(f.Message, "<job dir>/output:/output") {
		t.Errorf("got %#v", last)
	}
	h.assertClean(t)
}

// Row 10 (on the fake; hostile_docker_test writes the 2.6 GB): with bounded
// disks, a job writing far more than /output's bound gets ENOSPC at the
// bound, the job fails with the bound named, and everything is unmounted
// and removed after.
func TestOutputBound(t *testing.T) {
	if err := jobdisk.Check(); err != nil {
		t.Skip(err)
	}
	h := newHarness(t)
	const limit = 32 << 20
	j := h.start(t, func(c *executor.Config) {
		c.BoundDisks = true
		c.Limits = blob.DefaultLimits()
		c.Limits.MaxOutputBytes = limit
	})
	j.send(initial("b", images.JobImage))
	j.recv()
	j.send(request("b", images.JobImage, "write", "big", fmt.Sprint(int64(2.6e9))))
	last, _ := j.until()
	if err := j.end(); err != nil {
		t.Fatal(err)
	}
	f := failed(t, last)
	if f.Stage != protocol.StageExecution || f.Context["horde_reason"] != "output_too_large" ||
		!strings.Contains(f.Message, fmt.Sprintf("/output than its limit of %d bytes", limit)) {
		t.Errorf("failure %s/%v: %s", f.Stage, f.Context["horde_reason"], f.Message)
	}
	var wrote int64
	fmt.Sscanf(f.DockerProcessStdout, "wrote %d", &wrote)
	if wrote < limit || wrote > limit+16<<20 || !strings.Contains(f.DockerProcessStderr, "no space left on device") {
		t.Errorf("the job wrote %d bytes (stdout %q, stderr %q)", wrote, f.DockerProcessStdout, f.DockerProcessStderr)
	}
	h.assertClean(t)
}

// A job under its bounds is untouched by them: volumes in, outputs out.
func TestBoundedDisksJobSucceeds(t *testing.T) {
	if err := jobdisk.Check(); err != nil {
		t.Skip(err)
	}
	h := newHarness(t)
	j := h.start(t, func(c *executor.Config) { c.BoundDisks = true })
	req := request("ok", images.JobImage, "demo")
	req.Volume = &protocol.Volume{VolumeType: protocol.VolumeInline, Contents: base64.StdEncoding.EncodeToString(zipOf(map[string]string{"a.txt": "hello horde world"}))}
	req.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadSinglePut, URL: h.objects.URL + "/out/result.json", RelativePath: "result.json"}
	req.ArtifactsDir = "/artifacts"
	j.send(initial("ok", images.JobImage))
	j.recv()
	j.send(req)
	last, _ := j.until()
	if err := j.end(); err != nil {
		t.Fatal(err)
	}
	if f, ok := last.(*protocol.V0JobFinishedRequest); !ok || f.UploadResults["result.json"] != "200" {
		t.Fatalf("got %#v", last)
	}
	if b, _ := h.objects.Get("out/result.json"); !bytes.Contains(b, []byte(`"a.txt"`)) {
		t.Errorf("result.json = %s", b)
	}
	h.assertClean(t)
}
