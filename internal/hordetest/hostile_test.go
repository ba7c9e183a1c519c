package hordetest

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/blob"
	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/protocol"
)

// Issue 15, row 3, end to end: a client names, for volumes and uploads, the
// miner's own port (its /receipts), 0.0.0.0 and the facilitator: each is
// refused at the miner before a connection is made (the miner's operator
// listed only the object server), the job fails in the right stage with
// the reason, and the job never runs on what it asked for.
func TestClientURLsToTheHordeRefused(t *testing.T) {
	h := StartFake(t, devstack.Config{})
	miner := h.MinerAddrs[0]
	_, port, _ := net.SplitHostPort(miner)
	zero := net.JoinHostPort("0.0.0.0", port)
	facilitator := h.FacilitatorURL
	for _, tt := range []struct {
		name  string
		spec  func() *protocol.JobSpec
		stage protocol.JobStage
	}{
		{"volume from the miner's receipts", func() *protocol.JobSpec {
			s := Spec("demo")
			s.Volume = &protocol.Volume{VolumeType: protocol.VolumeZipURL, Contents: "http://" + miner + "/receipts"}
			return s
		}, protocol.StageVolumeDownload},
		{"volume from 0.0.0.0", func() *protocol.JobSpec {
			s := Spec("demo")
			s.Volume = &protocol.Volume{VolumeType: protocol.VolumeSingleFile, URL: "http://" + zero + "/receipts", RelativePath: "r.json"}
			return s
		}, protocol.StageVolumeDownload},
		{"volume from the facilitator", func() *protocol.JobSpec {
			s := Spec("demo")
			s.Volume = &protocol.Volume{VolumeType: protocol.VolumeSingleFile, URL: facilitator + "/api/v1/jobs/", RelativePath: "jobs.json"}
			return s
		}, protocol.StageVolumeDownload},
		{"upload to the miner", func() *protocol.JobSpec {
			s := Spec("write", "o.bin", "10")
			s.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: "http://" + miner + "/receipts"}
			return s
		}, protocol.StageResultUpload},
		{"upload to 0.0.0.0", func() *protocol.JobSpec {
			s := Spec("write", "o.bin", "10")
			s.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadSinglePut, URL: "http://" + zero + "/x", RelativePath: "o.bin"}
			return s
		}, protocol.StageResultUpload},
		{"upload to the facilitator", func() *protocol.JobSpec {
			s := Spec("write", "o.bin", "10")
			s.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadSinglePost, URL: facilitator + "/api/v1/job-create/", RelativePath: "o.bin"}
			return s
		}, protocol.StageResultUpload},
	} {
		t.Run(tt.name, func(t *testing.T) {
			job := h.Run(t, tt.spec())
			last := Last(job)
			d := last.Metadata.JobFailureDetails
			if job.Status != protocol.StatusFailed || d == nil {
				b, _ := json.Marshal(last)
				t.Fatalf("status %s: %s", job.Status, b)
			}
			if d.Stage != tt.stage || !strings.Contains(d.Message, "destination refused") || !strings.Contains(d.Message, "is not a public address") {
				t.Errorf("failure %s: %s", d.Stage, d.Message)
			}
			if tt.stage == protocol.StageVolumeDownload && d.DockerProcessStdout != "" {
				t.Errorf("the job ran: %q", d.DockerProcessStdout)
			}
		})
	}
	// The object server the operator listed still works.
	h.Objects.Put("in.zip", zipOf(t, map[string]string{"a.txt": "allowed"}))
	s := Spec("demo")
	s.Volume = &protocol.Volume{VolumeType: protocol.VolumeZipURL, Contents: h.Objects.URL + "/in.zip"}
	if job := h.Run(t, s); job.Status != protocol.StatusCompleted {
		t.Errorf("allowed volume: %s %s", job.Status, fmt.Sprint(Last(job).Metadata))
	}
}

// Issue 15, row 10 (volumes): a streaming job's later volumes count against
// the same job budget as its first: two volumes each under the per-volume
// limit but together over the job's are refused at the second, with the
// reason in the acknowledgement, and the job goes on serving.
func TestStreamingVolumesShareOneBudget(t *testing.T) {
	lim := blob.DefaultLimits()
	lim.MaxVolumeBytes, lim.MaxJobVolumeBytes = 1<<20, 3<<19
	h := StartFake(t, devstack.Config{Limits: lim, StreamingWhitelist: map[string]string{images.LLMImage: OnFake.LLMDigest(t)}})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for _, name := range []string{"one.zip", "two.zip"} {
		noise := make([]byte, 900<<10) // incompressible: the zip is as big
		rand.Read(noise)
		h.Objects.Put(name, zipOf(t, map[string]string{"data.bin": string(noise)}))
	}
	st, err := h.Client.StartStreaming(ctx, streamSpec(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Client.Stop(ctx, st.JobUUID)
	ack, err := h.Client.SendVolume(ctx, st.JobUUID, &protocol.VolumeMessage{Volume: &protocol.Volume{VolumeType: protocol.VolumeZipURL,
		Contents: h.Objects.URL + "/one.zip", RelativePath: "one"}})
	if err != nil || !ack.Success {
		t.Fatalf("first volume: %+v %v", ack, err)
	}
	ack, err = h.Client.SendVolume(ctx, st.JobUUID, &protocol.VolumeMessage{Volume: &protocol.Volume{VolumeType: protocol.VolumeZipURL,
		Contents: h.Objects.URL + "/two.zip", RelativePath: "two"}})
	left := fmt.Sprintf("%d left of the volume limits", lim.MaxJobVolumeBytes-900<<10) // the job's budget, not the volume's
	if err == nil || ack == nil || ack.Success || !strings.Contains(ack.Error, left) {
		t.Fatalf("second volume: %+v %v", ack, err)
	}
	hc, _ := st.HTTPClient()
	var out strings.Builder
	if res, err := st.Call(ctx, hc, "GET", "/health", nil, &out); err != nil || res.Status != 200 {
		t.Errorf("the job no longer serves: %v %v", res, err)
	}
}

// Issue 15, row 2, end to end: a job makes /output/pipe a FIFO and asks
// for it as a single-file upload. The client is told why it failed, within
// the upload stage (never waiting on the FIFO), and the miner's only
// executor is free again: the next job runs on it.
func TestFIFOOutputFreesTheExecutor(t *testing.T) {
	h := StartFake(t, devstack.Config{Manifest: map[string]int{protocol.ClassTest: 1}})
	s := Spec("fifo", "pipe")
	s.UploadTimeLimit = 86400 // only the refusal ends it soon
	s.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadSinglePut, URL: h.Objects.URL + "/pipe", RelativePath: "pipe"}
	job := h.Run(t, s)
	d := Last(job).Metadata.JobFailureDetails
	if job.Status != protocol.StatusFailed || d == nil || d.Stage != protocol.StageResultUpload || !strings.Contains(d.Message, "pipe is a FIFO") {
		b, _ := json.Marshal(Last(job))
		t.Fatalf("status %s: %s", job.Status, b)
	}
	if next := h.Run(t, Spec("echo", "next")); next.Status != protocol.StatusCompleted {
		t.Errorf("the next job: %s", next.Status)
	}
}
