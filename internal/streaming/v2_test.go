package streaming

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	sr "github.com/horde-compute/horde/streamreceipt"
)

// seen records what the service received.
type seen struct {
	mu         sync.Mutex
	method     string
	requestURI string
	header     http.Header
}

func (s *seen) handler(answer func(w http.ResponseWriter)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		s.mu.Lock()
		s.method, s.requestURI, s.header = r.Method, r.RequestURI, r.Header.Clone()
		s.mu.Unlock()
		answer(w)
	})
}

// The service gets only what the receipt binds: method, target (with its
// raw query), content type and body. The client's other headers never reach
// it, so a replay of the signed request is what the service answered.
func TestServiceSeesOnlyWhatIsBound(t *testing.T) {
	var s seen
	r := newRig(t, s.handler(func(w http.ResponseWriter) { io.WriteString(w, "ok") }))
	_, _, rc, err := r.call(t, "h1", []byte(`{"a":1}`), func(q *http.Request) {
		q.URL, _ = url.Parse(r.url + "/v1/x?q=a%2Fb&r=1")
		q.Header.Set("Authorization", "Bearer secret")
		q.Header.Set("Accept-Encoding", "gzip")
		q.Header.Set("Accept", "text/event-stream")
		q.Header.Set("X-Custom", "1")
		q.Header.Set("Cookie", "c=1")
		q.Header.Set("X-Horde-Other", "1")
	})
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.method != "POST" || s.requestURI != "/v1/x?q=a%2Fb&r=1" || rc.Target != s.requestURI {
		t.Errorf("service got %s %s, receipt binds %s %s", s.method, s.requestURI, rc.Method, rc.Target)
	}
	for k := range s.header {
		if !slices.Contains([]string{"Content-Type", "Content-Length", "User-Agent"}, k) {
			t.Errorf("the service got the client's header %s: %v", k, s.header[k])
		}
	}
	if s.header.Get("Content-Type") != "application/json" {
		t.Errorf("content type %q", s.header.Get("Content-Type"))
	}
}

// The receipt binds the method, target, both content types and the status,
// as the client sent and received them.
func TestReceiptBindsTheExchange(t *testing.T) {
	for _, tc := range []struct {
		name, method, target, ctype string
		answer                      func(w http.ResponseWriter)
		status                      int
		respType                    string
	}{
		{"GET with a query, no body", "GET", "/v1/models?verbose=1", "", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, "{}")
		}, 200, "application/json"},
		{"PUT text", "PUT", "/files/a%20b", "text/plain; charset=utf-8", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.WriteHeader(http.StatusCreated)
			io.WriteString(w, "{}\n")
		}, 201, "application/x-ndjson"},
		{"no content type is passed on as none, not sniffed", "POST", "/v1/completions", "application/json", func(w http.ResponseWriter) {
			w.Header()["Content-Type"] = nil
			io.WriteString(w, "<html><body>hi</body></html>")
		}, 200, ""},
		{"two content types: the first, alone", "POST", "/v1/completions", "application/json", func(w http.ResponseWriter) {
			w.Header()["Content-Type"] = []string{"text/event-stream", "text/html"}
			io.WriteString(w, "data: x\n\n")
		}, 200, "text/event-stream"},
		{"error answers are signed too", "POST", "/v1/chat/completions?stream=true", "application/json", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set(sr.HeaderRequestID, "forged-by-the-service")
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error": "bad"}`)
		}, 400, "application/json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s seen
			r := newRig(t, s.handler(tc.answer))
			body := []byte("x")
			if tc.method == "GET" {
				body = nil
			}
			resp, got, rc, err := r.call(t, "b1", body, func(q *http.Request) {
				q.Method = tc.method
				q.URL, _ = url.Parse(r.url + tc.target)
				q.Header.Del("Content-Type")
				if tc.ctype != "" {
					q.Header.Set("Content-Type", tc.ctype)
				}
			})
			if err != nil {
				t.Fatalf("%v (%q)", err, got)
			}
			if rc.Method != tc.method || rc.Target != tc.target || rc.RequestContentType != tc.ctype || rc.Status != tc.status || rc.ResponseContentType != tc.respType {
				t.Errorf("receipt %+v", rc)
			}
			if vs := resp.Header.Values("Content-Type"); len(vs) > 1 || resp.Header.Get("Content-Type") != tc.respType {
				t.Errorf("client got Content-Type %q", vs)
			}
			if resp.Header.Get(sr.HeaderRequestID) != "b1" {
				t.Errorf("request id header %q", resp.Header.Get(sr.HeaderRequestID))
			}
		})
	}
}

// Requests the receipt cannot carry are refused before they reach the service.
func TestUnboundableRequestsRefused(t *testing.T) {
	var s seen
	r := newRig(t, s.handler(func(w http.ResponseWriter) {}))
	for name, tc := range map[string]struct{ line, want string }{
		"absolute form": {"GET https://127.0.0.1/v1/models HTTP/1.1", "not in origin form"},
		"non-ASCII":     {"GET /caf\xc3\xa9 HTTP/1.1", "not in origin form"},
	} {
		t.Run(name, func(t *testing.T) {
			status, body := r.raw(t, tc.line+"\r\nHost: x\r\n"+sr.HeaderTimestamp+": "+time.Now().UTC().Format(sr.TimeFormat)+"\r\n"+sr.HeaderRequestID+": "+strings.ReplaceAll(name, " ", "-")+"\r\nConnection: close\r\n\r\n")
			if status != http.StatusBadRequest || !strings.Contains(body, tc.want) {
				t.Errorf("%d %q", status, body)
			}
		})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.method != "" {
		t.Errorf("the service got %s %s", s.method, s.requestURI)
	}
}

// raw sends one request as written and returns the status and body.
func (r *rig) raw(t *testing.T, request string) (int, string) {
	t.Helper()
	cfg, err := sr.ClientTLS(r.clientKey, r.clientPEM, r.jobCert)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.Dial("tcp", strings.TrimPrefix(r.url, "https://"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufioReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// An upstream-style client — no X-Horde-* headers, the job certificate as
// its trust anchor with the host it dials checked against it — is served,
// and gets a proxy-stamped receipt it can verify: the request id comes back
// in a response header, the receipt in the trailers and at the receipts path.
func TestUpstreamStyleClient(t *testing.T) {
	r := newRig(t, echo())
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(r.jobCert)
	cert, err := sr.TLSCert(r.clientKey, r.clientPEM)
	if err != nil {
		t.Fatal(err)
	}
	// Hostname checking: the certificate must list 127.0.0.1 as an IP SAN.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}}}}
	body := []byte(`{"prompt": "hi"}`)
	sent := time.Now()
	resp, err := hc.Post(r.url+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	id := resp.Header.Get(sr.HeaderRequestID)
	if resp.StatusCode != 200 || len(id) != 32 {
		t.Fatalf("%d %q, request id %q", resp.StatusCode, got, id)
	}
	pub, _ := sr.PublicKey(r.jobCert)
	want := sr.Expect{JobUUID: "job-1", RequestID: id, Stamp: sr.StampProxy, Exchange: sr.Exchange{Method: "POST", Target: "/v1/completions",
		RequestContentType: "application/json", Status: 200, ResponseContentType: resp.Header.Get("Content-Type")},
		InputSHA256: hexsum(body), OutputSHA256: hexsum(got), Sent: sent, Received: time.Now(), Skew: time.Second}
	rc, err := sr.Verify(pub, resp.Trailer.Get(sr.TrailerReceipt), resp.Trailer.Get(sr.TrailerSig), want)
	if err != nil {
		t.Fatal(err)
	}
	if rc.Stamp != sr.StampProxy {
		t.Errorf("stamp %q", rc.Stamp)
	}
	// A client that drops trailers (as httpx does) fetches it by id.
	blob, sig := fetchKept(t, hc, r.url, id)
	if blob != resp.Trailer.Get(sr.TrailerReceipt) || sig != resp.Trailer.Get(sr.TrailerSig) {
		t.Error("the kept receipt is not the one in the trailers")
	}
	// Verified as client-stamped, it is refused: the stamp is bound.
	want.Stamp = sr.StampClient
	if _, err := sr.Verify(pub, blob, sig, want); err == nil || !strings.Contains(err.Error(), "proxy-stamped") {
		t.Errorf("stamp not bound: %v", err)
	}
	// Sending only one of the two headers is refused: stamped by whom?
	req, _ := http.NewRequest(http.MethodPost, r.url+"/v1/completions", bytes.NewReader(body))
	req.Header.Set(sr.HeaderRequestID, "mine")
	resp, err = hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(msg), "missing X-Horde-Timestamp") {
		t.Errorf("one header only: %d %q", resp.StatusCode, msg)
	}
}

func fetchKept(t *testing.T, hc *http.Client, base, id string) (string, string) {
	t.Helper()
	resp, err := hc.Get(base + sr.ReceiptsPath + id)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var kept struct{ Receipt, Signature string }
	if err := json.NewDecoder(resp.Body).Decode(&kept); err != nil || resp.StatusCode != 200 {
		t.Fatalf("kept receipt: %d %v", resp.StatusCode, err)
	}
	return kept.Receipt, kept.Signature
}

// A real upstream client: Python's ssl and http.client, as the upstream SDK
// and examples use them (RSA client certificate, default verification with
// hostname checking, and Python 3.13's stricter flags). It needs python3.
func TestUpstreamPythonClient(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed: the upstream client cannot run")
	}
	svc := httptest.NewServer(echo())
	t.Cleanup(svc.Close)
	up, _ := url.Parse(svc.URL)
	jobKey, jobCert, err := sr.NewKeyPair("horde-job-py", time.Hour, "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	clientCert := rsaClient(t, dir)
	p := &Proxy{JobUUID: "job-py", Key: jobKey, Upstream: up, Dir: t.TempDir()}
	tlsCfg, err := sr.ServerTLS(jobKey, jobCert, clientCert)
	if err != nil {
		t.Fatal(err)
	}
	srvURL := serveProxy(t, p, p, tlsCfg)
	os.WriteFile(filepath.Join(dir, "job.crt"), jobCert, 0o600)
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(srvURL, "https://"))
	pub, _ := sr.PublicKey(jobCert)
	for _, mode := range []string{"default", "strict"} {
		t.Run(mode, func(t *testing.T) {
			body := `{"prompt": "from python"}`
			sent := time.Now()
			out, err := exec.CommandContext(t.Context(), py, "testdata/upstream_client.py", host, port, filepath.Join(dir, "job.crt"),
				filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"), mode, "/v1/completions?n=1", body).CombinedOutput()
			if err != nil {
				t.Fatalf("python: %v\n%s", err, out)
			}
			var got struct {
				Status      int    `json:"status"`
				RequestID   string `json:"request_id"`
				ContentType string `json:"content_type"`
				BodyB64     string `json:"body_b64"`
			}
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			answer, _ := base64.StdEncoding.DecodeString(got.BodyB64)
			if got.Status != 200 || string(answer) != "echo:"+body || got.RequestID == "" {
				t.Fatalf("python got %+v (%q)", got, answer)
			}
			// The receipt, as a client without trailers fetches it.
			keptBlob, keptSig, ok, err := p.Receipt(got.RequestID)
			if err != nil || !ok {
				t.Fatalf("no receipt kept for %s (%v)", got.RequestID, err)
			}
			rc, err := sr.Verify(pub, keptBlob, keptSig, sr.Expect{JobUUID: "job-py", RequestID: got.RequestID, Stamp: sr.StampProxy,
				Exchange: sr.Exchange{Method: "POST", Target: "/v1/completions?n=1", RequestContentType: "application/json", Status: 200,
					ResponseContentType: got.ContentType}, InputSHA256: hexsum([]byte(body)), OutputSHA256: hexsum(answer),
				Sent: sent, Received: time.Now(), Skew: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("python %s: receipt %s, %s-stamped, %s %s", mode, rc.RequestID, rc.Stamp, rc.Method, rc.Target)
		})
	}
}

// rsaClient writes an upstream client's RSA 2048 certificate and key into
// dir and returns the certificate (PEM).
func rsaClient(t *testing.T, dir string) []byte {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "upstream-client"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalPKCS8PrivateKey(k)
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := errors.Join(os.WriteFile(filepath.Join(dir, "client.crt"), cert, 0o600),
		os.WriteFile(filepath.Join(dir, "client.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600)); err != nil {
		t.Fatal(err)
	}
	return cert
}

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }
