package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Validator is the validator's metric set.
type Validator struct {
	f         factory
	jobs      *prometheus.CounterVec
	stages    *prometheus.HistogramVec
	attempts  *prometheus.CounterVec
	retries   *prometheus.CounterVec
	synthetic *prometheus.CounterVec
	rounds    *prometheus.CounterVec
	roundTime *prometheus.HistogramVec
	receipts  *prometheus.CounterVec
	windows   *prometheus.CounterVec
	verdicts  *prometheus.CounterVec
	trusted   *prometheus.CounterVec
}

// NewValidator makes the validator's set on r (nil: registered nowhere).
func NewValidator(r prometheus.Registerer) *Validator {
	f := factory{r}
	const sub = "validator"
	return &Validator{f: f,
		jobs: f.counter(sub, "jobs_total",
			"Client jobs that ended here, by terminal status and, for rejections and failures, reason (none otherwise).", "status", "reason"),
		stages: f.histogram(sub, "job_stage_seconds", "Time each stage of a job's run on a miner took, for stages that completed.",
			StageBuckets, "stage"),
		attempts: f.counter(sub, "job_attempts_total",
			"Runs of jobs on miners, by outcome (busy: declined as busy, retry: failed and tried elsewhere, final: the job's last run).", "outcome"),
		retries: f.counter(sub, "job_retries_total", "Jobs retried on another miner."),
		synthetic: f.counter(sub, "synthetic_jobs_total", "Synthetic jobs judged, by executor class and result (passed, failed, excused).",
			"class", "result"),
		rounds:    f.counter(sub, "synthetic_rounds_total", "Synthetic rounds, by result (done, failed).", "result"),
		roundTime: f.histogram(sub, "synthetic_round_seconds", "How long synthetic rounds took.", StageBuckets),
		receipts: f.counter(sub, "receipts_total", "Receipts fetched from miners, by result (verified, refused) and reason (none when verified).",
			"result", "reason"),
		windows: f.counter(sub, "validation_windows_total", "Validation windows opened, by result (done, failed).", "result"),
		verdicts: f.counter(sub, "validation_verdicts_total", "Replayed streaming pairs judged in validation windows, by verdict (match, mismatch).",
			"verdict"),
		trusted: f.counter(sub, "validation_trusted_seconds_total", "Seconds the trusted miner spent serving validation windows."),
	}
}

// ValidatorGauges are what the validator's gauges read at each scrape; any
// may be nil.
type ValidatorGauges struct {
	Miners      func() int  // miners of the metagraph with a session up
	Executors   Executors   // executors by class, busy and free
	Outbox      func() int  // messages queued for the facilitator
	Facilitator func() bool // the facilitator session is up
}

// Watch registers the gauges g reads.
func (m *Validator) Watch(g ValidatorGauges) {
	if m == nil {
		return
	}
	const sub = "validator"
	if g.Miners != nil {
		m.f.gaugeFunc(sub, "miners_connected", "Miners of the metagraph with a session up.", func() float64 { return float64(g.Miners()) })
	}
	if g.Executors != nil {
		m.f.register(newExecutorsCollector(sub, g.Executors))
	}
	if g.Outbox != nil {
		m.f.gaugeFunc(sub, "outbox_depth", "Messages queued for the facilitator, not yet acknowledged.", func() float64 { return float64(g.Outbox()) })
	}
	if g.Facilitator != nil {
		m.f.gaugeFunc(sub, "facilitator_connected", "Whether the facilitator session is up (1) or not (0).", func() float64 {
			if g.Facilitator() {
				return 1
			}
			return 0
		})
	}
}

// Job counts a client job that ended here.
func (m *Validator) Job(status, reason string) {
	if m == nil {
		return
	}
	m.jobs.WithLabelValues(status, orNone(reason)).Inc()
}

// Stage observes a completed stage of a run.
func (m *Validator) Stage(stage string, d time.Duration) {
	if m == nil || d < 0 {
		return
	}
	m.stages.WithLabelValues(stage).Observe(seconds(d))
}

// Attempt counts a run of a job on a miner by its outcome (busy, retry, final).
func (m *Validator) Attempt(outcome string) {
	if m == nil {
		return
	}
	m.attempts.WithLabelValues(outcome).Inc()
	if outcome == "retry" {
		m.retries.WithLabelValues().Inc()
	}
}

// Synthetic counts a judged synthetic job.
func (m *Validator) Synthetic(class, result string) {
	if m == nil {
		return
	}
	m.synthetic.WithLabelValues(class, result).Inc()
}

// Round counts a synthetic round and observes how long it took.
func (m *Validator) Round(ok bool, took time.Duration) {
	if m == nil {
		return
	}
	m.rounds.WithLabelValues(map[bool]string{true: "done", false: "failed"}[ok]).Inc()
	m.roundTime.WithLabelValues().Observe(seconds(took))
}

// Receipt counts a fetched receipt: verified (reason "") or refused with reason.
func (m *Validator) Receipt(reason string) {
	if m == nil {
		return
	}
	if reason == "" {
		m.receipts.WithLabelValues("verified", "none").Inc()
		return
	}
	m.receipts.WithLabelValues("refused", reason).Inc()
}

// Window counts a validation window, its verdicts and the trusted miner's time.
func (m *Validator) Window(ok bool, matches, mismatches int, trusted time.Duration) {
	if m == nil {
		return
	}
	m.windows.WithLabelValues(map[bool]string{true: "done", false: "failed"}[ok]).Inc()
	m.verdicts.WithLabelValues("match").Add(float64(matches))
	m.verdicts.WithLabelValues("mismatch").Add(float64(mismatches))
	m.trusted.WithLabelValues().Add(seconds(trusted))
}
