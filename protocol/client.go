package protocol

import (
	"encoding/json"
	"time"
)

// This file: the client → facilitator HTTP API. Requests carry the client's
// signature in headers: X-CH-Signature-Type (bittensor), X-CH-Signatory (SS58),
// X-CH-Timestamp-NS, X-CH-Signature (base64) and X-CH-Signature-Scope. The
// signed payload is the request body, or "METHOD PATH" for bodiless requests.

// Client API routes.
const (
	RouteCreateJob = "/api/v1/job-docker/"
	RouteJobs      = "/api/v1/jobs/"
	RouteScores    = "/api/v1/scores/"
)

// ValidatorScores is one validator's latest cycle as GET /api/v1/scores/
// reports it (keyed by validator hotkey): scores, weights and details per miner.
type ValidatorScores struct {
	Cycle  int64           `json:"cycle"`
	At     time.Time       `json:"at"`
	Scores json.RawMessage `json:"scores"`
}

// Signature headers.
const (
	HeaderSignatureType  = "X-CH-Signature-Type"
	HeaderSignatory      = "X-CH-Signatory"
	HeaderTimestampNS    = "X-CH-Timestamp-NS"
	HeaderSignature      = "X-CH-Signature"
	HeaderSignatureScope = "X-CH-Signature-Scope"
)

// ScopeSignedFields is the signature scope of a job request.
const ScopeSignedFields = "SignedFields"

// VolumeMessage is the body of POST /api/v1/jobs/{uuid}/volumes/: one more
// input volume to download into a serving streaming job, or an upload of its
// outputs so far. The answer is the VolumeAck, once the job has acted.
type VolumeMessage struct {
	Volume       *Volume       `json:"volume,omitempty"`
	OutputUpload *OutputUpload `json:"output_upload,omitempty"`
}

// VolumeAck answers a VolumeMessage.
type VolumeAck struct {
	MessageID     string            `json:"message_id"`
	Success       bool              `json:"success"`
	Error         string            `json:"error,omitempty"`
	UploadResults map[string]string `json:"upload_results,omitempty"`
}

// StreamPair is one request/response exchange with a streaming job and its
// signed receipt, as a client reports it to POST /api/v1/jobs/{uuid}/pairs/
// for validators to check. Bodies are base64, exactly as sent and received.
// Every field must be what the receipt binds (a v2 receipt binds the method,
// target, both content types and the status): a pair reported under any
// other request is refused.
type StreamPair struct {
	Method string `json:"method"`
	// Path is the request target: the path with its raw query, as sent.
	Path string `json:"path"`
	// ContentType is the request's Content-Type ("" for none).
	ContentType string `json:"content_type,omitempty"`
	RequestB64  string `json:"request_b64"`
	// Status and ResponseContentType are the response's.
	Status              int    `json:"status,omitempty"`
	ResponseContentType string `json:"response_content_type,omitempty"`
	ResponseB64         string `json:"response_b64"`
	ReceiptB64          string `json:"receipt_b64"`
	SignatureB64        string `json:"signature_b64"`
}

// StatusEntry is one step of a job's history.
type StatusEntry struct {
	Status    JobStatus       `json:"status"`
	CreatedAt time.Time       `json:"created_at"`
	Metadata  *StatusMetadata `json:"metadata,omitempty"`
}

// Job is a job as the facilitator reports it.
type Job struct {
	UUID            string        `json:"uuid"`
	Status          JobStatus     `json:"status"`
	ExecutorClass   string        `json:"executor_class"`
	DockerImage     string        `json:"docker_image"`
	Args            []string      `json:"args"`
	Signatory       string        `json:"signatory"`
	ValidatorHotkey string        `json:"validator_hotkey,omitempty"`
	CreatedAt       time.Time     `json:"created_at"`
	UpdatedAt       time.Time     `json:"updated_at"`
	StatusHistory   []StatusEntry `json:"status_history"`
}

// JobList is a page of jobs, newest first.
type JobList struct {
	Count   int    `json:"count"`
	Results []Job  `json:"results"`
	Next    string `json:"next,omitempty"`
}

// APIError is the body of every error answer.
type APIError struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}
