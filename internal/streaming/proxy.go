// Package streaming runs the job side of streaming jobs: the signing proxy
// in front of a job's web service.
package streaming

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/horde-compute/horde/internal/metrics"
	sr "github.com/horde-compute/horde/streamreceipt"
)

// DefaultSkew is how far a request's timestamp may be from the proxy's clock.
const DefaultSkew = 5 * time.Second

// Proxy is the signing proxy in front of a streaming job's service. For each
// request it checks the client's timestamp and request id (or, for a client
// that sends neither, stamps the request itself), passes on to the service
// only what the receipt binds (method, target, content type, body), streams
// the request and the response through without buffering either, hashes
// both on the fly, and sends the signed v2 receipt as trailers once the
// response is complete. The response carries the request id in a header;
// receipts stay retrievable by it for the job's life.
type Proxy struct {
	JobUUID  string
	Key      ed25519.PrivateKey
	Upstream *url.URL
	Skew     time.Duration
	// Transport reaches the service (default: a new http.Transport).
	Transport http.RoundTripper
	// Now is the proxy's clock (default time.Now).
	Now func() time.Time
	// Metrics counts requests and bytes and times signing (nil: not counted).
	Metrics *metrics.Streaming

	mu       sync.Mutex
	receipts map[string]*signed
}

type signed struct {
	Receipt   string `json:"receipt"`
	Signature string `json:"signature"`
	done      bool
}

func (p *Proxy) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

// transport is the proxy's own connection pool to its one service: kept
// connections make small requests cheap (the default transport keeps two),
// and a pool per job never hands a request to another job's service that
// had the same address.
func (p *Proxy) transport() http.RoundTripper {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.Transport == nil {
		p.Transport = &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second,
			DisableCompression: true}
	}
	return p.Transport
}

// Close drops the proxy's kept connections to the service.
func (p *Proxy) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t, ok := p.Transport.(*http.Transport); ok {
		t.CloseIdleConnections()
	}
}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func fail(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	io.WriteString(w, "horde proxy: "+msg+"\n")
}

// refusal is a request the proxy answers itself, with status and why.
type refusal struct {
	status int
	msg    string
}

func (e *refusal) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &refusal{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

// ServeHTTP implements http.Handler.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	from := p.now()
	if id, ok := strings.CutPrefix(r.URL.Path, sr.ReceiptsPath); ok && r.Method == http.MethodGet {
		p.serveReceipt(w, id)
		return
	}
	id, stamp, err := p.stampOf(r, from)
	if err == nil {
		var x sr.Exchange
		if x, err = boundRequest(r); err == nil {
			id, err = p.reserve(id, stamp)
			if err == nil {
				p.forward(w, r, from, id, stamp, x)
				return
			}
		}
	}
	var ref *refusal
	if errors.As(err, &ref) {
		p.Metrics.Request(ref.status, 0, 0)
		fail(w, ref.status, ref.msg)
		return
	}
	p.Metrics.Request(http.StatusInternalServerError, 0, 0)
	fail(w, http.StatusInternalServerError, err.Error())
}

// stampOf says who stamps r: the client, with both X-Horde-Timestamp (within
// the skew of the proxy's clock) and X-Horde-Request-Id, or — when the
// client sent neither, as upstream clients do — the proxy itself, with its
// receive time and a request id reserve makes.
func (p *Proxy) stampOf(r *http.Request, now time.Time) (string, sr.Stamp, error) {
	tss, ids := r.Header.Values(sr.HeaderTimestamp), r.Header.Values(sr.HeaderRequestID)
	switch {
	case len(tss) == 0 && len(ids) == 0:
		return "", sr.StampProxy, nil
	case len(tss) == 0:
		return "", "", badRequest("missing %s: a client-stamped request sends it with %s (an unstamped one sends neither)", sr.HeaderTimestamp, sr.HeaderRequestID)
	case len(ids) == 0:
		return "", "", badRequest("missing %s: a client-stamped request sends it with %s (an unstamped one sends neither)", sr.HeaderRequestID, sr.HeaderTimestamp)
	case len(tss) > 1 || len(ids) > 1:
		return "", "", badRequest("%s and %s must each be sent once", sr.HeaderTimestamp, sr.HeaderRequestID)
	}
	t, err := time.Parse(time.RFC3339Nano, tss[0])
	if err != nil {
		return "", "", badRequest("%s is not RFC 3339: %v", sr.HeaderTimestamp, err)
	}
	skew := p.Skew
	if skew == 0 {
		skew = DefaultSkew
	}
	if d := now.Sub(t); d > skew || d < -skew {
		return "", "", badRequest("%s is %s away from the job's clock (limit %s)", sr.HeaderTimestamp, d.Round(time.Millisecond), skew)
	}
	if err := sr.CheckRequestID(ids[0]); err != nil {
		return "", "", badRequest("malformed %s: %v", sr.HeaderRequestID, err)
	}
	return ids[0], sr.StampClient, nil
}

// boundRequest is what the receipt binds of r besides its body — method,
// target and content type — exactly as the service will receive them. A
// request the receipt cannot carry is refused.
func boundRequest(r *http.Request) (sr.Exchange, error) {
	x := sr.Exchange{Method: r.Method, Target: r.URL.RequestURI()}
	if r.RequestURI != x.Target {
		return x, badRequest("request target %.200q is not in origin form (the service would receive %.200q)", r.RequestURI, x.Target)
	}
	if err := sr.CheckTarget(x.Target); err != nil {
		return x, badRequest("request target: %v", err)
	}
	if err := sr.CheckMethod(x.Method); err != nil {
		return x, badRequest("method: %v", err)
	}
	cts := r.Header.Values("Content-Type")
	if len(cts) > 1 {
		return x, badRequest("more than one Content-Type")
	}
	if len(cts) == 1 {
		x.RequestContentType = cts[0]
	}
	if err := sr.CheckContentType(x.RequestContentType); err != nil {
		return x, badRequest("Content-Type: %v", err)
	}
	return x, nil
}

// reserve claims request id for one exchange (making one for a
// proxy-stamped request); a client's id is refused if this job saw it.
func (p *Proxy) reserve(id string, stamp sr.Stamp) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.receipts == nil {
		p.receipts = map[string]*signed{}
	}
	if stamp == sr.StampProxy {
		for id == "" || p.receipts[id] != nil {
			var b [16]byte
			rand.Read(b[:])
			id = hex.EncodeToString(b[:])
		}
	}
	if _, dup := p.receipts[id]; dup {
		return "", &refusal{http.StatusConflict, sr.HeaderRequestID + " " + id + " was used before in this job"}
	}
	p.receipts[id] = &signed{}
	return id, nil
}

// outbound is the request the service gets: what the receipt binds and
// nothing else of the client's — method, target, content type and body —
// so that replaying the signed request replays what the service answered.
// Framing (length, chunking) is the transport's.
func (p *Proxy) outbound(r *http.Request, x sr.Exchange) *http.Request {
	out := r.WithContext(r.Context())
	u := *r.URL
	u.Scheme, u.Host = p.Upstream.Scheme, p.Upstream.Host
	out.URL, out.Host, out.RequestURI, out.Close = &u, p.Upstream.Host, "", false
	out.Header, out.Trailer = http.Header{}, nil
	if x.RequestContentType != "" {
		out.Header["Content-Type"] = []string{x.RequestContentType}
	}
	return out
}

// responseContentType is the Content-Type the receipt binds: the service's
// first (passed on alone), or none.
func responseContentType(h http.Header) (string, error) {
	ct := h.Get("Content-Type")
	if err := sr.CheckContentType(ct); err != nil {
		return "", &refusal{http.StatusBadGateway, "the service's Content-Type cannot be signed: " + err.Error()}
	}
	return ct, nil
}

// copyResponseHeader passes the service's header on, with exactly the
// signed content type (none means none: no sniffed one is added), and none
// of the service's own X-Horde-* fields or length.
func copyResponseHeader(dst, src http.Header, ctype string) {
	for k, vs := range src {
		if k == "Content-Type" || k == "Content-Length" || strings.HasPrefix(k, "X-Horde-") {
			continue
		}
		dst[k] = append(dst[k], vs...)
	}
	if ctype == "" {
		dst["Content-Type"] = nil
	} else {
		dst["Content-Type"] = []string{ctype}
	}
}

// forward passes one reserved exchange through to the service and back,
// hashing both bodies, and signs its receipt once the response is complete.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, from time.Time, id string, stamp sr.Stamp, x sr.Exchange) {
	in := sha256.New()
	out := p.outbound(r, x)
	code, inBytes, outBytes := http.StatusBadGateway, int64(0), int64(0)
	defer func() { p.Metrics.Request(code, inBytes, outBytes) }()
	// The request body streams to the service through a pipe, hashed on the
	// way. HTTP/1 may refuse reads of a request body once the response has
	// started, so the response waits until the body has been read to its end
	// (a service that answers without reading all of it gets a grace period).
	bodyDone := make(chan struct{})
	if r.Body == nil || r.Body == http.NoBody {
		out.Body = http.NoBody
		close(bodyDone)
	} else {
		pr, pw := io.Pipe()
		out.Body = pr
		go func() { // owned: ends at the body's end, or when the pipe is closed below
			var err error
			inBytes, err = io.Copy(io.MultiWriter(pw, in), r.Body)
			pw.CloseWithError(err)
			close(bodyDone)
		}()
		defer func() {
			pr.Close()
			<-bodyDone
		}()
	}
	resp, err := p.transport().RoundTrip(out)
	if err != nil {
		fail(w, http.StatusBadGateway, "service: "+err.Error())
		return
	}
	defer resp.Body.Close()
	select {
	case <-bodyDone:
	case <-time.After(10 * time.Second):
	case <-r.Context().Done():
		return
	}
	ctype, err := responseContentType(resp.Header)
	if err != nil {
		fail(w, http.StatusBadGateway, err.Error())
		return
	}
	copyResponseHeader(w.Header(), resp.Header, ctype)
	w.Header().Set(sr.HeaderRequestID, id)
	w.Header().Set("Trailer", sr.TrailerReceipt+", "+sr.TrailerSig)
	w.WriteHeader(resp.StatusCode)
	code = resp.StatusCode
	outHash := sha256.New()
	// Stream token by token what the service streams (SSE, chunked replies);
	// a reply of known length goes out in as few writes as it can.
	var flusher http.Flusher
	if resp.ContentLength < 0 || strings.HasPrefix(ctype, "text/event-stream") {
		flusher, _ = w.(http.Flusher)
	}
	bp := buffers.Get().(*[]byte)
	defer buffers.Put(bp)
	buf := *bp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			outHash.Write(buf[:n])
			outBytes += int64(n)
			if _, werr := w.Write(buf[:n]); werr != nil {
				return // the client went away: no receipt
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			// The service broke mid-stream: end the response abnormally, so
			// the client sees an error and gets no receipt.
			panic(http.ErrAbortHandler)
		}
	}
	rc := &sr.Receipt{Version: 2, JobUUID: p.JobUUID, RequestID: id, Stamp: stamp, TimestampFrom: from.UTC().Truncate(time.Microsecond),
		TimestampTo: p.now().UTC().Truncate(time.Microsecond), Method: x.Method, Target: x.Target, RequestContentType: x.RequestContentType,
		InputSHA256: hex.EncodeToString(in.Sum(nil)), Status: resp.StatusCode, ResponseContentType: ctype,
		OutputSHA256: hex.EncodeToString(outHash.Sum(nil))}
	p.sign(w, id, rc)
}

// sign sets the receipt trailers and keeps the receipt for GET ReceiptsPath+id.
func (p *Proxy) sign(w http.ResponseWriter, id string, rc *sr.Receipt) {
	start := time.Now()
	blob, sig, err := sr.SignReceipt(p.Key, rc)
	p.Metrics.Signed(time.Since(start))
	if err != nil {
		// Every value was checked before the request went on; a receipt that
		// still cannot be encoded ends the response without one.
		panic(http.ErrAbortHandler)
	}
	w.Header().Set(sr.TrailerReceipt, blob)
	w.Header().Set(sr.TrailerSig, sig)
	p.mu.Lock()
	e := p.receipts[id]
	e.Receipt, e.Signature, e.done = blob, sig, true
	p.mu.Unlock()
}

func (p *Proxy) serveReceipt(w http.ResponseWriter, id string) {
	p.mu.Lock()
	e, ok := p.receipts[id]
	var body []byte
	if ok && e.done {
		body, _ = json.Marshal(e)
	}
	p.mu.Unlock()
	if body == nil {
		fail(w, http.StatusNotFound, "no receipt for request "+id)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(body)
}

// Receipts returns how many receipts the proxy has signed.
func (p *Proxy) Receipts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, e := range p.receipts {
		if e.done {
			n++
		}
	}
	return n
}
