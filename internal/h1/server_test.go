package h1

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	sr "github.com/horde-compute/horde/streamreceipt"
)

// rig is a Server on loopback with mutual TLS, as the signing proxy runs.
type rig struct {
	addr   string
	client *tls.Config
	stop   context.CancelFunc
	done   chan error
}

func start(t *testing.T, s *Server) *rig {
	t.Helper()
	return startWrapped(t, s, func(ln net.Listener) net.Listener { return ln })
}

// startWrapped is start with the listener wrapped by wrap.
func startWrapped(t *testing.T, s *Server, wrap func(net.Listener) net.Listener) *rig {
	t.Helper()
	jobKey, jobCert, err := sr.NewKeyPair("job", time.Hour, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ck, cc, err := sr.NewKeyPair("client", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if s.TLSConfig, err = sr.ServerTLS(jobKey, jobCert, cc); err != nil {
		t.Fatal(err)
	}
	client, err := sr.ClientTLS(ck, cc, jobCert)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln = wrap(ln)
	ctx, cancel := context.WithCancel(t.Context())
	r := &rig{addr: ln.Addr().String(), client: client, stop: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.Serve(ctx, ln) }() // owned: waited for in Cleanup
	t.Cleanup(func() {
		cancel()
		if err := <-r.done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return r
}

// dial opens a TLS connection offering only HTTP/1.1.
func (r *rig) dial(t *testing.T) *tls.Conn {
	t.Helper()
	cfg := r.client.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	c, err := tls.Dial("tcp", r.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (r *rig) httpClient(h2 bool) *http.Client {
	tr := &http.Transport{TLSClientConfig: r.client.Clone(), ForceAttemptHTTP2: h2}
	if !h2 {
		tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	}
	return &http.Client{Transport: tr}
}

// echo answers with the request's method, target and body, and a trailer.
func echo() http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Trailer", "X-Sum")
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "%s %s %s", r.Method, r.RequestURI, b)
		w.Header().Set("X-Sum", fmt.Sprint(len(b)))
	}
}

func TestKeptAliveWithTrailers(t *testing.T) {
	r := start(t, &Server{Handler: echo()})
	for _, h2 := range []bool{false, true} {
		hc := r.httpClient(h2)
		for i := range 3 {
			body := strings.Repeat("b", i*40000)
			resp, err := hc.Post("https://"+r.addr+"/p?i=1", "text/plain", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if want := "POST /p?i=1 " + body; string(got) != want || resp.Trailer.Get("X-Sum") != fmt.Sprint(len(body)) {
				t.Errorf("h2=%v: %d bytes, trailer %q", h2, len(got), resp.Trailer)
			}
			if (resp.ProtoMajor == 2) != h2 || (i > 0 && !h2 && resp.Close) {
				t.Errorf("h2=%v: got %s, close %v", h2, resp.Proto, resp.Close)
			}
		}
		hc.CloseIdleConnections()
	}
}

// exchange writes raw bytes on a fresh connection and reads what comes
// back until the server closes it or the responses stop.
func (r *rig) exchange(t *testing.T, raw string, responses int) ([]*http.Response, []string, error) {
	t.Helper()
	c := r.dial(t)
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var out []*http.Response
	var bodies []string
	for range responses {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return out, bodies, err
		}
		b, err := io.ReadAll(resp.Body)
		out, bodies = append(out, resp), append(bodies, string(b))
		if err != nil {
			return out, bodies, err
		}
	}
	return out, bodies, nil
}

// closed says whether the server closed the connection after what was read.
func closedAfter(t *testing.T, c net.Conn, br *bufio.Reader) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(time.Minute))
	_, err := br.ReadByte()
	return err != nil
}

func TestHostileHeads(t *testing.T) {
	r := start(t, &Server{Handler: echo(), MaxHeaderBytes: 4096})
	for name, tc := range map[string]struct {
		raw    string
		status int
	}{
		"missing Host":              {"GET / HTTP/1.1\r\n\r\n", 400},
		"bad header name":           {"GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n", 400},
		"bad Host":                  {"GET / HTTP/1.1\r\nHost: x y\r\n\r\n", 400},
		"head too large":            {"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 16<<10) + "\r\n\r\n", 431},
		"two lengths":               {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400},
		"negative length":           {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400},
		"unknown transfer-encoding": {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
		"HTTP/2 preface":            {"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505},
		"unsupported Expect":        {"POST / HTTP/1.1\r\nHost: x\r\nExpect: later\r\nContent-Length: 1\r\n\r\na", 417},
		"garbage":                   {"\x16\x03\x01 nonsense\r\n\r\n", 400},
	} {
		t.Run(name, func(t *testing.T) {
			resps, _, err := r.exchange(t, tc.raw, 1)
			if err != nil {
				t.Fatalf("no response: %v", err)
			}
			if resps[0].StatusCode != tc.status && !(tc.status == 501 && resps[0].StatusCode == 400) {
				t.Errorf("status %d, want %d", resps[0].StatusCode, tc.status)
			}
			if !resps[0].Close {
				t.Error("the connection is kept after a refused head")
			}
		})
	}
}

// A request that says both Content-Length and chunked cannot smuggle a
// second request past the one the handler sees.
func TestNoSmuggling(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	r := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		mu.Lock()
		seen = append(seen, req.Method+" "+req.RequestURI+" "+string(b))
		mu.Unlock()
	})})
	smuggled := "GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"
	raw := "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: " + fmt.Sprint(len("0\r\n\r\n")+len(smuggled)) +
		"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled
	resps, _, _ := r.exchange(t, raw, 2)
	mu.Lock()
	defer mu.Unlock()
	for _, s := range seen {
		if strings.Contains(s, "/admin") {
			t.Errorf("handler saw a smuggled request: %q (responses %d)", seen, len(resps))
		}
	}
}

func TestPipelinedAndHTTP10(t *testing.T) {
	r := start(t, &Server{Handler: echo()})
	resps, bodies, err := r.exchange(t, "POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nabGET /2 HTTP/1.1\r\nHost: x\r\n\r\n", 2)
	if err != nil || bodies[0] != "POST /1 ab" || bodies[1] != "GET /2 " || resps[0].Trailer.Get("X-Sum") != "2" {
		t.Fatalf("%q %v", bodies, err)
	}

	c := r.dial(t)
	io.WriteString(c, "POST /old HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: "POST", ProtoMajor: 1, ProtoMinor: 0})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil || string(b) != "POST /old abc" || len(resp.TransferEncoding) > 0 {
		t.Fatalf("HTTP/1.0: %q %v %v", b, resp.TransferEncoding, err)
	}
	if !closedAfter(t, c, br) {
		t.Error("an HTTP/1.0 reply without a length must end with the connection")
	}
}

func TestExpectContinueAndHead(t *testing.T) {
	r := start(t, &Server{Handler: echo()})
	c := r.dial(t)
	io.WriteString(c, "POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("%q %v", line, err)
	}
	br.ReadString('\n')
	io.WriteString(c, "body")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "POST /e body" {
		t.Errorf("%q", b)
	}
	io.WriteString(c, "HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err = http.ReadResponse(br, &http.Request{Method: http.MethodHead})
	if err != nil || resp.StatusCode != 200 {
		t.Fatal(resp, err)
	}
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "GET /after " {
		t.Errorf("after HEAD: %q (HEAD sent a body?)", b)
	}
}

// Header and trailer values a handler copies from elsewhere cannot split
// the response.
func TestNoResponseSplitting(t *testing.T) {
	r := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Trailer", "X-T")
		w.Header()["X-A"] = []string{"1\r\nX-Injected: yes"}
		io.WriteString(w, "ok")
		w.Header()["X-T"] = []string{"2\r\n\r\nHTTP/1.1 200 OK"}
	})})
	resps, bodies, err := r.exchange(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 2)
	if err != nil {
		t.Fatal(err)
	}
	for i, resp := range resps {
		if resp.Header.Get("X-Injected") != "" || bodies[i] != "ok" || !strings.HasPrefix(resp.Trailer.Get("X-T"), "2") {
			t.Errorf("response %d: %v %q %v", i, resp.Header, bodies[i], resp.Trailer)
		}
	}
}

// A handler that gives up mid-reply (http.ErrAbortHandler) leaves the
// client with a broken response, not a complete one.
func TestAbortedReply(t *testing.T) {
	r := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	})})
	resp, err := r.httpClient(false).Get("https://" + r.addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("read the aborted reply to its end: %v", err)
	}
}

// A body the handler did not read is dropped if small (the connection
// carries the next request) and ends the connection if large.
func TestUnreadBodies(t *testing.T) {
	r := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) { io.WriteString(w, req.RequestURI) })})
	small := strings.Repeat("s", 1000)
	_, bodies, err := r.exchange(t, "POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"+small+"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n", 2)
	if err != nil || bodies[1] != "/2" {
		t.Fatalf("after a small unread body: %q %v", bodies, err)
	}
	c := r.dial(t)
	fmt.Fprintf(c, "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", 1<<30)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	if !closedAfter(t, c, br) {
		t.Error("a connection whose unread body is 1 GiB was kept")
	}
}

func TestSlowHeadAndIdle(t *testing.T) {
	r := start(t, &Server{Handler: echo(), ReadHeaderTimeout: 100 * time.Millisecond, IdleTimeout: 100 * time.Millisecond})
	c := r.dial(t)
	io.WriteString(c, "GET / HTTP/1.1\r\n") // and never the rest
	if !closedAfter(t, c, bufio.NewReader(c)) {
		t.Error("a head that never ends kept the connection")
	}
	c = r.dial(t) // sends nothing at all
	if !closedAfter(t, c, bufio.NewReader(c)) {
		t.Error("an idle connection was kept")
	}
}

// Stopping closes idle connections at once, lets a request under way
// finish, and after the grace period ends one that does not.
func TestStop(t *testing.T) {
	release := make(chan struct{})
	started := make(chan string, 2)
	r := start(t, &Server{Grace: 500 * time.Millisecond, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		started <- req.RequestURI
		switch req.RequestURI {
		case "/finishes":
			<-release
			io.WriteString(w, "done")
		case "/never":
			<-req.Context().Done()
		}
	})})
	idle := r.dial(t)
	io.WriteString(idle, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
	ibr := bufio.NewReader(idle)
	resp, err := http.ReadResponse(ibr, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	<-started
	busy := r.dial(t)
	io.WriteString(busy, "GET /finishes HTTP/1.1\r\nHost: x\r\n\r\n")
	stuck := r.dial(t)
	io.WriteString(stuck, "GET /never HTTP/1.1\r\nHost: x\r\n\r\n")
	<-started
	<-started
	r.stop()
	if !closedAfter(t, idle, ibr) {
		t.Error("an idle connection outlived the stop")
	}
	close(release)
	bbr := bufio.NewReader(busy)
	resp, err = http.ReadResponse(bbr, nil)
	if err != nil {
		t.Fatalf("the request under way did not finish: %v", err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "done" {
		t.Errorf("%q", b)
	}
	if err := <-r.done; err != nil {
		t.Error(err)
	}
	r.done <- nil // for Cleanup
	if !closedAfter(t, stuck, bufio.NewReader(stuck)) {
		t.Error("a request that never ends kept its connection past the grace period")
	}
}

// fdLimited fails its first Accept as a process out of file descriptors does.
type fdLimited struct {
	net.Listener
	once sync.Once
}

func (l *fdLimited) Accept() (net.Conn, error) {
	var err error
	l.once.Do(func() {
		err = &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	})
	if err != nil {
		return nil, err
	}
	return l.Listener.Accept()
}

// Running out of file descriptors (which any client can make happen by
// opening connections) must not stop the server for good.
func TestAcceptOutOfDescriptors(t *testing.T) {
	r := startWrapped(t, &Server{Handler: echo()}, func(ln net.Listener) net.Listener { return &fdLimited{Listener: ln} })
	_, bodies, err := r.exchange(t, "GET /after HTTP/1.1\r\nHost: x\r\n\r\n", 1)
	if err != nil || bodies[0] != "GET /after " {
		t.Fatalf("after EMFILE: %q %v", bodies, err)
	}
}

// A response the server writes once it is stopping says that the
// connection closes after it, so that the client sends nothing more on it
// (a request sent anyway would be lost, as net/http avoids too).
func TestStopAnnouncesClose(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	r := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.RequestURI == "/busy" {
			started <- struct{}{}
			<-release
		}
		io.WriteString(w, "done")
	})})
	idle := r.dial(t)
	io.WriteString(idle, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
	ibr := bufio.NewReader(idle)
	resp, err := http.ReadResponse(ibr, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	busy := r.dial(t)
	io.WriteString(busy, "GET /busy HTTP/1.1\r\nHost: x\r\n\r\n")
	<-started
	r.stop()
	if !closedAfter(t, idle, ibr) { // the server is stopping from here on
		t.Fatal("an idle connection outlived the stop")
	}
	close(release)
	resp, err = http.ReadResponse(bufio.NewReader(busy), nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "done" || !resp.Close {
		t.Errorf("response %q written while stopping: Connection: close %v", b, resp.Close)
	}
}

// Neither a TLS handshake that never completes nor a client that never
// reads its response holds the stop past the grace period.
func TestStopWithStuckClients(t *testing.T) {
	writing := make(chan struct{})
	r := start(t, &Server{Grace: 200 * time.Millisecond, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		close(writing)
		// More than the connection buffers: the write blocks.
		for buf := make([]byte, 32<<10); ; {
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	})})
	raw, err := net.Dial("tcp", r.addr) // and no ClientHello
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	c := r.dial(t)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n") // and never a read
	<-writing
	r.stop()
	if err := <-r.done; err != nil {
		t.Error(err)
	}
	r.done <- nil // for Cleanup
}

// An unread body of exactly the most that is drained still keeps the
// connection.
func TestDrainLimitExactly(t *testing.T) {
	r := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) { io.WriteString(w, req.RequestURI) })})
	body := strings.Repeat("s", maxDrain)
	_, bodies, err := r.exchange(t, fmt.Sprintf("POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%sGET /2 HTTP/1.1\r\nHost: x\r\n\r\n", len(body), body), 2)
	if err != nil || len(bodies) != 2 || bodies[1] != "/2" {
		t.Fatalf("after an unread body of %d bytes: %q %v", len(body), bodies, err)
	}
}

// An HTTP/2 request under way when the server stops finishes.
func TestStopHTTP2(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	r := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		close(started)
		<-release
		io.WriteString(w, "done")
	})})
	hc := r.httpClient(true)
	defer hc.CloseIdleConnections()
	got := make(chan string, 1)
	go func() { // owned: ends with the request
		resp, err := hc.Get("https://" + r.addr + "/")
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- resp.Proto + " " + string(b)
	}()
	<-started
	r.stop()
	close(release)
	if s := <-got; s != "HTTP/2.0 done" {
		t.Errorf("got %q", s)
	}
	if err := <-r.done; err != nil {
		t.Error(err)
	}
	r.done <- nil // for Cleanup
}

// A handler that closes a request body it did not read (defer r.Body.Close(),
// as handlers commonly do) does not read the rest of it, however long: its
// response goes out, and the connection closes if too much is left.
func TestBodyCloseDoesNotRead(t *testing.T) {
	r := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		req.Body.Close()
		if _, err := req.Body.Read(make([]byte, 1)); err == nil {
			t.Error("read after Close")
		}
		io.WriteString(w, "refused")
	})})
	c := r.dial(t)
	fmt.Fprintf(c, "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\nsome", 1<<30)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no response while the body is not all sent: %v", err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "refused" {
		t.Errorf("%q", b)
	}
	if !closedAfter(t, c, br) {
		t.Error("a connection whose unread body is 1 GiB was kept")
	}
	// A small one is still drained and the connection kept.
	_, bodies, err := r.exchange(t, "POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcdeGET /2 HTTP/1.1\r\nHost: x\r\n\r\n", 2)
	if err != nil || len(bodies) != 2 {
		t.Errorf("after a small closed body: %q %v", bodies, err)
	}
}

// After the grace period, Serve still waits for HTTP/2 handlers to return
// (net/http's Close does not), so that what they use may be closed after.
func TestForcedStopWaitsForHTTP2Handlers(t *testing.T) {
	started, ended := make(chan struct{}), make(chan struct{})
	release := make(chan struct{})
	r := start(t, &Server{Grace: 50 * time.Millisecond, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		close(started)
		<-req.Context().Done() // the forced stop
		close(ended)
		<-release
	})})
	hc := r.httpClient(true)
	defer hc.CloseIdleConnections()
	go func() { // owned: ends when the connection is closed by the stop
		if resp, err := hc.Get("https://" + r.addr + "/"); err == nil {
			resp.Body.Close()
		}
	}()
	<-started
	r.stop()
	<-ended
	select {
	case err := <-r.done:
		t.Errorf("Serve returned (%v) while an HTTP/2 handler was running", err)
		r.done <- nil
	default:
	}
	close(release)
	if err := <-r.done; err != nil {
		t.Error(err)
	}
	r.done <- nil // for Cleanup
}

// A request that runs longer than WatchAfter has its context cancelled
// when the client goes away, as on net/http's server.
func TestClientGoneCancels(t *testing.T) {
	watched, cancelled := make(chan struct{}, 1), make(chan struct{})
	s := &Server{WatchAfter: time.Millisecond, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		io.ReadAll(req.Body)
		<-req.Context().Done()
		close(cancelled)
	})}
	s.onWatch = func() { watched <- struct{}{} }
	r := start(t, s)
	c := r.dial(t)
	io.WriteString(c, "POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
	<-watched
	c.Close()
	<-cancelled
}

// A byte of the next request that the watch read ahead is not lost: the
// next request on the connection is served whole.
func TestWatchReadAhead(t *testing.T) {
	watched, ahead, release := make(chan struct{}, 1), make(chan struct{}, 1), make(chan struct{})
	s := &Server{WatchAfter: time.Millisecond, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.RequestURI == "/slow" {
			<-release
		}
		io.WriteString(w, req.RequestURI)
	})}
	s.onWatch = func() { watched <- struct{}{} }
	s.onAhead = func() { ahead <- struct{}{} }
	r := start(t, s)
	c := r.dial(t)
	io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	<-watched
	io.WriteString(c, "GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
	<-ahead
	close(release)
	br := bufio.NewReader(c)
	for _, want := range []string{"/slow", "/next"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := io.ReadAll(resp.Body); string(b) != want {
			t.Errorf("got %q, want %q", b, want)
		}
	}
}

// A connection closed with the client's body unread delivers the reply and
// then ends with FIN, not with a reset (which closing at once, the client's
// bytes still queued, would send, and which can destroy the reply before the
// client reads it): the server lingers, as net/http does.
func TestUnreadBodyEndsWithoutReset(t *testing.T) {
	r := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		http.Error(w, "too large", http.StatusRequestEntityTooLarge)
	})})
	raw, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	cfg := r.client.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	c := tls.Client(raw, cfg)
	fmt.Fprintf(c, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", 8<<20)
	c.Write(make([]byte, 512<<10)) // left unread in the server's queue
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(resp.Body); err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("%d %q %v", resp.StatusCode, b, err)
	}
	raw.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("TLS ended with %v, not close_notify", err)
	}
	// Beneath TLS, after the server's close_notify: FIN, not a reset.
	if _, err := raw.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the connection ended with %v, not FIN", err)
	}
}
