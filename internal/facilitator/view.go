package facilitator

import (
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/protocol"
)

// This file: a job as clients see it. horde's client sees horde's statuses;
// upstream's SDK (a caller with a bearer token) sees only statuses its
// enum holds, or it could not read the job at all.

// sdkStatuses are the statuses upstream's SDK parses (ComputeHordeJobStatus
// has no fallback: anything else makes the whole job unreadable).
var sdkStatuses = map[protocol.JobStatus]bool{
	protocol.StatusSent: true, protocol.StatusReceived: true, protocol.StatusAccepted: true, protocol.StatusRejected: true,
	protocol.StatusStreaming: true, protocol.StatusExecutorReady: true, protocol.StatusVolumesReady: true,
	protocol.StatusExecutionDone: true, protocol.StatusCompleted: true, protocol.StatusFailed: true, protocol.StatusHordeFailed: true,
}

// forSDK rewrites a status history for upstream's SDK: horde's cancelled
// becomes failed, with the reason in job_failure_details (upstream has no
// cancel; the SDK counts failed as an end), and statuses the SDK cannot
// parse are left out.
func forSDK(hist []protocol.StatusEntry) []protocol.StatusEntry {
	out := make([]protocol.StatusEntry, 0, len(hist))
	for _, e := range hist {
		if e.Status == protocol.StatusCancelled {
			meta := protocol.StatusMetadata{}
			if e.Metadata != nil {
				meta = *e.Metadata
			}
			msg := "cancelled by the client"
			if meta.Comment != "" {
				msg = meta.Comment
			}
			meta.JobFailureDetails = &protocol.FailureDetails{Reason: protocol.FailureUnknown, Stage: protocol.StageUnknown,
				Message: msg, Context: protocol.WithReason("cancelled")}
			e.Status, e.Metadata = protocol.StatusFailed, &meta
		}
		if sdkStatuses[e.Status] {
			out = append(out, e)
		}
	}
	return out
}

func optional[T comparable](v T) *T {
	var zero T
	if v == zero {
		return nil
	}
	return &v
}

// toJob is a job with its history as a client sees it.
func toJob(rec store.JobRecord, hist []protocol.StatusEntry, sdk bool) *protocol.Job {
	spec := rec.Spec
	j := &protocol.Job{UUID: rec.UUID, Status: rec.Status, ExecutorClass: spec.ExecutorClass, DockerImage: spec.DockerImage,
		JobNamespace: optional(spec.JobNamespace), Args: spec.Args, Env: spec.Env, UseGPU: spec.UseGPU,
		ArtifactsDir: optional(spec.ArtifactsDir), TargetValidatorHotkey: optional(spec.TargetValidatorHotkey),
		OnTrustedMiner: spec.OnTrustedMiner, DownloadTimeLimit: spec.DownloadTimeLimit, ExecutionTimeLimit: spec.ExecutionTimeLimit,
		UploadTimeLimit: spec.UploadTimeLimit, StreamingStartTimeLimit: spec.StreamingStartTimeLimit,
		Artifacts: map[string]string{}, UploadResults: map[string]string{},
		Signatory: rec.Signature.Signatory, ValidatorHotkey: rec.ValidatorHotkey, CreatedAt: rec.CreatedAt, UpdatedAt: rec.UpdatedAt,
		LastUpdate: rec.UpdatedAt, StatusHistory: hist}
	if j.Args == nil {
		j.Args = []string{}
	}
	if j.Env == nil {
		j.Env = map[string]string{}
	}
	if sdk {
		j.StatusHistory = forSDK(hist)
		if j.Status == protocol.StatusCancelled {
			j.Status = protocol.StatusFailed
		}
	}
	if j.StatusHistory == nil {
		j.StatusHistory = []protocol.StatusEntry{}
	}
	if n := len(hist); n > 0 {
		last := hist[n-1]
		j.LastUpdate = last.CreatedAt
		if m := last.Metadata; m != nil {
			if r := m.MinerResponse; r != nil {
				j.Stdout, j.Stderr = r.DockerProcessStdout, r.DockerProcessStderr
				for k, v := range r.Artifacts {
					j.Artifacts[k] = v
				}
				for k, v := range r.UploadResults {
					j.UploadResults[k] = v
				}
			} else if d := m.JobFailureDetails; d != nil {
				j.Stdout, j.Stderr = d.DockerProcessStdout, d.DockerProcessStderr
			}
		}
	}
	for _, e := range hist {
		if e.Metadata != nil && e.Metadata.StreamingDetails != nil {
			d := e.Metadata.StreamingDetails
			j.StreamingServerCert, j.StreamingServerAddress = &d.StreamingServerCert, &d.StreamingServerAddress
			j.StreamingServerPort = &d.StreamingServerPort
		}
	}
	return j
}
