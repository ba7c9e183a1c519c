package client

import (
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/horde-compute/horde/protocol"
)

// JobResult is what a job that ended returned, gathered from its last status.
type JobResult struct {
	Stdout, Stderr string
	// ExitStatus is the container's exit code, when the job failed with one.
	ExitStatus *int
	// Artifacts are the files the job left under its artifacts_dir (each
	// under 1 MB), keyed by their path in the container.
	Artifacts map[string][]byte
	// UploadResults are the HTTP statuses of the output uploads, keyed by
	// what was uploaded ("outputs.zip", a relative path, "system/…").
	UploadResults map[string]string
}

// ResultOf returns what the job returned, from its last status. A job that has
// not ended, or ended without output, gives an empty result.
func ResultOf(j *protocol.Job) (*JobResult, error) {
	r := &JobResult{Artifacts: map[string][]byte{}, UploadResults: map[string]string{}}
	if len(j.StatusHistory) == 0 {
		return r, nil
	}
	m := j.StatusHistory[len(j.StatusHistory)-1].Metadata
	if m == nil {
		return r, nil
	}
	if mr := m.MinerResponse; mr != nil {
		r.Stdout, r.Stderr = mr.DockerProcessStdout, mr.DockerProcessStderr
		for k, v := range mr.UploadResults {
			r.UploadResults[k] = v
		}
		for p, b64 := range mr.Artifacts {
			b, err := base64.StdEncoding.DecodeString(b64)
			if err != nil {
				return r, fmt.Errorf("artifact %s: not base64: %w", p, err)
			}
			r.Artifacts[p] = b
		}
	} else if d := m.JobFailureDetails; d != nil {
		r.Stdout, r.Stderr, r.ExitStatus = d.DockerProcessStdout, d.DockerProcessStderr, d.DockerProcessExitStatus
	}
	return r, nil
}

// ArtifactPaths returns the artifacts' paths, sorted.
func (r *JobResult) ArtifactPaths() []string {
	out := make([]string, 0, len(r.Artifacts))
	for p := range r.Artifacts {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// SaveArtifacts writes the artifacts into dir, each at its path below
// artifactsDir (the job's artifacts_dir), and returns the files written. The
// paths come from the miner: one that would land outside dir, or that is not
// below artifactsDir, is refused and nothing after it written.
func (r *JobResult) SaveArtifacts(dir, artifactsDir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("save artifacts: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("save artifacts: %w", err)
	}
	defer root.Close()
	prefix := strings.TrimSuffix(path.Clean(artifactsDir), "/") + "/"
	var saved []string
	for _, p := range r.ArtifactPaths() {
		rel, ok := strings.CutPrefix(path.Clean(p), prefix)
		if !ok || !filepath.IsLocal(filepath.FromSlash(rel)) {
			return saved, fmt.Errorf("save artifacts: %w: %q is not a file below %s", ErrArtifactPath, p, artifactsDir)
		}
		local := filepath.FromSlash(rel)
		if d := filepath.Dir(local); d != "." {
			if err := root.MkdirAll(d, 0o755); err != nil {
				return saved, fmt.Errorf("save artifacts: %w", err)
			}
		}
		if err := root.WriteFile(local, r.Artifacts[p], 0o644); err != nil {
			return saved, fmt.Errorf("save artifacts: %w", err)
		}
		saved = append(saved, filepath.Join(dir, local))
	}
	return saved, nil
}

// ErrArtifactPath marks an artifact whose path would land outside where it is saved.
var ErrArtifactPath = errors.New("artifact path refused")
