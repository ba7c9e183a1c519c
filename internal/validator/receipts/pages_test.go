package receipts_test

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/horde-compute/horde/receipt"
)

// upstreamMiner serves receipt pages as upstream's miner does (nginx over
// page files: 404 for a missing page, Range requests, 416 past the end) and
// nothing at /receipts. It records each request as "path range".
type upstreamMiner struct {
	mu    sync.Mutex
	pages map[int64]*bytes.Buffer
	asked []string
}

func (u *upstreamMiner) add(page int64, b []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.pages == nil {
		u.pages = map[int64]*bytes.Buffer{}
	}
	if u.pages[page] == nil {
		u.pages[page] = &bytes.Buffer{}
	}
	u.pages[page].Write(b)
}

func (u *upstreamMiner) serve(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	u.asked = append(u.asked, strings.TrimSpace(r.URL.Path+" "+r.Header.Get("Range")))
	page, ok := receipt.ParsePagePath(r.URL.Path)
	var b []byte
	if ok && u.pages[page] != nil {
		b = append([]byte(nil), u.pages[page].Bytes()...)
	}
	u.mu.Unlock()
	if b == nil {
		http.NotFound(w, r)
		return
	}
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
}

func (u *upstreamMiner) requests() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := u.asked
	u.asked = nil
	return out
}

func lines(t testing.TB, rs ...receipt.Receipt) []byte {
	var b []byte
	for _, r := range rs {
		l, err := receipt.MarshalLine(r)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, l...)
	}
	return b
}

// Receipts of an upstream miner are read from its pages: bad lines skipped,
// a line still being written read whole next time, what was added fetched
// with a Range request, nothing counted twice, the cursor "page:offset".
func TestCollectUpstreamPages(t *testing.T) {
	f := newFixture(t)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	f.c.Now = func() time.Time { return now }
	u := &upstreamMiner{}
	f.c.HTTP = &http.Client{Transport: transport(u.serve)}
	p := receipt.PageAt(now)
	j1 := countersign(t, f.m, f.signed(t, f.v, "j1", f.m.SS58(), true))
	j2 := countersign(t, f.m, f.signed(t, f.v, "j2", f.m.SS58(), true))
	other := countersign(t, f.m, f.signed(t, hotkey(t), "x", f.m.SS58(), false))
	first := append(lines(t, j1...), "{not a receipt}\n"...)
	first = append(first, lines(t, other[0])...)
	full := lines(t, j2[0])
	u.add(p-1, lines(t, other[1]))
	u.add(p, first)
	u.add(p, full[:40]) // a line being written

	refused := f.c.Collect(t.Context(), f.n)
	if len(refused) != 1 || !strings.Contains(refused[0], "invalid receipt") {
		t.Fatalf("refused %v", refused)
	}
	if n := minerSigned(t, f.st, "j1"); n != 2 {
		t.Errorf("j1: %d countersigned", n)
	}
	cur, _ := f.st.ReceiptCursor(t.Context(), f.m.SS58())
	if want := fmt.Sprintf("%d:%d", p, len(first)); cur != want {
		t.Errorf("cursor %q, want %q", cur, want)
	}
	reqs := u.requests()
	if reqs[0] != "/receipts" || reqs[1] != fmt.Sprintf("/receipts/%d.jsonl", receipt.PageAt(now.Add(-5*time.Hour))) ||
		reqs[len(reqs)-1] != fmt.Sprintf("/receipts/%d.jsonl", p+1) {
		t.Errorf("requests %v", reqs)
	}

	// The line is complete and another added: fetched from the cursor on.
	u.add(p, full[40:])
	u.add(p, lines(t, j2[1]))
	if refused := f.c.Collect(t.Context(), f.n); len(refused) != 0 {
		t.Fatalf("refused %v", refused)
	}
	if n := minerSigned(t, f.st, "j2"); n != 2 {
		t.Errorf("j2: %d countersigned", n)
	}
	want := []string{fmt.Sprintf("/receipts/%d.jsonl bytes=%d-", p, len(first)), fmt.Sprintf("/receipts/%d.jsonl", p+1)}
	if got := u.requests(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("requests %v, want %v", got, want)
	}

	// Nothing new (416); then the next page opens and the cursor moves to it.
	if refused := f.c.Collect(t.Context(), f.n); len(refused) != 0 {
		t.Fatalf("refused %v", refused)
	}
	now = now.Add(receipt.PageDuration)
	j3 := countersign(t, f.m, f.signed(t, f.v, "j3", f.m.SS58(), true))
	u.add(p+1, lines(t, j3...))
	u.requests()
	if refused := f.c.Collect(t.Context(), f.n); len(refused) != 0 {
		t.Fatalf("refused %v", refused)
	}
	cur, _ = f.st.ReceiptCursor(t.Context(), f.m.SS58())
	if want := fmt.Sprintf("%d:%d", p+1, len(lines(t, j3...))); cur != want {
		t.Errorf("cursor %q, want %q", cur, want)
	}
	if n := minerSigned(t, f.st, "j3"); n != 2 {
		t.Errorf("j3: %d countersigned", n)
	}

	// A lost cursor: everything read again, nothing counted twice.
	if err := f.st.SetReceiptCursor(t.Context(), f.m.SS58(), ""); err != nil {
		t.Fatal(err)
	}
	if refused := f.c.Collect(t.Context(), f.n); len(refused) != 1 {
		t.Fatalf("refused %v", refused)
	}
	for _, j := range []string{"j1", "j2", "j3"} {
		if n := minerSigned(t, f.st, j); n != 2 {
			t.Errorf("%s: %d countersigned", j, n)
		}
	}
}

// A page the store cannot take is read again from the failed line.
func TestCollectUpstreamPagesStoreFailure(t *testing.T) {
	f := newFixture(t)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	u := &upstreamMiner{}
	st := &flaky{DB: f.st, fail: true}
	c := f.c
	c.Store, c.Now, c.HTTP = st, func() time.Time { return now }, &http.Client{Transport: transport(u.serve)}
	u.add(receipt.PageAt(now), lines(t, countersign(t, f.m, f.signed(t, f.v, "j", f.m.SS58(), true))...))
	if refused := c.Collect(t.Context(), f.n); len(refused) != 1 || !strings.Contains(refused[0], "disk full") {
		t.Fatalf("refused %v", refused)
	}
	cur, _ := f.st.ReceiptCursor(t.Context(), f.m.SS58())
	if want := fmt.Sprintf("%d:0", receipt.PageAt(now)); cur != want {
		t.Errorf("cursor %q, want %q", cur, want)
	}
	st.fail = false
	if refused := c.Collect(t.Context(), f.n); len(refused) != 0 {
		t.Fatalf("refused %v", refused)
	}
	if n := minerSigned(t, f.st, "j"); n != 2 {
		t.Errorf("%d countersigned", n)
	}
}

// PagesOnly (upstream mode) never asks for horde's /receipts?after=.
func TestCollectPagesOnly(t *testing.T) {
	f := newFixture(t)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	u := &upstreamMiner{}
	f.c.Now, f.c.HTTP, f.c.PagesOnly = func() time.Time { return now }, &http.Client{Transport: transport(u.serve)}, true
	u.add(receipt.PageAt(now), lines(t, countersign(t, f.m, f.signed(t, f.v, "j", f.m.SS58(), true))...))
	if refused := f.c.Collect(t.Context(), f.n); len(refused) != 0 {
		t.Fatalf("refused %v", refused)
	}
	if reqs := u.requests(); len(reqs) == 0 || reqs[0] == "/receipts" {
		t.Errorf("requests %v", reqs)
	}
	if n := minerSigned(t, f.st, "j"); n != 2 {
		t.Errorf("%d countersigned", n)
	}
}
