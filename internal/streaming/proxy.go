// Package streaming runs the job side of streaming jobs: the signing proxy
// in front of a job's web service.
package streaming

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/horde-compute/horde/internal/h1"
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
// receipts stay retrievable by it for the job's life, kept on disk (memory
// stays flat however many requests the job serves).
//
// A request body of known length up to MaxBuffered is read whole first and
// sent to the service with its length (no goroutine, pipe or timer); a
// longer or chunked one streams through. A reply of known length goes out
// with one flush at its end; a streamed one (SSE, chunked) is flushed as the
// service flushes.
type Proxy struct {
	JobUUID  string
	Key      ed25519.PrivateKey
	Upstream *url.URL
	Skew     time.Duration
	// Transport reaches the service (default: an http.Transport keeping
	// PoolSize connections).
	Transport http.RoundTripper
	// PoolSize is how many idle connections to the service are kept
	// (default DefaultPoolSize).
	PoolSize int
	// MaxBuffered is the largest request body read whole before it goes on
	// (default DefaultMaxBuffered).
	MaxBuffered int64
	// BodyGrace is how long a service that answered before reading the
	// whole request body has to read the rest (default DefaultBodyGrace).
	BodyGrace time.Duration
	// Dir keeps the receipts (default: a temporary directory that Close removes).
	Dir string
	// Now is the proxy's clock (default time.Now).
	Now func() time.Time
	// Metrics counts requests and bytes and times signing (nil: not counted).
	Metrics *metrics.Streaming

	mu     sync.Mutex
	up     *upstream
	rt     http.RoundTripper
	store  store
	stored sync.Once
}

// Defaults of the proxy's sizes.
const (
	DefaultPoolSize          = 64
	DefaultMaxBuffered int64 = 1 << 20
	DefaultBodyGrace         = 10 * time.Second
)

// kept is a receipt as GET ReceiptsPath+id serves it.
type kept struct {
	Receipt   string `json:"receipt"`
	Signature string `json:"signature"`
}

func (p *Proxy) receipts() *store {
	p.stored.Do(func() { p.store.dir = p.Dir })
	return &p.store
}

func (p *Proxy) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

// clients returns the proxy's own connection pool to its one service, for
// requests whose body is in memory (nil if a Transport was given or the
// service is not plain HTTP), and the transport for the others: kept
// connections make small requests cheap, and a pool per job never hands a
// request to another job's service that had the same address.
func (p *Proxy) clients() (*upstream, http.RoundTripper) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rt == nil {
		n := p.PoolSize
		if n <= 0 {
			n = DefaultPoolSize
		}
		p.rt = p.Transport
		if p.rt == nil {
			p.rt = &http.Transport{MaxIdleConns: n, MaxIdleConnsPerHost: n, IdleConnTimeout: 90 * time.Second,
				DisableCompression: true, ReadBufferSize: 32 << 10, WriteBufferSize: 32 << 10}
			if p.Upstream.Scheme == "http" {
				p.up = &upstream{host: p.Upstream.Host, maxIdle: n}
			}
		}
	}
	return p.up, p.rt
}

// Serve serves the proxy on ln (plain TCP) with tlsCfg until ctx ends:
// HTTP/1.1 on h1's own loop, HTTP/2 (ALPN) through net/http's server. It
// returns once requests under way have finished (or h1.DefaultGrace has
// passed); Close the proxy after.
func (p *Proxy) Serve(ctx context.Context, ln net.Listener, tlsCfg *tls.Config) error {
	s := &h1.Server{Handler: p, TLSConfig: tlsCfg}
	return s.Serve(ctx, ln)
}

// Close drops the proxy's kept connections to the service and its receipts.
func (p *Proxy) Close() error {
	p.mu.Lock()
	up, rt := p.up, p.rt
	p.mu.Unlock()
	if up != nil {
		up.close()
	}
	if t, ok := rt.(*http.Transport); ok {
		t.CloseIdleConnections()
	}
	return p.receipts().close()
}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// heldPools keep the buffers of request bodies read whole, one pool per
// size class (powers of two from 4 KiB to 1 MiB): a body is not garbage
// once per request, which with 64 KiB bodies costs the collector more
// than anything else the proxy allocates.
var heldPools [9]sync.Pool

// heldBuffer returns a buffer of n bytes, pooled when n is at most 1 MiB;
// release hands it back (call it only once nothing reads the buffer).
func heldBuffer(n int64) (b []byte, release func()) {
	c := 0
	for int64(4<<10)<<c < n {
		c++
	}
	if c >= len(heldPools) {
		return make([]byte, n), func() {}
	}
	bp, _ := heldPools[c].Get().(*[]byte)
	if bp == nil {
		b := make([]byte, 4<<10<<c)
		bp = &b
	}
	return (*bp)[:n], func() { heldPools[c].Put(bp) }
}

// heldBody is a request body read whole. The service's transport gets it
// as a bytes.Reader, which it knows to be in memory: it writes the request's
// head and body in one go instead of flushing the head first, and it can
// send it again on a kept connection the service had closed.
type heldBody []byte

func (b heldBody) reader() io.ReadCloser { return io.NopCloser(bytes.NewReader(b)) }

func (b heldBody) getBody() (io.ReadCloser, error) { return b.reader(), nil }

// streamedBody is a request body too long to hold, streamed to the service
// through a pipe as it arrives; done is closed once it has been read to its
// end (or the pipe was closed).
type streamedBody struct {
	*io.PipeReader
	done chan struct{}
	n    int64 // bytes copied, once done is closed
	err  error // why the copy ended before the body's end, once done is closed
}

// streamBody starts copying r's body into the pipe, hashing it on the way;
// wait waits for the copy to end (after the pipe is closed).
func (p *Proxy) streamBody(r *http.Request, in hash.Hash) (*streamedBody, func()) {
	pr, pw := io.Pipe()
	b := &streamedBody{PipeReader: pr, done: make(chan struct{})}
	go func() { // owned: ends at the body's end, or when the pipe is closed; wait waits for it
		n, err := io.Copy(io.MultiWriter(pw, in), r.Body)
		b.n, b.err = n, err
		pw.CloseWithError(err)
		close(b.done)
	}()
	return b, func() { <-b.done }
}

// waitBody waits until a streamed request body has been copied to the
// service to its end; a service that answered first gets BodyGrace to read
// the rest. An error if the copy did not reach the body's end (the client
// broke off, or the service would not read it all): the input hash then
// covers only part of what the client sent, and no receipt may be signed.
func (p *Proxy) waitBody(w http.ResponseWriter, r *http.Request, b *streamedBody) error {
	grace := p.BodyGrace
	if grace == 0 {
		grace = DefaultBodyGrace
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-b.done:
		if b.err != nil {
			return fmt.Errorf("the request body broke off after %d bytes: %w", b.n, b.err)
		}
		return nil
	case <-t.C:
	case <-r.Context().Done():
	}
	// Unblock the copy, waiting on the client or the service, and let it end.
	http.NewResponseController(w).SetReadDeadline(aLongTimeAgo)
	b.Close()
	<-b.done
	if b.err == nil {
		return nil
	}
	return fmt.Errorf("the request body was not read to its end (%d bytes read; the service answered first or the request ended)", b.n)
}

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
	st := p.receipts()
	for {
		if stamp == sr.StampProxy {
			var b [16]byte
			rand.Read(b[:])
			id = hex.EncodeToString(b[:])
		}
		err := st.reserve(id)
		switch {
		case err == nil:
			return id, nil
		case errors.Is(err, errSeen) && stamp == sr.StampProxy:
			continue
		case errors.Is(err, errSeen):
			return "", &refusal{http.StatusConflict, sr.HeaderRequestID + " " + id + " was used before in this job"}
		default:
			return "", fmt.Errorf("receipts: %w", err)
		}
	}
}

// outbound is the request the service gets: what the receipt binds and
// nothing else of the client's — method, target, content type and body —
// so that replaying the signed request replays what the service answered.
// Framing (length, chunking) is the transport's.
func (p *Proxy) outbound(r *http.Request, x sr.Exchange) *http.Request {
	u := &url.URL{Scheme: p.Upstream.Scheme, Host: p.Upstream.Host, Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery}
	h := make(http.Header, 1)
	if x.RequestContentType != "" {
		h["Content-Type"] = []string{x.RequestContentType}
	}
	out := &http.Request{Method: r.Method, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: h, Host: p.Upstream.Host}
	return out.WithContext(r.Context())
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
	var streamed *streamedBody
	defer func() { // after a streamed body's copy has ended (deferred below)
		if streamed != nil {
			inBytes = streamed.n
		}
		p.Metrics.Request(code, inBytes, outBytes)
	}()
	limit := p.MaxBuffered
	if limit == 0 {
		limit = DefaultMaxBuffered
	}
	var held heldBody
	releaseHeld := false
	switch {
	case r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0:
		out.Body = http.NoBody
	case r.ContentLength > 0 && r.ContentLength <= limit:
		// A plain copy: read the body whole, hash it, send it with its length.
		buf, release := heldBuffer(r.ContentLength)
		held = buf
		// The buffer goes back to its pool once the proxy's own client has
		// sent it; http.Transport (streamed bodies, a Transport given) may
		// still hold a request's body after RoundTrip returns, so then it
		// is left to the collector.
		defer func() {
			if releaseHeld {
				release()
			}
		}()
		if _, err := io.ReadFull(r.Body, held); err != nil {
			releaseHeld = true
			p.unreserve(id)
			code = http.StatusBadRequest
			fail(w, code, "reading the request body: "+err.Error())
			return
		}
		in.Write(held)
		inBytes = r.ContentLength
		out.Body, out.GetBody, out.ContentLength = held.reader(), held.getBody, r.ContentLength
	default:
		body, wait := p.streamBody(r, in)
		streamed = body
		out.Body, out.ContentLength = body, r.ContentLength
		defer wait()
		defer body.Close()
	}
	up, rt := p.clients()
	var resp *http.Response
	var err error
	if up != nil && (held != nil || out.Body == http.NoBody) {
		resp, err = up.roundTrip(out, held)
		releaseHeld = true // written whole (or failed) before roundTrip returned
	} else {
		resp, err = rt.RoundTrip(out)
	}
	if err != nil {
		p.unreserve(id)
		if streamed != nil {
			// The copy may wait on the client's body: end it (the deferred
			// wait waits for it).
			http.NewResponseController(w).SetReadDeadline(aLongTimeAgo)
		}
		fail(w, http.StatusBadGateway, "service: "+err.Error())
		return
	}
	defer resp.Body.Close()
	if held == nil && out.Body != http.NoBody {
		// HTTP/1 may refuse reads of a request body once the response has
		// started, so the response waits until the streamed body has been
		// read to its end (a service that answers without reading all of it
		// gets a grace period).
		if err := p.waitBody(w, r, out.Body.(*streamedBody)); err != nil {
			p.unreserve(id)
			fail(w, http.StatusBadGateway, err.Error())
			return
		}
	}
	ctype, err := responseContentType(resp.Header)
	if err != nil {
		p.unreserve(id)
		fail(w, http.StatusBadGateway, err.Error())
		return
	}
	ok := false
	defer func() {
		if !ok {
			p.unreserve(id)
		}
	}()
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
			p.unreserve(id)
			ok = true
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
	ok = true
}

// sign sets the receipt trailers and keeps the receipt for GET ReceiptsPath+id.
func (p *Proxy) sign(w http.ResponseWriter, id string, rc *sr.Receipt) {
	start := time.Now()
	blob, sig, err := sr.SignReceipt(p.Key, rc)
	p.Metrics.Signed(time.Since(start))
	if err != nil {
		// Every value was checked before the request went on; a receipt that
		// still cannot be encoded ends the response without one.
		p.unreserve(id)
		panic(http.ErrAbortHandler)
	}
	h := w.Header()
	h[sr.TrailerReceipt] = []string{blob}
	h[sr.TrailerSig] = []string{sig}
	p.receipts().done(id, blob, sig)
}

// unreserve records that id's exchange ended without a receipt; the id
// stays used.
func (p *Proxy) unreserve(id string) { p.receipts().done(id, "", "") }

func (p *Proxy) serveReceipt(w http.ResponseWriter, id string) {
	blob, sig, ok, err := p.Receipt(id)
	if err != nil {
		fail(w, http.StatusInternalServerError, "receipts: "+err.Error())
		return
	}
	if !ok {
		fail(w, http.StatusNotFound, "no receipt for request "+id)
		return
	}
	body, _ := json.Marshal(kept{blob, sig})
	w.Header().Set("Content-Type", "application/json")
	w.Write(body)
}

// Receipt returns the kept receipt of request id (base64 blob and
// signature, as the trailers carried them); ok is false if there is none.
func (p *Proxy) Receipt(id string) (blob, sig string, ok bool, err error) {
	if sr.CheckRequestID(id) != nil {
		return "", "", false, nil
	}
	return p.receipts().lookup(id)
}

// Receipts returns how many receipts the proxy has signed.
func (p *Proxy) Receipts() int { return int(p.receipts().signed.Load()) }
