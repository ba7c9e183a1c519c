// Package metrics defines the Prometheus metrics of each role (facilitator,
// validator, miner, and the streaming proxy in front of a streaming job's
// service), always on a registry the caller injects, never the global one.
//
// Each role's set is made by one constructor taking a prometheus.Registerer;
// a nil Registerer gives a set whose metrics count but are registered
// nowhere. Every method is safe on a nil set, so code that records an event
// needs no check for whether metrics are wanted. Labels take only bounded
// values (statuses, reasons, classes, stages), never hotkeys or job ids.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every horde metric.
const Namespace = "horde"

// NewRegistry returns a registry with the Go runtime and process collectors,
// for one role (or one process) to register its set on.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Handler serves g's metrics in Prometheus' exposition format (/metrics).
func Handler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// StageBuckets are the buckets of stage durations, in seconds: from a
// tenth of a second (a reservation on loopback) to an hour (a long job).
var StageBuckets = []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}

// LatencyBuckets are the buckets of short latencies (signing, proxying), in seconds.
var LatencyBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1}

// factory registers what it makes on r, or nowhere when r is nil.
type factory struct{ r prometheus.Registerer }

func (f factory) register(c prometheus.Collector) {
	if f.r != nil {
		f.r.MustRegister(c)
	}
}

func (f factory) counter(sub, name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Subsystem: sub, Name: name, Help: help}, labels)
	f.register(c)
	return c
}

func (f factory) gauge(sub, name, help string, labels ...string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: sub, Name: name, Help: help}, labels)
	f.register(g)
	return g
}

func (f factory) histogram(sub, name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Subsystem: sub, Name: name, Help: help, Buckets: buckets}, labels)
	f.register(h)
	return h
}

// gaugeFunc registers a gauge whose value f reads at each scrape.
func (f factory) gaugeFunc(sub, name, help string, fn func() float64) {
	f.register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: sub, Name: name, Help: help}, fn))
}

// Executors reports executors by class: how many are busy and how many
// free. It is read at each scrape.
type Executors func() map[string]Load

// Load is the busy and free executors of one class.
type Load struct{ Busy, Free int }

// executorsCollector turns an Executors func into the gauge
// <sub>_executors{class, state="busy"|"free"}.
type executorsCollector struct {
	desc *prometheus.Desc
	read Executors
}

func newExecutorsCollector(sub string, read Executors) *executorsCollector {
	return &executorsCollector{read: read, desc: prometheus.NewDesc(prometheus.BuildFQName(Namespace, sub, "executors"),
		"Executors by class and state (busy or free), as the "+sub+" sees them.", []string{"class", "state"}, nil)}
}

func (c *executorsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *executorsCollector) Collect(ch chan<- prometheus.Metric) {
	for class, l := range c.read() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(l.Busy), class, "busy")
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(l.Free), class, "free")
	}
}

// seconds is d in seconds.
func seconds(d time.Duration) float64 { return d.Seconds() }

// orNone is s, or "none" when it is empty: a label value that says so.
func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
