package miner

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/horde-compute/horde/internal/metrics"
)

// instrument makes the miner's metric set on its Config's registerer,
// watches its executors, and serves GET /metrics on mux when the
// registerer is a Gatherer too.
func (m *Miner) instrument(mux *http.ServeMux) {
	m.metrics = metrics.NewMiner(m.cfg.Metrics)
	m.metrics.Watch(m.executorLoad)
	if g, ok := m.cfg.Metrics.(prometheus.Gatherer); ok {
		mux.Handle("GET /metrics", metrics.Handler(g))
	}
}

// executorLoad is the miner's executors by class: reserved (busy) and free.
func (m *Miner) executorLoad() map[string]metrics.Load {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]metrics.Load, len(m.cfg.Manifest))
	for class, n := range m.cfg.Manifest {
		busy := m.reserved[class]
		out[class] = metrics.Load{Busy: busy, Free: max(0, n-busy)}
	}
	return out
}
