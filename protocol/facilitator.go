package protocol

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
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

// V0AuthenticationRequest: validator → facilitator, first message.
// Upstream signs only the 32 raw public-key bytes, which can be replayed;
// horde adds a timestamp and nonce and signs AuthMessage().
type V0AuthenticationRequest struct {
	PublicKey string `json:"public_key"`
	Signature string `json:"signature"`
	Timestamp int64  `json:"horde_timestamp"`
	Nonce     string `json:"horde_nonce"`
}

func (*V0AuthenticationRequest) MessageType() string { return "V0AuthenticationRequest" }

// AuthMessage returns the signed bytes: raw public key ‖ ":{timestamp}:{nonce}".
// public_key must be 64 lower-case hex digits, as upstream writes it
// (public_key.hex()): one text per key, like signatures (see package sig).
func (m *V0AuthenticationRequest) AuthMessage() ([]byte, error) {
	if len(m.PublicKey) != 64 || strings.ToLower(m.PublicKey) != m.PublicKey {
		return nil, fmt.Errorf("public_key must be 64 lower-case hex digits")
	}
	pk, err := hex.DecodeString(m.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("public_key must be 64 lower-case hex digits")
	}
	return append(pk, ":"+strconv.FormatInt(m.Timestamp, 10)+":"+m.Nonce...), nil
}

// ResponseError is one error in a Response.
type ResponseError struct {
	Msg  string `json:"msg"`
	Type string `json:"type"`
	Help string `json:"help,omitempty"`
}

// Response: facilitator → validator, the answer to each authenticated request.
type Response struct {
	Status string          `json:"status"`
	Errors []ResponseError `json:"errors,omitempty"`
}

func (*Response) MessageType() string { return "Response" }

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
	// StreamingReadyMessage: the miner vouches for the job's key.
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

// JobSpec is what a client asks for; the client's signature covers
// its canonical JSON (see SignedBytes).
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
	TargetValidatorHotkey   string            `json:"target_validator_hotkey,omitempty"`
	// Nonce (horde) makes two otherwise equal jobs distinct for replay checks.
	Nonce string `json:"horde_nonce,omitempty"`
}

// SignedBytes returns the canonical JSON of the spec that signatures cover.
func (s *JobSpec) SignedBytes() ([]byte, error) {
	c := *s
	if c.Args == nil {
		c.Args = []string{}
	}
	if c.Env == nil {
		c.Env = map[string]string{}
	}
	return pyjson.Marshal(&c)
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

// V2JobRequest: facilitator → validator, a client's job with its signature.
type V2JobRequest struct {
	UUID string `json:"uuid"`
	JobSpec
	Signature *Signature `json:"signature"`
}

func (*V2JobRequest) MessageType() string { return "V2JobRequest" }

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
}

func (*V0StreamPairReport) MessageType() string { return "V0StreamPairReport" }

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
	register(&V0AuthenticationRequest{}, &Response{}, &V0Heartbeat{}, &V0MachineSpecsUpdate{},
		&V0JobStatusUpdate{}, &V2JobRequest{}, &V0CancelJobByFacilitator{}, &V0StopJobByFacilitator{},
		&V0JobVolumeRequest{}, &V0JobVolumeResult{}, &V0StreamPairReport{})
}

// V0ValidatorReport (horde): validator → facilitator, the scores of a cycle,
// each with what it rests on, for clients and operators to see.
type V0ValidatorReport struct {
	Cycle  int64           `json:"cycle"`
	At     time.Time       `json:"at"`
	Scores json.RawMessage `json:"scores"`
}

func (*V0ValidatorReport) MessageType() string { return "V0ValidatorReport" }

func init() { register(&V0ValidatorReport{}) }
