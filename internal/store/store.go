// Package store declares what each role keeps durably. Backends live in
// subpackages (sqlite); every backend passes the same conformance tests.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
)

// ErrNotFound is returned for a missing record.
var ErrNotFound = errors.New("not found")

// ErrDuplicate is returned when a record that must be unique exists already.
var ErrDuplicate = errors.New("already exists")

// Receipts keeps signed receipts (miner and validator).
type Receipts interface {
	PutReceipt(ctx context.Context, r receipt.Receipt) error
	// ReceiptsAfter pages through receipts in the order they were stored:
	// those with an id above after, at most limit.
	ReceiptsAfter(ctx context.Context, after int64, limit int) ([]StoredReceipt, error)
	ReceiptsForJob(ctx context.Context, jobUUID string) ([]receipt.Receipt, error)
	// ReceiptsStoredIn returns the receipts stored at a time in [from, to),
	// in the order they were stored: a miner's receipt page (only ever
	// grows at its end, as a receipt is never stored twice).
	ReceiptsStoredIn(ctx context.Context, from, to time.Time) ([]StoredReceipt, error)
}

// StoredReceipt is a receipt with its position in the store.
type StoredReceipt struct {
	ID      int64           `json:"id"`
	Receipt receipt.Receipt `json:"receipt"`
}

// JobRecord is a job as the facilitator or validator keeps it.
type JobRecord struct {
	UUID            string
	Spec            protocol.JobSpec
	Signature       protocol.Signature
	Status          protocol.JobStatus
	ValidatorHotkey string
	MinerHotkey     string
	CreatedAt       time.Time
	UpdatedAt       time.Time
}

// Jobs keeps jobs and their status history (facilitator and validator).
type Jobs interface {
	// CreateJob stores a new job with its first status; ErrDuplicate if the
	// uuid or the client signature was seen before (replay). Signatures are
	// compared by their bytes (protocol.Signature.Decode) when they decode,
	// so a re-encoded copy is the same signature.
	CreateJob(ctx context.Context, j JobRecord) error
	Job(ctx context.Context, uuid string) (JobRecord, error)
	// AddStatus appends to the job's history and sets its status. A job in a
	// terminal status keeps it: later updates are recorded in history only.
	AddStatus(ctx context.Context, uuid string, e protocol.StatusEntry) error
	History(ctx context.Context, uuid string) ([]protocol.StatusEntry, error)
	// ListJobs returns jobs of signatory ("" for all), newest first.
	ListJobs(ctx context.Context, signatory string, offset, limit int) ([]JobRecord, int, error)
	// Unfinished returns jobs not in a terminal status (for recovery at start).
	Unfinished(ctx context.Context) ([]JobRecord, error)
	// Dispatchable returns the jobs in status sent that no validator has,
	// or whose validator was given them before stale (not acknowledged in
	// time), oldest first: what a facilitator hands out, read without the
	// jobs validators are running.
	Dispatchable(ctx context.Context, stale time.Time) ([]JobRecord, error)
	SetAssignment(ctx context.Context, uuid, validator, miner string) error
	// ClaimJob gives a job still in status sent to validator, if its
	// assignment and update time are still those of seen (as read before):
	// of the callers that read the same record, one wins and the others get
	// false. Facilitator replicas over one database claim a job before they
	// send it, so each sends it only when the job is theirs to send.
	ClaimJob(ctx context.Context, seen JobRecord, validator string) (bool, error)
}

// OutboxItem is a queued message.
type OutboxItem struct {
	ID      int64
	Message []byte
}

// Outbox keeps messages for a peer until the peer has acknowledged them, so
// none is lost while the link is down or the process restarts.
type Outbox interface {
	PushOutbox(ctx context.Context, msg []byte) error
	// PeekOutbox returns the oldest queued messages, in order.
	PeekOutbox(ctx context.Context, limit int) ([]OutboxItem, error)
	// AckOutbox removes the messages with these ids, in one transaction: a
	// page of messages the peer acknowledged costs one commit.
	AckOutbox(ctx context.Context, ids ...int64) error
	// AddStatusPush records a job's status (as Jobs.AddStatus) and queues
	// msg, in one transaction: both or neither.
	AddStatusPush(ctx context.Context, uuid string, e protocol.StatusEntry, msg []byte) error
}

// SyntheticResult is the verdict on one synthetic job.
type SyntheticResult struct {
	Cycle      int64     `json:"cycle"`
	Miner      string    `json:"miner"`
	Class      string    `json:"executor_class"`
	JobUUID    string    `json:"job_uuid"`
	Generator  string    `json:"generator"`
	Passed     bool      `json:"passed"`
	Reason     string    `json:"reason,omitempty"`
	TookMS     int64     `json:"took_ms"`
	ExpectedMS int64     `json:"expected_ms"`
	At         time.Time `json:"at"`
}

// MinerScore is a miner's score and weight for one cycle, with what it rests on.
type MinerScore struct {
	Cycle   int64           `json:"cycle"`
	Miner   string          `json:"miner"`
	Score   float64         `json:"score"`
	Weight  float64         `json:"weight"`
	Details json.RawMessage `json:"details"`
	At      time.Time       `json:"at"`
}

// Scores keeps the validator's synthetic verdicts and scores.
type Scores interface {
	PutSyntheticResult(ctx context.Context, r SyntheticResult) error
	SyntheticResults(ctx context.Context, cycle int64) ([]SyntheticResult, error)
	PutScores(ctx context.Context, scores []MinerScore) error
	// LatestScores returns the scores of the last n cycles, newest cycle first.
	LatestScores(ctx context.Context, n int) ([]MinerScore, error)
}

// Work is one job the validator ran on a miner, as its own receipts tell
// it: the job-started receipt it signed and stored when it offered the job
// (nil if it has none), which names the executor class, and the
// job-finished receipt it signed at the end, which says what the job is
// paid; the miner's countersignature is on it once collected.
type Work struct {
	Started  *receipt.Receipt
	Finished receipt.Receipt
}

// Counted is what one cycle made of one finished job: paid (Pay > 0) or
// not, and why not.
type Counted struct {
	JobUUID string  `json:"job_uuid"`
	Miner   string  `json:"miner"`
	Class   string  `json:"executor_class,omitempty"`
	Cycle   int64   `json:"cycle"`
	Pay     float64 `json:"pay"`
	Reason  string  `json:"reason,omitempty"`
}

// Ledger keeps which cycle counted which finished job (validator): each is
// counted by exactly one cycle, whenever it started. It also keeps, per
// miner, where fetching the miner's receipts goes on.
type Ledger interface {
	// Uncounted returns the jobs with a finished receipt that no cycle
	// counted yet, oldest first.
	Uncounted(ctx context.Context) ([]Work, error)
	// PutCycle stores a cycle's scores and the jobs it counted, in one
	// transaction. If one of the jobs has no finished receipt or was counted
	// before, it stores nothing and returns ErrNotFound or ErrDuplicate.
	PutCycle(ctx context.Context, scores []MinerScore, counted []Counted) error
	// Counted returns the jobs cycle counted, in job order.
	Counted(ctx context.Context, cycle int64) ([]Counted, error)
	// ReceiptCursor returns where fetching miner's receipts goes on ("" before the first fetch).
	ReceiptCursor(ctx context.Context, miner string) (string, error)
	SetReceiptCursor(ctx context.Context, miner, cursor string) error
}

// ExcuseVerdict is the judgement of one receipt a busy miner declined a
// job with, as proof that its executors were taken by other work.
type ExcuseVerdict struct {
	Cycle       int64  `json:"cycle"`
	Miner       string `json:"miner"`
	Class       string `json:"executor_class"`
	DeclinedJob string `json:"declined_job"`
	// Job and Signer are the excuse's job and the validator that signed it
	// ("" when the receipt could not be read).
	Job    string    `json:"job"`
	Signer string    `json:"signer"`
	Valid  bool      `json:"valid"`
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
}

// Excuses keeps the validator's judgements of busy miners' excuses.
type Excuses interface {
	PutExcuseVerdicts(ctx context.Context, vs []ExcuseVerdict) error
	// ExcuseVerdicts returns cycle's verdicts in the order they were stored.
	ExcuseVerdicts(ctx context.Context, cycle int64) ([]ExcuseVerdict, error)
}

// Reports keeps the latest report each validator sent (facilitator).
type Reports interface {
	PutReport(ctx context.Context, validator string, body []byte) error
	Reports(ctx context.Context) (map[string]json.RawMessage, error)
}

// PairRecord is a verified streaming pair kept for validation, with what
// proves it: the job's certificate and the miner's signature vouching for it.
type PairRecord struct {
	JobUUID, RequestID, Image, MinerHotkey, ValidatorHotkey, ReportedBy string
	Pair                                                                protocol.StreamPair
	Proof                                                               protocol.StreamingServerDetails
	At                                                                  time.Time
}

// Pairs keeps verified streaming request/response pairs.
type Pairs interface {
	// PutPair stores a pair; ErrDuplicate if the job's request id was reported before.
	PutPair(ctx context.Context, p PairRecord) error
	// PairsForImage returns the pairs of image after id, oldest first, and their ids.
	PairsForImage(ctx context.Context, image string, after int64, limit int) ([]PairRecord, []int64, error)
	// UnforwardedPairs returns the pairs for validator not yet passed on to it.
	UnforwardedPairs(ctx context.Context, validator string, limit int) ([]PairRecord, []int64, error)
	// MarkForwarded marks pair id delivered to validator (nothing if the
	// pair is another validator's).
	MarkForwarded(ctx context.Context, validator string, id int64) error
}

// CheatRecord is a client's report that a job's miner cheated, as the
// facilitator keeps it until the job's validator has it.
type CheatRecord struct {
	JobUUID, TrustedJobUUID, Reporter, ValidatorHotkey string
	// Details is the client's JSON, as sent ("null" when none).
	Details json.RawMessage
	// Signature is the client's, over the report (scope FullRequest).
	Signature protocol.Signature
	At        time.Time
}

// CheatReports keeps clients' cheat reports (facilitator).
type CheatReports interface {
	// PutCheatReport stores a report; ErrDuplicate if the job was reported before.
	PutCheatReport(ctx context.Context, r CheatRecord) error
	// UnforwardedCheatReports returns the reports on validator's jobs not
	// yet passed on to it, oldest first, and their ids.
	UnforwardedCheatReports(ctx context.Context, validator string, limit int) ([]CheatRecord, []int64, error)
	MarkCheatForwarded(ctx context.Context, id int64) error
}

// Window is one validation window as the validator keeps it.
type Window struct {
	ID       int64           `json:"id"`
	Image    string          `json:"image"`
	LastPair int64           `json:"last_pair"`
	Body     json.RawMessage `json:"body"`
	At       time.Time       `json:"at"`
}

// Cheat is proof that a miner cheated: evidence that can back a slash.
type Cheat struct {
	ID      int64  `json:"id"`
	Window  int64  `json:"window"`
	Miner   string `json:"miner"`
	JobUUID string `json:"job_uuid"`
	// RequestID is the request of the miner's receipt; ReplaySHA256 the
	// digest of the request replayed on the trusted miner, which is the
	// digest of the request that receipt binds ("" for cheats kept before).
	RequestID    string          `json:"request_id,omitempty"`
	ReplaySHA256 string          `json:"replay_sha256,omitempty"`
	Evidence     json.RawMessage `json:"evidence"`
	At           time.Time       `json:"at"`
}

// Validations keeps the validator's validation windows and the cheats they proved.
type Validations interface {
	// PutWindow stores a window and its cheats together; it returns the window's id.
	PutWindow(ctx context.Context, w Window, cheats []Cheat) (int64, error)
	// LastPair is the id of the last pair of image a window covered (0: none).
	LastPair(ctx context.Context, image string) (int64, error)
	Windows(ctx context.Context, limit int) ([]Window, error)
	// Cheats returns cheats proved at or after since.
	Cheats(ctx context.Context, since time.Time) ([]Cheat, error)
}
