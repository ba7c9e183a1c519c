package hordetest

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/internal/store/sqlite"
	"github.com/horde-compute/horde/protocol"
	sr "github.com/horde-compute/horde/streamreceipt"
)

func streamSpec() *protocol.JobSpec {
	return &protocol.JobSpec{ExecutorClass: protocol.ClassTest, DockerImage: images.LLMImage, Args: []string{},
		DownloadTimeLimit: 30, ExecutionTimeLimit: 120, UploadTimeLimit: 30, StreamingStartTimeLimit: 30}
}

// startStream runs a horde on rt that whitelists the demo LLM image and
// starts a streaming job of it (spec edits streamSpec first, when given).
func startStream(t *testing.T, rt Runtime, edit func(*Horde, *protocol.JobSpec)) (*Horde, *client.Stream, context.Context) {
	t.Helper()
	h := rt.Start(t, devstack.Config{StreamingWhitelist: map[string]string{images.LLMImage: rt.LLMDigest(t)}})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	spec := streamSpec()
	if edit != nil {
		edit(h, spec)
	}
	st, err := h.Client.StartStreaming(ctx, spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	return h, st, ctx
}

// A whitelisted streaming job end to end: start, the miner vouches for the
// job's key, the client calls the service directly over mutual TLS and each
// reply carries a receipt that verifies, then stop ends the job normally.
func TestStreamingJobEndToEnd(t *testing.T) {
	for _, rt := range []Runtime{OnFake, OnDocker} {
		t.Run(rt.Name, func(t *testing.T) {
			h, st, ctx := startStream(t, rt, nil)
			if st.MinerHotkey != h.Miners[0].SS58() || !strings.HasPrefix(st.URL, "https://") {
				t.Fatalf("stream = %+v", st)
			}
			hc, err := st.HTTPClient()
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			body := []byte(`{"prompt": "A validator sends work", "max_tokens": 8, "temperature": 0, "stream": true}`)
			res, err := st.Call(ctx, hc, "POST", "/v1/completions", body, &out)
			if err != nil {
				t.Fatalf("call: %v\n%s", err, out.String())
			}
			if res.Status != 200 || !strings.Contains(out.String(), "data: [DONE]") || res.Receipt.JobUUID != st.JobUUID {
				t.Errorf("status %d receipt %+v body %s", res.Status, res.Receipt, out.String())
			}
			// Deterministic service: the same request gives the same bytes, call
			// after call on one kept-alive connection.
			for i := range 30 {
				var again bytes.Buffer
				res2, err := st.Call(ctx, hc, "POST", "/v1/completions", body, &again)
				if err != nil {
					t.Fatalf("call %d: %v", i+2, err)
				}
				if res2.Receipt.OutputSHA256 != res.Receipt.OutputSHA256 {
					t.Fatalf("call %d: output hashes %s vs %s", i+2, res2.Receipt.OutputSHA256, res.Receipt.OutputSHA256)
				}
			}
			// A tampered copy of the reply does not match the receipt.
			pub, _ := sr.PublicKey([]byte(st.JobCert))
			if _, err := sr.Verify(pub, res.ReceiptB64, res.SignatureB64, sr.Expect{JobUUID: st.JobUUID, RequestID: res.Receipt.RequestID, Exchange: res.Exchange(),
				InputSHA256: res.Receipt.InputSHA256, OutputSHA256: strings.Repeat("0", 64), Sent: time.Now().Add(-time.Minute), Received: time.Now(), Skew: time.Minute}); !errors.Is(err, sr.ErrReceipt) ||
				!strings.Contains(err.Error(), "output_sha256") {
				t.Errorf("tampered output verified: %v", err)
			}
			if _, err := h.Client.Stop(ctx, st.JobUUID); err != nil {
				t.Fatal(err)
			}
			done, err := h.Client.Watch(ctx, st.JobUUID, func(protocol.StatusEntry) {})
			if err != nil {
				t.Fatal(err)
			}
			if done.Status != protocol.StatusCompleted {
				t.Fatalf("after stop: %s %+v", done.Status, Last(done).Metadata)
			}
			assertNoContainers(t, h.Runtime, st.JobUUID)
			// The proxy is gone with the job.
			if _, err := st.Call(ctx, hc, "POST", "/v1/completions", body, &out); err == nil {
				t.Error("the job still answers after it stopped")
			}
		})
	}
}

func TestStreamingRefusals(t *testing.T) {
	h := StartFake(t, devstack.Config{StreamingWhitelist: map[string]string{images.LLMImage: OnFake.LLMDigest(t), images.JobImage: "sha256:not-the-job-image"}})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	// Not whitelisted: refused before any executor is reserved.
	spec := streamSpec()
	spec.DockerImage = "horde/other:1"
	_, err := h.Client.StartStreaming(ctx, spec, nil)
	if !errors.Is(err, client.ErrNotStreaming) {
		t.Fatalf("non-whitelisted: %v", err)
	}
	list, _ := h.Client.Jobs(ctx, 0, 1)
	j, _ := h.Client.Job(ctx, list.Results[0].UUID)
	if j.Status != protocol.StatusRejected || !strings.Contains(Last(j).Metadata.JobRejectionDetails.Message, "not whitelisted") {
		t.Errorf("non-whitelisted: %s %+v", j.Status, Last(j).Metadata)
	}

	// Whitelisted name, other digest: the executor refuses the image.
	spec = streamSpec()
	spec.DockerImage = images.JobImage
	if _, err := h.Client.StartStreaming(ctx, spec, nil); !errors.Is(err, client.ErrNotStreaming) {
		t.Fatalf("wrong digest: %v", err)
	}
	list, _ = h.Client.Jobs(ctx, 0, 1)
	j, _ = h.Client.Job(ctx, list.Results[0].UUID)
	if d := Last(j).Metadata.JobFailureDetails; j.Status != protocol.StatusFailed || d == nil || !strings.Contains(d.Message, "image_not_whitelisted") {
		t.Errorf("wrong digest: %s %+v", j.Status, Last(j).Metadata)
	}
}

// A service that never becomes healthy fails the job at streaming start.
func TestStreamingServiceNeverHealthy(t *testing.T) {
	h := StartFake(t, devstack.Config{StreamingWhitelist: map[string]string{images.LLMImage: OnFake.LLMDigest(t)}})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	spec := streamSpec()
	spec.Args = []string{"--port", "9999"} // serves, but not where horde looks
	spec.StreamingStartTimeLimit = 2
	_, err := h.Client.StartStreaming(ctx, spec, nil)
	if !errors.Is(err, client.ErrNotStreaming) {
		t.Fatalf("err = %v", err)
	}
	list, _ := h.Client.Jobs(ctx, 0, 1)
	j, _ := h.Client.Job(ctx, list.Results[0].UUID)
	d := Last(j).Metadata.JobFailureDetails
	if j.Status != protocol.StatusFailed || d == nil || d.Stage != protocol.StageStreaming || !strings.Contains(d.Message, "GET /health") {
		t.Errorf("%s %+v", j.Status, Last(j).Metadata)
	}
	assertNoContainers(t, h.Runtime, j.UUID)
}

// Volume messages reach a serving job: one more input volume appears in
// /volume, and /output is uploaded on request; each is acknowledged.
func TestStreamingVolumeMessages(t *testing.T) {
	h, st, ctx := startStream(t, OnFake, nil)
	hc, _ := st.HTTPClient()
	h.Objects.Put("more.zip", zipOf(t, map[string]string{"added.txt": "arrived mid-job"}))
	ack, err := h.Client.SendVolume(ctx, st.JobUUID, &protocol.VolumeMessage{Volume: &protocol.Volume{VolumeType: protocol.VolumeZipURL,
		Contents: h.Objects.URL + "/more.zip", RelativePath: "extra"}})
	if err != nil || !ack.Success || ack.MessageID == "" {
		t.Fatalf("volume: %+v %v", ack, err)
	}
	var out bytes.Buffer
	if _, err := st.Call(ctx, hc, "GET", "/volume/extra/added.txt", nil, &out); err != nil || out.String() != "arrived mid-job" {
		t.Fatalf("the service sees %q, %v", out.String(), err)
	}
	out.Reset()
	if _, err := st.Call(ctx, hc, "PUT", "/output/answer.txt", []byte("forty-two"), &out); err != nil {
		t.Fatal(err)
	}
	ack, err = h.Client.SendVolume(ctx, st.JobUUID, &protocol.VolumeMessage{OutputUpload: &protocol.OutputUpload{
		OutputUploadType: protocol.UploadSinglePut, URL: h.Objects.URL + "/mid/answer.txt", RelativePath: "answer.txt"}})
	if err != nil || !ack.Success || ack.UploadResults["answer.txt"] != "200" {
		t.Fatalf("upload: %+v %v", ack, err)
	}
	if b, _ := h.Objects.Get("mid/answer.txt"); string(b) != "forty-two" {
		t.Errorf("uploaded %q", b)
	}
	// A failing message is acknowledged with the reason.
	ack, err = h.Client.SendVolume(ctx, st.JobUUID, &protocol.VolumeMessage{Volume: &protocol.Volume{VolumeType: protocol.VolumeZipURL,
		Contents: h.Objects.URL + "/missing.zip"}})
	if err == nil || ack == nil || ack.Success || !strings.Contains(ack.Error, "HTTP 404") {
		t.Errorf("failing volume: %+v %v", ack, err)
	}
	// Bad messages are refused at the door.
	if _, err := h.Client.SendVolume(ctx, st.JobUUID, &protocol.VolumeMessage{}); err == nil || !strings.Contains(err.Error(), "exactly one") {
		t.Errorf("empty message: %v", err)
	}
	h.Client.Stop(ctx, st.JobUUID)
}

// A streaming job ends by itself when its time runs out: outputs go up, the
// job completes.
func TestStreamingTimeLimit(t *testing.T) {
	h, st, ctx := startStream(t, OnFake, func(h *Horde, spec *protocol.JobSpec) {
		spec.ExecutionTimeLimit = 2
		spec.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: h.Objects.URL + "/timed/out.zip"}
	})
	done, err := h.Client.Watch(ctx, st.JobUUID, func(protocol.StatusEntry) {})
	if err != nil {
		t.Fatal(err)
	}
	if done.Status != protocol.StatusCompleted {
		t.Fatalf("%s %+v", done.Status, Last(done).Metadata)
	}
	if _, ok := h.Objects.Get("timed/out.zip"); !ok {
		t.Error("outputs not uploaded at the end")
	}
	assertNoContainers(t, h.Runtime, st.JobUUID)
}

// Clients hand pairs with their receipts to the facilitator; tampered pairs
// and receipts of other jobs are refused at intake, each pair is taken once.
func TestStreamingPairIntake(t *testing.T) {
	h, st, ctx := startStream(t, OnFake, nil)
	hc, _ := st.HTTPClient()
	req := []byte(`{"prompt": "a client that keeps its receipts", "max_tokens": 6, "temperature": 0}`)
	var out bytes.Buffer
	res, err := st.Call(ctx, hc, "POST", "/v1/completions", req, &out)
	if err != nil {
		t.Fatal(err)
	}
	pair := client.Pair("POST", "/v1/completions", req, out.Bytes(), res)
	if err := h.Client.ReportPair(ctx, st.JobUUID, pair); err != nil {
		t.Fatalf("honest pair: %v", err)
	}
	var apiErr *client.APIError
	if err := h.Client.ReportPair(ctx, st.JobUUID, pair); !errors.As(err, &apiErr) || apiErr.Status != 409 {
		t.Errorf("same pair twice: %v", err)
	}
	tampered := *client.Pair("POST", "/v1/completions", req, []byte(`{"choices": [{"text": "something else"}]}`), res)
	if err := h.Client.ReportPair(ctx, st.JobUUID, &tampered); err == nil || !strings.Contains(err.Error(), "output_sha256") {
		t.Errorf("tampered response: %v", err)
	}
	forged := *pair
	forged.SignatureB64 = res.ReceiptB64[:20] + "=="
	if err := h.Client.ReportPair(ctx, st.JobUUID, &forged); err == nil || !strings.Contains(err.Error(), "signature") {
		t.Errorf("forged signature: %v", err)
	}
	// The pair reaches the job's validator, which verifies it again and keeps it by image.
	vdb, err := sqlite.Open(ctx, filepath.Join(h.DataDir, "validator.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer vdb.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		kept, _, err := vdb.PairsForImage(ctx, images.LLMImage, 0, 10)
		if err == nil && len(kept) == 1 && kept[0].RequestID == res.Receipt.RequestID && kept[0].MinerHotkey == st.MinerHotkey {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the validator has %d pairs, %v", len(kept), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// A receipt of this job reported for another job of the client.
	other := h.Run(t, Spec("echo", "not streaming"))
	if err := h.Client.ReportPair(ctx, other.UUID, pair); err == nil || !strings.Contains(err.Error(), "never served") {
		t.Errorf("pair for a non-streaming job: %v", err)
	}
}
