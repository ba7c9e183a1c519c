package hordetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/internal/llm"
	"github.com/horde-compute/horde/internal/store/sqlite"
	"github.com/horde-compute/horde/internal/validation"
	"github.com/horde-compute/horde/internal/validator"
	"github.com/horde-compute/horde/protocol"
	sr "github.com/horde-compute/horde/streamreceipt"
)

// The attack of issue 13: a client calls an honest miner's job, then reports
// the genuine pair under another request — another path (completions as
// chat completions), method, query or content type — so that a replay of
// the reported request "proves" the honest answer wrong. Every such report
// is refused at intake with its reason; the genuine pairs pass, are
// replayed as signed on the trusted miner, and no window convicts the
// honest miner.
func TestForgedReportsNeverConvict(t *testing.T) {
	for _, rt := range []Runtime{OnFake, OnDocker} {
		t.Run(rt.Name, func(t *testing.T) {
			h := rt.Start(t, devstack.Config{Manifest: map[string]int{protocol.ClassTest: 1},
				StreamingWhitelist: map[string]string{images.LLMImage: rt.LLMDigest(t)}, TrustedMiner: true,
				Validation: validator.ValidationConfig{Sample: 1, Comparators: map[string]validation.Comparator{images.LLMImage: validation.Exact{}}}})
			ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
			defer cancel()
			st, err := h.Client.StartStreaming(ctx, streamSpec(), nil)
			if err != nil {
				t.Fatal(err)
			}
			hc, _ := st.HTTPClient()
			call := func(q client.Request) (*client.Result, []byte) {
				t.Helper()
				var out bytes.Buffer
				res, err := st.Do(ctx, hc, q, &out)
				if err != nil {
					t.Fatalf("%s %s: %v", q.Method, q.Target, err)
				}
				return res, out.Bytes()
			}
			completion := client.Request{Method: "POST", Target: "/v1/completions?user=a", ContentType: "application/json",
				Body: []byte(`{"prompt": "a client that keeps its receipts", "max_tokens": 8, "temperature": 0}`)}
			res, out := call(completion)
			genuine := client.Pair(res.Method, res.Target, completion.Body, out, res)

			// Without the request bound, the attack works: replayed as a chat
			// completion, the honest answer differs from the reference's.
			ref := validation.HTTPReference{BaseURL: httptest.NewServer(llm.NewServer(llm.Train(llm.Corpus()), "horde-trigram-full")).URL}
			pair := validation.Pair{Method: "POST", Path: "/v1/completions?user=a", ContentType: "application/json", Request: completion.Body, Response: out}
			if v, err := (validation.Exact{}).Compare(ctx, ref, pair); err != nil || !v.Pass {
				t.Fatalf("the reference does not agree with the honest miner: %+v %v", v, err)
			}
			pair.Path = "/v1/chat/completions"
			if v, _ := (validation.Exact{}).Compare(ctx, ref, pair); v.Pass {
				t.Fatal("the forged path would not convict: the test shows nothing")
			}

			for name, tc := range map[string]struct {
				edit func(*protocol.StreamPair)
				want string
			}{
				"forged path":         {func(p *protocol.StreamPair) { p.Path = "/v1/chat/completions" }, `request target "/v1/chat/completions" is not the signed "/v1/completions?user=a"`},
				"forged method":       {func(p *protocol.StreamPair) { p.Method = "PUT" }, `request method "PUT" is not the signed "POST"`},
				"forged query":        {func(p *protocol.StreamPair) { p.Path = "/v1/completions?user=b" }, `request target "/v1/completions?user=b" is not the signed "/v1/completions?user=a"`},
				"forged content type": {func(p *protocol.StreamPair) { p.ContentType = "text/plain" }, `request content type "text/plain" is not the signed "application/json"`},
			} {
				forged := *genuine
				tc.edit(&forged)
				var apiErr *client.APIError
				err := h.Client.ReportPair(ctx, st.JobUUID, &forged)
				if !errors.As(err, &apiErr) || apiErr.Status != http.StatusBadRequest || !strings.Contains(err.Error(), "pair refused") || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%s: %v, want HTTP 400 %q", name, err, tc.want)
				}
			}

			// The genuine pairs: the completion, a chat completion, an event stream.
			reported := []*protocol.StreamPair{genuine}
			for _, q := range []client.Request{
				{Method: "POST", Target: "/v1/chat/completions", ContentType: "application/json",
					Body: []byte(`{"messages": [{"role": "user", "content": "every answer carries a receipt"}], "max_tokens": 8, "temperature": 0}`)},
				{Method: "POST", Target: "/v1/completions", ContentType: "application/json",
					Body: []byte(`{"prompt": "good systems are boring", "max_tokens": 8, "temperature": 0, "stream": true}`)},
			} {
				res, out := call(q)
				reported = append(reported, client.Pair(res.Method, res.Target, q.Body, out, res))
			}
			for _, p := range reported {
				if err := h.Client.ReportPair(ctx, st.JobUUID, p); err != nil {
					t.Fatalf("genuine pair %s %s refused: %v", p.Method, p.Path, err)
				}
			}
			vdb := openValidatorDB(t, h)
			waitPairs(t, vdb, len(reported))
			rep, err := h.Validate(ctx, images.LLMImage)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("window: %d pairs, %d checked, %d failed", rep.Pairs, rep.Checked, rep.Failed)
			if rep.Pairs != len(reported) || rep.Checked != len(reported) || rep.Failed != 0 {
				t.Errorf("window %+v", rep)
			}
			for _, v := range rep.Verdicts {
				if v.Error != "" || !v.Verdict.Pass || v.Replay == "" {
					t.Errorf("verdict %+v", v)
				}
			}
			if cheats, err := vdb.Cheats(ctx, time.Time{}); err != nil || len(cheats) != 0 {
				t.Errorf("the honest miner was convicted: %+v %v", cheats, err)
			}
			h.Client.Stop(ctx, st.JobUUID)
			if _, err := h.Client.Watch(ctx, st.JobUUID, func(protocol.StatusEntry) {}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func openValidatorDB(t *testing.T, h *Horde) *sqlite.DB {
	t.Helper()
	vdb, err := sqlite.Open(t.Context(), filepath.Join(h.DataDir, "validator.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vdb.Close() })
	return vdb
}

// waitPairs waits until the validator keeps n pairs of the LLM image.
func waitPairs(t *testing.T, vdb *sqlite.DB, n int) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); ; {
		kept, _, _ := vdb.PairsForImage(t.Context(), images.LLMImage, 0, 1000)
		if len(kept) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the validator has %d of %d pairs", len(kept), n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// An upstream-style client: no X-Horde-* headers, the job certificate as
// its trust anchor with the address it dials checked against it (as
// Python's ssl does). The job serves it, the receipt is proxy-stamped and
// verifies, and its pair is taken at intake like any other.
func TestStreamingUpstreamClient(t *testing.T) {
	h, st, ctx := startStream(t, OnFake, nil)
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(st.JobCert)) {
		t.Fatal("job certificate")
	}
	cert, err := tls.X509KeyPair([]byte(st.ClientCert), []byte(st.ClientKey))
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}}}}
	body := []byte(`{"prompt": "the network is small and", "max_tokens": 6, "temperature": 0}`)
	sent := time.Now()
	resp, err := hc.Post(st.URL+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("hostname-checking client: %v", err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	id := resp.Header.Get(sr.HeaderRequestID)
	x := sr.Exchange{Method: "POST", Target: "/v1/completions", RequestContentType: "application/json", Status: resp.StatusCode,
		ResponseContentType: resp.Header.Get("Content-Type")}
	rc, err := client.VerifyReceipt(st.JobCert, resp.Trailer.Get(sr.TrailerReceipt), resp.Trailer.Get(sr.TrailerSig), sr.Expect{JobUUID: st.JobUUID,
		RequestID: id, Stamp: sr.StampProxy, Exchange: x, InputSHA256: hexsum(body), OutputSHA256: hexsum(out), Sent: sent, Received: time.Now(), Skew: 5 * time.Second})
	if err != nil {
		t.Fatalf("proxy-stamped receipt: %v", err)
	}
	if rc.Stamp != sr.StampProxy || rc.RequestID != id || x.Status != 200 {
		t.Errorf("receipt %+v", rc)
	}
	pair := &protocol.StreamPair{Method: x.Method, Path: x.Target, ContentType: x.RequestContentType, RequestB64: base64.StdEncoding.EncodeToString(body),
		Status: x.Status, ResponseContentType: x.ResponseContentType, ResponseB64: base64.StdEncoding.EncodeToString(out),
		ReceiptB64: resp.Trailer.Get(sr.TrailerReceipt), SignatureB64: resp.Trailer.Get(sr.TrailerSig)}
	if err := h.Client.ReportPair(ctx, st.JobUUID, pair); err != nil {
		t.Fatalf("proxy-stamped pair refused: %v", err)
	}
	waitPairs(t, openValidatorDB(t, h), 1)
	h.Client.Stop(ctx, st.JobUUID)
}

func hexsum(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }
