package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Streaming is the metric set of streaming jobs' signing proxies.
type Streaming struct {
	requests *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	signing  *prometheus.HistogramVec
}

// NewStreaming makes the streaming proxies' set on r (nil: registered nowhere).
func NewStreaming(r prometheus.Registerer) *Streaming {
	f := factory{r}
	const sub = "streaming"
	return &Streaming{
		requests: f.counter(sub, "requests_total", "Requests the signing proxies answered, by HTTP status code.", "code"),
		bytes:    f.counter(sub, "bytes_total", "Body bytes through the signing proxies, by direction (request, response).", "direction"),
		signing:  f.histogram(sub, "signing_seconds", "Time to sign a receipt once a response was complete.", LatencyBuckets),
	}
}

// Request counts an answered request with its status and body sizes.
func (m *Streaming) Request(code int, in, out int64) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(strconv.Itoa(code)).Inc()
	m.bytes.WithLabelValues("request").Add(float64(in))
	m.bytes.WithLabelValues("response").Add(float64(out))
}

// Signed observes how long signing a receipt took.
func (m *Streaming) Signed(d time.Duration) {
	if m == nil {
		return
	}
	m.signing.WithLabelValues().Observe(seconds(d))
}
