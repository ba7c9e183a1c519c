package client

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	sr "github.com/horde-compute/horde/streamreceipt"
)

// fakeJob is a hand-written streaming job for the SDK's unit tests: it
// answers every request and signs a receipt of what it got, which lie may
// alter first (a lying or downgraded proxy). The SDK against the real proxy
// is tested in internal/hordetest.
type fakeJob struct {
	key       ed25519.PrivateKey
	lie       func(*sr.Receipt)
	trailers  bool // send the receipt as trailers
	keep      bool // keep it for GET ReceiptsPath + id
	kept      map[string][2]string
	stream    *Stream
	hc        *http.Client
	jobUUID   string
	answerCT  string
	answerSta int
}

func newFakeJob(t *testing.T) *fakeJob {
	t.Helper()
	jobKey, jobCert, err := sr.NewKeyPair("job", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ck, cc, err := sr.NewKeyPair("client", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeJob{key: jobKey, trailers: true, keep: true, kept: map[string][2]string{}, jobUUID: "job-1", answerCT: "application/json", answerSta: 200}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	if srv.TLS, err = sr.ServerTLS(jobKey, jobCert, cc); err != nil {
		t.Fatal(err)
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	der, _ := x509.MarshalPKCS8PrivateKey(ck)
	f.stream = &Stream{JobUUID: f.jobUUID, URL: srv.URL, JobCert: string(jobCert), ClientCert: string(cc),
		ClientKey: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))}
	if f.hc, err = f.stream.HTTPClient(); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fakeJob) serve(w http.ResponseWriter, r *http.Request) {
	if id, ok := strings.CutPrefix(r.URL.Path, sr.ReceiptsPath); ok {
		k, found := f.kept[id]
		if !found {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"receipt": k[0], "signature": k[1]})
		return
	}
	body, _ := io.ReadAll(r.Body)
	answer := []byte(`{"echo": ` + string(body) + `}`)
	in, out := sha256.Sum256(body), sha256.Sum256(answer)
	now := time.Now().UTC().Truncate(time.Microsecond)
	id := r.Header.Get(sr.HeaderRequestID)
	rc := &sr.Receipt{Version: 2, JobUUID: f.jobUUID, RequestID: id, Stamp: sr.StampClient, TimestampFrom: now, TimestampTo: now,
		Method: r.Method, Target: r.RequestURI, RequestContentType: r.Header.Get("Content-Type"), InputSHA256: hex.EncodeToString(in[:]),
		Status: f.answerSta, ResponseContentType: f.answerCT, OutputSHA256: hex.EncodeToString(out[:])}
	if f.lie != nil {
		f.lie(rc)
	}
	blob, sig := sr.Sign(f.key, rc)
	if f.keep {
		f.kept[id] = [2]string{blob, sig}
	}
	w.Header().Set(sr.HeaderRequestID, id)
	if f.trailers {
		w.Header().Set("Trailer", sr.TrailerReceipt+", "+sr.TrailerSig)
	}
	w.Header().Set("Content-Type", f.answerCT)
	w.WriteHeader(f.answerSta)
	w.Write(answer)
	if f.trailers {
		w.Header().Set(sr.TrailerReceipt, blob)
		w.Header().Set(sr.TrailerSig, sig)
	}
}

// The SDK checks every field of the receipt against what it sent and got,
// and says which one a job's proxy signed differently.
func TestStreamDoVerifiesEveryField(t *testing.T) {
	q := Request{Method: "POST", Target: "/v1/completions?x=1", ContentType: "application/json", Body: []byte(`{"prompt": "hi"}`)}
	for name, tc := range map[string]struct {
		lie  func(*sr.Receipt)
		want string
	}{
		"honest":                {nil, ""},
		"another path":          {func(r *sr.Receipt) { r.Target = "/v1/chat/completions?x=1" }, `request target "/v1/completions?x=1" is not the signed "/v1/chat/completions?x=1"`},
		"another query":         {func(r *sr.Receipt) { r.Target = "/v1/completions" }, `request target "/v1/completions?x=1" is not the signed "/v1/completions"`},
		"another method":        {func(r *sr.Receipt) { r.Method = "PUT" }, `request method "POST" is not the signed "PUT"`},
		"another content type":  {func(r *sr.Receipt) { r.RequestContentType = "text/plain" }, `request content type "application/json" is not the signed "text/plain"`},
		"another status":        {func(r *sr.Receipt) { r.Status = 201 }, "response status 200 is not the signed 201"},
		"another response type": {func(r *sr.Receipt) { r.ResponseContentType = "text/event-stream" }, `response content type "application/json" is not the signed "text/event-stream"`},
		"proxy-stamped":         {func(r *sr.Receipt) { r.Stamp = sr.StampProxy }, "says the request was proxy-stamped, but it was client-stamped"},
		"another request id":    {func(r *sr.Receipt) { r.RequestID = "other" }, "receipt is for request other"},
		"another body":          {func(r *sr.Receipt) { r.InputSHA256 = strings.Repeat("0", 64) }, "input_sha256"},
		"downgraded to v1": {func(r *sr.Receipt) {
			*r = sr.Receipt{JobUUID: r.JobUUID, RequestID: r.RequestID, TimestampFrom: r.TimestampFrom, TimestampTo: r.TimestampTo, InputSHA256: r.InputSHA256, OutputSHA256: r.OutputSHA256}
		},
			"does not bind the request"},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFakeJob(t)
			f.lie = tc.lie
			var out bytes.Buffer
			res, err := f.stream.Do(t.Context(), f.hc, q, &out)
			if tc.want == "" {
				if err != nil || res.Receipt.Target != q.Target || res.Status != 200 || res.ResponseContentType != "application/json" {
					t.Fatalf("%+v %v", res, err)
				}
				return
			}
			if !errors.Is(err, sr.ErrReceipt) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%v, want %q", err, tc.want)
			}
		})
	}
}

// A response without trailers (as to HEAD, or through a proxy that drops
// them) is verified with the receipt the job keeps by request id.
func TestStreamDoFetchesKeptReceipt(t *testing.T) {
	f := newFakeJob(t)
	f.trailers = false
	var out bytes.Buffer
	res, err := f.stream.Call(t.Context(), f.hc, "POST", "/v1/completions", []byte(`{"a": 1}`), &out)
	if err != nil || res.Receipt == nil || res.ContentType != "application/json" || res.ReceiptB64 == "" {
		t.Fatalf("%+v %v", res, err)
	}
	// Nothing kept, nothing in the trailers: no receipt, said so.
	f.keep = false
	if _, err := f.stream.Call(t.Context(), f.hc, "POST", "/v1/completions", []byte(`{}`), &out); err == nil || !strings.Contains(err.Error(), "no receipt") {
		t.Errorf("without any receipt: %v", err)
	}
	if _, err := f.stream.Call(t.Context(), f.hc, "POST", "v1/completions", nil, &out); err == nil || !strings.Contains(err.Error(), "does not begin with /") {
		t.Errorf("relative target: %v", err)
	}
}
