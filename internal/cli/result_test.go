package cli

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/protocol"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// recorded loads a job as 'horde job status --json' printed it from a dev
// stack (testdata/job-*.json).
func recorded(t *testing.T, name string) *protocol.Job {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var j protocol.Job
	if err := json.Unmarshal(b, &j); err != nil {
		t.Fatal(err)
	}
	return &j
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s (-want +got):\n%s", name, diff)
	}
}

// TestRunJSON: 'job run --json' is the job, with stdout, stderr, artifacts
// and upload results at the top level.
func TestRunJSON(t *testing.T) {
	for _, name := range []string{"completed", "failed"} {
		t.Run(name, func(t *testing.T) {
			j := recorded(t, "job-"+name+".json")
			res, err := client.ResultOf(j)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			enc := json.NewEncoder(&buf)
			enc.SetIndent("", "  ")
			if err := enc.Encode(newRunOutput(j, res, nil)); err != nil {
				t.Fatal(err)
			}
			golden(t, "run-"+name+".golden.json", buf.Bytes())

			var top map[string]json.RawMessage
			if err := json.Unmarshal(buf.Bytes(), &top); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"uuid", "status", "status_history", "stdout", "stderr", "artifacts", "upload_results"} {
				if _, ok := top[k]; !ok {
					t.Errorf("no %q at the top level", k)
				}
			}
			// What job status --json gives still decodes from it.
			var again protocol.Job
			if err := json.Unmarshal(buf.Bytes(), &again); err != nil || again.UUID != j.UUID || len(again.StatusHistory) != len(j.StatusHistory) {
				t.Errorf("as a job: %+v %v", again, err)
			}
		})
	}
	var failed struct {
		Stderr     string `json:"stderr"`
		ExitStatus int    `json:"exit_status"`
		Reason     string `json:"reason"`
	}
	b, _ := os.ReadFile(filepath.Join("testdata", "run-failed.golden.json"))
	if err := json.Unmarshal(b, &failed); err != nil || failed.Stderr != "exiting with 4\n" || failed.ExitStatus != 4 || !strings.Contains(failed.Reason, "nonzero_exit") {
		t.Errorf("failed job's output: %+v %v", failed, err)
	}
}

func TestPrintResult(t *testing.T) {
	j := recorded(t, "job-completed.json")
	up := &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: "http://user:pw@127.0.0.1:46235/rec.zip?X-Amz-Signature=secret#frag"}
	var buf bytes.Buffer
	printResult(&buf, j, up, []string{"saved/c-000.bin"})
	out := buf.String()
	for _, want := range []string{"completed in", "── stdout ──\nmultiplied 2x2\n", "outputs.zip → http://127.0.0.1:46235/rec.zip (HTTP 200)",
		"/artifacts/c-000.bin (16 bytes) → saved/c-000.bin", "JobFinishedReceipt   validator signature verified"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	for _, secret := range []string{"secret", "pw@", "frag"} {
		if strings.Contains(out, secret) {
			t.Errorf("output shows %q:\n%s", secret, out)
		}
	}
	// Without the spec (horde job status) the status is all there is.
	buf.Reset()
	printResult(&buf, j, nil, nil)
	if !strings.Contains(buf.String(), "outputs.zip → HTTP 200") {
		t.Errorf("without the spec:\n%s", buf.String())
	}
	buf.Reset()
	printResult(&buf, recorded(t, "job-failed.json"), nil, nil)
	if out := buf.String(); !strings.Contains(out, "reason: failed at stage execution") || !strings.Contains(out, "── stderr ──\nexiting with 4") {
		t.Errorf("failed job:\n%s", out)
	}
}

func TestUploadTargets(t *testing.T) {
	up := &protocol.OutputUpload{OutputUploadType: protocol.UploadMulti,
		Uploads: []protocol.OutputUpload{
			{OutputUploadType: protocol.UploadSinglePut, RelativePath: "result.json", URL: "https://bucket.example/r.json?X-Amz-Credential=k&X-Amz-Signature=s"},
			{OutputUploadType: protocol.UploadSinglePost, RelativePath: "log.txt", URL: "https://post.example/up"},
		},
		SystemOutput: &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPost, URL: "https://bucket.example/system.zip?sig=1"}}
	want := map[string]string{"result.json": "https://bucket.example/r.json", "log.txt": "https://post.example/up",
		"system/outputs.zip": "https://bucket.example/system.zip"}
	if diff := cmp.Diff(want, uploadTargets(up)); diff != "" {
		t.Errorf("targets (-want +got):\n%s", diff)
	}
	if got := redactURL("://bad"); strings.Contains(got, "bad") {
		t.Errorf("unparsable URL shown: %s", got)
	}
}

// A refusal names horde's specific reason, not upstream's "unknown".
func TestReasonNamesTheSpecificCode(t *testing.T) {
	for _, tt := range []struct {
		meta *protocol.StatusMetadata
		want string
	}{
		{&protocol.StatusMetadata{JobRejectionDetails: &protocol.RejectionDetails{RejectedBy: protocol.ByValidator, Reason: protocol.RejectUnknown,
			Message: "image x is not whitelisted for streaming jobs", Context: protocol.WithReason("image_not_whitelisted")}},
			"rejected by validator (image_not_whitelisted): image x is not whitelisted for streaming jobs"},
		{&protocol.StatusMetadata{JobRejectionDetails: &protocol.RejectionDetails{RejectedBy: protocol.ByMiner, Reason: protocol.RejectBusy, Message: "all taken"}},
			"rejected by miner (busy): all taken"},
		{&protocol.StatusMetadata{HordeFailureDetails: &protocol.HordeFailureDetails{ReportedBy: protocol.ByValidator, Reason: protocol.HordeUnknown,
			Message: "gone", Context: protocol.WithReason("cancelled")}},
			"horde failure (cancelled, reported by validator): gone"},
	} {
		if got := reason(protocol.StatusEntry{Status: protocol.StatusRejected, Metadata: tt.meta}); got != tt.want {
			t.Errorf("reason = %q, want %q", got, tt.want)
		}
	}
}
