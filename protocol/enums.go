package protocol

import "encoding/json"

// enum decodes a string, mapping values outside known to "unknown".
func decodeEnum(b []byte, known []string) (string, error) {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return "", err
	}
	for _, k := range known {
		if s == k {
			return s, nil
		}
	}
	return "unknown", nil
}

// JobStatus is the facilitator's view of a job.
type JobStatus string

// Job statuses, in order; the last four are terminal.
const (
	StatusSent          JobStatus = "sent"
	StatusReceived      JobStatus = "received"
	StatusAccepted      JobStatus = "accepted"
	StatusExecutorReady JobStatus = "executor_ready"
	StatusVolumesReady  JobStatus = "volumes_ready"
	StatusStreaming     JobStatus = "streaming_ready"
	StatusExecutionDone JobStatus = "execution_done"
	StatusCompleted     JobStatus = "completed"
	StatusRejected      JobStatus = "rejected"
	StatusFailed        JobStatus = "failed"
	StatusHordeFailed   JobStatus = "horde_failed"
	// StatusCancelled is horde's: the client cancelled the job.
	StatusCancelled JobStatus = "cancelled"
)

// Terminal reports whether s ends the job.
func (s JobStatus) Terminal() bool {
	switch s {
	case StatusCompleted, StatusRejected, StatusFailed, StatusHordeFailed, StatusCancelled:
		return true
	}
	return false
}

// JobStage names where a job failed.
type JobStage string

// Job stages.
const (
	StageUnknown         JobStage = "unknown"
	StageExecutorStartup JobStage = "executor_startup"
	StageVolumeDownload  JobStage = "volume_download"
	StageStreaming       JobStage = "streaming_startup"
	StageExecution       JobStage = "execution"
	StageResultUpload    JobStage = "result_upload"
)

// UnmarshalJSON maps unknown values to "unknown".
func (s *JobStage) UnmarshalJSON(b []byte) error {
	v, err := decodeEnum(b, []string{"executor_startup", "volume_download", "streaming_startup", "execution", "result_upload"})
	*s = JobStage(v)
	return err
}

// JobFailureReason is why a job failed through its own fault.
type JobFailureReason string

// Job failure reasons.
const (
	FailureUnknown       JobFailureReason = "unknown"
	FailureTimeout       JobFailureReason = "timeout"
	FailureNonzeroReturn JobFailureReason = "nonzero_return_code"
	FailureDownload      JobFailureReason = "download_failed"
	FailureUpload        JobFailureReason = "upload_failed"
)

// UnmarshalJSON maps unknown values to "unknown".
func (s *JobFailureReason) UnmarshalJSON(b []byte) error {
	v, err := decodeEnum(b, []string{"timeout", "nonzero_return_code", "download_failed", "upload_failed"})
	*s = JobFailureReason(v)
	return err
}

// JobRejectionReason is why nobody took a job.
type JobRejectionReason string

// Rejection reasons.
const (
	RejectUnknown          JobRejectionReason = "unknown"
	RejectBusy             JobRejectionReason = "busy"
	RejectInvalidSignature JobRejectionReason = "invalid_signature"
	RejectNoMiner          JobRejectionReason = "no_miner_for_job"
	RejectBlacklisted      JobRejectionReason = "validator_blacklisted"
)

// UnmarshalJSON maps unknown values to "unknown".
func (s *JobRejectionReason) UnmarshalJSON(b []byte) error {
	v, err := decodeEnum(b, []string{"busy", "invalid_signature", "no_miner_for_job", "validator_blacklisted"})
	*s = JobRejectionReason(v)
	return err
}

// HordeFailureReason is why a job failed through the system's fault.
type HordeFailureReason string

// Horde failure reasons.
const (
	HordeUnknown               HordeFailureReason = "unknown"
	HordeGenericError          HordeFailureReason = "generic_error"
	HordeUnhandledException    HordeFailureReason = "unhandled_exception"
	HordeUnhandledTimeout      HordeFailureReason = "unhandled_timeout"
	HordeStreamingFailed       HordeFailureReason = "streaming_failed"
	HordeMinerConnectionFailed HordeFailureReason = "miner_connection_failed"
	HordeInitialTimeout        HordeFailureReason = "initial_response_timed_out"
	HordeReadinessTimeout      HordeFailureReason = "executor_readiness_response_timed_out"
	HordeVolumesTimeout        HordeFailureReason = "volumes_timed_out"
	HordeStreamingReadyTimeout HordeFailureReason = "streaming_job_ready_timed_out"
	HordeExecutionTimeout      HordeFailureReason = "execution_timed_out"
	HordeFinalTimeout          HordeFailureReason = "final_response_timed_out"
	HordeSpinupFailed          HordeFailureReason = "executor_spinup_failed"
	HordeExecutorDisconnected  HordeFailureReason = "executor_disconnected"
	HordeSecurityCheckFailed   HordeFailureReason = "security_check_failed"
)

// UnmarshalJSON maps unknown values to "unknown".
func (s *HordeFailureReason) UnmarshalJSON(b []byte) error {
	v, err := decodeEnum(b, []string{"generic_error", "unhandled_exception", "unhandled_timeout", "streaming_failed",
		"miner_connection_failed", "initial_response_timed_out", "executor_readiness_response_timed_out",
		"volumes_timed_out", "streaming_job_ready_timed_out", "execution_timed_out", "final_response_timed_out",
		"executor_spinup_failed", "executor_disconnected", "security_check_failed"})
	*s = HordeFailureReason(v)
	return err
}

// Participant names who reported something.
type Participant string

// Participants.
const (
	ByUnknown     Participant = "unknown"
	BySDK         Participant = "sdk"
	ByFacilitator Participant = "facilitator"
	ByValidator   Participant = "validator"
	ByMiner       Participant = "miner"
	ByExecutor    Participant = "executor"
)

// UnmarshalJSON maps unknown values to "unknown".
func (s *Participant) UnmarshalJSON(b []byte) error {
	v, err := decodeEnum(b, []string{"sdk", "facilitator", "validator", "miner", "executor"})
	*s = Participant(v)
	return err
}

// Executor classes.
const (
	ClassSpinUp4minGPU24 = "spin_up-4min.gpu-24gb"
	ClassGPU24           = "always_on.gpu-24gb"
	ClassLLMA6000        = "always_on.llm.a6000"
	ClassTest            = "always_on.test"
	ClassCPU8c16gb       = "always_on.cpu.8c.16gb"
)

// ReasonKey is the key, in a failure's or rejection's context, of horde's
// specific reason code ("image_not_whitelisted", "nonzero_exit", …): the wire
// enums are upstream's and say "unknown" for most causes, so the code rides
// in the context, which upstream keeps as it is.
const ReasonKey = "horde_reason"

// ReasonCode returns the specific reason code a context carries, or "".
func ReasonCode(context map[string]any) string {
	code, _ := context[ReasonKey].(string)
	return code
}

// WithReason returns a context carrying code as its specific reason.
func WithReason(code string) map[string]any { return map[string]any{ReasonKey: code} }
