package protocol

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/blake2b"

	"github.com/horde-compute/horde/pyjson"
	"github.com/horde-compute/horde/sig"
)

// This file: the validator ↔ facilitator link, WebSocket /ws/v0/, dialled by
// the validator.

// FacilitatorPath is the facilitator's route for validators.
const FacilitatorPath = "/ws/v0/"

// Capabilities: horde⇄horde extensions of this link, negotiated on the
// WebSocket upgrade. The validator lists what it speaks in the request
// header HeaderCapabilities; a horde facilitator answers the same header in
// its 101 response with what it speaks (an upstream facilitator answers
// none). An extension is used on a session only when both listed it;
// otherwise both ends speak upstream's protocol exactly.
const (
	HeaderCapabilities = "X-Horde-Capabilities"
	// CapAuthV1: the validator authenticates with V0HordeAuthenticationRequest
	// (timestamped, one-time) instead of upstream's V0AuthenticationRequest
	// (a signature over the public key alone, which can be replayed).
	CapAuthV1 = "auth-v1"
	// CapResponses: Response frames carry message_type and every message of
	// the validator's, heartbeats included, is answered.
	CapResponses = "responses-v1"
	// CapCancel, CapStop: V0CancelJobByFacilitator, V0StopJobByFacilitator.
	CapCancel = "cancel"
	CapStop   = "stop"
	// CapVolumeMessages: V0JobVolumeRequest and V0JobVolumeResult.
	CapVolumeMessages = "volume_messages"
	// CapStreamPairs: V0StreamPairReport.
	CapStreamPairs = "stream_pairs"
	// CapStreamPairAcks: each V0StreamPairReport carries an id and the
	// validator answers V0StreamPairAck once it has kept (or refused) the
	// pair; the facilitator redelivers unacknowledged pairs on the next
	// session, so none is lost while the validator is away or restarting.
	CapStreamPairAcks = "stream_pair_acks"
	// CapReports: V0ValidatorReport.
	CapReports = "reports"
	// CapJobCheated: V0JobCheated (upstream validators always take it).
	CapJobCheated = "job_cheated"
)

// FacilitatorCapabilities are the extensions horde speaks on this link.
var FacilitatorCapabilities = []string{CapAuthV1, CapResponses, CapCancel, CapStop, CapVolumeMessages,
	CapStreamPairs, CapStreamPairAcks, CapReports, CapJobCheated}

// ParseCapabilities reads a HeaderCapabilities value: comma-separated
// tokens, spaces ignored, lower-cased, duplicates and empty ones dropped,
// at most 32 of at most 64 bytes each (more are ignored).
func ParseCapabilities(h string) []string {
	var out []string
	for _, c := range strings.Split(h, ",") {
		c = strings.ToLower(strings.TrimSpace(c))
		if c == "" || len(c) > 64 || slices.Contains(out, c) {
			continue
		}
		if len(out) == 32 {
			break
		}
		out = append(out, c)
	}
	return out
}

// FormatCapabilities writes a HeaderCapabilities value.
func FormatCapabilities(caps []string) string { return strings.Join(caps, ", ") }

// CommonCapabilities returns the capabilities both lists hold, in the order of a.
func CommonCapabilities(a, b []string) []string {
	var out []string
	for _, c := range a {
		if slices.Contains(b, c) {
			out = append(out, c)
		}
	}
	return out
}

// V0AuthenticationRequest: validator → facilitator, first message, exactly
// upstream's (extra="forbid" there): the validator's public key (64
// lower-case hex digits) and its hotkey's signature ("0x"+hex) over the 32
// raw public-key bytes. Nothing in it is fresh: anyone who saw one can
// replay it. horde's facilitator takes it only when its operator allows
// upstream validators; horde validators send V0HordeAuthenticationRequest.
type V0AuthenticationRequest struct {
	PublicKey string `json:"public_key"`
	Signature string `json:"signature"`
}

func (*V0AuthenticationRequest) MessageType() string { return "V0AuthenticationRequest" }

// PublicKeyBytes returns the raw key: public_key must be 64 lower-case hex
// digits, as upstream writes it (public_key.hex()), one text per key.
func (m *V0AuthenticationRequest) PublicKeyBytes() (sig.PublicKey, error) {
	return parsePublicKeyHex(m.PublicKey)
}

func parsePublicKeyHex(s string) (sig.PublicKey, error) {
	var pk sig.PublicKey
	if len(s) != 64 || strings.ToLower(s) != s {
		return pk, fmt.Errorf("public_key must be 64 lower-case hex digits")
	}
	if _, err := hex.Decode(pk[:], []byte(s)); err != nil {
		return pk, fmt.Errorf("public_key must be 64 lower-case hex digits")
	}
	return pk, nil
}

// V0HordeAuthenticationRequest (horde, CapAuthV1): validator → facilitator,
// first message. The signature ("0x"+hex) covers AuthMessage(): the raw
// public key ‖ ":{timestamp}:{nonce}", so it is fresh (timestamp, unix
// seconds) and one-time (nonce); upstream's auth signs the key alone.
type V0HordeAuthenticationRequest struct {
	PublicKey string `json:"public_key"`
	Timestamp int64  `json:"timestamp"`
	Nonce     string `json:"nonce"`
	Signature string `json:"signature"`
}

func (*V0HordeAuthenticationRequest) MessageType() string { return "V0HordeAuthenticationRequest" }

// AuthMessage returns the signed bytes: raw public key ‖ ":{timestamp}:{nonce}".
func (m *V0HordeAuthenticationRequest) AuthMessage() ([]byte, error) {
	pk, err := parsePublicKeyHex(m.PublicKey)
	if err != nil {
		return nil, err
	}
	if m.Nonce == "" || len(m.Nonce) > 128 {
		return nil, fmt.Errorf("nonce must be 1 to 128 bytes")
	}
	return append(pk[:], ":"+strconv.FormatInt(m.Timestamp, 10)+":"+m.Nonce...), nil
}

// ResponseError is one error in a Response.
type ResponseError struct {
	Msg  string `json:"msg"`
	Type string `json:"type"`
	Help string `json:"help,omitempty"`
}

// Response: facilitator → validator, the answer to the authentication and
// to each status update. Upstream's Response has no message_type (and
// refuses one), so the facilitator sends it to an upstream session as an
// UpstreamResponse; on a horde session (CapResponses) it is this type, with
// message_type. DecodeFacilitatorFrame reads both as *Response.
type Response struct {
	Status string          `json:"status"`
	Errors []ResponseError `json:"errors,omitempty"`
}

func (*Response) MessageType() string { return "Response" }

// UpstreamResponse is a Response as upstream writes it: no message_type,
// errors always a list.
type UpstreamResponse Response

func (*UpstreamResponse) MessageType() string { return "Response" }
func (*UpstreamResponse) bare()               {}

// MarshalJSON writes {"status": …, "errors": […]}.
func (r UpstreamResponse) MarshalJSON() ([]byte, error) {
	errs := r.Errors
	if errs == nil {
		errs = []ResponseError{}
	}
	return json.Marshal(struct {
		Status string          `json:"status"`
		Errors []ResponseError `json:"errors"`
	}{r.Status, errs})
}

// DecodeFacilitatorFrame decodes a frame of the facilitator link as the
// validator reads it: a frame without message_type that has a "status" is
// a Response (upstream writes it so); anything else goes through Decode.
func DecodeFacilitatorFrame(b []byte) (Message, error) {
	if len(b) > MaxMessageSize {
		return nil, fmt.Errorf("%w: %d bytes exceeds %d", ErrMalformed, len(b), MaxMessageSize)
	}
	var head struct {
		MessageType *string          `json:"message_type"`
		Status      *json.RawMessage `json:"status"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if head.MessageType != nil || head.Status == nil {
		return Decode(b)
	}
	var r Response
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: Response: %v", ErrMalformed, err)
	}
	if r.Status != "success" && r.Status != "error" {
		return nil, fmt.Errorf("%w: Response: status %q", ErrMalformed, r.Status)
	}
	return &r, nil
}

// V0Heartbeat: validator → facilitator, every 60 s.
type V0Heartbeat struct{}

func (*V0Heartbeat) MessageType() string { return "V0Heartbeat" }

// V0MachineSpecsUpdate: validator → facilitator, specs of a miner's executor.
type V0MachineSpecsUpdate struct {
	Specs           map[string]any `json:"specs"`
	MinerHotkey     string         `json:"miner_hotkey"`
	ValidatorHotkey string         `json:"validator_hotkey"`
	BatchID         string         `json:"batch_id,omitempty"`
}

func (*V0MachineSpecsUpdate) MessageType() string { return "V0MachineSpecsUpdate" }

// MinerResponse is what a finished job returned.
type MinerResponse struct {
	DockerProcessStdout string            `json:"docker_process_stdout"`
	DockerProcessStderr string            `json:"docker_process_stderr"`
	Artifacts           map[string]string `json:"artifacts,omitempty"`
	UploadResults       map[string]string `json:"upload_results,omitempty"`
}

// RejectionDetails explain a rejected job.
type RejectionDetails struct {
	RejectedBy Participant        `json:"rejected_by"`
	Reason     JobRejectionReason `json:"reason"`
	Message    string             `json:"message"`
	Context    map[string]any     `json:"context,omitempty"`
}

// FailureDetails explain a job that failed through its own fault.
type FailureDetails struct {
	Reason                  JobFailureReason `json:"reason"`
	Stage                   JobStage         `json:"stage"`
	Message                 string           `json:"message"`
	Context                 map[string]any   `json:"context,omitempty"`
	DockerProcessExitStatus *int             `json:"docker_process_exit_status,omitempty"`
	DockerProcessStdout     string           `json:"docker_process_stdout,omitempty"`
	DockerProcessStderr     string           `json:"docker_process_stderr,omitempty"`
}

// HordeFailureDetails explain a job that failed through the system's fault.
type HordeFailureDetails struct {
	ReportedBy Participant        `json:"reported_by"`
	Reason     HordeFailureReason `json:"reason"`
	Message    string             `json:"message"`
	Context    map[string]any     `json:"context,omitempty"`
}

// StreamingServerDetails say where a streaming job serves.
type StreamingServerDetails struct {
	StreamingServerCert    string `json:"streaming_server_cert"`
	StreamingServerAddress string `json:"streaming_server_address"`
	StreamingServerPort    int    `json:"streaming_server_port"`
	// MinerSignature (horde) is the miner hotkey's signature over
	// StreamingReadyMessage: the miner vouches for the job's key. Upstream's
	// StreamingServerDetails refuses extra keys: in a status update send it
	// as StatusMetadata.StreamingProof instead, which upstream keeps.
	MinerSignature string `json:"horde_miner_signature,omitempty"`
}

// StatusMetadata is the detail attached to a status update.
type StatusMetadata struct {
	Comment             string                  `json:"comment,omitempty"`
	MinerResponse       *MinerResponse          `json:"miner_response,omitempty"`
	JobRejectionDetails *RejectionDetails       `json:"job_rejection_details,omitempty"`
	JobFailureDetails   *FailureDetails         `json:"job_failure_details,omitempty"`
	HordeFailureDetails *HordeFailureDetails    `json:"horde_failure_details,omitempty"`
	StreamingDetails    *StreamingServerDetails `json:"streaming_details,omitempty"`
	// MinerHotkey (horde) names the miner serving the job.
	MinerHotkey string `json:"horde_miner_hotkey,omitempty"`
	// Timings (horde): milliseconds per stage.
	Timings map[string]int64 `json:"horde_timings,omitempty"`
	// Receipts (horde): the receipts of the job, as stored by the validator.
	Receipts []json.RawMessage `json:"horde_receipts,omitempty"`
	// StreamingProof (horde) is StreamingDetails' miner signature, at this
	// level (extra="allow" upstream) rather than inside streaming_details
	// (extra="forbid" upstream).
	StreamingProof string `json:"horde_streaming_proof,omitempty"`
}

// StreamingMinerSignature returns the miner's signature over the streaming
// details, wherever the validator put it.
func (m *StatusMetadata) StreamingMinerSignature() string {
	if m.StreamingDetails != nil && m.StreamingDetails.MinerSignature != "" {
		return m.StreamingDetails.MinerSignature
	}
	return m.StreamingProof
}

// V0JobStatusUpdate: validator → facilitator, a job moved on.
type V0JobStatusUpdate struct {
	UUID     string          `json:"uuid"`
	Status   JobStatus       `json:"status"`
	Metadata *StatusMetadata `json:"metadata,omitempty"`
}

func (*V0JobStatusUpdate) MessageType() string { return "V0JobStatusUpdate" }

// Signature is a client's signature over a job, carried with it.
type Signature struct {
	SignatureType  string `json:"signature_type"`
	Signatory      string `json:"signatory"`
	TimestampNS    int64  `json:"timestamp_ns"`
	Signature      string `json:"signature"`
	SignatureScope string `json:"signature_scope"`
}

// Decode returns the signature's bytes, refusing any text but standard
// padded base64 with zero unused bits (sig.ParseBase64): a re-encoded copy
// of a signature is not a new signature. Dedupe jobs on these bytes
// (Key), never on the text.
func (s *Signature) Decode() (sig.Signature, error) {
	return sig.ParseBase64(s.Signature)
}

// SignatureTypeBittensor is the only signature type horde accepts.
const SignatureTypeBittensor = "bittensor"

// SignedMessage returns blake2b-512(u64 big-endian timestamp_ns ‖ payload),
// the bytes a client's hotkey signs.
func SignedMessage(timestampNS int64, payload []byte) []byte {
	h, _ := blake2b.New512(nil)
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], uint64(timestampNS))
	h.Write(ts[:])
	h.Write(payload)
	return h.Sum(nil)
}

// JobSpec is what a client asks for. The client's signature covers its
// SignedFields (see signedfields.go); the spec is written to stores as
// JSON, never on a wire: clients send a job creation body (RequestBody,
// ParseJobRequest), the facilitator sends V2JobRequest.
type JobSpec struct {
	ExecutorClass           string            `json:"executor_class"`
	DockerImage             string            `json:"docker_image"`
	Args                    []string          `json:"args"`
	Env                     map[string]string `json:"env"`
	Volume                  *Volume           `json:"volume,omitempty"`
	OutputUpload            *OutputUpload     `json:"output_upload,omitempty"`
	ArtifactsDir            string            `json:"artifacts_dir,omitempty"`
	DownloadTimeLimit       int               `json:"download_time_limit"`
	ExecutionTimeLimit      int               `json:"execution_time_limit"`
	UploadTimeLimit         int               `json:"upload_time_limit"`
	StreamingStartTimeLimit int               `json:"streaming_start_time_limit"`
	StreamingDetails        *StreamingDetails `json:"streaming_details,omitempty"`
	OnTrustedMiner          bool              `json:"on_trusted_miner"`
	// UseGPU is upstream's deprecated use_gpu (signed; "has no effect").
	UseGPU bool `json:"use_gpu,omitempty"`
	// JobNamespace names where a job comes from (e.g. "SN123.0"); not signed.
	JobNamespace string `json:"job_namespace,omitempty"`
	// TargetValidatorHotkey is the validator the client chose; not signed.
	TargetValidatorHotkey string `json:"target_validator_hotkey,omitempty"`
	// Nonce is not used: it is neither signed (SignedFields has no place for
	// it; two submissions differ by their timestamps) nor sent.
	//
	// Deprecated: kept until internal/validator's tests stop setting it.
	Nonce string `json:"horde_nonce,omitempty"`
	// SignedFields is the SignedFields text the spec was decoded from (its
	// typed fields were read from it), kept byte for byte because env and
	// the maps of volumes and uploads keep the order they were signed in.
	// Empty for a spec built in Go: SignedFieldsJSON then writes one.
	SignedFields string `json:"horde_signed_fields,omitempty"`
}

// Validate checks a spec before it is accepted.
func (s *JobSpec) Validate() error {
	switch {
	case s.ExecutorClass == "":
		return fmt.Errorf("executor_class is required")
	case s.DockerImage == "":
		return fmt.Errorf("docker_image is required")
	case s.ExecutionTimeLimit <= 0:
		return fmt.Errorf("execution_time_limit must be positive")
	case s.DownloadTimeLimit < 0 || s.UploadTimeLimit < 0 || s.StreamingStartTimeLimit < 0:
		return fmt.Errorf("time limits must not be negative")
	}
	if s.ArtifactsDir != "" {
		if err := CheckArtifactsDir(s.ArtifactsDir); err != nil {
			return err
		}
	}
	if s.Volume != nil {
		if err := s.Volume.Validate(); err != nil {
			return err
		}
	}
	if s.OutputUpload != nil {
		if err := s.OutputUpload.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// CheckArtifactsDir checks a job's artifacts_dir: the directory in the
// container whose files come back as artifacts. It is mounted there, so it
// must be an absolute, clean path that carries no mount options (no ':' or
// ','), is not the root and is none of the job's other mounts (/volume,
// /output, /tmp) nor beneath the kernel's (/proc, /sys, /dev).
func CheckArtifactsDir(dir string) error {
	bad := func(why string) error { return fmt.Errorf("artifacts_dir %q: %s", dir, why) }
	switch {
	case !strings.HasPrefix(dir, "/"):
		return bad("must be an absolute path")
	case strings.ContainsAny(dir, ":,"):
		return bad("must not contain ':' or ',' (mount options)")
	case strings.ContainsFunc(dir, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return bad("must not contain control characters")
	case path.Clean(dir) != dir:
		return bad("must be clean (no trailing '/', '//', '.' or '..')")
	case len(dir) > 255:
		return bad("is longer than 255 bytes")
	}
	reserved := bad("is reserved (/, /volume, /output, /tmp and what is under /proc, /sys and /dev)")
	switch dir {
	case "/", "/volume", "/output", "/tmp":
		return reserved
	}
	for _, k := range []string{"/proc", "/sys", "/dev"} {
		if dir == k || strings.HasPrefix(dir, k+"/") {
			return reserved
		}
	}
	return nil
}

// V2JobRequest: facilitator → validator, a client's job with its signature,
// in exactly upstream's shape (extra="forbid" there): type "job.new", uuid,
// job_namespace, the SignedFields keys (volumes as volume: a multi_volume or
// null, uploads as output_upload: the one upload, a multi_upload or null),
// signature. Decoding re-derives SignedFields from the message as upstream's
// validator does and reads the spec from them alone, so what a validator
// verifies (VerifyJobSignature) is what it runs; a message that repeats a
// key is refused.
type V2JobRequest struct {
	UUID string `json:"uuid"`
	JobSpec
	Signature *Signature `json:"signature"`
}

func (*V2JobRequest) MessageType() string { return "V2JobRequest" }

// MarshalJSON writes upstream's V2JobRequest (without message_type, which
// Encode adds).
func (r V2JobRequest) MarshalJSON() ([]byte, error) {
	j, err := r.JobSpec.signedValue()
	if err != nil {
		return nil, fmt.Errorf("V2JobRequest %s: %w", r.UUID, err)
	}
	get := func(k string) ovalue { return mustGet(j, k) }
	vol := onull
	if vs := get("volumes"); len(vs.arr) > 0 {
		vol = oobj(omember{"volume_type", ostr(VolumeMulti)}, omember{"volumes", vs})
	}
	up := onull
	switch us, so := get("uploads"), r.JobSpec.systemOutput(); {
	case so.kind != 'n' || len(us.arr) > 1:
		up = oobj(omember{"output_upload_type", ostr(UploadMulti)}, omember{"uploads", us}, omember{"system_output", so})
	case len(us.arr) == 1:
		up = us.arr[0]
	}
	artifacts := get("artifacts_dir")
	if artifacts.s == "" {
		artifacts = onull
	}
	sg := onull
	if s := r.Signature; s != nil {
		sg = oobj(omember{"signature_type", ostr(s.SignatureType)}, omember{"signatory", ostr(s.Signatory)},
			omember{"timestamp_ns", oint(s.TimestampNS)}, omember{"signature", ostr(s.Signature)},
			omember{"signature_scope", ostr(cmpOr(s.SignatureScope, ScopeSignedFields))})
	}
	return oobj(
		omember{"type", ostr("job.new")},
		omember{"uuid", ostr(r.UUID)},
		omember{"job_namespace", optString(r.JobNamespace)},
		omember{"executor_class", get("executor_class")},
		omember{"docker_image", get("docker_image")},
		omember{"args", get("args")},
		omember{"env", get("env")},
		omember{"use_gpu", get("use_gpu")},
		omember{"volume", vol},
		omember{"output_upload", up},
		omember{"artifacts_dir", artifacts},
		omember{"on_trusted_miner", get("on_trusted_miner")},
		omember{"download_time_limit", get("download_time_limit")},
		omember{"execution_time_limit", get("execution_time_limit")},
		omember{"upload_time_limit", get("upload_time_limit")},
		omember{"streaming_start_time_limit", get("streaming_start_time_limit")},
		omember{"streaming_details", get("streaming_details")},
		omember{"signature", sg},
	).compactBytes()
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// UnmarshalJSON reads upstream's V2JobRequest (and horde's, the same).
func (r *V2JobRequest) UnmarshalJSON(b []byte) error {
	m, err := parseOrdered(b)
	if err != nil {
		return err
	}
	if m.kind != '{' {
		return fmt.Errorf("not an object")
	}
	if t, ok := m.get("type"); ok && (t.kind != 's' || t.s != "job.new") {
		return fmt.Errorf(`type must be "job.new"`)
	}
	uuid, ok := m.get("uuid")
	if !ok {
		return fmt.Errorf("uuid is required")
	}
	out := V2JobRequest{}
	if out.UUID, err = uuid.asString("uuid"); err != nil {
		return err
	}
	j, err := signedFromJobRequest(m)
	if err != nil {
		return err
	}
	spec, err := specFromSigned(j)
	if err != nil {
		return err
	}
	if u, ok := m.get("output_upload"); ok && u.kind == '{' {
		if so, ok := u.get("system_output"); ok && so.kind != 'n' {
			if err := spec.setSystemOutput(so); err != nil { // not signed: upstream's too
				return err
			}
		}
	}
	out.JobSpec = *spec
	if ns, ok := m.get("job_namespace"); ok && ns.kind != 'n' {
		if out.JobNamespace, err = ns.asString("job_namespace"); err != nil {
			return err
		}
	}
	if sv, ok := m.get("signature"); ok && sv.kind != 'n' {
		if out.Signature, err = signatureFrom(sv); err != nil {
			return err
		}
	}
	*r = out
	return nil
}

// signatureFrom reads a Signature object with upstream's defaults.
func signatureFrom(v ovalue) (*Signature, error) {
	if v.kind != '{' {
		return nil, fmt.Errorf("signature must be an object")
	}
	s := &Signature{SignatureScope: ScopeSignedFields}
	var err error
	for _, f := range []struct {
		key string
		dst *string
	}{{"signature_type", &s.SignatureType}, {"signatory", &s.Signatory}, {"signature", &s.Signature}, {"signature_scope", &s.SignatureScope}} {
		if e, ok := v.get(f.key); ok {
			if *f.dst, err = e.asString("signature." + f.key); err != nil {
				return nil, err
			}
		} else if f.key == "signature" {
			return nil, fmt.Errorf("signature.signature is required")
		}
	}
	if e, ok := v.get("timestamp_ns"); ok {
		n, err := e.asInt("signature.timestamp_ns")
		if err != nil {
			return nil, err
		}
		s.TimestampNS = int64(n)
	}
	return s, nil
}

// V0JobCheated: facilitator → validator, a client reports that a job's
// miner cheated (its result differs from a trusted miner's run of the same
// job). Exactly upstream's shape (extra="forbid"): type "job.cheated",
// job_uuid, trusted_job_uuid, details (any JSON; the key is always sent,
// null when none), and the client's signature (scope FullRequest) over
// SignedPayload(). horde sends it to a horde validator only with
// CapJobCheated.
type V0JobCheated struct {
	JobUUID        string          `json:"job_uuid"`
	TrustedJobUUID string          `json:"trusted_job_uuid"`
	Details        json.RawMessage `json:"details"`
	Signature      *Signature      `json:"signature"`
}

func (*V0JobCheated) MessageType() string { return "V0JobCheated" }

// MarshalJSON writes upstream's V0JobCheated (message_type added by Encode).
func (m V0JobCheated) MarshalJSON() ([]byte, error) {
	details := m.Details
	if len(details) == 0 {
		details = json.RawMessage("null")
	}
	return json.Marshal(struct {
		Type           string          `json:"type"`
		JobUUID        string          `json:"job_uuid"`
		TrustedJobUUID string          `json:"trusted_job_uuid"`
		Details        json.RawMessage `json:"details"`
		Signature      *Signature      `json:"signature"`
	}{"job.cheated", m.JobUUID, m.TrustedJobUUID, details, m.Signature})
}

// CheatReport is the body of POST /api/v1/cheated-job/ (upstream's SDK:
// report_cheated_job), and what V0JobCheated's signature covers.
type CheatReport struct {
	JobUUID        string          `json:"job_uuid"`
	TrustedJobUUID string          `json:"trusted_job_uuid"`
	Details        json.RawMessage `json:"details"`
}

// SignedPayload returns the bytes the client signed (scope FullRequest):
// Python's json.dumps({"job_uuid", "trusted_job_uuid", "details"},
// sort_keys=True).
func (r *CheatReport) SignedPayload() ([]byte, error) {
	details := r.Details
	if len(details) == 0 {
		details = json.RawMessage("null")
	}
	b, err := json.Marshal(CheatReport{r.JobUUID, r.TrustedJobUUID, details})
	if err != nil {
		return nil, err
	}
	return pyjson.Canonical(b)
}

// VerifyJobCheated checks a V0JobCheated's signature over its report, strictly
// decoded, no older than maxAge nor further than maxAhead in the future.
// It does not say whether the signatory may report the job: that is the
// validator's decision (upstream: itself or a whitelisted client).
func VerifyJobCheated(m *V0JobCheated, now time.Time, maxAge, maxAhead time.Duration) error {
	s := m.Signature
	if s == nil {
		return fmt.Errorf("%w: the report carries no signature", ErrBadJobSignature)
	}
	if s.SignatureType != SignatureTypeBittensor {
		return fmt.Errorf("%w: signature_type %q is not %q", ErrBadJobSignature, s.SignatureType, SignatureTypeBittensor)
	}
	age := now.Sub(time.Unix(0, s.TimestampNS))
	if age > maxAge || age < -maxAhead {
		return fmt.Errorf("%w: signed %s ago (limits: %s old, %s ahead)", ErrBadJobSignature, age.Round(time.Second), maxAge, maxAhead)
	}
	pub, err := sig.ParseSS58(s.Signatory)
	if err != nil {
		return fmt.Errorf("%w: signatory: %w", ErrBadJobSignature, err)
	}
	raw, err := s.Decode()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadJobSignature, err)
	}
	payload, err := (&CheatReport{m.JobUUID, m.TrustedJobUUID, m.Details}).SignedPayload()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadJobSignature, err)
	}
	if err := raw.Verify(pub, SignedMessage(s.TimestampNS, payload)); err != nil {
		return fmt.Errorf("%w: %w", ErrBadJobSignature, err)
	}
	return nil
}

// V0JobVolumeRequest (horde): facilitator → validator, a client's volume
// message for a serving streaming job (see V0VolumeRequest).
type V0JobVolumeRequest struct {
	UUID         string        `json:"uuid"`
	MessageID    string        `json:"message_id"`
	Volume       *Volume       `json:"volume,omitempty"`
	OutputUpload *OutputUpload `json:"output_upload,omitempty"`
}

func (*V0JobVolumeRequest) MessageType() string { return "V0JobVolumeRequest" }

// V0JobVolumeResult (horde): validator → facilitator, the outcome of a volume message.
type V0JobVolumeResult struct {
	UUID          string            `json:"uuid"`
	MessageID     string            `json:"message_id"`
	Success       bool              `json:"success"`
	Error         string            `json:"error,omitempty"`
	UploadResults map[string]string `json:"upload_results,omitempty"`
}

func (*V0JobVolumeResult) MessageType() string { return "V0JobVolumeResult" }

// V0StreamPairReport (horde): facilitator → validator, a pair a client
// reported for a streaming job the validator routed, with the proof that the
// miner vouched for the job's key. The validator verifies it again.
type V0StreamPairReport struct {
	UUID        string                 `json:"uuid"`
	Image       string                 `json:"image"`
	MinerHotkey string                 `json:"miner_hotkey"`
	Proof       StreamingServerDetails `json:"proof"`
	Pair        StreamPair             `json:"pair"`
	// ID is the facilitator's id of the report, which V0StreamPairAck
	// names (with CapStreamPairAcks; 0 otherwise).
	ID int64 `json:"id,omitempty"`
}

func (*V0StreamPairReport) MessageType() string { return "V0StreamPairReport" }

// V0StreamPairAck (horde, CapStreamPairAcks): validator → facilitator, the
// pair reported as ID is kept (or refused for good, Error saying why): the
// facilitator need not deliver it again. It goes through the validator's
// durable outbox, so an acknowledgement survives a restart; a pair delivered
// twice is kept once.
type V0StreamPairAck struct {
	ID    int64  `json:"id"`
	Error string `json:"error,omitempty"`
}

func (*V0StreamPairAck) MessageType() string { return "V0StreamPairAck" }

// V0StopJobByFacilitator (horde): facilitator → validator, the client ends a streaming job.
type V0StopJobByFacilitator struct {
	UUID string `json:"uuid"`
}

func (*V0StopJobByFacilitator) MessageType() string { return "V0StopJobByFacilitator" }

// V0CancelJobByFacilitator (horde): facilitator → validator, the client cancelled.
type V0CancelJobByFacilitator struct {
	UUID string `json:"uuid"`
}

func (*V0CancelJobByFacilitator) MessageType() string { return "V0CancelJobByFacilitator" }

func init() {
	register(&V0AuthenticationRequest{}, &V0HordeAuthenticationRequest{}, &Response{}, &V0Heartbeat{}, &V0MachineSpecsUpdate{}, &V0JobCheated{},
		&V0JobStatusUpdate{}, &V2JobRequest{}, &V0CancelJobByFacilitator{}, &V0StopJobByFacilitator{},
		&V0JobVolumeRequest{}, &V0JobVolumeResult{}, &V0StreamPairReport{}, &V0StreamPairAck{})
}

// V0ValidatorReport (horde): validator → facilitator, the scores of a cycle,
// each with what it rests on, for clients and operators to see; and the
// validator's latest validation windows ([]ReportedWindow; absent from
// validators that predate it), for operators' dashboards.
type V0ValidatorReport struct {
	Cycle   int64           `json:"cycle"`
	At      time.Time       `json:"at"`
	Scores  json.RawMessage `json:"scores"`
	Windows json.RawMessage `json:"windows,omitempty"`
}

// ReportedWindow is one validation window in a V0ValidatorReport: the
// window's id and image at the validator, when it closed, and its report
// (the validator's WindowReport: pairs, replays, verdicts).
type ReportedWindow struct {
	ID    int64           `json:"id"`
	Image string          `json:"image"`
	At    time.Time       `json:"at"`
	Body  json.RawMessage `json:"body"`
}

func (*V0ValidatorReport) MessageType() string { return "V0ValidatorReport" }

func init() { register(&V0ValidatorReport{}) }
