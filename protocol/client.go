package protocol

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"
)

// This file: the client → facilitator HTTP API. Upstream's SDK endpoints
// are served as upstream serves them; horde's client may also use horde's
// own (cancel, stop, volumes, pairs, events, scores).
//
// Authentication, per request (the facilitator checks the headers before it
// reads a body, and reads at most a small body on every route but job
// creation and volume messages):
//   - Bearer: "Authorization: Bearer <token>" from POST /auth/login (what
//     upstream's SDK sends on every call). It says who the caller is.
//   - Signature headers: X-CH-Signature-Type "bittensor", X-CH-Signatory (SS58),
//     X-CH-Timestamp-NS, X-CH-Signature (standard padded base64 of the 64
//     bytes, nothing else accepted), X-CH-Signature-Scope. The hotkey signs
//     blake2b-512(timestamp_ns as 8 bytes big-endian ‖ payload), the payload
//     set by the scope:
//       - ScopeSignedFields, only for POST RouteCreateJob (required there,
//         with or without a bearer token): SignedPayload of the body's
//         SignedFields. This signature travels with the job to validators.
//       - ScopeFullRequest, only for POST RouteCheatedJob (required there):
//         Python's json.dumps(body, sort_keys=True) (pyjson.Canonical). It
//         travels with the report to validators.
//       - ScopeHordeRequest, any route but those two: RequestPayload below,
//         which binds method, path, query and body.
//     A timestamp more than the facilitator's skew bound (default 5 min)
//     from its clock is refused, and so is a signature seen before (by its
//     bytes, however encoded) while it is fresh.

// Client API routes.
const (
	RouteCreateJob  = "/api/v1/job-docker/"
	RouteJobs       = "/api/v1/jobs/"
	RouteScores     = "/api/v1/scores/"
	RouteCheatedJob = "/api/v1/cheated-job/"
	// RouteNonce (GET, POST) and RouteLogin (POST) are upstream's SDK login.
	RouteNonce = "/auth/nonce"
	RouteLogin = "/auth/login"
	// RouteCapabilities (horde) lists what the facilitator speaks beyond
	// upstream; every API answer also carries HeaderCapabilities.
	RouteCapabilities = "/api/v1/horde/capabilities"
)

// API capabilities a horde facilitator announces (HeaderCapabilities on
// every answer): horde's own routes and the horde request signature scope.
var APICapabilities = []string{"horde-request-v1", "cancel", "stop", "volume_messages", "stream_pairs", "events", "scores"}

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

// Signature scopes (X-CH-Signature-Scope). Upstream's SDK omits the header
// for SignedFields, which is its default.
const (
	ScopeSignedFields = "SignedFields"
	ScopeFullRequest  = "FullRequest"
	ScopeHordeRequest = "HordeRequest"
)

// RequestPayload returns the payload of a ScopeHordeRequest signature:
//
//	"horde-request/v1\n" METHOD "\n" REQUEST-URI "\n" hex(sha256(body)) "\n"
//
// METHOD is the request method in upper case; REQUEST-URI is the request
// target exactly as written on the request line (path and query, escaped
// as sent; what Go's http.Request.URL.RequestURI() gives a client and
// http.Request.RequestURI a server); body is the raw body (empty: the
// hash of nothing). The hotkey signs SignedMessage(timestamp_ns, payload).
func RequestPayload(method, requestURI string, body []byte) []byte {
	sum := sha256.Sum256(body)
	return []byte("horde-request/v1\n" + method + "\n" + requestURI + "\n" + hex.EncodeToString(sum[:]) + "\n")
}

// NonceResponse answers GET /auth/nonce: a one-time nonce to sign.
type NonceResponse struct {
	Nonce string `json:"nonce"`
}

// LoginRequest is the body of POST /auth/login: the hotkey's signature
// (bare lower-case hex) over the UTF-8 bytes of the nonce.
type LoginRequest struct {
	Hotkey    string `json:"hotkey"`
	Signature string `json:"signature"`
	Nonce     string `json:"nonce"`
}

// LoginResponse answers a login: a bearer token for the hotkey.
type LoginResponse struct {
	Token string `json:"token"`
}

// CheatReported answers POST /api/v1/cheated-job/.
type CheatReported struct {
	Message string `json:"message"`
}

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
type StreamPair struct {
	Method       string `json:"method"`
	Path         string `json:"path"`
	RequestB64   string `json:"request_b64"`
	ResponseB64  string `json:"response_b64"`
	ReceiptB64   string `json:"receipt_b64"`
	SignatureB64 string `json:"signature_b64"`
}

// StatusEntry is one step of a job's history.
type StatusEntry struct {
	Status    JobStatus       `json:"status"`
	CreatedAt time.Time       `json:"created_at"`
	Metadata  *StatusMetadata `json:"metadata,omitempty"`
}

// Job is a job as the facilitator reports it: upstream's job object (what
// the SDK's FacilitatorJobResponse reads) plus horde's fields. Status is
// horde's (the SDK reads the last entry of StatusHistory instead). stdout,
// stderr, artifacts and upload_results come from the last status; the
// streaming server fields from the streaming_ready status (null before).
type Job struct {
	UUID                    string            `json:"uuid"`
	Status                  JobStatus         `json:"status"`
	ExecutorClass           string            `json:"executor_class"`
	DockerImage             string            `json:"docker_image"`
	JobNamespace            *string           `json:"job_namespace"`
	Args                    []string          `json:"args"`
	Env                     map[string]string `json:"env"`
	UseGPU                  bool              `json:"use_gpu"`
	ArtifactsDir            *string           `json:"artifacts_dir"`
	TargetValidatorHotkey   *string           `json:"target_validator_hotkey"`
	OnTrustedMiner          bool              `json:"on_trusted_miner"`
	DownloadTimeLimit       int               `json:"download_time_limit"`
	ExecutionTimeLimit      int               `json:"execution_time_limit"`
	UploadTimeLimit         int               `json:"upload_time_limit"`
	StreamingStartTimeLimit int               `json:"streaming_start_time_limit"`
	Stdout                  string            `json:"stdout"`
	Stderr                  string            `json:"stderr"`
	Artifacts               map[string]string `json:"artifacts"`
	UploadResults           map[string]string `json:"upload_results"`
	StreamingServerCert     *string           `json:"streaming_server_cert"`
	StreamingServerAddress  *string           `json:"streaming_server_address"`
	StreamingServerPort     *int              `json:"streaming_server_port"`
	Signatory               string            `json:"signatory"`
	ValidatorHotkey         string            `json:"validator_hotkey,omitempty"`
	CreatedAt               time.Time         `json:"created_at"`
	UpdatedAt               time.Time         `json:"updated_at"`
	LastUpdate              time.Time         `json:"last_update"`
	StatusHistory           []StatusEntry     `json:"status_history"`
}

// JobList is a page of jobs, newest first. Upstream's pages (?page=N&
// page_size=M, from 1, 10 by default, at most 256) and horde's
// (?offset=N&limit=M) have the same shape; next and previous are null at
// the ends.
type JobList struct {
	Count    int     `json:"count"`
	Next     *string `json:"next"`
	Previous *string `json:"previous"`
	Results  []Job   `json:"results"`
}

// APIError is the body of every error answer.
type APIError struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}
