// Package streaming runs the job side of streaming jobs: the signing proxy
// in front of a job's web service.
package streaming

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	sr "github.com/horde-compute/horde/streamreceipt"
)

// DefaultSkew is how far a request's timestamp may be from the proxy's clock.
const DefaultSkew = 5 * time.Second

// Proxy is the signing proxy in front of a streaming job's service. For each
// request it checks the client's timestamp and request id, streams the
// request and the response through without buffering either, hashes both on
// the fly, and sends the signed receipt as trailers once the response is
// complete. Receipts stay retrievable by request id for the job's life.
type Proxy struct {
	JobUUID  string
	Key      ed25519.PrivateKey
	Upstream *url.URL
	Skew     time.Duration
	// Transport reaches the service (default: a new http.Transport).
	Transport http.RoundTripper
	// Now is the proxy's clock (default time.Now).
	Now func() time.Time

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

// ServeHTTP implements http.Handler.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	from := p.now()
	if id, ok := strings.CutPrefix(r.URL.Path, sr.ReceiptsPath); ok && r.Method == http.MethodGet {
		p.serveReceipt(w, id)
		return
	}
	skew := p.Skew
	if skew == 0 {
		skew = DefaultSkew
	}
	ts := r.Header.Get(sr.HeaderTimestamp)
	if ts == "" {
		fail(w, http.StatusBadRequest, "missing "+sr.HeaderTimestamp+" (RFC 3339 UTC with microseconds)")
		return
	}
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		fail(w, http.StatusBadRequest, sr.HeaderTimestamp+" is not RFC 3339: "+err.Error())
		return
	}
	if d := from.Sub(t); d > skew || d < -skew {
		fail(w, http.StatusBadRequest, fmt.Sprintf("%s is %s away from the job's clock (limit %s)", sr.HeaderTimestamp, d.Round(time.Millisecond), skew))
		return
	}
	id := r.Header.Get(sr.HeaderRequestID)
	if id == "" || len(id) > 200 || strings.ContainsAny(id, "\n/ ") {
		fail(w, http.StatusBadRequest, "missing or malformed "+sr.HeaderRequestID)
		return
	}
	p.mu.Lock()
	if p.receipts == nil {
		p.receipts = map[string]*signed{}
	}
	if _, dup := p.receipts[id]; dup {
		p.mu.Unlock()
		fail(w, http.StatusConflict, sr.HeaderRequestID+" "+id+" was used before in this job")
		return
	}
	entry := &signed{}
	p.receipts[id] = entry
	p.mu.Unlock()

	in := sha256.New()
	out := r.Clone(r.Context())
	out.URL.Scheme, out.URL.Host = p.Upstream.Scheme, p.Upstream.Host
	out.Host = p.Upstream.Host
	out.RequestURI = ""
	out.Header.Del(sr.HeaderTimestamp)
	out.Header.Del(sr.HeaderRequestID)
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
			_, err := io.Copy(io.MultiWriter(pw, in), r.Body)
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
	for k, vs := range resp.Header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	w.Header().Set("Trailer", sr.TrailerReceipt+", "+sr.TrailerSig)
	w.Header().Del("Content-Length") // the body is streamed, then the trailers
	w.WriteHeader(resp.StatusCode)
	outHash := sha256.New()
	// Stream token by token what the service streams (SSE, chunked replies);
	// a reply of known length goes out in as few writes as it can.
	var flusher http.Flusher
	if resp.ContentLength < 0 || strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		flusher, _ = w.(http.Flusher)
	}
	bp := buffers.Get().(*[]byte)
	defer buffers.Put(bp)
	buf := *bp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			outHash.Write(buf[:n])
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
	rc := &sr.Receipt{JobUUID: p.JobUUID, RequestID: id, TimestampFrom: from.UTC().Truncate(time.Microsecond),
		TimestampTo: p.now().UTC().Truncate(time.Microsecond), InputSHA256: hex.EncodeToString(in.Sum(nil)),
		OutputSHA256: hex.EncodeToString(outHash.Sum(nil))}
	blob, sig := sr.Sign(p.Key, rc)
	w.Header().Set(sr.TrailerReceipt, blob)
	w.Header().Set(sr.TrailerSig, sig)
	p.mu.Lock()
	entry.Receipt, entry.Signature, entry.done = blob, sig, true
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
