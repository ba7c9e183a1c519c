package streaming

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/h1"
	sr "github.com/horde-compute/horde/streamreceipt"
)

// rig is a proxy with TLS in front of a service, and a client with its key.
type rig struct {
	proxy     *Proxy
	url       string
	jobCert   []byte
	client    *http.Client
	clientKey ed25519.PrivateKey
	clientPEM []byte
	ended     chan string // request ids whose handler returned
}

// waitEnded waits until the proxy's handler for request id has returned.
func (r *rig) waitEnded(t *testing.T, id string) {
	t.Helper()
	for {
		select {
		case got := <-r.ended:
			if got == id {
				return
			}
		case <-time.After(time.Minute):
			t.Fatalf("the handler of %s did not return", id)
		}
	}
}

func newRig(t testing.TB, service http.Handler) *rig {
	t.Helper()
	svc := httptest.NewServer(service)
	t.Cleanup(svc.Close)
	up, _ := url.Parse(svc.URL)
	jobKey, jobCert, err := sr.NewKeyPair("job", time.Hour, "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	ck, cc, err := sr.NewKeyPair("client", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{JobUUID: "job-1", Key: jobKey, Upstream: up, Dir: t.TempDir()}
	tlsCfg, err := sr.ServerTLS(jobKey, jobCert, cc)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{proxy: p, jobCert: jobCert, clientKey: ck, clientPEM: cc, ended: make(chan string, 64)}
	r.url = serveProxy(t, p, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		defer func() {
			select {
			case r.ended <- req.Header.Get(sr.HeaderRequestID):
			default:
			}
		}()
		p.ServeHTTP(w, req)
	}), tlsCfg)
	r.client = r.clientWith(ck, cc)
	return r
}

// serveProxy serves h (p, or a handler around it) as the executor serves
// p and returns its URL; the proxy stops and closes when the test ends.
func serveProxy(t testing.TB, p *Proxy, h http.Handler, tlsCfg *tls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	s := &h1.Server{Handler: h, TLSConfig: tlsCfg}
	go func() { served <- s.Serve(ctx, ln) }() // owned: waited for in Cleanup
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
		p.Close()
	})
	return "https://" + ln.Addr().String()
}

func (r *rig) clientWith(key ed25519.PrivateKey, certPEM []byte) *http.Client {
	cfg, err := sr.ClientTLS(key, certPEM, r.jobCert)
	if err != nil {
		panic(err)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
}

func hexsum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// call sends body with fresh headers and verifies the receipt.
func (r *rig) call(t testing.TB, id string, body []byte, edit func(*http.Request)) (*http.Response, []byte, *sr.Receipt, error) {
	req, _ := http.NewRequest(http.MethodPost, r.url+"/v1/completions", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(sr.HeaderTimestamp, time.Now().UTC().Format(sr.TimeFormat))
	req.Header.Set(sr.HeaderRequestID, id)
	if edit != nil {
		edit(req)
	}
	sent := time.Now()
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, nil, nil, err
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp, got, nil, err
	}
	pub, _ := sr.PublicKey(r.jobCert)
	rc, verr := sr.Verify(pub, resp.Trailer.Get(sr.TrailerReceipt), resp.Trailer.Get(sr.TrailerSig), sr.Expect{
		JobUUID: "job-1", RequestID: id, Exchange: exchange(req, resp), InputSHA256: hexsum(body), OutputSHA256: hexsum(got),
		Sent: sent, Received: time.Now(), Skew: time.Second})
	return resp, got, rc, verr
}

// exchange is what a client knows of its request and the response's head.
func exchange(req *http.Request, resp *http.Response) sr.Exchange {
	return sr.Exchange{Method: req.Method, Target: req.URL.RequestURI(), RequestContentType: req.Header.Get("Content-Type"),
		Status: resp.StatusCode, ResponseContentType: resp.Header.Get("Content-Type")}
}

func echo() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(append([]byte("echo:"), b...))
	})
}

func TestReceiptVerifies(t *testing.T) {
	r := newRig(t, echo())
	resp, got, rc, err := r.call(t, "r1", []byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || string(got) != "echo:hello" || rc.RequestID != "r1" || rc.Version != 2 || rc.Stamp != sr.StampClient ||
		rc.Method != "POST" || rc.Target != "/v1/completions" || rc.RequestContentType != "application/json" || rc.Status != 200 ||
		rc.ResponseContentType != "text/plain; charset=utf-8" || resp.Header.Get(sr.HeaderRequestID) != "r1" {
		t.Errorf("%d %q %+v %v", resp.StatusCode, got, rc, resp.Header)
	}
	// The receipt is kept and retrievable by request id.
	res, err := r.client.Get(r.url + sr.ReceiptsPath + "r1")
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("kept receipt: %v %v", res, err)
	}
	res.Body.Close()
}

func TestProxyRefusals(t *testing.T) {
	r := newRig(t, echo())
	if _, _, _, err := r.call(t, "dup", []byte("a"), nil); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		id     string
		edit   func(*http.Request)
		status int
		body   string
	}{
		"reused request id":         {"dup", nil, http.StatusConflict, "was used before"},
		"missing timestamp":         {"m1", func(q *http.Request) { q.Header.Del(sr.HeaderTimestamp) }, http.StatusBadRequest, "missing X-Horde-Timestamp"},
		"missing request id header": {"m4", func(q *http.Request) { q.Header.Del(sr.HeaderRequestID) }, http.StatusBadRequest, "missing X-Horde-Request-Id"},
		"request id with a slash":   {"a/b", nil, http.StatusBadRequest, "malformed X-Horde-Request-Id"},
		"two timestamps": {"m5", func(q *http.Request) { q.Header.Add(sr.HeaderTimestamp, q.Header.Get(sr.HeaderTimestamp)) },
			http.StatusBadRequest, "each be sent once"},
		"two content types": {"m6", func(q *http.Request) { q.Header.Add("Content-Type", "text/plain") }, http.StatusBadRequest, "more than one Content-Type"},
		"non-ASCII content type": {"m7", func(q *http.Request) { q.Header.Set("Content-Type", "text/plain; charset=\xe9") },
			http.StatusBadRequest, "Content-Type: byte 0xe9"},
		"skewed timestamp": {"m2", func(q *http.Request) {
			q.Header.Set(sr.HeaderTimestamp, time.Now().Add(-time.Minute).UTC().Format(sr.TimeFormat))
		}, http.StatusBadRequest, "away from the job's clock"},
		"garbage timestamp":  {"m3", func(q *http.Request) { q.Header.Set(sr.HeaderTimestamp, "yesterday") }, http.StatusBadRequest, "not RFC 3339"},
		"missing request id": {"", nil, http.StatusBadRequest, "X-Horde-Request-Id"},
	} {
		t.Run(name, func(t *testing.T) {
			resp, got, _, err := r.call(t, tc.id, []byte("x"), tc.edit)
			if resp == nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status || !strings.Contains(string(got), tc.body) {
				t.Errorf("%d %q", resp.StatusCode, got)
			}
		})
	}
}

func TestClientCertificates(t *testing.T) {
	r := newRig(t, echo())
	// No client certificate: the handshake fails.
	cfg, _ := sr.ClientTLS(r.clientKey, r.clientPEM, r.jobCert)
	cfg.Certificates = nil
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
	if _, err := noCert.Get(r.url + "/"); err == nil {
		t.Error("request without a client certificate went through")
	}
	// Another certificate: refused too.
	k2, c2, _ := sr.NewKeyPair("intruder", time.Hour)
	if _, err := r.clientWith(k2, c2).Get(r.url + "/"); err == nil {
		t.Error("request with another client certificate went through")
	}
	// A client that pins another job certificate refuses this job.
	_, other, _ := sr.NewKeyPair("other-job", time.Hour)
	cfg, _ = sr.ClientTLS(r.clientKey, r.clientPEM, other)
	if _, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}).Get(r.url + "/"); err == nil {
		t.Error("client accepted an unpinned job certificate")
	}
	// TLS below 1.3 is refused.
	cfg, _ = sr.ClientTLS(r.clientKey, r.clientPEM, r.jobCert)
	cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	if _, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}).Get(r.url + "/"); err == nil {
		t.Error("TLS 1.2 accepted")
	}
}

// Server-sent events pass through token by token, before the response ends.
func TestSSEStreamsThrough(t *testing.T) {
	release := make(chan struct{})
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, q *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-release
		fmt.Fprint(w, "data: [DONE]\n\n")
	}))
	req, _ := http.NewRequest(http.MethodGet, r.url+"/v1/stream", nil)
	resp, err := r.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first event %q %v (the proxy buffered?)", line, err)
	}
	close(release)
	rest, _ := io.ReadAll(br)
	if !strings.Contains(string(rest), "[DONE]") || resp.Trailer.Get(sr.TrailerReceipt) == "" {
		t.Errorf("rest %q trailer %v", rest, resp.Trailer)
	}
}

// A service that dies mid-stream gives the client an error and no receipt.
func TestServiceCrashMidStream(t *testing.T) {
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, q *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: partial\n\n")
		w.(http.Flusher).Flush()
		hj, _ := w.(http.Hijacker)
		c, _, _ := hj.Hijack()
		c.Close() // crash
	}))
	_, _, _, err := r.call(t, "crash", []byte("x"), nil)
	if err == nil {
		t.Fatal("a broken stream produced a valid receipt")
	}
	if r.proxy.Receipts() != 0 {
		t.Error("the proxy signed a receipt for a broken stream")
	}
}

func TestTamperedReceipts(t *testing.T) {
	r := newRig(t, echo())
	pub, _ := sr.PublicKey(r.jobCert)
	resp, got, _, err := r.call(t, "t1", []byte("in"), nil)
	if err != nil {
		t.Fatal(err)
	}
	blob, sig := resp.Trailer.Get(sr.TrailerReceipt), resp.Trailer.Get(sr.TrailerSig)
	want := sr.Expect{JobUUID: "job-1", RequestID: "t1", InputSHA256: hexsum([]byte("in")), OutputSHA256: hexsum(got),
		Exchange: sr.Exchange{Method: "POST", Target: "/v1/completions", RequestContentType: "application/json", Status: 200, ResponseContentType: resp.Header.Get("Content-Type")},
		Sent:     time.Now().Add(-time.Second), Received: time.Now(), Skew: time.Second}
	raw, _ := base64.StdEncoding.DecodeString(blob)
	forged := base64.StdEncoding.EncodeToString(bytes.Replace(raw, []byte("request_id=t1"), []byte("request_id=t2"), 1))
	otherKey, otherCert, _ := sr.NewKeyPair("x", time.Hour)
	_ = otherCert
	rcp, _ := sr.ParseBlob(raw)
	_, otherSig := sr.Sign(otherKey, rcp)
	tampered := want
	tampered.OutputSHA256 = hexsum([]byte("echo:something else"))
	for name, tc := range map[string]struct {
		blob, sig string
		want      sr.Expect
		msg       string
	}{
		"altered blob":      {forged, sig, want, "signature does not verify"},
		"other key":         {blob, otherSig, want, "signature does not verify"},
		"tampered response": {blob, sig, tampered, "output_sha256"},
		"other request":     {blob, sig, func() sr.Expect { w := want; w.RequestID = "zz"; return w }(), "request t1, not zz"},
		"late":              {blob, sig, func() sr.Expect { w := want; w.Sent = time.Now().Add(time.Hour); return w }(), "timestamp_from"},
		"missing":           {"", "", want, "no receipt"},
	} {
		_, err := sr.Verify(pub, tc.blob, tc.sig, tc.want)
		if !errors.Is(err, sr.ErrReceipt) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// Many requests with bodies over one kept-alive connection all complete with
// receipts (the request body is read to its end before the response starts).
func TestManyRequestsOneConnection(t *testing.T) {
	r := newRig(t, echo())
	for i := range 200 {
		if _, _, _, err := r.call(t, fmt.Sprintf("k%d", i), bytes.Repeat([]byte("z"), i*37), nil); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
}

// A client offering HTTP/2 gets it (ALPN), with the receipt in the trailers
// as an HTTP/1.1 client gets it; both kinds of body (held whole, streamed).
func TestHTTP2AndHTTP1Trailers(t *testing.T) {
	r := newRig(t, echo())
	r.proxy.MaxBuffered = 1 << 10
	cfg, err := sr.ClientTLS(r.clientKey, r.clientPEM, r.jobCert)
	if err != nil {
		t.Fatal(err)
	}
	cfg.NextProtos = []string{"h2", "http/1.1"}
	h2 := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}}
	for _, tc := range []struct {
		name   string
		client *http.Client
		proto  int
	}{{"h1", r.client, 1}, {"h2", h2, 2}} {
		for _, size := range []int{0, 100, 1 << 10, 5000, 200 << 10} {
			t.Run(fmt.Sprintf("%s/%d", tc.name, size), func(t *testing.T) {
				old := r.client
				r.client = tc.client
				defer func() { r.client = old }()
				body := bytes.Repeat([]byte("q"), size)
				resp, got, rc, err := r.call(t, fmt.Sprintf("%s-%d", tc.name, size), body, nil)
				if err != nil {
					t.Fatal(err)
				}
				if resp.ProtoMajor != tc.proto || string(got) != "echo:"+string(body) || rc.InputSHA256 != hexsum(body) {
					t.Errorf("proto %d, %d bytes back, receipt %+v", resp.ProtoMajor, len(got), rc)
				}
			})
		}
	}
}

// Receipts are kept on disk: each is retrievable by id while the job lives,
// ids stay used after their buffers were written out, and a request that
// ended without a receipt keeps its id used too.
func TestReceiptsKeptOnDisk(t *testing.T) {
	r := newRig(t, echo())
	const n = 300
	for i := range n {
		if _, _, _, err := r.call(t, fmt.Sprintf("d%d", i), []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := r.proxy.Receipts(); got != n {
		t.Errorf("%d receipts, want %d", got, n)
	}
	pub, _ := sr.PublicKey(r.jobCert)
	for _, i := range []int{0, 7, n / 2, n - 1} {
		id := fmt.Sprintf("d%d", i)
		blob, sig, ok, err := r.proxy.Receipt(id)
		if err != nil || !ok {
			t.Fatalf("%s: %v %v", id, ok, err)
		}
		if _, err := sr.VerifyEvidence(pub, "job-1", blob, sig, []byte("x"), []byte("echo:x")); err != nil {
			t.Errorf("%s: %v", id, err)
		}
		resp, _, _, _ := r.call(t, id, []byte("again"), nil)
		if resp == nil || resp.StatusCode != http.StatusConflict {
			t.Errorf("%s reused: %v", id, resp)
		}
	}
	if _, _, ok, _ := r.proxy.Receipt("never"); ok {
		t.Error("a receipt for an id never used")
	}
}

// The proxy's own pool to the service: a service that closes every
// connection after its answer, and kept connections the service closed
// between requests, are both served; a client that goes away mid-stream
// makes the proxy drop the service's connection, not drain it.
func TestUpstreamPool(t *testing.T) {
	t.Run("connection close", func(t *testing.T) {
		r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, q *http.Request) {
			io.ReadAll(q.Body)
			w.Header().Set("Connection", "close")
			io.WriteString(w, "bye")
		}))
		for i := range 5 {
			if _, got, _, err := r.call(t, fmt.Sprintf("c%d", i), []byte("x"), nil); err != nil || string(got) != "bye" {
				t.Fatalf("%d: %q %v", i, got, err)
			}
		}
	})
	t.Run("kept connections closed by the service", func(t *testing.T) {
		svc := httptest.NewServer(echo())
		t.Cleanup(svc.Close)
		r := newRig(t, echo())
		up, _ := url.Parse(svc.URL)
		r.proxy.Upstream = up
		for i := range 4 {
			if _, got, _, err := r.call(t, fmt.Sprintf("s%d", i), []byte("y"), nil); err != nil || string(got) != "echo:y" {
				t.Fatalf("%d: %q %v", i, got, err)
			}
			svc.CloseClientConnections()
		}
	})
	t.Run("client gone mid-stream", func(t *testing.T) {
		serviceDone := make(chan struct{})
		r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, q *http.Request) {
			defer close(serviceDone)
			w.Header().Set("Content-Type", "text/event-stream")
			for {
				if _, err := io.WriteString(w, "data: more\n\n"); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-q.Context().Done():
					return
				default:
				}
			}
		}))
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, r.url+"/v1/stream", strings.NewReader("z"))
		resp, err := r.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || line != "data: more\n" {
			t.Fatalf("%q %v", line, err)
		}
		resp.Body.Close()
		r.client.CloseIdleConnections()
		<-serviceDone // the service saw its connection go
	})
}

// Request bodies held in pooled buffers never mix: many clients at once
// send bodies of many sizes (some sharing a size class), and each gets its
// own body back under a receipt of its own hashes.
func TestHeldBodiesNotShared(t *testing.T) {
	r := newRig(t, echo())
	sizes := []int{1, 4 << 10, 4<<10 + 1, 9000, 64 << 10, 300 << 10}
	errs := make(chan error, 8)
	for g := range 8 {
		go func() {
			for i := range 12 {
				body := bytes.Repeat([]byte{byte('a' + g)}, sizes[(g+i)%len(sizes)])
				body[len(body)-1] = byte('0' + i%10)
				_, got, _, err := r.call(t, fmt.Sprintf("h%d-%d", g, i), body, nil)
				if err == nil && !bytes.Equal(got, append([]byte("echo:"), body...)) {
					err = fmt.Errorf("%d-%d: got %d bytes back, not its own %d", g, i, len(got), len(body)+5)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// earlyService answers at once, before reading the request body, and says
// so on answered.
func earlyService(answered chan<- struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.NewResponseController(w).EnableFullDuplex()
		io.WriteString(w, "early")
		w.(http.Flusher).Flush()
		answered <- struct{}{}
	})
}

// A receipt's input hash covers the whole body the client sent, or there
// is no receipt: a client that breaks off mid-body after the service
// answered, or a service that does not read the rest in time, gets none.
func TestPartialBodyNoReceipt(t *testing.T) {
	answered := make(chan struct{}, 1)
	r := newRig(t, earlyService(answered))
	r.proxy.BodyGrace = 200 * time.Millisecond
	post := func(ctx context.Context, id string, body io.Reader) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, r.url+"/v1/completions", body)
		req.Header.Set(sr.HeaderTimestamp, time.Now().UTC().Format(sr.TimeFormat))
		req.Header.Set(sr.HeaderRequestID, id)
		return r.client.Do(req)
	}
	noReceipt := func(id string) {
		t.Helper()
		if _, _, ok, err := r.proxy.Receipt(id); ok || err != nil {
			t.Errorf("%s: a receipt was kept for part of a body (%v)", id, err)
		}
	}

	t.Run("client breaks off", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		pr, pw := io.Pipe()
		go func() { // owned: ends once the request is cancelled
			pw.Write(bytes.Repeat([]byte("a"), 1000))
			<-answered
			cancel()
			pw.CloseWithError(errors.New("the client broke off"))
		}()
		post(ctx, "partial-gone", pr)
		r.waitEnded(t, "partial-gone")
		noReceipt("partial-gone")
	})
	t.Run("service does not read the rest", func(t *testing.T) {
		pr, pw := io.Pipe()
		defer pw.Close()
		go func() { pw.Write(bytes.Repeat([]byte("b"), 1000)) }() // owned: ends with pw.Close
		resp, err := post(t.Context(), "partial-stalled", pr)
		if err != nil {
			t.Fatal(err)
		}
		<-answered
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway || resp.Trailer.Get(sr.TrailerReceipt) != "" || !strings.Contains(string(b), "not read to its end") {
			t.Errorf("%d %q %v", resp.StatusCode, b, resp.Trailer)
		}
		r.waitEnded(t, "partial-stalled")
		noReceipt("partial-stalled")
	})
	if n := r.proxy.Receipts(); n != 0 {
		t.Errorf("%d receipts signed", n)
	}
}
