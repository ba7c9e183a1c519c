package miner

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/schematest"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/receipt"
	"github.com/horde-compute/horde/sig"
)

// pagesStore is an in-process page store whose store times the test sets.
type pagesStore struct {
	mu sync.Mutex
	rs []store.StoredReceipt
	at []time.Time
}

func (s *pagesStore) put(r receipt.Receipt, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rs = append(s.rs, store.StoredReceipt{ID: int64(len(s.rs) + 1), Receipt: r})
	s.at = append(s.at, at)
}

func (s *pagesStore) ReceiptsStoredIn(_ context.Context, from, to time.Time) ([]store.StoredReceipt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []store.StoredReceipt
	for i, r := range s.rs {
		if !s.at[i].Before(from) && s.at[i].Before(to) {
			out = append(out, r)
		}
	}
	return out, nil
}

func hotkey(t testing.TB, b byte) *sig.Hotkey {
	t.Helper()
	k, err := sig.FromSeed(bytes.Repeat([]byte{b}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// countersigned returns a receipt signed by both parties, as a miner stores it.
func countersigned(t testing.TB, v, m *sig.Hotkey, p receipt.Payload) receipt.Receipt {
	t.Helper()
	vs, err := receipt.Sign(v, p)
	if err != nil {
		t.Fatal(err)
	}
	r, err := receipt.New(p, vs)
	if err != nil {
		t.Fatal(err)
	}
	if r.MinerSignature, err = receipt.Sign(m, p); err != nil {
		t.Fatal(err)
	}
	return r
}

func get(t *testing.T, url string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	// No transparent gzip: the test sees the bytes as sent.
	resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// An upstream validator reads a page whole, then what was added with
// "Range: bytes=N-"; 416 when nothing was, 404 for a page the miner does not
// have; every line is an upstream Receipt whose signatures verify.
func TestReceiptPages(t *testing.T) {
	v, m := hotkey(t, 1), hotkey(t, 2)
	st := &pagesStore{}
	srv := httptest.NewServer(func() http.Handler {
		mux := http.NewServeMux()
		mux.Handle("GET "+receipt.PagePrefix+"{page}", receiptPages{store: st, log: slog.New(slog.DiscardHandler)})
		return mux
	}())
	defer srv.Close()

	page := int64(5_900_000)
	at := receipt.PageStart(page)
	started := &receipt.StartedPayload{Base: receipt.Base{JobUUID: "7b1c5e2a-0000-4000-8000-000000000001", MinerHotkey: m.SS58(), ValidatorHotkey: v.SS58(),
		Timestamp: receipt.At(at)}, ExecutorClass: "always_on.gpu-24gb", IsOrganic: true, TTL: 300}
	st.put(countersigned(t, v, m, started), at.Add(time.Second))
	accepted := &receipt.AcceptedPayload{Base: started.Base, TimeAccepted: receipt.At(at.Add(time.Second)), TTL: 300}
	st.put(countersigned(t, v, m, accepted), at.Add(299*time.Second))
	// The previous and the next page are not this page.
	st.put(countersigned(t, v, m, &receipt.StartedPayload{Base: receipt.Base{JobUUID: "before", MinerHotkey: m.SS58(), ValidatorHotkey: v.SS58(), Timestamp: receipt.At(at)}}), at.Add(-time.Microsecond))
	// One the miner keeps without its signature is not served (upstream requires both).
	unsigned, _ := receipt.New(started, "0xaa")
	st.put(unsigned, at.Add(2*time.Second))

	url := srv.URL + receipt.PagePrefix + strconv.FormatInt(page, 10) + ".jsonl"
	resp, body := get(t, url)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET page = %d %s", resp.StatusCode, body)
	}
	lines := strings.SplitAfter(string(body), "\n")
	if len(lines) != 3 || lines[2] != "" {
		t.Fatalf("page has %d lines, want 2:\n%s", len(lines)-1, body)
	}
	for i, line := range lines[:2] {
		schematest.Valid(t, "receipts.Receipt", []byte(line))
		if !strings.HasPrefix(line, `{"payload":{"job_uuid":`) {
			t.Errorf("line %d is not in upstream's field order: %s", i, line)
		}
		checkLine(t, line)
	}
	want := `{"payload":{"job_uuid":"7b1c5e2a-0000-4000-8000-000000000001","miner_hotkey":"` + m.SS58() + `","validator_hotkey":"` + v.SS58() +
		`","timestamp":"` + at.UTC().Format("2006-01-02T15:04:05Z") + `","receipt_type":"JobStartedReceipt","executor_class":"always_on.gpu-24gb","is_organic":true,"ttl":300},`
	if !strings.HasPrefix(lines[0], want) {
		t.Errorf("line 0 =\n%s\nwant prefix\n%s", lines[0], want)
	}

	// Nothing new: 416.
	if resp, body := get(t, url, "Range", fmt.Sprintf("bytes=%d-", len(body)), "Accept-Encoding", ""); resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("range at the end = %d %s, want 416", resp.StatusCode, body)
	}
	// A finished receipt is added: the range gives exactly its line.
	finished := &receipt.FinishedPayload{Base: started.Base, TimeStarted: receipt.At(at), TimeTookUS: 1_500_000, ScoreStr: "1.0"}
	st.put(countersigned(t, v, m, finished), at.Add(200*time.Second))
	resp, more := get(t, url, "Range", fmt.Sprintf("bytes=%d-", len(body)), "Accept-Encoding", "")
	if resp.StatusCode != http.StatusPartialContent {
		t.Fatalf("range = %d %s, want 206", resp.StatusCode, more)
	}
	schematest.Valid(t, "receipts.Receipt", more)
	checkLine(t, string(more))
	if !strings.Contains(string(more), `"receipt_type":"JobFinishedReceipt"`) || strings.Count(string(more), "\n") != 1 {
		t.Errorf("added = %s", more)
	}
	// The validator's checkpoint is the total in Content-Range.
	total := len(body) + len(more)
	if cr := resp.Header.Get("Content-Range"); cr != fmt.Sprintf("bytes %d-%d/%d", len(body), total-1, total) {
		t.Errorf("Content-Range = %q", cr)
	}
	// The page so far is the first read followed by the added line.
	if _, whole := get(t, url); string(whole) != string(body)+string(more) {
		t.Errorf("page is not the first read plus the range:\n%s", whole)
	}
	// Beyond the end: 416.
	if resp, _ := get(t, url, "Range", fmt.Sprintf("bytes=%d-", total+10)); resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("range past the end = %d, want 416", resp.StatusCode)
	}
	// Gzip for a whole page, when asked.
	resp, z := get(t, url, "Accept-Encoding", "gzip")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("gzip page = %d %q", resp.StatusCode, resp.Header.Get("Content-Encoding"))
	}
	zr, err := gzip.NewReader(bytes.NewReader(z))
	if err != nil {
		t.Fatal(err)
	}
	if unz, _ := io.ReadAll(zr); string(unz) != string(body)+string(more) {
		t.Errorf("gunzipped page differs:\n%s", unz)
	}
	// A range is never gzipped (the offsets are of the plain page).
	if resp, b := get(t, url, "Accept-Encoding", "gzip", "Range", "bytes=1-"); resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Content-Encoding") != "" || len(b) != total-1 {
		t.Errorf("gzip+range = %d %q %d bytes", resp.StatusCode, resp.Header.Get("Content-Encoding"), len(b))
	}

	// Pages the miner does not have, and names that are not pages.
	for _, name := range []string{strconv.FormatInt(page+1, 10) + ".jsonl", "0.jsonl", "05900000.jsonl", "-1.jsonl", "5900000", "5900000.json", "abc.jsonl", "99999999999999999999.jsonl"} {
		if resp, _ := get(t, srv.URL+receipt.PagePrefix+name); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s = %d, want 404", name, resp.StatusCode)
		}
	}
}

// checkLine verifies both signatures of a page line as upstream's validator does.
func checkLine(t *testing.T, line string) {
	t.Helper()
	r, err := receipt.ParseLine([]byte(line))
	if err != nil {
		t.Fatalf("line %s: %v", line, err)
	}
	if err := r.Verify(); err != nil || r.MinerSignature == "" {
		t.Errorf("line %s: signatures: %v", line, err)
	}
}

func TestAcceptsGzip(t *testing.T) {
	for v, want := range map[string]bool{"": false, "gzip": true, "deflate, gzip;q=0.5": true, "gzip;q=0": false, "br": false, "GZIP": true, "identity": false} {
		if got := acceptsGzip(v); got != want {
			t.Errorf("acceptsGzip(%q) = %v", v, got)
		}
	}
}

// A page is read from the store until it is complete (a minute after its
// five minutes), then kept: it cannot change any more.
func TestReceiptPageCache(t *testing.T) {
	v, m := hotkey(t, 1), hotkey(t, 2)
	st := &pagesStore{}
	page := int64(5_900_000)
	at := receipt.PageStart(page)
	clock := at.Add(time.Minute)
	p := receiptPages{store: st, log: slog.New(slog.DiscardHandler), now: func() time.Time { return clock }, cache: newPageCache()}
	put := func(uuid string) {
		st.put(countersigned(t, v, m, &receipt.StartedPayload{Base: receipt.Base{JobUUID: uuid, MinerHotkey: m.SS58(), ValidatorHotkey: v.SS58(), Timestamp: receipt.At(at)}}), at.Add(time.Second))
	}
	lines := func() int {
		b, err := p.page(t.Context(), page)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), "\n")
	}
	put("a")
	if n := lines(); n != 1 {
		t.Fatalf("current page: %d lines", n)
	}
	put("b")
	if n := lines(); n != 2 {
		t.Fatalf("current page after a put: %d lines", n)
	}
	clock = at.Add(receipt.PageDuration + pageSettles + time.Second)
	if n := lines(); n != 2 {
		t.Fatalf("complete page: %d lines", n)
	}
	st.mu.Lock()
	st.rs = nil
	st.at = nil
	st.mu.Unlock()
	if n := lines(); n != 2 {
		t.Errorf("complete page not kept: %d lines", n)
	}
	// At most cachedPages are kept, the oldest dropped.
	for i := range int64(cachedPages + 5) {
		p.cache.put(page+1+i, nil)
	}
	if _, ok := p.cache.get(page); ok || len(p.cache.pages) != cachedPages {
		t.Errorf("cache holds %d pages, the oldest kept: %v", len(p.cache.pages), ok)
	}
}
