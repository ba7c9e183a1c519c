// Package receipts collects the receipts miners countersigned. From a horde
// miner it pages through /receipts?after=ID since the last fetch; from an
// upstream miner (whose /receipts answers 404) it reads upstream's receipt
// pages, GET /receipts/{page}.jsonl, with Range requests for what was added
// since (see pages.go). Either cursor is kept in the store ("ID" or
// "page:offset"), so a restart neither fetches them again nor skips any; a
// miner unreachable for a while is fetched from where it was left. It
// checks both signatures and that each receipt is the very one this
// validator signed, and records the miner's signature on the validator's
// copy. A receipt counts once.
package receipts

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/metrics"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/receipt"
)

// Store is the validator's receipts and its cursors into miners' receipts.
type Store interface {
	PutReceipt(ctx context.Context, r receipt.Receipt) error
	ReceiptsForJob(ctx context.Context, jobUUID string) ([]receipt.Receipt, error)
	ReceiptCursor(ctx context.Context, miner string) (string, error)
	SetReceiptCursor(ctx context.Context, miner, cursor string) error
}

// ErrStore marks a receipt that could not be recorded because the store
// failed: it is fetched again next time. Every other error refuses the
// receipt for good.
var ErrStore = errors.New("receipt store")

// PageSize is how many receipts one request asks for.
const PageSize = 1000

// Collector fetches receipts from miners for one validator. One miner is
// fetched by one Collect at a time.
type Collector struct {
	// Validator is the validator's hotkey (SS58): other validators' receipts are skipped.
	Validator string
	Store     Store
	// HTTP fetches the pages (default: a client with a 30 s timeout).
	HTTP *http.Client
	Log  *slog.Logger
	// Metrics counts the receipts verified and refused (nil: not counted).
	Metrics *metrics.Validator
	// Now is the clock that says which pages exist (default time.Now).
	Now func() time.Time
	// PagesOnly reads every miner's pages, as upstream's validator does,
	// never horde's /receipts?after=.
	PagesOnly bool
}

// Collect fetches what miner n countersigned since the last call and
// records it. It returns why receipts were refused (or the fetch failed).
// The cursor moves past a receipt once it is recorded or refused for good;
// a receipt that could not be recorded (the store failed) is fetched again
// next time.
func (c *Collector) Collect(ctx context.Context, n chain.Neuron) []string {
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	log := c.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	base := "http://" + net.JoinHostPort(n.AxonInfo.IP, strconv.Itoa(n.AxonInfo.Port)) + "/receipts"
	var refused []string
	cur, err := c.Store.ReceiptCursor(ctx, n.Hotkey)
	if err != nil {
		return append(refused, "read the receipt cursor: "+err.Error())
	}
	if pc, err := receipt.ParseCursor(cur); err == nil && strings.Contains(cur, ":") {
		return c.collectPages(ctx, hc, log, n, base, pc)
	}
	if c.PagesOnly {
		return c.collectPages(ctx, hc, log, n, base, receipt.Cursor{Page: receipt.PageAt(c.now().Add(-PagesLookback))})
	}
	after, _ := strconv.ParseInt(cur, 10, 64)
	for first := true; ; first = false {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s?after=%d&limit=%d", base, after, PageSize), nil)
		if err != nil {
			return append(refused, err.Error())
		}
		resp, err := hc.Do(req)
		if err != nil {
			return append(refused, "fetch receipts: "+err.Error())
		}
		if resp.StatusCode == http.StatusNotFound && first {
			// Not a horde miner: upstream's miners serve pages only.
			resp.Body.Close()
			return c.collectPages(ctx, hc, log, n, base, receipt.Cursor{Page: receipt.PageAt(c.now().Add(-PagesLookback))})
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return append(refused, fmt.Sprintf("fetch receipts: HTTP %d", resp.StatusCode))
		}
		lines, last := 0, after
		var stop error
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			lines++
			var sr store.StoredReceipt
			if err := json.Unmarshal(sc.Bytes(), &sr); err != nil {
				refused = append(refused, "undecodable receipt line: "+err.Error())
				c.Metrics.Receipt("undecodable")
				continue
			}
			if sr.ID <= last {
				continue // the miner went back: what was read before is not read twice
			}
			err := c.Accept(ctx, n.Hotkey, sr.Receipt)
			if err == nil {
				c.Metrics.Receipt("")
			}
			if err != nil {
				if errors.Is(err, ErrStore) {
					stop = err // not the receipt's fault: read it again next time
					break
				}
				refused = append(refused, err.Error())
				c.Metrics.Receipt(refusal(err))
				log.Warn("receipt refused", "miner", n.Hotkey, "err", err)
			}
			last = sr.ID
		}
		resp.Body.Close()
		if last > after {
			if err := c.Store.SetReceiptCursor(ctx, n.Hotkey, strconv.FormatInt(last, 10)); err != nil {
				return append(refused, "keep the receipt cursor: "+err.Error())
			}
			after = last
		}
		switch {
		case stop != nil:
			return append(refused, "record receipts: "+stop.Error())
		case sc.Err() != nil:
			return append(refused, "read receipts: "+sc.Err().Error())
		case lines < PageSize:
			return refused
		}
	}
}

// Accept checks one receipt served by miner and records its countersignature.
// Another validator's receipts are skipped without error.
func (c *Collector) Accept(ctx context.Context, miner string, r receipt.Receipt) error {
	p, err := r.Decode()
	if err != nil {
		return err
	}
	var b receipt.Base
	if err := json.Unmarshal(r.Payload, &b); err != nil {
		return fmt.Errorf("%w: %s receipt: %w", receipt.ErrInvalid, r.Type, err)
	}
	if b.ValidatorHotkey != c.Validator {
		return nil // another validator's receipt
	}
	if b.MinerHotkey != miner {
		return fmt.Errorf("%w: %s receipt of job %s names miner %s, served by %s", receipt.ErrInvalid, r.Type, b.JobUUID, b.MinerHotkey, miner)
	}
	if r.MinerSignature == "" {
		return fmt.Errorf("%w: %s receipt of job %s has no miner signature", receipt.ErrInvalid, r.Type, b.JobUUID)
	}
	if err := r.Verify(); err != nil {
		return err
	}
	ours, err := c.Store.ReceiptsForJob(ctx, b.JobUUID)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStore, err)
	}
	want, err := receipt.Bytes(p)
	if err != nil {
		return err
	}
	for _, o := range ours {
		var ob receipt.Base
		if json.Unmarshal(o.Payload, &ob) != nil || o.Type != r.Type || ob.MinerHotkey != miner {
			continue
		}
		op, err := o.Decode()
		if err != nil {
			return err
		}
		have, err := receipt.Bytes(op)
		if err != nil {
			return err
		}
		if !bytes.Equal(have, want) {
			return fmt.Errorf("%w: %s receipt of job %s differs from the one this validator signed", receipt.ErrInvalid, r.Type, b.JobUUID)
		}
		if o.MinerSignature != "" {
			return nil // counted already
		}
		o.MinerSignature = r.MinerSignature
		if err := c.Store.PutReceipt(ctx, o); err != nil {
			return fmt.Errorf("%w: %w", ErrStore, err)
		}
		return nil
	}
	return fmt.Errorf("%w: %s receipt of job %s was never signed by this validator", receipt.ErrInvalid, r.Type, b.JobUUID)
}

// refusal is why a receipt was refused, as a metric label.
func refusal(err error) string {
	switch {
	case errors.Is(err, receipt.ErrInvalid):
		return "invalid"
	default:
		return "mismatch"
	}
}
