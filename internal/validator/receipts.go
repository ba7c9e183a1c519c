package validator

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/receipt"
)

// fetchReceipts pages through the receipts a miner countersigned since the
// last fetch, verifies both signatures and that each matches the receipt this
// validator signed, and stores the miner's signature. It returns why receipts
// were refused; a receipt is never counted twice.
func (v *Validator) fetchReceipts(ctx context.Context, mc *minerClient) []string {
	var refused []string
	base := "http://" + net.JoinHostPort(mc.neuron.AxonInfo.IP, strconv.Itoa(mc.neuron.AxonInfo.Port)) + "/receipts"
	client := &http.Client{Timeout: 30 * time.Second}
	const page = 1000
	for {
		v.mu.Lock()
		after := v.receiptCursor[mc.neuron.Hotkey]
		v.mu.Unlock()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s?after=%d&limit=%d", base, after, page), nil)
		if err != nil {
			return append(refused, err.Error())
		}
		resp, err := client.Do(req)
		if err != nil {
			return append(refused, "fetch receipts: "+err.Error())
		}
		n := 0
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			n++
			var sr store.StoredReceipt
			if err := json.Unmarshal(sc.Bytes(), &sr); err != nil {
				refused = append(refused, "undecodable receipt line: "+err.Error())
				continue
			}
			if err := v.acceptReceipt(ctx, mc.neuron.Hotkey, sr.Receipt); err != nil {
				refused = append(refused, err.Error())
				v.log.Warn("receipt refused", "miner", mc.neuron.Hotkey, "err", err)
			}
			v.mu.Lock()
			if sr.ID > v.receiptCursor[mc.neuron.Hotkey] {
				v.receiptCursor[mc.neuron.Hotkey] = sr.ID
			}
			v.mu.Unlock()
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return append(refused, fmt.Sprintf("fetch receipts: HTTP %d", resp.StatusCode))
		}
		if n < page {
			return refused
		}
	}
}

// acceptReceipt checks one receipt from a miner and records its countersignature.
func (v *Validator) acceptReceipt(ctx context.Context, miner string, r receipt.Receipt) error {
	p, err := r.Decode()
	if err != nil {
		return err
	}
	var b receipt.Base
	json.Unmarshal(r.Payload, &b)
	if b.ValidatorHotkey != v.cfg.Hotkey.SS58() {
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
	ours, err := v.cfg.Store.ReceiptsForJob(ctx, b.JobUUID)
	if err != nil {
		return err
	}
	want, _ := receipt.Bytes(p)
	for _, o := range ours {
		var ob receipt.Base
		json.Unmarshal(o.Payload, &ob)
		if o.Type != r.Type || ob.MinerHotkey != miner {
			continue
		}
		op, err := o.Decode()
		if err != nil {
			return err
		}
		have, _ := receipt.Bytes(op)
		if !bytes.Equal(have, want) {
			return fmt.Errorf("%w: %s receipt of job %s differs from the one this validator signed", receipt.ErrInvalid, r.Type, b.JobUUID)
		}
		if o.MinerSignature != "" {
			return nil // counted already
		}
		o.MinerSignature = r.MinerSignature
		return v.cfg.Store.PutReceipt(ctx, o)
	}
	return fmt.Errorf("%w: %s receipt of job %s was never signed by this validator", receipt.ErrInvalid, r.Type, b.JobUUID)
}
