package receipts

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/receipt"
)

// PagesLookback is how far back the first fetch from an upstream miner
// reads its pages.
const PagesLookback = 5 * time.Hour

// MaxPageBytes bounds what one page fetch reads.
const MaxPageBytes = 64 << 20

func (c *Collector) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// collectPages reads miner n's receipt pages from cur up to the page of now
// (and the next, for a miner whose clock is ahead). A page that exists
// closes every page before it (a miner appends to the page of its own
// clock), so the cursor moves to the last page that exists, at the end of
// the last complete line read of it; a partial line is read again next
// time, whole. A receipt the store could not record stops the fetch before
// it.
func (c *Collector) collectPages(ctx context.Context, hc *http.Client, log *slog.Logger, n chain.Neuron, base string, cur receipt.Cursor) []string {
	var refused []string
	next := cur
	last := receipt.PageAt(c.now()) + 1
	if next.Page > last { // a cursor from the future (a clock that went back): keep it
		last = next.Page
	}
	save := func() []string {
		if next != cur {
			if err := c.Store.SetReceiptCursor(ctx, n.Hotkey, next.String()); err != nil {
				return append(refused, "keep the receipt cursor: "+err.Error())
			}
		}
		return refused
	}
	for page := cur.Page; page <= last; page++ {
		var offset int64
		if page == cur.Page {
			offset = cur.Offset
		}
		body, start, exists, err := fetchPage(ctx, hc, base+"/"+strconv.FormatInt(page, 10)+".jsonl", offset)
		if err != nil {
			refused = append(refused, fmt.Sprintf("fetch receipt page %d: %v", page, err))
			return save()
		}
		if !exists {
			continue
		}
		// The server may send more than asked (a 200 to a Range request):
		// skip what was read before.
		if skip := offset - start; skip > 0 && skip <= int64(len(body)) {
			body, start = body[skip:], offset
		}
		lines, _ := receipt.SplitLines(body)
		pos := start
		var stop error
		for _, line := range lines {
			r, err := receipt.ParseLine(line)
			if err != nil {
				c.Metrics.Receipt("undecodable")
			} else if err = c.Accept(ctx, n.Hotkey, r); err == nil {
				c.Metrics.Receipt("")
			} else if !errors.Is(err, ErrStore) {
				c.Metrics.Receipt(refusal(err))
			}
			if errors.Is(err, ErrStore) {
				stop = err
				break
			}
			if err != nil {
				refused = append(refused, err.Error())
				log.Warn("receipt refused", "miner", n.Hotkey, "page", page, "err", err)
			}
			pos += int64(len(line)) + 1
		}
		next = receipt.Cursor{Page: page, Offset: pos}
		if stop != nil {
			refused = append(refused, "record receipts: "+stop.Error())
			return save()
		}
	}
	return save()
}

// fetchPage gets a page from offset on: its bytes, the offset they start
// at, and whether the page exists (404: it does not; 416: it has nothing
// past offset).
func fetchPage(ctx context.Context, hc *http.Client, url string, offset int64) (body []byte, start int64, exists bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, 0, false, err
	}
	if offset > 0 {
		// A Range request is not gzipped (the range would count compressed bytes).
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, 0, false, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNotFound:
		return nil, 0, false, nil
	case http.StatusRequestedRangeNotSatisfiable:
		return nil, offset, true, nil
	case http.StatusOK:
	case http.StatusPartialContent:
		start, err = rangeStart(resp.Header.Get("Content-Range"))
		if err != nil {
			return nil, 0, false, err
		}
	default:
		return nil, 0, false, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	body, err = io.ReadAll(io.LimitReader(resp.Body, MaxPageBytes))
	if err != nil {
		return nil, 0, false, err
	}
	return body, start, true, nil
}

// rangeStart reads the first byte's offset of "bytes a-b/total".
func rangeStart(h string) (int64, error) {
	s, ok := strings.CutPrefix(h, "bytes ")
	a, _, ok2 := strings.Cut(s, "-")
	v, err := strconv.ParseInt(a, 10, 64)
	if !ok || !ok2 || err != nil || v < 0 {
		return 0, fmt.Errorf("bad Content-Range %q", h)
	}
	return v, nil
}
