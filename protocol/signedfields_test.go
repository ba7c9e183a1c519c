package protocol

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/schematest"
	"github.com/horde-compute/horde/sig"
)

// vector is one line of testdata/upstream/signed_fields.jsonl (upstream's
// own SDK computing its job signature; see the file's origin in
// docs/COMPATIBILITY.md).
type vector struct {
	Name        string `json:"name"`
	Body        []byte // sdk_body, compact, keys in the SDK's order
	SignedJSON  string `json:"signed_fields_json"`
	SignedBytes string `json:"signed_bytes"`
	TimestampNS int64  `json:"timestamp_ns"`
	Digest      string `json:"blake2b_512_hex"`
}

func readVectors(t *testing.T) []vector {
	t.Helper()
	f, err := os.Open("testdata/upstream/signed_fields.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []vector
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var v vector
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatal(err)
		}
		line, err := parseOrdered(sc.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		body, _ := line.get("sdk_body")
		if v.Body, err = body.compactBytes(); err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	if len(out) != 4 {
		t.Fatalf("%d vectors, want 4", len(out))
	}
	return out
}

// TestSignedFieldsVectors: the golden bytes and digest of every upstream
// vector, from the SDK body (as the facilitator computes them) and, for
// the bodies a facilitator accepts, from the spec it reads and from the
// V2JobRequest it sends (as a validator re-derives them).
func TestSignedFieldsVectors(t *testing.T) {
	for _, v := range readVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			j, err := SignedFieldsOfRequest(v.Body)
			if err != nil {
				t.Fatal(err)
			}
			if string(j) != v.SignedJSON {
				t.Fatalf("SignedFields\n got %s\nwant %s", j, v.SignedJSON)
			}
			payload, err := SignedPayload(j)
			if err != nil {
				t.Fatal(err)
			}
			if string(payload) != v.SignedBytes {
				t.Fatalf("signed bytes\n got %s\nwant %s", payload, v.SignedBytes)
			}
			if got := hex.EncodeToString(SignedMessage(v.TimestampNS, payload)); got != v.Digest {
				t.Fatalf("digest %s, want %s", got, v.Digest)
			}
			spec, err := ParseJobRequest(v.Body)
			if v.Name == "volumes_uploads" {
				// Its uploads pair a zip upload with a single-file one:
				// upstream's facilitator refuses that list too (a
				// multi_upload holds single-file uploads only).
				if err == nil || !strings.Contains(err.Error(), "zip upload goes alone") {
					t.Fatalf("ParseJobRequest: %v, want refused", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if spec.SignedFields != v.SignedJSON {
				t.Fatalf("spec's SignedFields %s", spec.SignedFields)
			}
			sb, err := spec.SignedBytes()
			if err != nil || string(sb) != v.SignedBytes {
				t.Fatalf("spec.SignedBytes %s, %v", sb, err)
			}
			msg, err := Encode(&V2JobRequest{UUID: "7b1c5e2a-0000-4000-8000-000000000001", JobSpec: *spec,
				Signature: &Signature{SignatureType: "bittensor", Signatory: "5H728gLgx4yuCSVEwGCAfLo3RtzTau9F6cTNqNJtrqqjACWq",
					TimestampNS: v.TimestampNS, Signature: strings.Repeat("A", 86) + "==", SignatureScope: ScopeSignedFields}})
			if err != nil {
				t.Fatal(err)
			}
			schematest.Valid(t, "fv_facilitator_requests.V2JobRequest", msg)
			back, err := Decode(msg)
			if err != nil {
				t.Fatal(err)
			}
			if got := back.(*V2JobRequest).SignedFields; got != v.SignedJSON {
				t.Fatalf("validator re-derives\n%s\nwant\n%s", got, v.SignedJSON)
			}
		})
	}
}

// TestVolumesAndUploadsRoundTrip: a job with volumes and single-file
// uploads (signed_headers and form_fields in a non-sorted order, as S3
// presigned POSTs have them) keeps its signed bytes from the body through
// the facilitator's V2JobRequest to a validator, and the validator's typed
// spec is what was signed.
func TestVolumesAndUploadsRoundTrip(t *testing.T) {
	body := []byte(`{"target_validator_hotkey":"5H728gLgx4yuCSVEwGCAfLo3RtzTau9F6cTNqNJtrqqjACWq","executor_class":"always_on.gpu-24gb",` +
		`"docker_image":"img","job_namespace":"SN123.0","args":["a"],"env":{"Z":"1","A":"2"},"use_gpu":true,"artifacts_dir":"/art",` +
		`"on_trusted_miner":false,"download_time_limit":10,"execution_time_limit":60,"streaming_start_time_limit":0,"upload_time_limit":10,` +
		`"volumes":[{"volume_type":"single_file","url":"http://h/f","relative_path":"f.txt"},` +
		`{"volume_type":"huggingface_volume","repo_id":"org/m","repo_type":null,"revision":"main","relative_path":null,"allow_patterns":"*.json","token":null}],` +
		`"uploads":[{"output_upload_type":"single_file_post","url":"http://h/p","form_fields":{"key":"k","policy":"p","x-amz-signature":"s"},"relative_path":"o.txt","signed_headers":null},` +
		`{"output_upload_type":"single_file_put","url":"http://h/o","relative_path":"p.txt","signed_headers":{"X-B":"1","X-A":"2"}}]}`)
	spec, err := ParseJobRequest(body)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := SignedFieldsOfRequest(body)
	if spec.SignedFields != string(want) {
		t.Fatalf("spec %s\nbody %s", spec.SignedFields, want)
	}
	if spec.JobNamespace != "SN123.0" || spec.TargetValidatorHotkey == "" || spec.Env["Z"] != "1" || !spec.UseGPU {
		t.Fatalf("spec %+v", spec)
	}
	if v := spec.Volume; v == nil || v.VolumeType != VolumeMulti || len(v.Volumes) != 2 || v.Volumes[1].AllowPattern[0] != "*.json" {
		t.Fatalf("volume %+v", v)
	}
	if u := spec.OutputUpload; u == nil || u.OutputUploadType != UploadMulti || u.Uploads[0].FormFields["policy"] != "p" {
		t.Fatalf("upload %+v", u)
	}
	msg, err := Encode(&V2JobRequest{UUID: "u", JobSpec: *spec, Signature: &Signature{Signature: strings.Repeat("A", 86) + "=="}})
	if err != nil {
		t.Fatal(err)
	}
	schematest.Valid(t, "fv_facilitator_requests.V2JobRequest", msg)
	back, err := Decode(msg)
	if err != nil {
		t.Fatal(err)
	}
	if got := back.(*V2JobRequest).SignedFields; got != string(want) {
		t.Fatalf("validator's\n%s\nwant\n%s", got, want)
	}
}

// TestSystemOutput: horde's system output (unsigned, as upstream's) goes
// from a spec through the body and V2JobRequest, and changes no signed byte.
func TestSystemOutput(t *testing.T) {
	spec := &JobSpec{ExecutorClass: ClassTest, DockerImage: "img", ExecutionTimeLimit: 5, OutputUpload: &OutputUpload{OutputUploadType: UploadMulti,
		Uploads:      []OutputUpload{{OutputUploadType: UploadSinglePut, URL: "http://h/r", RelativePath: "r.json"}},
		SystemOutput: &OutputUpload{OutputUploadType: UploadZipPut, URL: "http://h/sys.zip"}}}
	j, _ := spec.SignedFieldsJSON()
	if strings.Contains(string(j), "sys.zip") {
		t.Fatalf("system output signed: %s", j)
	}
	body, err := spec.RequestBody()
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := ParseJobRequest(body)
	if err != nil {
		t.Fatal(err)
	}
	if so := parsed.OutputUpload.SystemOutput; so == nil || so.URL != "http://h/sys.zip" || len(parsed.OutputUpload.Uploads) != 1 || parsed.SignedFields != string(j) {
		t.Fatalf("parsed %+v", parsed.OutputUpload)
	}
	msg, _ := Encode(&V2JobRequest{UUID: "u", JobSpec: *parsed})
	schematest.Valid(t, "fv_facilitator_requests.V2JobRequest", msg)
	back, err := Decode(msg)
	if err != nil {
		t.Fatal(err)
	}
	got := back.(*V2JobRequest)
	if got.SignedFields != string(j) || got.OutputUpload.SystemOutput == nil || got.OutputUpload.SystemOutput.URL != "http://h/sys.zip" {
		t.Fatalf("validator got %+v", got.OutputUpload)
	}
	bad := []byte(strings.Replace(string(body), `"zip_and_http_put"`, `"single_file_put"`, 1))
	if _, err := ParseJobRequest(bad); err == nil {
		t.Error("a single-file system output accepted")
	}
}

// TestNullsReadAsAbsent: a body with null args, env, volumes or uploads
// (as Go writes nil) signs as one without them.
func TestNullsReadAsAbsent(t *testing.T) {
	with, err := SignedFieldsOfRequest([]byte(`{"executor_class":"c","args":null,"env":null,"volumes":null,"uploads":null,"artifacts_dir":null}`))
	if err != nil {
		t.Fatal(err)
	}
	without, _ := SignedFieldsOfRequest([]byte(`{"executor_class":"c"}`))
	if string(with) != string(without) {
		t.Fatalf("%s\n%s", with, without)
	}
}

func TestParseJobRequestRefuses(t *testing.T) {
	base := `"executor_class":"always_on.test","docker_image":"img","execution_time_limit":60`
	for name, body := range map[string]string{
		"unknown field":                `{` + base + `,"volume":{"volume_type":"inline","contents":"x"}}`,
		"case variant of a key":        `{` + base + `,"Docker_Image":"evil"}`,
		"repeated key":                 `{` + base + `,"docker_image":"other"}`,
		"volume fields out of order":   `{` + base + `,"volumes":[{"volume_type":"single_file","relative_path":"f","url":"http://h/f"}]}`,
		"volume optional field absent": `{` + base + `,"volumes":[{"volume_type":"zip_url","contents":"http://h/a.zip"}]}`,
		"unknown volume type":          `{` + base + `,"volumes":[{"volume_type":"multi_volume","volumes":[]}]}`,
		"float limit":                  `{"executor_class":"c","execution_time_limit":6e1}`,
		"string limit":                 `{"executor_class":"c","execution_time_limit":"60"}`,
		"non-string env value":         `{` + base + `,"env":{"A":1}}`,
		"null streaming_details":       `{` + base + `,"streaming_details":null}`,
		"no executor_class":            `{"docker_image":"img"}`,
		"not an object":                `[1]`,
		"trailing data":                `{` + base + `} {}`,
	} {
		if _, err := ParseJobRequest([]byte(body)); err == nil {
			t.Errorf("%s: accepted %s", name, body)
		}
	}
}

// TestV2JobRequestReadsOnlySignedFields: a message that names a signed key
// twice is refused, and a case variant of a key (which Go's own decoder
// would match) changes nothing: the spec is read from what is verified.
func TestV2JobRequestReadsOnlySignedFields(t *testing.T) {
	msg := `{"message_type":"V2JobRequest","type":"job.new","uuid":"u","executor_class":"always_on.test","docker_image":"good",` +
		`"Docker_Image":"evil","args":[],"env":{},"download_time_limit":0,"execution_time_limit":60,"upload_time_limit":0,` +
		`"streaming_start_time_limit":0,"signature":null}`
	m, err := Decode([]byte(msg))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.(*V2JobRequest).DockerImage; got != "good" {
		t.Fatalf("docker_image %q", got)
	}
	dup := strings.Replace(msg, `"Docker_Image"`, `"docker_image"`, 1)
	if _, err := Decode([]byte(dup)); err == nil {
		t.Fatal("repeated key accepted")
	}
}

// TestUpstreamV2JobRequests: upstream's own V2JobRequest messages decode,
// and what a validator verifies is SignedFields as upstream's validator
// derives it (the multi_volume's volumes, the multi_upload's uploads).
func TestUpstreamV2JobRequests(t *testing.T) {
	want := map[string]string{
		"V2JobRequest(as facilitator core/models.py as_job_request)": `{"executor_class":"always_on.gpu-24gb","docker_image":"img","args":["a"],"env":{"A":"1"},"use_gpu":true,"artifacts_dir":"","on_trusted_miner":false,"download_time_limit":10,"execution_time_limit":60,"upload_time_limit":10,"streaming_start_time_limit":0,"streaming_details":null,"volumes":[{"volume_type":"single_file","url":"http://h/f","relative_path":"b/f.txt"},{"volume_type":"huggingface_volume","repo_id":"org/m","repo_type":null,"revision":"main","relative_path":null,"allow_patterns":["*.json"],"token":"t"}],"uploads":[{"output_upload_type":"single_file_put","url":"http://h/o","relative_path":"r","signed_headers":{"h":"v"}}]}`,
		"V2JobRequest(streaming, no volumes)":                        `{"executor_class":"always_on.gpu-24gb","docker_image":"img","args":[],"env":{},"use_gpu":true,"artifacts_dir":"","on_trusted_miner":false,"download_time_limit":10,"execution_time_limit":60,"upload_time_limit":10,"streaming_start_time_limit":30,"streaming_details":{"public_key":"PEM","executor_ip":null},"volumes":[],"uploads":[]}`,
	}
	seen := 0
	for _, l := range upstreamMessages(t) {
		if !strings.HasPrefix(l.Name, "V2JobRequest") {
			continue
		}
		seen++
		m, err := Decode(l.JSON)
		if err != nil {
			t.Fatalf("%s: %v", l.Name, err)
		}
		if got := m.(*V2JobRequest).SignedFields; got != want[l.Name] {
			t.Errorf("%s:\n got %s\nwant %s", l.Name, got, want[l.Name])
		}
	}
	if seen != len(want) {
		t.Fatalf("%d V2JobRequest lines", seen)
	}
}

type upstreamLine struct {
	Name string          `json:"name"`
	Link string          `json:"link"`
	JSON json.RawMessage `json:"json"`
}

func upstreamMessages(t *testing.T) []upstreamLine {
	t.Helper()
	b, err := os.ReadFile("testdata/upstream/messages_facilitator.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	var out []upstreamLine
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var u upstreamLine
		if err := json.Unmarshal([]byte(l), &u); err != nil {
			t.Fatal(err)
		}
		out = append(out, u)
	}
	return out
}

// TestVerifyJobSignature signs a job as upstream's SDK does and checks it
// as a validator must.
func TestVerifyJobSignature(t *testing.T) {
	k, err := sig.FromSeed(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"executor_class":"always_on.test","docker_image":"img","args":[],"env":{"B":"2","A":"1"},"execution_time_limit":60}`)
	j, _ := SignedFieldsOfRequest(body)
	payload, _ := SignedPayload(j)
	now := time.Unix(1767323045, 0)
	ts := now.UnixNano()
	var raw sig.Signature
	copy(raw[:], k.Sign(SignedMessage(ts, payload)))
	good := &Signature{SignatureType: SignatureTypeBittensor, Signatory: k.SS58(), TimestampNS: ts, Signature: raw.Base64(), SignatureScope: ScopeSignedFields}
	spec, err := ParseJobRequest(body)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := Encode(&V2JobRequest{UUID: "u", JobSpec: *spec, Signature: good})
	m, err := Decode(msg)
	if err != nil {
		t.Fatal(err)
	}
	req := m.(*V2JobRequest)
	if err := VerifyJobSignature(&req.JobSpec, req.Signature, now, time.Hour, time.Minute); err != nil {
		t.Fatalf("good signature: %v", err)
	}
	bad := func(name string, spec *JobSpec, s *Signature, now time.Time) {
		t.Helper()
		if err := VerifyJobSignature(spec, s, now, time.Hour, time.Minute); !errors.Is(err, ErrBadJobSignature) {
			t.Errorf("%s: %v, want ErrBadJobSignature", name, err)
		}
	}
	bad("stale", &req.JobSpec, good, now.Add(2*time.Hour))
	bad("from the future", &req.JobSpec, good, now.Add(-2*time.Minute))
	bad("no signature", &req.JobSpec, nil, now)
	reenc := *good
	b := []byte(reenc.Signature)
	b[85] ^= 1 // an unused low bit of the last base64 character
	reenc.Signature = string(b)
	bad("re-encoded", &req.JobSpec, &reenc, now)
	scope := *good
	scope.SignatureScope = ScopeFullRequest
	bad("other scope", &req.JobSpec, &scope, now)
	// Reordered env: the same map, other signed bytes.
	sorted := req.JobSpec
	sorted.SignedFields = ""
	bad("env reordered", &sorted, good, now)
	other := req.JobSpec
	other.SignedFields = strings.Replace(other.SignedFields, `"img"`, `"evil"`, 1)
	bad("other image", &other, good, now)
}

// TestJobCheatedSignature: a cheat report signed as upstream's SDK signs it
// (FullRequest, sorted JSON) verifies after the facilitator passes it on.
func TestJobCheatedSignature(t *testing.T) {
	k, _ := sig.FromSeed(make([]byte, 32))
	r := CheatReport{JobUUID: "a", TrustedJobUUID: "b", Details: json.RawMessage(`{"z": 1.5, "a": "é"}`)}
	payload, err := r.SignedPayload()
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"details": {"a": "\u00e9", "z": 1.5}, "job_uuid": "a", "trusted_job_uuid": "b"}`; string(payload) != want {
		t.Fatalf("payload %s", payload)
	}
	now := time.Now()
	var raw sig.Signature
	copy(raw[:], k.Sign(SignedMessage(now.UnixNano(), payload)))
	m := &V0JobCheated{JobUUID: "a", TrustedJobUUID: "b", Details: r.Details, Signature: &Signature{SignatureType: "bittensor",
		Signatory: k.SS58(), TimestampNS: now.UnixNano(), Signature: raw.Base64(), SignatureScope: ScopeFullRequest}}
	msg, _ := Encode(m)
	schematest.Valid(t, "fv_facilitator_requests.V0JobCheated", msg)
	back, err := Decode(msg)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyJobCheated(back.(*V0JobCheated), now, time.Hour, time.Minute); err != nil {
		t.Fatal(err)
	}
	back.(*V0JobCheated).TrustedJobUUID = "c"
	if err := VerifyJobCheated(back.(*V0JobCheated), now, time.Hour, time.Minute); err == nil {
		t.Fatal("changed report verifies")
	}
	// A report with no details is sent with "details": null (the key is
	// required upstream) and signed so.
	none, _ := Encode(&V0JobCheated{JobUUID: "a", TrustedJobUUID: "b", Signature: m.Signature})
	schematest.Valid(t, "fv_facilitator_requests.V0JobCheated", none)
}

// TestFacilitatorFrames: what horde's facilitator sends an upstream
// validator validates against upstream's models, and what an upstream
// facilitator sends decodes on horde's validator side.
func TestFacilitatorFrames(t *testing.T) {
	for _, r := range []*UpstreamResponse{{Status: "success"}, {Status: "error", Errors: []ResponseError{{Msg: "m", Type: "t"}}}} {
		b, err := Encode(r)
		if err != nil {
			t.Fatal(err)
		}
		schematest.Valid(t, "fv_facilitator_requests.Response", b)
		m, err := DecodeFacilitatorFrame(b)
		if err != nil {
			t.Fatal(err)
		}
		if got := m.(*Response); got.Status != r.Status || len(got.Errors) != len(r.Errors) {
			t.Fatalf("decoded %+v", got)
		}
	}
	horde, _ := Encode(&Response{Status: "success"})
	schematest.Invalid(t, "fv_facilitator_requests.Response", horde) // message_type: for horde sessions only
	if m, err := DecodeFacilitatorFrame(horde); err != nil || m.(*Response).Status != "success" {
		t.Fatalf("horde Response: %v", err)
	}
	for _, l := range upstreamMessages(t) {
		if !strings.HasPrefix(l.Link, "facilitator->") {
			continue
		}
		if _, err := DecodeFacilitatorFrame(l.JSON); err != nil {
			t.Errorf("%s: %v", l.Name, err)
		}
	}
	if _, err := DecodeFacilitatorFrame([]byte(`{"status":"maybe"}`)); err == nil {
		t.Error("status maybe accepted")
	}
	a, _ := Encode(&V0AuthenticationRequest{PublicKey: strings.Repeat("ab", 32), Signature: "0x" + strings.Repeat("cd", 64)})
	schematest.Valid(t, "fv_validator_requests.V0AuthenticationRequest", a)
}

func TestCapabilities(t *testing.T) {
	got := ParseCapabilities(" Auth-V1,,cancel , auth-v1," + strings.Repeat("x", 65))
	if strings.Join(got, "|") != "auth-v1|cancel" {
		t.Fatalf("parsed %q", got)
	}
	if c := CommonCapabilities(FacilitatorCapabilities, []string{"cancel", "nope", CapAuthV1}); strings.Join(c, "|") != "auth-v1|cancel" {
		t.Fatalf("common %q", c)
	}
	many := strings.Repeat("c,", 100)
	if n := len(ParseCapabilities(many + "d")); n != 2 {
		t.Fatalf("%d", n)
	}
}

func TestRequestPayload(t *testing.T) {
	got := string(RequestPayload("POST", "/api/v1/jobs/x/cancel/?a=1", nil))
	want := "horde-request/v1\nPOST\n/api/v1/jobs/x/cancel/?a=1\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
	if got != want {
		t.Fatalf("%q", got)
	}
}

// TestStreamingProofPlace: a streaming_ready update with the miner's proof
// beside streaming_details validates against upstream's model; inside it,
// it does not (upstream's StreamingServerDetails is forbid).
func TestStreamingProofPlace(t *testing.T) {
	d := &StreamingServerDetails{StreamingServerCert: "PEM", StreamingServerAddress: "1.2.3.4", StreamingServerPort: 8443}
	m := &StatusMetadata{StreamingDetails: d, StreamingProof: "0x01"}
	b, _ := Encode(&V0JobStatusUpdate{UUID: "u", Status: StatusStreaming, Metadata: m})
	schematest.Valid(t, "fv_validator_requests.JobStatusUpdate", b)
	if m.StreamingMinerSignature() != "0x01" {
		t.Error("proof not found beside the details")
	}
	d.MinerSignature, m.StreamingProof = "0x02", ""
	b, _ = Encode(&V0JobStatusUpdate{UUID: "u", Status: StatusStreaming, Metadata: m})
	schematest.Invalid(t, "fv_validator_requests.JobStatusUpdate", b)
	if m.StreamingMinerSignature() != "0x02" {
		t.Error("proof not found in the details")
	}
}
