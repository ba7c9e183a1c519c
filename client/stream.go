package client

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
	sr "github.com/horde-compute/horde/streamreceipt"
)

// Stream is a serving streaming job as its client knows it. It marshals to
// JSON, so a CLI can keep it between commands.
type Stream struct {
	JobUUID string `json:"job_uuid"`
	// URL is the job's signing proxy (https://host:port).
	URL string `json:"url"`
	// JobCert is the job's certificate, vouched for by MinerHotkey's MinerSignature.
	JobCert        string `json:"job_cert"`
	MinerHotkey    string `json:"miner_hotkey"`
	MinerSignature string `json:"miner_signature"`
	// ClientKey (PKCS #8 PEM) and ClientCert authenticate the client to the job.
	ClientKey  string `json:"client_key"`
	ClientCert string `json:"client_cert"`
	// Skew bounds the clock difference tolerated on receipts (default 5s).
	Skew time.Duration `json:"skew"`
}

// ErrNotStreaming is returned when a job ended or failed before it served.
var ErrNotStreaming = errors.New("streaming job did not start")

// StartStreaming makes a client key pair, submits spec as a streaming job,
// waits until it serves (calling progress for each status, may be nil), and
// checks the miner's signature of the job's key.
func (c *Client) StartStreaming(ctx context.Context, spec *protocol.JobSpec, progress func(protocol.StatusEntry)) (*Stream, error) {
	key, certPEM, err := sr.NewKeyPair("horde-client", 7*24*time.Hour)
	if err != nil {
		return nil, err
	}
	spec.StreamingDetails = &protocol.StreamingDetails{PublicKey: string(certPEM)}
	if spec.StreamingStartTimeLimit == 0 {
		spec.StreamingStartTimeLimit = 120
	}
	job, err := c.CreateJob(ctx, spec)
	if err != nil {
		return nil, err
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	st := &Stream{JobUUID: job.UUID, ClientKey: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), ClientCert: string(certPEM)}
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	errReady := errors.New("ready")
	var ready *protocol.StatusEntry
	done, werr := c.Watch(wctx, job.UUID, func(e protocol.StatusEntry) {
		if progress != nil {
			progress(e)
		}
		if e.Status == protocol.StatusStreaming && ready == nil {
			ready = &e
			cancel(errReady)
		}
	})
	if ready == nil {
		if werr != nil {
			return st, werr
		}
		return st, fmt.Errorf("%w: job %s %s", ErrNotStreaming, job.UUID, done.Status)
	}
	d := ready.Metadata.StreamingDetails
	if d == nil {
		return st, fmt.Errorf("%w: no streaming details", ErrNotStreaming)
	}
	st.URL = "https://" + net.JoinHostPort(d.StreamingServerAddress, strconv.Itoa(d.StreamingServerPort))
	st.JobCert, st.MinerHotkey, st.MinerSignature = d.StreamingServerCert, ready.Metadata.MinerHotkey, d.MinerSignature
	msg := protocol.StreamingReadyMessage(job.UUID, d.StreamingServerAddress, d.StreamingServerPort, d.StreamingServerCert)
	if err := sig.VerifyHex(st.MinerHotkey, msg, st.MinerSignature); err != nil {
		return st, fmt.Errorf("the miner's signature of the job's key does not verify: %w", err)
	}
	return st, nil
}

// Stop ends a streaming job normally.
func (c *Client) Stop(ctx context.Context, uuid string) (*protocol.Job, error) {
	var job protocol.Job
	if err := c.do(ctx, http.MethodPost, protocol.RouteJobs+uuid+"/stop/", nil, "", nil, &job); err != nil {
		return nil, err
	}
	return &job, nil
}

// SendVolume sends a volume message to a serving streaming job (one more
// input volume, or an upload of its outputs so far) and returns the job's
// acknowledgement once it has acted.
func (c *Client) SendVolume(ctx context.Context, uuid string, msg *protocol.VolumeMessage) (*protocol.VolumeAck, error) {
	body, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	var ack protocol.VolumeAck
	if err := c.do(ctx, http.MethodPost, protocol.RouteJobs+uuid+"/volumes/", body, "", nil, &ack); err != nil {
		return nil, err
	}
	if !ack.Success {
		return &ack, fmt.Errorf("volume message %s: %s", ack.MessageID, ack.Error)
	}
	return &ack, nil
}

// HTTPClient returns a client that presents the client certificate and
// accepts only the job's certificate. It asks for no compression: the
// receipt's output hash is over the bytes as the job sent them.
func (s *Stream) HTTPClient() (*http.Client, error) {
	b, _ := pem.Decode([]byte(s.ClientKey))
	if b == nil {
		return nil, errors.New("stream: client key is not PEM")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, errors.New("stream: client key is not ed25519")
	}
	cfg, err := sr.ClientTLS(key, []byte(s.ClientCert), []byte(s.JobCert))
	if err != nil {
		return nil, err
	}
	// A job whose host is killed or cut off sends nothing more: a bounded
	// dial and health-check pings on a silent connection (answered at once
	// by a live server, even mid-generation) end a call to it within about
	// ten seconds, with an error, instead of leaving it hanging.
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true, DisableCompression: true,
		DialContext: (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		HTTP2:       &http.HTTP2Config{SendPingTimeout: 5 * time.Second, PingTimeout: 5 * time.Second}}}, nil
}

// VerifyReceipt checks a receipt (the base64 trailers) against the job's
// certificate and what the client sent and received: the signature, every
// field of the v2 receipt (request, response head, both hashes, who stamped
// it) and the timestamps against the client's clock. Stream.Do does this
// for every call; this is for receipts checked later or by others.
func VerifyReceipt(jobCertPEM, receiptB64, signatureB64 string, want sr.Expect) (*sr.Receipt, error) {
	pub, err := sr.PublicKey([]byte(jobCertPEM))
	if err != nil {
		return nil, fmt.Errorf("%w: job certificate: %v", sr.ErrReceipt, err)
	}
	return sr.Verify(pub, receiptB64, signatureB64, want)
}

// Request is one request to a streaming job: what its receipt binds.
type Request struct {
	Method string
	// Target is the path with its raw query (e.g. /v1/completions?x=1).
	Target string
	// ContentType is the Content-Type header sent ("" for none).
	ContentType string
	Body        []byte
}

// Result is what one call returned besides its body.
type Result struct {
	Status int
	Header http.Header
	// RequestID is the request's id; Method, Target and ContentType are the
	// request as sent; ResponseContentType as received.
	RequestID                   string
	Method, Target, ContentType string
	ResponseContentType         string
	Receipt                     *sr.Receipt
	// ReceiptB64 and SignatureB64 are the trailers, kept as evidence.
	ReceiptB64, SignatureB64 string
}

// Exchange is the call's request and response head as the receipt binds them.
func (r *Result) Exchange() sr.Exchange {
	return sr.Exchange{Method: r.Method, Target: r.Target, RequestContentType: r.ContentType, Status: r.Status, ResponseContentType: r.ResponseContentType}
}

// Call is Do with a JSON body (Content-Type application/json when body is
// not empty): the usual call of an OpenAI-style service.
func (s *Stream) Call(ctx context.Context, hc *http.Client, method, path string, body []byte, out io.Writer) (*Result, error) {
	req := Request{Method: method, Target: path, Body: body}
	if len(body) > 0 {
		req.ContentType = "application/json"
	}
	return s.Do(ctx, hc, req, out)
}

// Do sends one request to the job, stamped with the client's time and a
// fresh request id, copies the response body to out as it streams, and
// verifies the signed receipt against everything sent and received. An
// error from a response that did not complete or whose receipt does not
// verify says why; out has whatever arrived.
func (s *Stream) Do(ctx context.Context, hc *http.Client, q Request, out io.Writer) (*Result, error) {
	var rid [12]byte
	rand.Read(rid[:])
	id := hex.EncodeToString(rid[:])
	if !strings.HasPrefix(q.Target, "/") {
		return nil, fmt.Errorf("stream %s: request target %q does not begin with /", s.JobUUID, q.Target)
	}
	req, err := http.NewRequestWithContext(ctx, q.Method, s.URL+q.Target, bytes.NewReader(q.Body))
	if err != nil {
		return nil, err
	}
	res := &Result{RequestID: id, Method: q.Method, Target: req.URL.RequestURI(), ContentType: q.ContentType}
	if err := sr.CheckTarget(res.Target); err != nil {
		return nil, fmt.Errorf("stream %s: request target %q: %w", s.JobUUID, res.Target, err)
	}
	if q.ContentType != "" {
		req.Header.Set("Content-Type", q.ContentType)
	}
	sent := time.Now()
	req.Header.Set(sr.HeaderTimestamp, sent.UTC().Format(sr.TimeFormat))
	req.Header.Set(sr.HeaderRequestID, id)
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			err = fmt.Errorf("no answer from the job's server (has the job ended? 'horde job status %s'): %w", s.JobUUID, err)
		}
		return nil, fmt.Errorf("stream %s: %w", s.JobUUID, err)
	}
	defer resp.Body.Close()
	res.Status, res.Header, res.ResponseContentType = resp.StatusCode, resp.Header, resp.Header.Get("Content-Type")
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(out, h), resp.Body); err != nil {
		return res, fmt.Errorf("stream %s: response broke off: %w", s.JobUUID, err)
	}
	res.ReceiptB64, res.SignatureB64 = resp.Trailer.Get(sr.TrailerReceipt), resp.Trailer.Get(sr.TrailerSig)
	if resp.StatusCode >= 400 && res.ReceiptB64 == "" {
		return res, fmt.Errorf("stream %s: HTTP %d", s.JobUUID, resp.StatusCode)
	}
	if res.ReceiptB64 == "" && resp.Header.Get(sr.HeaderRequestID) == id {
		// No trailers (a response that may carry none, as to HEAD): the
		// proxy keeps the receipt by id. It proves itself by its signature.
		res.ReceiptB64, res.SignatureB64 = s.keptReceipt(ctx, hc, id)
	}
	in := sha256.Sum256(q.Body)
	skew := s.Skew
	if skew == 0 {
		skew = 5 * time.Second
	}
	res.Receipt, err = VerifyReceipt(s.JobCert, res.ReceiptB64, res.SignatureB64, sr.Expect{JobUUID: s.JobUUID, RequestID: id,
		Stamp: sr.StampClient, Exchange: res.Exchange(), InputSHA256: hex.EncodeToString(in[:]), OutputSHA256: hex.EncodeToString(h.Sum(nil)),
		Sent: sent, Received: time.Now(), Skew: skew})
	return res, err
}

// keptReceipt fetches the receipt the proxy keeps for request id ("" if it
// has none).
func (s *Stream) keptReceipt(ctx context.Context, hc *http.Client, id string) (blob, signature string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+sr.ReceiptsPath+id, nil)
	if err != nil {
		return "", ""
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", ""
	}
	defer resp.Body.Close()
	var kept struct {
		Receipt   string `json:"receipt"`
		Signature string `json:"signature"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&kept) != nil {
		return "", ""
	}
	return kept.Receipt, kept.Signature
}

// ReportPair hands one exchange with a streaming job and its receipt to the
// facilitator, for validators to replay on trusted hardware.
func (c *Client) ReportPair(ctx context.Context, uuid string, p *protocol.StreamPair) error {
	body, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodPost, protocol.RouteJobs+uuid+"/pairs/", body, "", nil, nil)
}

// Pair makes the report of one call: the request as method and path (the
// target, with its query) say, its body, what came back and the receipt;
// the content types and status are the call's (res). A report under any
// request other than the one the receipt binds is refused at intake.
func Pair(method, path string, request, response []byte, res *Result) *protocol.StreamPair {
	return &protocol.StreamPair{Method: method, Path: path, ContentType: res.ContentType, RequestB64: base64.StdEncoding.EncodeToString(request),
		Status: res.Status, ResponseContentType: res.ResponseContentType, ResponseB64: base64.StdEncoding.EncodeToString(response),
		ReceiptB64: res.ReceiptB64, SignatureB64: res.SignatureB64}
}
