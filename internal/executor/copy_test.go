package executor_test

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/horde-compute/horde/internal/blob"
	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/protocol"
)

// copyingEngine is a runtime whose containers see copies of their binds
// (as Kubernetes Pods on other nodes do): it records what the executor
// asks to copy out, and can say a directory came back over its bound.
type copyingEngine struct {
	executor.Runtime
	mu   sync.Mutex
	outs []map[string]int64
	full bool
}

func (e *copyingEngine) CopyIn(ctx context.Context, id, hostDir string) error { return nil }

func (e *copyingEngine) CopyOut(ctx context.Context, id string, dirs map[string]int64) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.outs = append(e.outs, dirs)
	if e.full {
		for d, max := range dirs {
			if filepath.Base(d) == "output" {
				return &blob.DirFullError{Dir: d, Limit: max}
			}
		}
	}
	return nil
}

// The executor copies /output (and the artifacts directory) out of a
// copying runtime's container before it uploads, within the output bound,
// and only when something will read them; a directory past its bound
// ends the job as on a bounded disk.
func TestCopiedBinds(t *testing.T) {
	for _, tt := range []struct {
		name      string
		outputs   bool
		artifacts bool
		full      bool
		wantDirs  []string
	}{
		{"no outputs", false, false, false, nil},
		{"outputs", true, false, false, []string{"output"}},
		{"outputs and artifacts", true, true, false, []string{"artifacts", "output"}},
		{"output too large", true, false, true, []string{"output"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			eng := &copyingEngine{Runtime: h.rt, full: tt.full}
			id := strings.ReplaceAll(tt.name, " ", "-")
			req := request(id, images.JobImage, "echo", "hi")
			if tt.outputs {
				req.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: h.objects.URL + "/" + id + ".zip"}
			}
			if tt.artifacts {
				req.ArtifactsDir = "/artifacts"
			}
			j := h.start(t, func(c *executor.Config) { c.Runtime = eng })
			j.send(initial(id, images.JobImage))
			j.recv()
			j.send(req)
			last, _ := j.until()
			if err := j.end(); err != nil {
				t.Fatal(err)
			}
			eng.mu.Lock()
			outs := eng.outs
			eng.mu.Unlock()
			if tt.wantDirs == nil {
				if len(outs) != 0 {
					t.Errorf("copied out %v for a job nothing reads", outs)
				}
			} else {
				if len(outs) != 1 || len(outs[0]) != len(tt.wantDirs) {
					t.Fatalf("copied out %v, want once %v", outs, tt.wantDirs)
				}
				for d, max := range outs[0] {
					want := map[string]int64{"output": blob.DefaultLimits().MaxOutputBytes, "artifacts": executor.ArtifactsDiskBytes}[filepath.Base(d)]
					if max != want {
						t.Errorf("%s copied within %d bytes, want %d", d, max, want)
					}
				}
			}
			if tt.full {
				f := failed(t, last)
				if f.Stage != protocol.StageExecution || f.Context["horde_reason"] != "output_too_large" || !strings.Contains(f.Message, "/output than its limit") {
					t.Errorf("failure %s %v: %s", f.Stage, f.Context, f.Message)
				}
			} else if _, ok := last.(*protocol.V0JobFinishedRequest); !ok {
				t.Errorf("got %#v", last)
			}
			h.assertClean(t)
		})
	}
}
