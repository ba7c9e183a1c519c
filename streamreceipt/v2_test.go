package streamreceipt

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden blobs in testdata/golden")

var (
	t0 = time.Date(2026, 3, 1, 12, 0, 0, 123456000, time.UTC)
	t1 = t0.Add(1500 * time.Millisecond)
)

func hexsum(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }

// goldenReceipts are receipts whose exact bytes docs/PROTOCOL.md shows.
var goldenReceipts = []struct {
	name string
	r    Receipt
}{
	{"v2-client-stamped", Receipt{Version: 2, JobUUID: "7d5c1f0e-8a4b-4c3d-9e2f-1a2b3c4d5e6f", RequestID: "9f2c4e6a8b0d1e3f5a7c9e1b", Stamp: StampClient,
		TimestampFrom: t0, TimestampTo: t1, Method: "POST", Target: "/v1/completions", RequestContentType: "application/json",
		InputSHA256: hexsum(`{"prompt": "hello", "max_tokens": 4}`), Status: 200, ResponseContentType: "application/json",
		OutputSHA256: hexsum(`{"choices": [{"text": " world"}]}`)}},
	{"v2-proxy-stamped", Receipt{Version: 2, JobUUID: "7d5c1f0e-8a4b-4c3d-9e2f-1a2b3c4d5e6f", RequestID: "0123456789abcdef0123456789abcdef", Stamp: StampProxy,
		TimestampFrom: t0, TimestampTo: t1, Method: "GET", Target: "/v1/models?verbose=1&x=%2F", RequestContentType: "",
		InputSHA256: hexsum(""), Status: 404, ResponseContentType: "text/plain; charset=utf-8", OutputSHA256: hexsum("404 page not found\n")}},
	{"v2-event-stream", Receipt{Version: 2, JobUUID: "j", RequestID: "r-1", Stamp: StampClient, TimestampFrom: t0, TimestampTo: t0,
		Method: "POST", Target: "/v1/chat/completions", RequestContentType: "application/json; charset=utf-8", InputSHA256: hexsum("{}"),
		Status: 200, ResponseContentType: "text/event-stream", OutputSHA256: hexsum("data: [DONE]\n\n")}},
	{"v1", Receipt{Version: 1, JobUUID: "7d5c1f0e-8a4b-4c3d-9e2f-1a2b3c4d5e6f", RequestID: "r1", TimestampFrom: t0, TimestampTo: t1,
		InputSHA256: hexsum("q"), OutputSHA256: hexsum("a")}},
}

// The blob bytes of each version, byte for byte (go test -update rewrites
// them); each parses back to the same receipt.
func TestGoldenBlobs(t *testing.T) {
	for _, g := range goldenReceipts {
		t.Run(g.name, func(t *testing.T) {
			got, err := g.r.Blob()
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", "golden", g.name+".blob")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("blob\n%s\nwant\n%s", got, want)
			}
			back, err := ParseBlob(want)
			if err != nil {
				t.Fatal(err)
			}
			if back.Version != g.r.Version || back.Target != g.r.Target || back.Status != g.r.Status || !back.TimestampFrom.Equal(g.r.TimestampFrom) {
				t.Errorf("parsed %+v", back)
			}
		})
	}
}

func v2() Receipt { return goldenReceipts[0].r }

// Values the format cannot carry are refused when signing, each with its field.
func TestForbiddenValues(t *testing.T) {
	for _, tc := range []struct {
		field string
		edit  func(*Receipt)
	}{
		{"job_uuid", func(r *Receipt) { r.JobUUID = "" }},
		{"job_uuid", func(r *Receipt) { r.JobUUID = "a b" }},
		{"request_id", func(r *Receipt) { r.RequestID = "" }},
		{"request_id", func(r *Receipt) { r.RequestID = "a/b" }},
		{"request_id", func(r *Receipt) { r.RequestID = "a\nb" }},
		{"request_id", func(r *Receipt) { r.RequestID = strings.Repeat("x", 201) }},
		{"request_id", func(r *Receipt) { r.RequestID = "é" }},
		{"stamp", func(r *Receipt) { r.Stamp = "" }},
		{"stamp", func(r *Receipt) { r.Stamp = "server" }},
		{"method", func(r *Receipt) { r.Method = "" }},
		{"method", func(r *Receipt) { r.Method = "PO ST" }},
		{"method", func(r *Receipt) { r.Method = "GET\ntarget=/x" }},
		{"target", func(r *Receipt) { r.Target = "" }},
		{"target", func(r *Receipt) { r.Target = "v1/completions" }},
		{"target", func(r *Receipt) { r.Target = "http://example.com/v1/completions" }},
		{"target", func(r *Receipt) { r.Target = "/a b" }},
		{"target", func(r *Receipt) { r.Target = "/a#frag" }},
		{"target", func(r *Receipt) { r.Target = "/a\nstatus=200" }},
		{"target", func(r *Receipt) { r.Target = "/caf\xc3\xa9" }},
		{"request_content_type", func(r *Receipt) { r.RequestContentType = "text/plain\r\nX-Evil: 1" }},
		{"request_content_type", func(r *Receipt) { r.RequestContentType = " application/json" }},
		{"request_content_type", func(r *Receipt) { r.RequestContentType = "application/json\t" }},
		{"request_content_type", func(r *Receipt) { r.RequestContentType = strings.Repeat("a", 1025) }},
		{"response_content_type", func(r *Receipt) { r.ResponseContentType = "text/html\x00" }},
		{"input_sha256", func(r *Receipt) { r.InputSHA256 = strings.ToUpper(r.InputSHA256) }},
		{"output_sha256", func(r *Receipt) { r.OutputSHA256 = "aa" }},
		{"status", func(r *Receipt) { r.Status = 0 }},
		{"status", func(r *Receipt) { r.Status = 1000 }},
	} {
		r := v2()
		tc.edit(&r)
		_, err := r.Blob()
		if !errors.Is(err, ErrReceipt) || !strings.Contains(err.Error(), ": "+tc.field+": ") {
			t.Errorf("%s %+v: %v", tc.field, r, err)
		}
		key, _, _ := NewKeyPair("job", time.Hour)
		if _, _, err := SignReceipt(key, &r); err == nil {
			t.Errorf("%s: signed", tc.field)
		}
	}
	r := v2()
	r.Version = 3
	if _, err := r.Blob(); err == nil {
		t.Error("version 3 encoded")
	}
}

// A blob that is not in the one canonical form is refused, even when every
// value could be read.
func TestNonCanonicalBlobs(t *testing.T) {
	r := v2()
	good, _ := r.Blob()
	for name, blob := range map[string]string{
		"status with a leading zero":  strings.Replace(string(good), "status=200", "status=0200", 1),
		"status with a sign":          strings.Replace(string(good), "status=200", "status=+200", 1),
		"upper-case hex":              strings.Replace(string(good), "input_sha256="+r.InputSHA256, "input_sha256="+strings.ToUpper(r.InputSHA256), 1),
		"CRLF line ends":              strings.ReplaceAll(string(good), "\n", "\r\n"),
		"no final line break":         strings.TrimSuffix(string(good), "\n"),
		"lines swapped":               strings.Replace(string(good), "method=POST\ntarget=/v1/completions", "target=/v1/completions\nmethod=POST", 1),
		"a line missing":              strings.Replace(string(good), "stamp=client\n", "", 1),
		"an extra line":               string(good) + "extra=1\n",
		"time without microseconds":   strings.Replace(string(good), "12:00:00.123456Z", "12:00:00.123Z", 1),
		"time in another zone":        strings.Replace(string(good), "12:00:00.123456Z", "13:00:00.123456+01:00", 1),
		"space before a value":        strings.Replace(string(good), "method=POST", "method= POST", 1),
		"unknown version":             strings.Replace(string(good), VersionV2, "horde-streaming-receipt/v3", 1),
		"v1 header over v2 lines":     strings.Replace(string(good), VersionV2, VersionV1, 1),
		"v2 header over v1 lines":     strings.Replace(mustBlob(t, goldenReceipts[3].r), VersionV1, VersionV2, 1),
		"content type trailing space": strings.Replace(string(good), "request_content_type=application/json", "request_content_type=application/json ", 1),
	} {
		if _, err := ParseBlob([]byte(blob)); !errors.Is(err, ErrReceipt) {
			t.Errorf("%s: accepted", name)
		}
	}
}

func mustBlob(t *testing.T, r Receipt) string {
	b, err := r.Blob()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Verify checks every field of a v2 receipt against the exchange, and says
// which one differs; a v1 receipt from a live exchange is refused.
func TestVerifyV2(t *testing.T) {
	key, cert, err := NewKeyPair("job", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := PublicKey(cert)
	r := v2()
	blob, sig := Sign(key, &r)
	want := Expect{JobUUID: r.JobUUID, RequestID: r.RequestID, Stamp: StampClient,
		Exchange:    Exchange{Method: "POST", Target: "/v1/completions", RequestContentType: "application/json", Status: 200, ResponseContentType: "application/json"},
		InputSHA256: r.InputSHA256, OutputSHA256: r.OutputSHA256, Sent: t0, Received: t1, Skew: time.Second}
	if _, err := Verify(pub, blob, sig, want); err != nil {
		t.Fatal(err)
	}
	noStamp := want
	noStamp.Stamp = ""
	if _, err := Verify(pub, blob, sig, noStamp); err != nil {
		t.Errorf("the default stamp is the client's: %v", err)
	}
	for name, tc := range map[string]struct {
		edit func(*Expect)
		msg  string
	}{
		"method":        {func(e *Expect) { e.Method = "GET" }, `request method "GET" is not the signed "POST"`},
		"path":          {func(e *Expect) { e.Target = "/v1/chat/completions" }, `request target "/v1/chat/completions" is not the signed "/v1/completions"`},
		"query":         {func(e *Expect) { e.Target = "/v1/completions?stream=true" }, `request target "/v1/completions?stream=true" is not the signed "/v1/completions"`},
		"content type":  {func(e *Expect) { e.RequestContentType = "" }, `request content type "" is not the signed "application/json"`},
		"status":        {func(e *Expect) { e.Status = 201 }, "response status 201 is not the signed 200"},
		"response type": {func(e *Expect) { e.ResponseContentType = "text/event-stream" }, `response content type "text/event-stream" is not the signed "application/json"`},
		"stamp":         {func(e *Expect) { e.Stamp = StampProxy }, "the request was client-stamped, but it was proxy-stamped"},
		"request id":    {func(e *Expect) { e.RequestID = "other" }, "not other"},
		"job":           {func(e *Expect) { e.JobUUID = "other" }, "not other"},
		"input":         {func(e *Expect) { e.InputSHA256 = hexsum("x") }, "input_sha256"},
		"output":        {func(e *Expect) { e.OutputSHA256 = hexsum("x") }, "output_sha256"},
		"too early":     {func(e *Expect) { e.Sent = t0.Add(time.Hour) }, "timestamp_from"},
		"too late":      {func(e *Expect) { e.Received = t0.Add(-time.Hour) }, "timestamp_to"},
	} {
		w := want
		tc.edit(&w)
		if _, err := Verify(pub, blob, sig, w); !errors.Is(err, ErrReceipt) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v, want %q", name, err, tc.msg)
		}
	}
	old := goldenReceipts[3].r
	b1, s1 := Sign(key, &old)
	if _, err := Verify(pub, b1, s1, want); !errors.Is(err, ErrReceipt) || !strings.Contains(err.Error(), "does not bind the request") {
		t.Errorf("v1 in a live exchange: %v", err)
	}
	// As evidence, v1 still verifies (by its bodies) and binds no exchange.
	rc, err := VerifyEvidence(pub, old.JobUUID, b1, s1, []byte("q"), []byte("a"))
	if err != nil || rc.Version != 1 || rc.RequestDigest() != "" {
		t.Fatalf("v1 evidence: %+v %v", rc, err)
	}
	if err := rc.CheckExchange(want.Exchange); !errors.Is(err, ErrReceipt) {
		t.Errorf("a v1 receipt bound an exchange: %v", err)
	}
}

// The request digest covers each part of the request.
func TestRequestDigest(t *testing.T) {
	r := v2()
	base := r.RequestDigest()
	if base != RequestDigest("POST", "/v1/completions", "application/json", r.InputSHA256) || len(base) != 64 {
		t.Fatalf("digest %s", base)
	}
	seen := map[string]string{base: "base"}
	for name, d := range map[string]string{
		"method": RequestDigest("PUT", r.Target, r.RequestContentType, r.InputSHA256),
		"target": RequestDigest(r.Method, "/v1/chat/completions", r.RequestContentType, r.InputSHA256),
		"query":  RequestDigest(r.Method, r.Target+"?x=1", r.RequestContentType, r.InputSHA256),
		"type":   RequestDigest(r.Method, r.Target, "text/plain", r.InputSHA256),
		"body":   RequestDigest(r.Method, r.Target, r.RequestContentType, hexsum("other")),
	} {
		if other, dup := seen[d]; dup {
			t.Errorf("%s and %s have the same digest", name, other)
		}
		seen[d] = name
	}
	// The golden digest of the first golden receipt, shown in docs/PROTOCOL.md.
	text := "horde-request/v1\nmethod=POST\ntarget=/v1/completions\ncontent_type=application/json\ninput_sha256=" + r.InputSHA256 + "\n"
	if base != hexsum(text) {
		t.Errorf("digest is not the sha256 of %q", text)
	}
}

// NewKeyPair lists the advertised host: an IP as an IP SAN.
func TestKeyPairHosts(t *testing.T) {
	_, pemCert, err := NewKeyPair("horde-job-x", time.Hour, "192.0.2.7", "localhost", "miner.example")
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCert(pemCert)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"192.0.2.7", "localhost", "miner.example", "horde-job-x"} {
		if err := c.VerifyHostname(h); err != nil {
			t.Errorf("%s: %v", h, err)
		}
	}
	if err := c.VerifyHostname("192.0.2.8"); err == nil {
		t.Error("another IP matched")
	}
	if c.IsCA || !c.BasicConstraintsValid {
		t.Errorf("the job certificate must say it is no CA: IsCA=%v valid=%v", c.IsCA, c.BasicConstraintsValid)
	}
}

// FuzzBlobV2: any values either encode to a blob that parses back to the
// same bytes, or are refused; nothing in a value can forge a line.
func FuzzBlobV2(f *testing.F) {
	f.Add("POST", "/v1/completions", "application/json", "r1", 200)
	f.Add("GET\ntarget=/x", "/a", "", "r", 404)
	f.Fuzz(func(t *testing.T, method, target, ctype, id string, status int) {
		r := v2()
		r.Method, r.Target, r.RequestContentType, r.RequestID, r.Status = method, target, ctype, id, status
		b, err := r.Blob()
		if err != nil {
			return
		}
		back, err := ParseBlob(b)
		if err != nil {
			t.Fatalf("encoded %q does not parse: %v", b, err)
		}
		if back.Method != method || back.Target != target || back.RequestContentType != ctype || back.RequestID != id || back.Status != status {
			t.Fatalf("round trip changed %+v into %+v", r, back)
		}
	})
}
