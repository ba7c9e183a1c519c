package miner

// Receipt pages, as upstream ComputeHorde validators fetch them: GET
// /receipts/{page}.jsonl, page = floor(unix seconds of the moment the miner
// stored the receipt / 300), one upstream Receipt per line
// ({"payload", "validator_signature", "miner_signature"}, the receipt type
// inside the payload). A page only grows at its end (the store returns a
// page's receipts in the order they were stored and a receipt is stored
// once), so a validator that read N bytes asks again with "Range: bytes=N-":
// 206 with what was added, 416 when nothing was. A page with no receipt is
// 404, as upstream's miner has no file for it. A whole page is gzipped when
// the client accepts it and asks for no range, as upstream's nginx does.
// Pages, paths and lines are receipt's (receipt/pages.go).

import (
	"bytes"
	"compress/gzip"
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/receipt"
)

// pageStore is what receipt pages read.
type pageStore interface {
	ReceiptsStoredIn(ctx context.Context, from, to time.Time) ([]store.StoredReceipt, error)
}

var _ pageStore = store.Receipts(nil)

// pageSettles is how long after its five minutes a page can still gain a
// receipt (one being stored as the page ended); after that it is complete.
const pageSettles = time.Minute

// cachedPages is how many complete pages are kept ready: a little more
// than the 5 hours upstream's validators catch up on.
const cachedPages = 72

// receiptPages serves GET /receipts/{page}.jsonl.
type receiptPages struct {
	store pageStore
	log   *slog.Logger
	now   func() time.Time // nil: time.Now
	cache *pageCache       // nil: no caching
}

// pageCache keeps the bytes of complete pages, which cannot change.
type pageCache struct {
	mu    sync.Mutex
	pages map[int64][]byte
}

func newPageCache() *pageCache { return &pageCache{pages: map[int64][]byte{}} }

func (c *pageCache) get(page int64) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.pages[page]
	return b, ok
}

// put keeps b, dropping the oldest page beyond cachedPages.
func (c *pageCache) put(page int64, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pages[page] = b
	if len(c.pages) > cachedPages {
		oldest := page
		for p := range c.pages {
			oldest = min(oldest, p)
		}
		delete(c.pages, oldest)
	}
}

// page returns the bytes of page: every receipt the store keeps from that
// page's five minutes, as page lines. Empty: no such page.
func (p receiptPages) page(ctx context.Context, page int64) ([]byte, error) {
	now := time.Now
	if p.now != nil {
		now = p.now
	}
	from := receipt.PageStart(page)
	complete := now().After(from.Add(receipt.PageDuration + pageSettles))
	if p.cache != nil && complete {
		if b, ok := p.cache.get(page); ok {
			return b, nil
		}
	}
	rs, err := p.store.ReceiptsStoredIn(ctx, from, from.Add(receipt.PageDuration))
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	for _, sr := range rs {
		// Upstream's model needs both signatures: a receipt without the
		// miner's is left out.
		if line, err := receipt.MarshalLine(sr.Receipt); err == nil {
			buf.Write(line)
		}
	}
	if p.cache != nil && complete {
		p.cache.put(page, buf.Bytes())
	}
	return buf.Bytes(), nil
}

// ServeHTTP answers GET /receipts/{page}.jsonl as upstream's miner.
func (p receiptPages) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	page, ok := receipt.ParsePagePath(r.URL.Path)
	if !ok {
		http.NotFound(w, r)
		return
	}
	b, err := p.page(r.Context(), page)
	if err != nil {
		p.log.Warn("receipt page", "page", page, "err", err)
		http.Error(w, "receipt page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	if len(b) == 0 {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/jsonl")
	w.Header().Set("Vary", "Accept-Encoding")
	if r.Header.Get("Range") == "" && acceptsGzip(r.Header.Get("Accept-Encoding")) {
		var z bytes.Buffer
		zw := gzip.NewWriter(&z)
		zw.Write(b)
		zw.Close()
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Content-Length", strconv.Itoa(z.Len()))
		if r.Method != http.MethodHead {
			w.Write(z.Bytes())
		}
		return
	}
	// Range, 206, Content-Range and 416 as nginx serves a static file.
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
}

// acceptsGzip reports whether an Accept-Encoding value allows gzip.
func acceptsGzip(v string) bool {
	for _, part := range strings.Split(v, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(name), "gzip") {
			continue
		}
		q, found := strings.CutPrefix(strings.ReplaceAll(params, " ", ""), "q=")
		return !found || (q != "0" && q != "0.0" && q != "0.00" && q != "0.000")
	}
	return false
}
