package client

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/horde-compute/horde/protocol"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func ended(m *protocol.StatusMetadata) *protocol.Job {
	return &protocol.Job{UUID: "j", Status: protocol.StatusCompleted, StatusHistory: []protocol.StatusEntry{
		{Status: protocol.StatusSent}, {Status: protocol.StatusCompleted, Metadata: m}}}
}

func TestResultOf(t *testing.T) {
	r, err := ResultOf(ended(&protocol.StatusMetadata{MinerResponse: &protocol.MinerResponse{DockerProcessStdout: "out", DockerProcessStderr: "err",
		Artifacts: map[string]string{"/artifacts/b": b64("B"), "/artifacts/a": b64("A")}, UploadResults: map[string]string{"outputs.zip": "200"}}}))
	if err != nil {
		t.Fatal(err)
	}
	want := &JobResult{Stdout: "out", Stderr: "err", Artifacts: map[string][]byte{"/artifacts/a": []byte("A"), "/artifacts/b": []byte("B")},
		UploadResults: map[string]string{"outputs.zip": "200"}}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"/artifacts/a", "/artifacts/b"}, r.ArtifactPaths()); diff != "" {
		t.Errorf("paths (-want +got):\n%s", diff)
	}

	code := 3
	r, err = ResultOf(ended(&protocol.StatusMetadata{JobFailureDetails: &protocol.FailureDetails{DockerProcessStdout: "o", DockerProcessExitStatus: &code}}))
	if err != nil || r.Stdout != "o" || r.ExitStatus == nil || *r.ExitStatus != 3 {
		t.Errorf("failed job: %+v %v", r, err)
	}
	if r, err := ResultOf(&protocol.Job{}); err != nil || len(r.Artifacts) != 0 {
		t.Errorf("job without history: %+v %v", r, err)
	}
	if r, err := ResultOf(ended(nil)); err != nil || r.Stdout != "" {
		t.Errorf("job without metadata: %+v %v", r, err)
	}
	if _, err := ResultOf(ended(&protocol.StatusMetadata{MinerResponse: &protocol.MinerResponse{Artifacts: map[string]string{"/a/x": "%%"}}})); err == nil {
		t.Error("an artifact that is not base64 was taken")
	}
}

func TestSaveArtifacts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	r := &JobResult{Artifacts: map[string][]byte{"/artifacts/a.txt": []byte("A"), "/artifacts/sub/b.txt": []byte("B")}}
	saved, err := r.SaveArtifacts(dir, "/artifacts")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{filepath.Join(dir, "a.txt"), filepath.Join(dir, "sub", "b.txt")}, saved); diff != "" {
		t.Errorf("saved (-want +got):\n%s", diff)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "sub", "b.txt")); err != nil || string(b) != "B" {
		t.Errorf("sub/b.txt: %q %v", b, err)
	}

	// The paths come from a miner: none may land outside the directory.
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/artifacts/../etc/passwd", "/artifacts/a/../../x", "/elsewhere/x", "/artifacts", "/artifactsx/y", "/artifacts/link/escaped"} {
		r := &JobResult{Artifacts: map[string][]byte{p: []byte("evil")}}
		if _, err := r.SaveArtifacts(dir, "/artifacts"); err == nil {
			t.Errorf("%q was saved", p)
		} else if p != "/artifacts/link/escaped" && !errors.Is(err, ErrArtifactPath) {
			t.Errorf("%q: %v, want ErrArtifactPath", p, err)
		}
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Errorf("a file escaped through a link: %v", entries)
	}
}
