package streaming

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// upstream is the proxy's own HTTP/1.1 client to its one service, for
// requests whose body is in memory: a pool of kept connections, each used by
// one request at a time, the request written and the response read in the
// handler's goroutine — no goroutine, channel or timer per request, as
// http.Transport has. Streamed request bodies go through http.Transport.
type upstream struct {
	host    string // the service's host:port, also the Host header
	maxIdle int

	mu     sync.Mutex
	idle   []*upConn
	closed bool
}

type upConn struct {
	nc net.Conn
	br *bufio.Reader
	bw *bufio.Writer
}

// errStale is a kept connection the service had closed before the request.
var errStale = errors.New("kept connection closed by the service")

func (u *upstream) get(ctx context.Context) (*upConn, bool, error) {
	u.mu.Lock()
	if n := len(u.idle); n > 0 {
		c := u.idle[n-1]
		u.idle = u.idle[:n-1]
		u.mu.Unlock()
		return c, true, nil
	}
	u.mu.Unlock()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", u.host)
	if err != nil {
		return nil, false, err
	}
	return &upConn{nc: nc, br: bufio.NewReaderSize(nc, 32<<10), bw: bufio.NewWriterSize(nc, 32<<10)}, false, nil
}

func (u *upstream) put(c *upConn) {
	u.mu.Lock()
	if !u.closed && len(u.idle) < u.maxIdle {
		u.idle = append(u.idle, c)
		c = nil
	}
	u.mu.Unlock()
	if c != nil {
		c.nc.Close()
	}
}

// close closes the kept connections; connections in use close when their
// request ends.
func (u *upstream) close() {
	u.mu.Lock()
	idle := u.idle
	u.idle, u.closed = nil, true
	u.mu.Unlock()
	for _, c := range idle {
		c.nc.Close()
	}
}

// roundTrip sends out (whose body, if any, is body) and returns the
// service's response head; its body returns the connection to the pool once
// read to its end and closed. A kept connection the service had closed is
// replaced once.
func (u *upstream) roundTrip(out *http.Request, body []byte) (*http.Response, error) {
	ctx := out.Context()
	for attempt := 0; ; attempt++ {
		c, reused, err := u.get(ctx)
		if err != nil {
			return nil, err
		}
		resp, err := u.exchange(ctx, c, out, body)
		if err == nil {
			return resp, nil
		}
		c.nc.Close()
		if !reused || attempt > 0 || !errors.Is(err, errStale) || ctx.Err() != nil {
			return nil, err
		}
	}
}

// aLongTimeAgo is a deadline that makes blocked reads and writes return.
var aLongTimeAgo = time.Unix(1, 0)

func (u *upstream) exchange(ctx context.Context, c *upConn, out *http.Request, body []byte) (*http.Response, error) {
	// The client going away unblocks the exchange (and the body's reads).
	stop := context.AfterFunc(ctx, func() { c.nc.SetDeadline(aLongTimeAgo) })
	bw := c.bw
	bw.WriteString(out.Method)
	bw.WriteByte(' ')
	bw.WriteString(out.URL.RequestURI())
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(u.host)
	bw.WriteString("\r\nUser-Agent: horde-proxy\r\n")
	if ct := out.Header["Content-Type"]; len(ct) == 1 {
		bw.WriteString("Content-Type: ")
		bw.WriteString(ct[0])
		bw.WriteString("\r\n")
	}
	if len(body) > 0 || out.Method == http.MethodPost || out.Method == http.MethodPut || out.Method == http.MethodPatch {
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.Itoa(len(body)))
		bw.WriteString("\r\n")
	}
	bw.WriteString("\r\n")
	bw.Write(body)
	if err := bw.Flush(); err != nil {
		stop()
		return nil, fmt.Errorf("%w: %w", errStale, err)
	}
	for {
		resp, err := http.ReadResponse(c.br, out)
		if err != nil {
			stop()
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				err = fmt.Errorf("%w: %w", errStale, err)
			}
			if ctx.Err() != nil {
				err = context.Cause(ctx)
			}
			return nil, err
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 {
			if resp.StatusCode == http.StatusSwitchingProtocols {
				stop()
				return nil, errors.New("the service switched protocols, which the proxy does not carry")
			}
			continue // 100 Continue, 103 Early Hints: the answer follows
		}
		// A body that ends when the connection does leaves none to keep.
		keep := !resp.Close && (resp.ContentLength >= 0 || len(resp.TransferEncoding) > 0)
		resp.Body = &upBody{ReadCloser: resp.Body, u: u, c: c, keep: keep, stop: stop}
		return resp, nil
	}
}

// upBody is a response body on a pooled connection.
type upBody struct {
	io.ReadCloser
	u    *upstream
	c    *upConn
	keep bool // the service keeps the connection open after the response
	eof  bool
	stop func() bool
}

func (b *upBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

// Close returns the connection to the pool if the body was read to its end
// (and the client did not go away meanwhile), or closes it: an unread rest
// is not drained.
func (b *upBody) Close() error {
	if b.c == nil {
		return nil
	}
	c := b.c
	b.c = nil
	if b.stop() && b.eof && b.keep {
		b.u.put(c)
		return nil
	}
	c.nc.Close()
	return b.ReadCloser.Close()
}
