// Package jobrun drives one job: a Run is one attempt on one miner, a state
// machine whose stages (reserve, startup, download, streaming start, execute,
// upload) each wait on the miner's messages with a deadline; a Driver runs a
// job to its end, offering it to miners from a pool and retrying elsewhere
// when a miner declines or is lost before execution.
//
// The package knows no transport: frames go out through a Link, the miner's
// messages come in through an Inbox, statuses leave through Notes, and the
// result of a run is a plain Outcome.
package jobrun

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"time"

	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
	"github.com/horde-compute/horde/sig"
)

// Link sends frames to the miner running a job.
type Link interface {
	Send(ctx context.Context, m protocol.Message) error
}

// Inbox yields the miner's messages for one job, in the order they arrived,
// none dropped. Next returns ErrLost (or an error wrapping it) once the
// miner's session ended and every message before the end was read, and
// ctx's error when ctx ends first.
type Inbox interface {
	Next(ctx context.Context) (protocol.Message, error)
}

// ErrLost says the session with the miner ended.
var ErrLost = errors.New("miner session ended")

// Notes hears what a job reaches: its statuses, and the results of volume
// requests the miner reports while it serves.
type Notes interface {
	Status(s protocol.JobStatus, meta *protocol.StatusMetadata)
	VolumeResult(r *protocol.V0VolumeResult)
}

// Receipts keeps the receipts the validator signs.
type Receipts interface {
	PutReceipt(ctx context.Context, r receipt.Receipt) error
	ReceiptsForJob(ctx context.Context, jobUUID string) ([]receipt.Receipt, error)
}

// Timing holds the validator's stage deadlines (upstream defaults).
type Timing struct {
	Reserve time.Duration // offer → accept/decline
	// SpinUp is each class's executor spin-up time (0 for always_on classes).
	SpinUp       map[string]time.Duration
	StartupSlack time.Duration // added to spin-up for the executor to start
	Leeway       time.Duration // one allowance for the whole job
}

// DefaultTiming returns upstream's defaults.
func DefaultTiming() Timing {
	return Timing{Reserve: 7 * time.Second, StartupSlack: 5 * time.Second, Leeway: 5 * time.Second,
		SpinUp: map[string]time.Duration{protocol.ClassSpinUp4minGPU24: 4 * time.Minute}}
}

// Params are what every run of one validator shares.
type Params struct {
	Hotkey    *sig.Hotkey
	Timing    Timing
	AllowPull bool
	// Digests pins the images streaming jobs may use (the whitelist); the
	// digest goes with the offer.
	Digests  map[string]string
	Receipts Receipts
	Log      *slog.Logger
	// Metrics is told of runs and their stages (nil: nobody is).
	Metrics Observer
	// Upstream speaks upstream's protocol to every miner, horde's included:
	// what the miners advertise is ignored.
	Upstream bool
}

// Observer is told what runs do, for metrics. It is an interface so that
// this room, logic only, imports no metrics library (which brings net/http).
type Observer interface {
	// Stage is told how long a stage of a run took that completed.
	Stage(stage string, d time.Duration)
	// Attempt is told how a run ended for the job: busy (declined as
	// busy), retry (tried elsewhere next), final (the job's last run).
	Attempt(outcome string)
}

// observer is p's Observer, or one that ignores everything.
func (p Params) observer() Observer {
	if p.Metrics == nil {
		return nobody{}
	}
	return p.Metrics
}

type nobody struct{}

func (nobody) Stage(string, time.Duration) {}
func (nobody) Attempt(string)              {}

// Job is what is run.
type Job struct {
	UUID    string
	Spec    *protocol.JobSpec
	Organic bool // a client's job (false: the validator's own)
}

// Outcome is how one attempt on one miner ended.
type Outcome struct {
	Status protocol.JobStatus
	Meta   *protocol.StatusMetadata
	// Retry says another miner may try: declined, or lost before execution.
	Retry bool
	// Excuses are the receipts a busy miner declined with.
	Excuses []json.RawMessage
	// Offered is the job-started receipt the declined offer carried: its
	// timestamp is when the executors had to be taken.
	Offered *receipt.StartedPayload
}

// Busy reports a decline because every executor of the class was taken.
func (o Outcome) Busy() bool {
	return o.Meta != nil && o.Meta.JobRejectionDetails != nil && o.Meta.JobRejectionDetails.Reason == protocol.RejectBusy
}

// declined reports that the miner refused the offer: nothing ran.
func (o Outcome) declined() bool { return o.Retry && o.Status == protocol.StatusRejected }

// Reason says in one line why the attempt ended as it did, naming miner if given.
func (o Outcome) Reason(miner string) string {
	m := o.Meta
	var s string
	switch {
	case m == nil:
		s = string(o.Status)
	case m.JobRejectionDetails != nil:
		s = "declined (" + string(m.JobRejectionDetails.Reason) + "): " + m.JobRejectionDetails.Message
	case m.HordeFailureDetails != nil:
		s = string(m.HordeFailureDetails.Reason) + ": " + m.HordeFailureDetails.Message
	default:
		s = string(o.Status)
	}
	if miner != "" {
		return "miner " + miner + " " + s
	}
	return s
}

// HordeFail is the outcome of a failure the validator reports.
func HordeFail(reason protocol.HordeFailureReason, msg string, retry bool) Outcome {
	return Outcome{Status: protocol.StatusHordeFailed, Retry: retry, Meta: &protocol.StatusMetadata{HordeFailureDetails: &protocol.HordeFailureDetails{
		ReportedBy: protocol.ByValidator, Reason: reason, Message: msg}}}
}

// terminal maps a miner's failure message to an outcome, or nil.
func terminal(m protocol.Message) *Outcome {
	switch m := m.(type) {
	case *protocol.V0JobFailedRequest:
		code := protocol.ReasonCode(m.Context)
		if code == "" {
			code = string(m.Reason)
		}
		return &Outcome{Status: protocol.StatusFailed, Meta: &protocol.StatusMetadata{Comment: code, JobFailureDetails: &protocol.FailureDetails{
			Reason: m.Reason, Stage: m.Stage, Message: m.Message, Context: m.Context, DockerProcessExitStatus: m.DockerProcessExitStatus,
			DockerProcessStdout: m.DockerProcessStdout, DockerProcessStderr: m.DockerProcessStderr}}}
	case *protocol.V0HordeFailedRequest:
		return &Outcome{Status: protocol.StatusHordeFailed, Meta: &protocol.StatusMetadata{HordeFailureDetails: &protocol.HordeFailureDetails{
			ReportedBy: m.ReportedBy, Reason: m.Reason, Message: m.Message, Context: m.Context}}}
	case *protocol.V0ExecutorFailedRequest:
		return &Outcome{Status: protocol.StatusHordeFailed, Meta: &protocol.StatusMetadata{HordeFailureDetails: &protocol.HordeFailureDetails{
			ReportedBy: protocol.ByMiner, Reason: protocol.HordeSpinupFailed, Message: "executor failed to start"}}}
	case *protocol.V0StreamingJobNotReadyRequest:
		return &Outcome{Status: protocol.StatusHordeFailed, Meta: &protocol.StatusMetadata{HordeFailureDetails: &protocol.HordeFailureDetails{
			ReportedBy: protocol.ByMiner, Reason: protocol.HordeStreamingFailed, Message: "streaming job did not become ready"}}}
	}
	return nil
}
