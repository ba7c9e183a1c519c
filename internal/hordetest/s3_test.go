package hordetest

import (
	"archive/zip"
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/protocol"
)

// Volumes come from and outputs go to a real S3 server through presigned URLs,
// whose signatures the server checks: a tampered URL fails the upload.
func TestPresignedS3(t *testing.T) {
	s := StartS3(t, "jobs")
	s.Put(t, "jobs", "in/data.zip", zipOf(t, map[string]string{"data.txt": "presigned input"}))
	// The server really checks signatures.
	good := s.PresignPut(t, "jobs", "probe")
	if code := status(t, http.MethodPut, good, []byte("x")); code != http.StatusOK {
		t.Fatalf("presigned PUT: %d", code)
	}
	tampered := strings.Replace(s.PresignPut(t, "jobs", "probe2"), "probe2", "other", 1)
	if code := status(t, http.MethodPut, tampered, []byte("x")); code != http.StatusForbidden {
		t.Fatalf("tampered presigned PUT: %d, want 403", code)
	}

	// The S3 server is on loopback: the miner's operator lists it.
	h := StartFake(t, devstack.Config{AllowPrivate: []string{strings.TrimPrefix(s.Endpoint, "http://")}})
	spec := Spec("demo")
	spec.Volume = &protocol.Volume{VolumeType: protocol.VolumeZipURL, Contents: s.PresignGet(t, "jobs", "in/data.zip")}
	spec.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadMulti,
		Uploads:      []protocol.OutputUpload{{OutputUploadType: protocol.UploadSinglePut, URL: s.PresignPut(t, "jobs", "out/result.json"), RelativePath: "result.json"}},
		SystemOutput: &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: s.PresignPut(t, "jobs", "out/system.zip")}}
	job := h.Run(t, spec)
	if job.Status != protocol.StatusCompleted {
		t.Fatalf("status %s: %+v", job.Status, Last(job).Metadata)
	}
	if res := s.Get(t, "jobs", "out/result.json"); !strings.Contains(string(res), "data.txt") {
		t.Errorf("result.json = %s", res)
	}
	sys := s.Get(t, "jobs", "out/system.zip")
	zr, err := zip.NewReader(bytes.NewReader(sys), int64(len(sys)))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range zr.File {
		names[f.Name] = true
	}
	if !names["stdout.txt"] || !names["stderr.txt"] {
		t.Errorf("system output holds %v", names)
	}

	// A tampered presigned URL is refused by the server and the job says so.
	spec = Spec("write", "o.bin", "5")
	spec.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut,
		URL: strings.Replace(s.PresignPut(t, "jobs", "out/x.zip"), "x.zip", "y.zip", 1)}
	job = h.Run(t, spec)
	if d := Last(job).Metadata.JobFailureDetails; job.Status != protocol.StatusFailed || d == nil || !strings.Contains(d.Message, "HTTP 403") {
		t.Errorf("tampered upload: %s %+v", job.Status, Last(job).Metadata)
	}
}
