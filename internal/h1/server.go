// Package h1 serves an http.Handler over TLS with its own HTTP/1.1 loop, one
// goroutine per connection and nothing per request, and hands connections
// that negotiate HTTP/2 (ALPN "h2") to net/http's server.
//
// net/http's HTTP/1.1 server starts a background read on the connection for
// every request (to notice a client that goes away), arms and stops timers
// and wraps the connection in several layers; for a proxy whose requests
// take a few tens of microseconds that is most of its cost. Here requests
// are parsed by net/http's own http.ReadRequest, checked as net/http's
// server checks them (Host, header names and values, size of the head), and
// the response is written straight into one buffered writer over the TLS
// connection: one write for a reply that is not flushed early, trailers
// carried in the chunked encoding's last chunk.
//
// A request's context ends when the client goes away, as on net/http's
// server, but the connection is watched for that only once the request has
// run for WatchAfter with its body read: most proxied requests end sooner,
// and cost no goroutine.
//
// What it does not do: upgrade a
// connection (101), bound how long a client may take to send a body or
// read a reply (as net/http's server with no ReadTimeout or WriteTimeout),
// or announce keep-alive to HTTP/1.0 clients (a reply of unknown length to
// one is delimited by closing the connection).
package h1

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/textproto"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Defaults of a Server's limits.
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 2 * time.Minute
	DefaultMaxHeaderBytes    = 1 << 20
	DefaultGrace             = 5 * time.Second
)

// Server serves Handler on TLS connections.
type Server struct {
	Handler   http.Handler
	TLSConfig *tls.Config
	// ReadHeaderTimeout bounds the TLS handshake and a request's head once
	// its first byte arrived (default DefaultReadHeaderTimeout).
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a kept connection that sends no request for that
	// long (default DefaultIdleTimeout).
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's head (default DefaultMaxHeaderBytes).
	MaxHeaderBytes int
	// Grace is how long requests under way may finish once the server
	// stops (default DefaultGrace).
	Grace time.Duration
	// Log gets handler panics and HTTP/2 errors (default: discarded).
	Log *slog.Logger
	// WatchAfter is how long an HTTP/1.1 request runs before its
	// connection is watched for the client going away, which cancels the
	// request's context (default DefaultWatchAfter).
	WatchAfter time.Duration

	onWatch func() // tests: a watch started
	onAhead func() // tests: a watch read a byte of the next request

	mu       sync.Mutex
	conns    map[*conn]struct{}
	stopping bool
}

func (s *Server) readHeaderTimeout() time.Duration {
	return cmpOr(s.ReadHeaderTimeout, DefaultReadHeaderTimeout)
}

func cmpOr[T comparable](v, d T) T {
	var zero T
	if v == zero {
		return d
	}
	return v
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

// Serve accepts TLS connections on ln (a plain TCP listener: the server
// does the handshake) until ctx ends, then closes ln, closes idle
// connections, lets requests under way finish for up to Grace, closes what
// is left and returns nil once every connection's goroutine has ended. It
// returns an error only if accepting fails otherwise.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	// Connections end when force is cancelled: after the grace period, or
	// when Serve returns for any reason.
	force, forceStop := context.WithCancel(context.WithoutCancel(ctx))
	defer forceStop()
	h2 := &handoff{addr: ln.Addr(), conns: make(chan net.Conn), done: make(chan struct{})}
	// net/http's Close does not wait for the handlers of HTTP/2 requests:
	// they are counted here, and Serve waits for them as for HTTP/1.1's.
	var h2mu sync.Mutex
	h2idle, h2busy := sync.NewCond(&h2mu), 0
	h2handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h2mu.Lock()
		h2busy++
		h2mu.Unlock()
		defer func() {
			h2mu.Lock()
			if h2busy--; h2busy == 0 {
				h2idle.Broadcast()
			}
			h2mu.Unlock()
		}()
		s.Handler.ServeHTTP(w, r)
	})
	h2srv := &http.Server{Handler: h2handler, TLSConfig: s.TLSConfig, ReadHeaderTimeout: s.readHeaderTimeout(),
		IdleTimeout: cmpOr(s.IdleTimeout, DefaultIdleTimeout), MaxHeaderBytes: s.MaxHeaderBytes,
		ErrorLog: slog.NewLogLogger(s.log().Handler(), slog.LevelWarn), BaseContext: func(net.Listener) context.Context { return force }}
	var wg sync.WaitGroup
	wg.Go(func() { h2srv.Serve(h2) }) // ends when h2 is closed (below)
	stopAccept := context.AfterFunc(ctx, func() { ln.Close() })
	defer stopAccept()

	var err error
	var backoff time.Duration
	for {
		nc, aerr := ln.Accept()
		if aerr != nil {
			if ctx.Err() == nil {
				if isTimeout(aerr) {
					continue
				}
				if transient(aerr) {
					// Out of descriptors or memory (which any client can
					// cause by opening connections): wait for some to be
					// freed, as net/http does, instead of stopping for good.
					backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
					t := time.NewTimer(backoff)
					select {
					case <-t.C:
						continue
					case <-ctx.Done():
						t.Stop()
					}
					break
				}
				err = fmt.Errorf("accept: %w", aerr)
			}
			break
		}
		backoff = 0
		wg.Go(func() { s.serveConn(force, nc, h2) })
	}
	ln.Close()

	// Stop: idle connections close now, busy ones after their request or
	// at the end of the grace period.
	s.mu.Lock()
	s.stopping = true
	for c := range s.conns {
		c.stopIfIdle()
	}
	s.mu.Unlock()
	graceCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cmpOr(s.Grace, DefaultGrace))
	defer cancel()
	wg.Go(func() {
		if h2srv.Shutdown(graceCtx) != nil {
			h2srv.Close() // their contexts end with force, at the same time
		}
		h2.close()
		h2mu.Lock()
		for h2busy > 0 {
			h2idle.Wait()
		}
		h2mu.Unlock()
	})
	idle := make(chan struct{})
	go func() { wg.Wait(); close(idle) }() // owned: waited for below
	select {
	case <-idle:
	case <-graceCtx.Done():
		// The connections first: a handler its context's end lets return
		// must find its connection closed, not send a reply.
		s.mu.Lock()
		for c := range s.conns {
			c.raw.Close()
		}
		s.mu.Unlock()
		forceStop()
		<-idle
	}
	return err
}

// handoff is the listener through which net/http's server gets the
// connections that negotiated HTTP/2, their handshake done.
type handoff struct {
	addr  net.Addr
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func (h *handoff) Accept() (net.Conn, error) {
	select {
	case c := <-h.conns:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

func (h *handoff) Close() error   { h.close(); return nil }
func (h *handoff) close()         { h.once.Do(func() { close(h.done) }) }
func (h *handoff) Addr() net.Addr { return h.addr }

// give passes c to net/http's server; false if it no longer takes any.
func (h *handoff) give(c net.Conn) bool {
	select {
	case h.conns <- c:
		return true
	case <-h.done:
		return false
	}
}

func (s *Server) serveConn(ctx context.Context, nc net.Conn, h2 *handoff) {
	tc := tls.Server(nc, s.TLSConfig)
	hctx, cancel := context.WithTimeout(ctx, s.readHeaderTimeout())
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		nc.Close()
		return
	}
	st := tc.ConnectionState()
	if st.NegotiatedProtocol == "h2" {
		if !h2.give(tc) {
			tc.Close()
		}
		return
	}
	c := &conn{s: s, nc: tc, raw: nc, tls: &st, remote: nc.RemoteAddr().String()}
	c.lr = &limitedReader{r: tc}
	c.br = bufio.NewReaderSize(c.lr, 16<<10)
	c.bw = bufio.NewWriterSize(tc, 32<<10)
	if !s.track(c) {
		tc.Close()
		return
	}
	defer s.untrack(c)
	c.serve(ctx)
}

func (s *Server) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return false
	}
	if s.conns == nil {
		s.conns = make(map[*conn]struct{})
	}
	s.conns[c] = struct{}{}
	return true
}

// isStopping says whether Serve is stopping.
func (s *Server) isStopping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopping
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// conn is one HTTP/1.1 connection.
type conn struct {
	s      *Server
	nc     *tls.Conn
	raw    net.Conn // beneath nc: closed to end the connection at once
	tls    *tls.ConnectionState
	remote string
	lr     *limitedReader
	br     *bufio.Reader
	bw     *bufio.Writer

	unread   bool    // the connection closes with the client's bytes unread: linger first
	aheadBuf [1]byte // the watch's read
	gone     bool    // the watch saw the client go away (set before its done closes)

	mu   sync.Mutex // guards idle (shared with Serve's stop)
	idle bool
}

// aLongTimeAgo is a deadline that makes a blocked read return at once.
var aLongTimeAgo = time.Unix(1, 0)

// stopIfIdle makes a connection waiting for its next request close; one
// serving a request closes after it (the server is stopping). Called with
// the server's lock held.
func (c *conn) stopIfIdle() {
	c.mu.Lock()
	if c.idle {
		c.nc.SetReadDeadline(aLongTimeAgo)
	}
	c.mu.Unlock()
}

// setIdle marks the connection idle or busy; false if the server is
// stopping and the connection should close instead.
func (c *conn) setIdle(idle bool) bool {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	if c.s.stopping {
		return false
	}
	c.mu.Lock()
	c.idle = idle
	c.mu.Unlock()
	return true
}

// limitedReader bounds what the head of a request may read from the
// connection; n is reset for each request and lifted for its body.
type limitedReader struct {
	r     io.Reader
	n     int64
	ahead []byte // read by the watch before the next request's head: given first
}

var errHeadTooLarge = errors.New("request head too large")

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errHeadTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	if len(l.ahead) > 0 {
		n := copy(p, l.ahead)
		l.ahead = l.ahead[n:]
		l.n -= int64(n)
		return n, nil
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

func (c *conn) serve(ctx context.Context) {
	defer func() {
		if c.unread {
			c.linger()
		}
		c.nc.Close()
	}()
	idleTimeout := cmpOr(c.s.IdleTimeout, DefaultIdleTimeout)
	headLimit := int64(cmpOr(c.s.MaxHeaderBytes, DefaultMaxHeaderBytes)) + 4096
	for {
		// The deadline first: a stop that finds the connection idle moves it.
		c.nc.SetReadDeadline(time.Now().Add(idleTimeout))
		if !c.setIdle(true) {
			return
		}
		c.lr.n = headLimit
		if _, err := c.br.Peek(1); err != nil {
			return
		}
		if !c.setIdle(false) {
			return
		}
		c.nc.SetReadDeadline(time.Now().Add(c.s.readHeaderTimeout()))
		req, status, err := c.readRequest()
		if err != nil {
			if status != 0 {
				c.refuse(status, err.Error())
			}
			return
		}
		c.nc.SetReadDeadline(time.Time{})
		c.lr.n = math.MaxInt64
		if !c.serveOne(ctx, req) {
			return
		}
	}
}

// readRequest reads and checks one request head. On error, status is what
// to answer (0: nothing, the connection just ends).
func (c *conn) readRequest() (*http.Request, int, error) {
	req, err := http.ReadRequest(c.br)
	switch {
	case errors.Is(err, errHeadTooLarge):
		return nil, http.StatusRequestHeaderFieldsTooLarge, errHeadTooLarge
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || isTimeout(err):
		return nil, 0, err
	case err != nil:
		return nil, http.StatusBadRequest, err
	}
	if req.ProtoMajor != 1 {
		return nil, http.StatusHTTPVersionNotSupported, fmt.Errorf("unsupported protocol version %q", req.Proto)
	}
	// (http.ReadRequest has moved the Host header to req.Host: a second
	// one is not seen. Nothing here routes by Host.)
	if req.ProtoAtLeast(1, 1) && req.Host == "" && req.Method != http.MethodConnect {
		return nil, http.StatusBadRequest, errors.New("missing required Host header")
	}
	if !httpguts.ValidHostHeader(req.Host) {
		return nil, http.StatusBadRequest, errors.New("malformed Host header")
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, http.StatusBadRequest, errors.New("invalid header name")
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, http.StatusBadRequest, errors.New("invalid header value")
			}
		}
	}
	return req, 0, nil
}

// transient says whether an Accept error passes once resources are freed.
func transient(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// refuse answers a request the server could not read, and the connection
// closes after.
func (c *conn) refuse(status int, msg string) {
	c.unread = true
	c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	body := strconv.Itoa(status) + " " + http.StatusText(status) + ": " + msg + "\n"
	fmt.Fprintf(c.bw, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
		status, http.StatusText(status), len(body), body)
	c.bw.Flush()
}

// serveOne runs the handler for req and finishes its response; false if
// the connection is not to carry another request.
func (c *conn) serveOne(ctx context.Context, req *http.Request) (keep bool) {
	if ex := req.Header.Get("Expect"); ex != "" && req.ProtoAtLeast(1, 1) {
		if !strings.EqualFold(ex, "100-continue") {
			c.refuse(http.StatusExpectationFailed, "unsupported Expect "+strconv.Quote(ex))
			return false
		}
		if req.ContentLength != 0 {
			// Asked for before the body is sent; the handler reads it.
			c.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
			if c.bw.Flush() != nil {
				return false
			}
		}
		req.Header.Del("Expect")
	}
	req.RemoteAddr, req.TLS = c.remote, c.tls
	var body *countedBody
	if req.Body != nil && req.Body != http.NoBody {
		body = &countedBody{ReadCloser: req.Body, length: req.ContentLength}
		req.Body = body
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req = req.WithContext(rctx)
	c.gone = false
	stopWatch := c.watchFor(body, cancel)
	// A chunked request may also have said Content-Length, which
	// http.ReadRequest drops without a trace: such a request is how
	// requests are smuggled past a front end that went by the length, so the
	// connection carries nothing after one (RFC 9112, section 6.1).
	// HTTP/1.0 connections are not kept: their replies do not announce
	// keep-alive.
	closeAfter := req.Close || !req.ProtoAtLeast(1, 1) || slices.Contains(req.TransferEncoding, "chunked")
	w := &response{c: c, req: req, header: make(http.Header, 4), contentLength: -1, closeAfter: closeAfter}
	ran := c.run(w, req)
	stopWatch()
	keep = ran && w.finish() && !c.gone && !w.closeAfter && ctx.Err() == nil
	if keep && body != nil {
		keep = body.drain(c)
	}
	if !keep && body != nil && !body.eof.Load() {
		c.unread = true
	}
	return keep
}

// DefaultWatchAfter is how long a request runs before the server watches
// its connection for the client going away.
const DefaultWatchAfter = 10 * time.Millisecond

// watchFor arranges that a request still running after WatchAfter (and
// once its body is read to its end) has its context cancelled if the client goes away
// (the connection reads EOF or fails), as net/http's server does for every
// request; short requests cost a timer and no goroutine. The returned stop
// ends the watch; call it once the handler has returned. A byte of the
// next request the watch reads is handed to the next head's read.
func (c *conn) watchFor(body *countedBody, cancel context.CancelFunc) (stop func()) {
	var mu sync.Mutex
	ended := false
	var done chan struct{}
	after := cmpOr(c.s.WatchAfter, DefaultWatchAfter)
	var t *time.Timer
	mu.Lock() // t is set before the callback reads it
	defer mu.Unlock()
	t = time.AfterFunc(after, func() {
		mu.Lock()
		defer mu.Unlock()
		if ended {
			return
		}
		// While the handler reads its body it reads the connection: the
		// watch waits until the body is read. Bytes already buffered are
		// the next request's, not a sign of the client leaving.
		if body != nil && !body.eof.Load() {
			t.Reset(after)
			return
		}
		if c.br.Buffered() > 0 || len(c.lr.ahead) > 0 {
			return
		}
		done = make(chan struct{})
		go func() { // owned: stop ends it and waits for it
			defer close(done)
			n, err := c.nc.Read(c.aheadBuf[:])
			if n > 0 {
				c.lr.ahead = c.aheadBuf[:n]
				if c.s.onAhead != nil {
					c.s.onAhead()
				}
			}
			if err != nil && !isTimeout(err) {
				c.gone = true
				cancel()
			}
		}()
		if c.s.onWatch != nil {
			c.s.onWatch()
		}
	})
	return func() {
		t.Stop()
		mu.Lock()
		ended = true
		d := done
		mu.Unlock()
		if d != nil {
			c.nc.SetReadDeadline(aLongTimeAgo)
			<-d
			c.nc.SetReadDeadline(time.Time{})
		}
	}
}

// lingerTime is how long a connection closing with the client's bytes
// unread waits for the client to stop sending.
const lingerTime = 500 * time.Millisecond

// linger ends a connection whose client may still be sending (a body not
// read, a head refused) as net/http does: the reply is flushed, the writing
// side closed (close_notify, then FIN), and what still arrives is read and
// dropped for a moment. Closing at once would make the kernel answer with
// a reset, which can destroy the reply before the client reads it.
func (c *conn) linger() {
	c.bw.Flush()
	c.nc.SetWriteDeadline(time.Now().Add(lingerTime))
	c.nc.CloseWrite()
	if tc, ok := c.raw.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
	}
	c.raw.SetReadDeadline(time.Now().Add(lingerTime))
	io.Copy(io.Discard, io.LimitReader(c.raw, 4<<20))
}

// maxDrain is the most of a body the handler left unread that is read and
// dropped to keep the connection; with more left, it closes.
const maxDrain = 256 << 10

// countedBody is a request body that knows how much of it was read.
type countedBody struct {
	io.ReadCloser
	length int64 // declared, -1 if chunked
	n      int64
	eof    atomic.Bool // also read by the watch's timer
	closed bool
}

func (b *countedBody) Read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	if err == io.EOF {
		b.eof.Store(true)
	}
	return n, err
}

// Close ends the handler's reads. Unlike http.ReadRequest's body, it does
// not read the rest of the body (which is unbounded): drain decides.
func (b *countedBody) Close() error {
	b.closed = true
	return nil
}

// drain reads and drops what the handler left of the body, so that the
// next request's head is where the connection reads next; false if too
// much is left, the client does not send it in time, or it is broken.
// (Closing http.ReadRequest's body not read to its end would read all of
// it, unbounded.)
func (b *countedBody) drain(c *conn) bool {
	if b.eof.Load() {
		return true
	}
	if b.length >= 0 && b.length-b.n > maxDrain {
		return false
	}
	c.nc.SetReadDeadline(time.Now().Add(c.s.readHeaderTimeout()))
	defer c.nc.SetReadDeadline(time.Time{})
	// (One byte more than may be left: io.CopyN says EOF only if the body
	// ended before n bytes.)
	if _, err := io.CopyN(io.Discard, b.ReadCloser, maxDrain+1); err != io.EOF {
		return false
	}
	return true
}

// run calls the handler; false if it panicked (the connection is then
// closed mid-response, as net/http does, so the client sees it broken).
func (c *conn) run(w *response, req *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				c.s.log().Error("handler panicked", "remote", c.remote, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			}
			ok = false
		}
	}()
	c.s.Handler.ServeHTTP(w, req)
	return true
}

// response is the http.ResponseWriter of one HTTP/1.1 request.
type response struct {
	c             *conn
	req           *http.Request
	header        http.Header
	wroteHeader   bool
	status        int
	noBody        bool // HEAD, 1xx, 204, 304: no body may follow
	chunked       bool
	closeAfter    bool  // the connection ends after this response
	contentLength int64 // declared by the handler, -1 if not
	written       int64
	trailers      []string // canonical keys declared in the Trailer header
}

var _ http.Flusher = (*response)(nil)

func (w *response) Header() http.Header { return w.header }

// excluded are the fields the server decides itself.
var excluded = map[string]bool{"Transfer-Encoding": true, "Connection": true, "Content-Length": true, "Date": true}

func (w *response) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	bw := w.c.bw
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		writeStatus(bw, code)
		w.header.WriteSubset(bw, excluded)
		bw.WriteString("\r\n")
		bw.Flush()
		return
	}
	w.wroteHeader, w.status = true, code
	w.noBody = w.req.Method == http.MethodHead || code < 200 || code == http.StatusNoContent || code == http.StatusNotModified
	if cl := w.header.Get("Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n >= 0 {
			w.contentLength = n
		}
	}
	for _, v := range w.header["Trailer"] {
		for k := range strings.SplitSeq(v, ",") {
			if k = strings.TrimSpace(k); k != "" {
				w.trailers = append(w.trailers, textproto.CanonicalMIMEHeaderKey(k))
			}
		}
	}
	if strings.EqualFold(w.header.Get("Connection"), "close") || code == http.StatusSwitchingProtocols || w.c.s.isStopping() {
		// (A stopping server closes the connection after this response:
		// the client is told, so that it sends no request to be lost.)
		w.closeAfter = true
	}
	switch {
	case w.noBody:
	case w.contentLength >= 0 && len(w.trailers) == 0:
	case w.req.ProtoAtLeast(1, 1):
		w.chunked = true
	default: // HTTP/1.0: the body ends with the connection
		w.closeAfter = true
	}
	writeStatus(bw, code)
	bw.WriteString("Date: ")
	bw.WriteString(date())
	bw.WriteString("\r\n")
	w.header.WriteSubset(bw, excluded)
	if w.contentLength >= 0 && !w.chunked {
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.FormatInt(w.contentLength, 10))
		bw.WriteString("\r\n")
	}
	if w.chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if w.closeAfter {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
}

func writeStatus(bw *bufio.Writer, code int) {
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(code))
	bw.WriteByte(' ')
	if text := http.StatusText(code); text != "" {
		bw.WriteString(text)
	} else {
		bw.WriteString("status code ")
		bw.WriteString(strconv.Itoa(code))
	}
	bw.WriteString("\r\n")
}

func (w *response) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if w.noBody {
		if w.req.Method == http.MethodHead {
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	bw := w.c.bw
	if w.contentLength >= 0 && !w.chunked && w.written+int64(len(p)) > w.contentLength {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if w.chunked {
		bw.WriteString(strconv.FormatInt(int64(len(p)), 16))
		bw.WriteString("\r\n")
		bw.Write(p)
		_, err := bw.WriteString("\r\n")
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return bw.Write(p)
}

// SetReadDeadline bounds the handler's reads of the request body, as
// http.ResponseController does on net/http's server.
func (w *response) SetReadDeadline(t time.Time) error { return w.c.nc.SetReadDeadline(t) }

// Flush sends what was written so far.
func (w *response) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	w.c.bw.Flush()
}

// finish ends the response (last chunk, trailers) and sends it; false if
// the connection is not to carry another request.
func (w *response) finish() bool {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	bw := w.c.bw
	if w.chunked {
		bw.WriteString("0\r\n")
		for _, k := range w.trailers {
			if excluded[k] || !httpguts.ValidHeaderFieldName(k) {
				continue
			}
			for _, v := range w.header[k] {
				bw.WriteString(k)
				bw.WriteString(": ")
				bw.WriteString(newlines.Replace(v))
				bw.WriteString("\r\n")
			}
		}
		bw.WriteString("\r\n")
	}
	if w.contentLength >= 0 && !w.chunked && !w.noBody && w.written < w.contentLength {
		w.closeAfter = true // the client waits for bytes that will not come
	}
	return bw.Flush() == nil
}

var newlines = strings.NewReplacer("\n", " ", "\r", " ")

// date is the Date header's value, remade at most once a second.
func date() string {
	now := time.Now().Unix()
	dateMu.Lock()
	defer dateMu.Unlock()
	if now != dateAt {
		dateAt, dateVal = now, time.Unix(now, 0).UTC().Format(http.TimeFormat)
	}
	return dateVal
}

var (
	dateMu  sync.Mutex
	dateAt  int64
	dateVal string
)
