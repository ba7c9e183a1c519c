package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Miner is the miner's metric set.
type Miner struct {
	f          factory
	validators *prometheus.GaugeVec
	jobs       *prometheus.CounterVec
}

// NewMiner makes the miner's set on r (nil: registered nowhere). The
// signing proxies of the streaming jobs its executors run have their own
// set (NewStreaming), on the same registry or another.
func NewMiner(r prometheus.Registerer) *Miner {
	f := factory{r}
	const sub = "miner"
	return &Miner{f: f,
		validators: f.gauge(sub, "validators_connected", "Validators with a session up."),
		jobs: f.counter(sub, "jobs_total", "Job offers and their ends, by event (accepted, declined, horde_failed) and reason (none if there is none).",
			"event", "reason"),
	}
}

// Watch registers the executors-by-class gauge, read at each scrape.
func (m *Miner) Watch(executors Executors) {
	if m == nil || executors == nil {
		return
	}
	m.f.register(newExecutorsCollector("miner", executors))
}

// Validators adds delta to the connected validators.
func (m *Miner) Validators(delta int) {
	if m == nil {
		return
	}
	m.validators.WithLabelValues().Add(float64(delta))
}

// Job counts an event of a job offer (accepted, declined, horde_failed).
func (m *Miner) Job(event, reason string) {
	if m == nil {
		return
	}
	m.jobs.WithLabelValues(event, orNone(reason)).Inc()
}
