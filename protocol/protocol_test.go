package protocol

import (
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite golden files")

func intp(i int) *int { return &i }

// samples holds one filled-in instance of every registered message.
func samples() []Message {
	vol := &Volume{VolumeType: VolumeMulti, Volumes: []Volume{
		{VolumeType: VolumeInline, Contents: "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==", RelativePath: "a"},
		{VolumeType: VolumeSingleFile, URL: "http://127.0.0.1/f", RelativePath: "b/f.txt"}}}
	up := &OutputUpload{OutputUploadType: UploadZipPut, URL: "http://127.0.0.1/out.zip"}
	return []Message{
		&GenericError{Details: "bad"},
		&UnauthorizedError{Code: UnauthorizedTokenTooOld, Details: "too old"},
		&ValidatorAuthForMiner{ValidatorHotkey: "v", MinerHotkey: "m", Timestamp: 1700000000, Signature: "0x00"},
		&V0ExecutorManifestRequest{Manifest: map[string]int{ClassTest: 2}},
		&V0MainHotkeyMessage{MainHotkey: "m"},
		&V0InitialJobRequest{JobUUID: "j", ExecutorClass: ClassTest, DockerImage: "img", Volume: vol,
			JobStartedReceiptPayload: json.RawMessage(`{"job_uuid":"j"}`), JobStartedReceiptSignature: "0x01",
			ExecutorTiming: &ExecutorTiming{AllowedLeeway: 5, DownloadTimeLimit: 10, ExecutionTimeLimit: 20, UploadTimeLimit: 30}},
		&V0AcceptJobRequest{JobUUID: "j"},
		&V0DeclineJobRequest{JobUUID: "j", Message: "busy", Reason: RejectBusy, Receipts: []json.RawMessage{}},
		&V0ExecutorReadyRequest{JobUUID: "j", ExecutorToken: "t"},
		&V0ExecutorFailedRequest{JobUUID: "j"},
		&V0StreamingJobReadyRequest{JobUUID: "j", PublicKey: "cert", IP: "127.0.0.1", Port: 8443, MinerSignature: "0x02"},
		&V0StreamingJobNotReadyRequest{JobUUID: "j"},
		&V0JobRequest{JobUUID: "j", ExecutorClass: ClassTest, DockerImage: "img", DockerRunOptionsPreset: "none",
			DockerRunCmd: []string{"echo", "hi"}, Env: map[string]string{"A": "1"}, Volume: vol, OutputUpload: up},
		&V0VolumesReadyRequest{JobUUID: "j"},
		&V0ExecutionDoneRequest{JobUUID: "j"},
		&V0JobFinishedRequest{JobUUID: "j", DockerProcessStdout: "out", DockerProcessStderr: "err",
			UploadResults: map[string]string{"out.zip": "200"}, Timings: map[string]int64{"execute": 12}},
		&V0JobFailedRequest{JobUUID: "j", Message: "exit 3", Reason: FailureNonzeroReturn, Stage: StageExecution, DockerProcessExitStatus: intp(3)},
		&V0HordeFailedRequest{JobUUID: "j", ReportedBy: ByMiner, Message: "gone", Reason: HordeExecutorDisconnected},
		&V0MachineSpecsRequest{JobUUID: "j", Specs: map[string]any{"cpu": "x"}},
		&V0JobAcceptedReceiptRequest{Payload: json.RawMessage(`{"job_uuid":"j"}`), Signature: "0x03"},
		&V0JobFinishedReceiptRequest{Payload: json.RawMessage(`{"job_uuid":"j"}`), Signature: "0x04"},
		&V0CancelJobRequest{JobUUID: "j"},
		&V0AuthenticationRequest{PublicKey: "00", Signature: "0x05"},
		&V0HordeAuthenticationRequest{PublicKey: "00", Timestamp: 1700000000, Nonce: "n", Signature: "0x05"},
		&Response{Status: "error", Errors: []ResponseError{{Msg: "m", Type: "t"}}},
		&V0JobCheated{JobUUID: "j", TrustedJobUUID: "t", Details: json.RawMessage(`{"x":1}`),
			Signature: &Signature{SignatureType: "bittensor", Signatory: "s", TimestampNS: 1, Signature: "c2ln", SignatureScope: ScopeFullRequest}},
		&V0Heartbeat{},
		&V0MachineSpecsUpdate{Specs: map[string]any{}, MinerHotkey: "m", ValidatorHotkey: "v"},
		&V0JobStatusUpdate{UUID: "j", Status: StatusFailed, Metadata: &StatusMetadata{JobFailureDetails: &FailureDetails{
			Reason: FailureTimeout, Stage: StageExecution, Message: "timeout:execute"}}},
		&V2JobRequest{UUID: "j", JobSpec: JobSpec{ExecutorClass: ClassTest, DockerImage: "img", Args: []string{"x"},
			Env: map[string]string{}, ExecutionTimeLimit: 60, JobNamespace: "SN123.0"},
			Signature: &Signature{SignatureType: "bittensor", Signatory: "s", TimestampNS: 1, Signature: "c2ln", SignatureScope: ScopeSignedFields}},
		&V0CancelJobByFacilitator{UUID: "j"},
		&V0StopJobByFacilitator{UUID: "j"},
		&V0StopJobRequest{JobUUID: "j"},
		&V0VolumeRequest{JobUUID: "j", MessageID: "m1", Volume: &Volume{VolumeType: VolumeZipURL, Contents: "http://127.0.0.1/more.zip"}},
		&V0VolumeResult{JobUUID: "j", MessageID: "m1", Success: true},
		&V0JobVolumeRequest{UUID: "j", MessageID: "m1", OutputUpload: up},
		&V0JobVolumeResult{UUID: "j", MessageID: "m1", Success: false, Error: "HTTP 403"},
		&V0StreamPairReport{UUID: "j", Image: "img", MinerHotkey: "m", Proof: StreamingServerDetails{StreamingServerCert: "pem", StreamingServerAddress: "127.0.0.1", StreamingServerPort: 1, MinerSignature: "0x1"},
			Pair: StreamPair{Method: "POST", Path: "/v1/completions", RequestB64: "cQ==", ResponseB64: "YQ==", ReceiptB64: "cg==", SignatureB64: "cw=="}, ID: 7},
		&V0StreamPairAck{ID: 7},
		&V0ValidatorReport{Cycle: 3, At: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Scores: json.RawMessage(`[{"miner":"m","score":1}]`)},
	}
}

func TestEveryMessageHasASample(t *testing.T) {
	seen := map[string]bool{}
	for _, m := range samples() {
		seen[m.MessageType()] = true
	}
	for name := range registry {
		if !seen[name] {
			t.Errorf("no golden sample for %s", name)
		}
	}
}

func TestGolden(t *testing.T) {
	for _, m := range samples() {
		t.Run(m.MessageType(), func(t *testing.T) {
			b, err := Encode(m)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", "golden", m.MessageType()+".json")
			if *update {
				os.MkdirAll(filepath.Dir(path), 0o755)
				if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update)", err)
			}
			if diff := cmp.Diff(string(want[:len(want)-1]), string(b)); diff != "" {
				t.Errorf("encoding changed (-golden +now):\n%s", diff)
			}
			got, err := Decode(want)
			if err != nil {
				t.Fatal(err)
			}
			if r, ok := got.(*V2JobRequest); ok {
				r.SignedFields = "" // the decoder keeps what it read the spec from
			}
			if diff := cmp.Diff(m, got); diff != "" {
				t.Errorf("decode(golden) differs:\n%s", diff)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		in   string
		want error
	}{
		{`not json`, ErrMalformed},
		{`{"job_uuid": "j"}`, ErrMalformed},
		{`{"message_type": "V0Nope"}`, ErrUnknownType},
		{`{"message_type": "V0AcceptJobRequest", "job_uuid": 5}`, ErrMalformed},
		{`{"message_type": "V0JobRequest", "job_uuid": ""}`, ErrMalformed},
		{`{"message_type": "V0JobRequest", "job_uuid": "j", "volume": {"volume_type": "ftp"}}`, ErrMalformed},
		{`[1,2]`, ErrMalformed},
	}
	for _, tt := range tests {
		if _, err := Decode([]byte(tt.in)); !errors.Is(err, tt.want) {
			t.Errorf("Decode(%s) err = %v, want %v", tt.in, err, tt.want)
		}
	}
}

func TestUnknownFieldsAndEnums(t *testing.T) {
	m, err := Decode([]byte(`{"message_type": "V0JobFailedRequest", "job_uuid": "j", "reason": "cosmic_ray", "stage": "??", "new_field": 1}`))
	if err != nil {
		t.Fatal(err)
	}
	f := m.(*V0JobFailedRequest)
	if f.Reason != FailureUnknown || f.Stage != StageUnknown {
		t.Errorf("unknown enum values decoded as %q/%q, want unknown", f.Reason, f.Stage)
	}
}

func TestJobUUIDOf(t *testing.T) {
	if got := JobUUIDOf(&V0AcceptJobRequest{JobUUID: "x"}); got != "x" {
		t.Errorf("got %q", got)
	}
	if got := JobUUIDOf(&V0Heartbeat{}); got != "" {
		t.Errorf("got %q", got)
	}
}

func FuzzDecode(f *testing.F) {
	for _, m := range samples() {
		b, _ := Encode(m)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes and decodes to the same value.
		again, err := Encode(m)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		m2, err := Decode(again)
		if err != nil {
			t.Fatalf("decode of re-encoded %s: %v", again, err)
		}
		if reflect.TypeOf(m) != reflect.TypeOf(m2) {
			t.Fatalf("type changed")
		}
	})
}
