package protocol

import (
	"encoding/json"
	"fmt"
	"strconv"
)

// This file: the validator ↔ miner link, WebSocket
// ws://{miner}/v0.1/validator_interface/{validator_hotkey}. The miner ↔
// executor link (ws://{miner}/v0.1/executor_interface/{token}) carries the
// same messages; the executor sets ExecutorToken on what it sends.

// ValidatorAuthPath is the miner's route for validators.
const ValidatorAuthPath = "/v0.1/validator_interface/"

// ExecutorPath is the miner's route for its executors.
const ExecutorPath = "/v0.1/executor_interface/"

// ValidatorAuthForMiner opens a validator's session. Signature is the
// validator hotkey's "0x"+hex signature over AuthMessage().
type ValidatorAuthForMiner struct {
	ValidatorHotkey string `json:"validator_hotkey"`
	MinerHotkey     string `json:"miner_hotkey"`
	Timestamp       int64  `json:"timestamp"`
	Signature       string `json:"signature"`
}

func (*ValidatorAuthForMiner) MessageType() string { return "ValidatorAuthForMiner" }

// AuthMessage returns the signed bytes: "{validator_hotkey}:{miner_hotkey}:{timestamp}".
func (m *ValidatorAuthForMiner) AuthMessage() []byte {
	return []byte(m.ValidatorHotkey + ":" + m.MinerHotkey + ":" + strconv.FormatInt(m.Timestamp, 10))
}

// V0ExecutorManifestRequest: miner → validator, executor counts per class.
type V0ExecutorManifestRequest struct {
	Manifest map[string]int `json:"manifest"`
	// Capabilities (horde) are the extensions a horde miner speaks
	// (MinerCapabilities); upstream's model ignores the field.
	Capabilities Capabilities `json:"horde_capabilities,omitempty"`
}

func (*V0ExecutorManifestRequest) MessageType() string { return "V0ExecutorManifestRequest" }

// V0MainHotkeyMessage: miner → validator, the miner's main hotkey.
type V0MainHotkeyMessage struct {
	MainHotkey string `json:"main_hotkey,omitempty"`
}

func (*V0MainHotkeyMessage) MessageType() string { return "V0MainHotkeyMessage" }

// StreamingDetails travel with a streaming job's initial request.
type StreamingDetails struct {
	PublicKey  string `json:"public_key"`
	ExecutorIP string `json:"executor_ip,omitempty"`
}

// ExecutorTiming holds the client's stage limits, in seconds.
type ExecutorTiming struct {
	AllowedLeeway           int `json:"allowed_leeway"`
	DownloadTimeLimit       int `json:"download_time_limit"`
	ExecutionTimeLimit      int `json:"execution_time_limit"`
	UploadTimeLimit         int `json:"upload_time_limit"`
	StreamingStartTimeLimit int `json:"streaming_start_time_limit"`
}

// V0InitialJobRequest: validator → miner (and miner → executor), offers a job
// with the validator-signed job-started receipt.
type V0InitialJobRequest struct {
	JobUUID                    string            `json:"job_uuid"`
	ExecutorClass              string            `json:"executor_class"`
	DockerImage                string            `json:"docker_image,omitempty"`
	TimeoutSeconds             *int              `json:"timeout_seconds,omitempty"`
	Volume                     *Volume           `json:"volume,omitempty"`
	JobStartedReceiptPayload   json.RawMessage   `json:"job_started_receipt_payload"`
	JobStartedReceiptSignature string            `json:"job_started_receipt_signature"`
	StreamingDetails           *StreamingDetails `json:"streaming_details,omitempty"`
	ExecutorTiming             *ExecutorTiming   `json:"executor_timing,omitempty"`
	// AllowPull (horde) lets the executor pull an image that is not present.
	AllowPull bool `json:"horde_allow_pull,omitempty"`
	// ImageDigest (horde) pins the image of a streaming job: the executor
	// refuses an image whose id or repo digest differs.
	ImageDigest string `json:"horde_image_digest,omitempty"`
	// ImageAllowList (horde, miner → executor only; the miner drops what a
	// validator sends): for a streaming job without ImageDigest, the miner's
	// allow-list: image names ("repo:tag") and digests ("sha256:…"); the
	// executor runs the image if its name or its id or a repo digest is listed.
	ImageAllowList []string `json:"horde_image_allow_list,omitempty"`
}

func (*V0InitialJobRequest) MessageType() string { return "V0InitialJobRequest" }

func (m *V0InitialJobRequest) validate() error {
	if m.JobUUID == "" {
		return fmt.Errorf("job_uuid is empty")
	}
	if m.Volume != nil {
		return m.Volume.Validate()
	}
	return nil
}

// V0AcceptJobRequest: miner → validator, the miner reserved an executor.
type V0AcceptJobRequest struct {
	JobUUID string `json:"job_uuid"`
}

func (*V0AcceptJobRequest) MessageType() string { return "V0AcceptJobRequest" }

// V0DeclineJobRequest: miner → validator, the miner will not take the job.
type V0DeclineJobRequest struct {
	JobUUID  string             `json:"job_uuid"`
	Message  string             `json:"message"`
	Reason   JobRejectionReason `json:"reason"`
	Receipts []json.RawMessage  `json:"receipts"`
	Context  map[string]any     `json:"context,omitempty"`
}

func (*V0DeclineJobRequest) MessageType() string { return "V0DeclineJobRequest" }

// V0ExecutorReadyRequest: miner → validator (executor → miner), the executor is up.
type V0ExecutorReadyRequest struct {
	JobUUID       string `json:"job_uuid"`
	ExecutorToken string `json:"executor_token,omitempty"`
}

func (*V0ExecutorReadyRequest) MessageType() string { return "V0ExecutorReadyRequest" }

// V0ExecutorFailedRequest: miner → validator, the executor could not start.
type V0ExecutorFailedRequest struct {
	JobUUID       string `json:"job_uuid"`
	ExecutorToken string `json:"executor_token,omitempty"`
}

func (*V0ExecutorFailedRequest) MessageType() string { return "V0ExecutorFailedRequest" }

// V0StreamingJobReadyRequest: miner → validator, a streaming job serves. The
// miner signs "{job_uuid}:{ip}:{port}:{public_key}".
type V0StreamingJobReadyRequest struct {
	JobUUID        string `json:"job_uuid"`
	ExecutorToken  string `json:"executor_token,omitempty"`
	PublicKey      string `json:"public_key"`
	IP             string `json:"ip"`
	Port           int    `json:"port"`
	MinerSignature string `json:"miner_signature"`
}

func (*V0StreamingJobReadyRequest) MessageType() string { return "V0StreamingJobReadyRequest" }

// V0StreamingJobNotReadyRequest: miner → validator, a streaming job failed to start.
type V0StreamingJobNotReadyRequest struct {
	JobUUID       string `json:"job_uuid"`
	ExecutorToken string `json:"executor_token,omitempty"`
}

func (*V0StreamingJobNotReadyRequest) MessageType() string { return "V0StreamingJobNotReadyRequest" }

// V0JobRequest: validator → miner (→ executor), the full job.
type V0JobRequest struct {
	JobUUID                string            `json:"job_uuid"`
	ExecutorClass          string            `json:"executor_class"`
	DockerImage            string            `json:"docker_image"`
	RawScript              string            `json:"raw_script,omitempty"`
	DockerRunOptionsPreset string            `json:"docker_run_options_preset"`
	DockerRunCmd           []string          `json:"docker_run_cmd"`
	Env                    map[string]string `json:"env,omitempty"`
	Volume                 *Volume           `json:"volume,omitempty"`
	OutputUpload           *OutputUpload     `json:"output_upload,omitempty"`
	ArtifactsDir           string            `json:"artifacts_dir,omitempty"`
}

func (*V0JobRequest) MessageType() string { return "V0JobRequest" }

func (m *V0JobRequest) validate() error {
	if m.JobUUID == "" {
		return fmt.Errorf("job_uuid is empty")
	}
	if m.Volume != nil {
		if err := m.Volume.Validate(); err != nil {
			return err
		}
	}
	if m.OutputUpload != nil {
		return m.OutputUpload.Validate()
	}
	return nil
}

// V0VolumesReadyRequest: miner → validator, volumes are downloaded.
type V0VolumesReadyRequest struct {
	JobUUID       string `json:"job_uuid"`
	ExecutorToken string `json:"executor_token,omitempty"`
}

func (*V0VolumesReadyRequest) MessageType() string { return "V0VolumesReadyRequest" }

// V0ExecutionDoneRequest: miner → validator, the container exited.
type V0ExecutionDoneRequest struct {
	JobUUID       string `json:"job_uuid"`
	ExecutorToken string `json:"executor_token,omitempty"`
}

func (*V0ExecutionDoneRequest) MessageType() string { return "V0ExecutionDoneRequest" }

// V0JobFinishedRequest: miner → validator, the job succeeded.
type V0JobFinishedRequest struct {
	JobUUID             string            `json:"job_uuid"`
	ExecutorToken       string            `json:"executor_token,omitempty"`
	DockerProcessStdout string            `json:"docker_process_stdout"`
	DockerProcessStderr string            `json:"docker_process_stderr"`
	Artifacts           map[string]string `json:"artifacts,omitempty"`
	UploadResults       map[string]string `json:"upload_results,omitempty"`
	// Timings (horde): milliseconds spent per stage, as the executor measured.
	Timings map[string]int64 `json:"horde_timings,omitempty"`
}

func (*V0JobFinishedRequest) MessageType() string { return "V0JobFinishedRequest" }

// V0JobFailedRequest: miner → validator, the job failed through its own fault.
type V0JobFailedRequest struct {
	JobUUID                 string           `json:"job_uuid"`
	ExecutorToken           string           `json:"executor_token,omitempty"`
	Message                 string           `json:"message"`
	Reason                  JobFailureReason `json:"reason"`
	Stage                   JobStage         `json:"stage"`
	DockerProcessExitStatus *int             `json:"docker_process_exit_status,omitempty"`
	DockerProcessStdout     string           `json:"docker_process_stdout,omitempty"`
	DockerProcessStderr     string           `json:"docker_process_stderr,omitempty"`
	Context                 map[string]any   `json:"context,omitempty"`
}

func (*V0JobFailedRequest) MessageType() string { return "V0JobFailedRequest" }

// V0HordeFailedRequest: miner → validator, the job failed through the system's fault.
type V0HordeFailedRequest struct {
	JobUUID       string             `json:"job_uuid"`
	ExecutorToken string             `json:"executor_token,omitempty"`
	ReportedBy    Participant        `json:"reported_by"`
	Message       string             `json:"message"`
	Reason        HordeFailureReason `json:"reason"`
	Context       map[string]any     `json:"context,omitempty"`
}

func (*V0HordeFailedRequest) MessageType() string { return "V0HordeFailedRequest" }

// V0MachineSpecsRequest: miner → validator, the executor's hardware.
type V0MachineSpecsRequest struct {
	JobUUID       string         `json:"job_uuid"`
	ExecutorToken string         `json:"executor_token,omitempty"`
	Specs         map[string]any `json:"specs"`
}

func (*V0MachineSpecsRequest) MessageType() string { return "V0MachineSpecsRequest" }

// V0JobAcceptedReceiptRequest: validator → miner, the validator-signed accepted receipt.
type V0JobAcceptedReceiptRequest struct {
	Payload   json.RawMessage `json:"payload"`
	Signature string          `json:"signature"`
}

func (*V0JobAcceptedReceiptRequest) MessageType() string { return "V0JobAcceptedReceiptRequest" }

// V0JobFinishedReceiptRequest: validator → miner, the validator-signed finished receipt.
type V0JobFinishedReceiptRequest struct {
	Payload   json.RawMessage `json:"payload"`
	Signature string          `json:"signature"`
}

func (*V0JobFinishedReceiptRequest) MessageType() string { return "V0JobFinishedReceiptRequest" }

// StreamingReadyMessage returns the bytes the miner signs to vouch for a
// streaming job's key: "{job_uuid}:{ip}:{port}:{public_key}".
func StreamingReadyMessage(jobUUID, ip string, port int, publicKey string) []byte {
	return []byte(jobUUID + ":" + ip + ":" + strconv.Itoa(port) + ":" + publicKey)
}

// V0StopJobRequest (horde): validator → miner (→ executor), end a streaming
// job normally: stop serving, upload outputs, report the result.
type V0StopJobRequest struct {
	JobUUID string `json:"job_uuid"`
}

func (*V0StopJobRequest) MessageType() string { return "V0StopJobRequest" }

// V0VolumeRequest (horde): validator → miner (→ executor), during a
// streaming job: download one more volume into /volume, or upload /output
// as OutputUpload says. Answered by V0VolumeResult with the same MessageID.
type V0VolumeRequest struct {
	JobUUID      string        `json:"job_uuid"`
	MessageID    string        `json:"message_id"`
	Volume       *Volume       `json:"volume,omitempty"`
	OutputUpload *OutputUpload `json:"output_upload,omitempty"`
}

func (*V0VolumeRequest) MessageType() string { return "V0VolumeRequest" }

// Validate checks the message before it is sent on.
func (m *V0VolumeRequest) Validate() error { return m.validate() }

func (m *V0VolumeRequest) validate() error {
	if m.MessageID == "" || (m.Volume == nil) == (m.OutputUpload == nil) {
		return fmt.Errorf("message_id and exactly one of volume and output_upload are required")
	}
	if m.Volume != nil {
		return m.Volume.Validate()
	}
	return m.OutputUpload.Validate()
}

// V0VolumeResult (horde): executor (→ miner) → validator, the outcome of a V0VolumeRequest.
type V0VolumeResult struct {
	JobUUID       string            `json:"job_uuid"`
	ExecutorToken string            `json:"executor_token,omitempty"`
	MessageID     string            `json:"message_id"`
	Success       bool              `json:"success"`
	Error         string            `json:"error,omitempty"`
	UploadResults map[string]string `json:"upload_results,omitempty"`
}

func (*V0VolumeResult) MessageType() string { return "V0VolumeResult" }

// V0CancelJobRequest (horde): validator → miner (→ executor), stop the job now.
type V0CancelJobRequest struct {
	JobUUID string `json:"job_uuid"`
}

func (*V0CancelJobRequest) MessageType() string { return "V0CancelJobRequest" }

func init() {
	register(&ValidatorAuthForMiner{}, &V0ExecutorManifestRequest{}, &V0MainHotkeyMessage{},
		&V0InitialJobRequest{}, &V0AcceptJobRequest{}, &V0DeclineJobRequest{}, &V0ExecutorReadyRequest{},
		&V0ExecutorFailedRequest{}, &V0StreamingJobReadyRequest{}, &V0StreamingJobNotReadyRequest{},
		&V0JobRequest{}, &V0VolumesReadyRequest{}, &V0ExecutionDoneRequest{}, &V0JobFinishedRequest{},
		&V0JobFailedRequest{}, &V0HordeFailedRequest{}, &V0MachineSpecsRequest{},
		&V0JobAcceptedReceiptRequest{}, &V0JobFinishedReceiptRequest{}, &V0CancelJobRequest{}, &V0StopJobRequest{},
		&V0VolumeRequest{}, &V0VolumeResult{})
}
