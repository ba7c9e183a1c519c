package hordetest

import (
	"archive/zip"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
)

func zipOf(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for name, data := range files {
		w, _ := zw.Create(name)
		w.Write([]byte(data))
	}
	zw.Close()
	return buf.Bytes()
}

func TestOrganicJobEndToEnd(t *testing.T) {
	for _, rt := range []Runtime{OnFake, OnDocker} {
		t.Run(rt.Name, func(t *testing.T) {
			h := rt.Start(t, devstack.Config{})
			h.Objects.Put("in.zip", zipOf(t, map[string]string{"b.txt": "two words"}))
			spec := Spec("demo")
			spec.Volume = &protocol.Volume{VolumeType: protocol.VolumeMulti, Volumes: []protocol.Volume{
				{VolumeType: protocol.VolumeInline, Contents: base64.StdEncoding.EncodeToString(zipOf(t, map[string]string{"a.txt": "hello horde world"}))},
				{VolumeType: protocol.VolumeZipURL, Contents: h.Objects.URL + "/in.zip", RelativePath: "z"},
			}}
			spec.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadMulti,
				Uploads:      []protocol.OutputUpload{{OutputUploadType: protocol.UploadSinglePut, URL: h.Objects.URL + "/result.json", RelativePath: "result.json"}},
				SystemOutput: &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: h.Objects.URL + "/system.zip"}}
			job := h.Run(t, spec)
			last := Last(job)
			if job.Status != protocol.StatusCompleted {
				t.Fatalf("status %s: %+v", job.Status, last.Metadata)
			}
			out := last.Metadata.MinerResponse.DockerProcessStdout
			if !strings.Contains(out, "processed 2 input files") {
				t.Errorf("stdout = %q", out)
			}
			res, ok := h.Objects.Get("result.json")
			if !ok || !strings.Contains(string(res), "z/b.txt") {
				t.Errorf("uploaded result = %s", res)
			}
			if _, ok := h.Objects.Get("system.zip"); !ok {
				t.Error("stdout/stderr not uploaded")
			}
			// The history walks through every stage.
			var seen []string
			for _, e := range job.StatusHistory {
				seen = append(seen, string(e.Status))
			}
			want := "sent received accepted executor_ready volumes_ready execution_done completed"
			if strings.Join(seen, " ") != want {
				t.Errorf("history = %v, want %s", seen, want)
			}
			// Receipts: started, accepted and finished, each verifying with the validator's key.
			if len(last.Metadata.Receipts) != 3 {
				t.Fatalf("receipts = %d, want 3", len(last.Metadata.Receipts))
			}
			for _, raw := range last.Metadata.Receipts {
				var r receipt.Receipt
				if err := json.Unmarshal(raw, &r); err != nil {
					t.Fatal(err)
				}
				if err := r.Verify(); err != nil {
					t.Errorf("%s: %v", r.Type, err)
				}
			}
		})
	}
}
