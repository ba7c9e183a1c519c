package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Facilitator is the facilitator's metric set.
type Facilitator struct {
	jobsCreated   *prometheus.CounterVec
	statuses      *prometheus.CounterVec
	stages        *prometheus.HistogramVec
	dispatches    *prometheus.CounterVec
	retries       *prometheus.CounterVec
	validators    *prometheus.GaugeVec
	pairs         *prometheus.CounterVec
	reports       *prometheus.CounterVec
	dashboardSubs *prometheus.GaugeVec
}

// NewFacilitator makes the facilitator's set on r (nil: registered nowhere).
func NewFacilitator(r prometheus.Registerer) *Facilitator {
	f := factory{r}
	const sub = "facilitator"
	return &Facilitator{
		jobsCreated: f.counter(sub, "jobs_created_total", "Jobs accepted from clients.", "kind"),
		statuses: f.counter(sub, "job_statuses_total",
			"Job statuses recorded, by status and, for rejections and failures, reason (none otherwise).", "status", "reason"),
		stages: f.histogram(sub, "job_stage_seconds",
			"Time jobs spent in each stage: queue (accepted to given to a validator), total (accepted to a terminal status), "+
				"and the validator's stages as reported with the final status.", StageBuckets, "stage"),
		dispatches: f.counter(sub, "dispatch_attempts_total",
			"Attempts to give a job to a validator, by result (sent, send_failed, claim_failed, claimed_elsewhere).", "result"),
		retries:       f.counter(sub, "dispatch_retries_total", "Jobs given again to their validator, which had not acknowledged them in time."),
		validators:    f.gauge(sub, "validators_connected", "Validators with a session up."),
		pairs:         f.counter(sub, "stream_pairs_total", "Streaming pairs clients reported, by result (accepted, refused).", "result"),
		reports:       f.counter(sub, "validator_reports_total", "Score reports received from validators."),
		dashboardSubs: f.gauge(sub, "dashboard_streams", "Dashboard event streams open."),
	}
}

// JobCreated counts an accepted job (kind: organic or streaming).
func (m *Facilitator) JobCreated(streaming bool) {
	if m == nil {
		return
	}
	kind := "batch"
	if streaming {
		kind = "streaming"
	}
	m.jobsCreated.WithLabelValues(kind).Inc()
}

// Status counts a recorded status with its reason ("" for none).
func (m *Facilitator) Status(status, reason string) {
	if m == nil {
		return
	}
	m.statuses.WithLabelValues(status, orNone(reason)).Inc()
}

// Stage observes how long a job spent in stage.
func (m *Facilitator) Stage(stage string, d time.Duration) {
	if m == nil || d < 0 {
		return
	}
	m.stages.WithLabelValues(stage).Observe(seconds(d))
}

// Dispatch counts an attempt to give a job to a validator; retry says the
// job had been given to it before.
func (m *Facilitator) Dispatch(result string, retry bool) {
	if m == nil {
		return
	}
	m.dispatches.WithLabelValues(result).Inc()
	if retry && result == "sent" {
		m.retries.WithLabelValues().Inc()
	}
}

// Validators adds delta to the connected validators.
func (m *Facilitator) Validators(delta int) {
	if m == nil {
		return
	}
	m.validators.WithLabelValues().Add(float64(delta))
}

// Pair counts a reported streaming pair.
func (m *Facilitator) Pair(accepted bool) {
	if m == nil {
		return
	}
	m.pairs.WithLabelValues(map[bool]string{true: "accepted", false: "refused"}[accepted]).Inc()
}

// Report counts a validator's score report.
func (m *Facilitator) Report() {
	if m == nil {
		return
	}
	m.reports.WithLabelValues().Inc()
}

// DashboardStreams adds delta to the open dashboard event streams.
func (m *Facilitator) DashboardStreams(delta int) {
	if m == nil {
		return
	}
	m.dashboardSubs.WithLabelValues().Add(float64(delta))
}
