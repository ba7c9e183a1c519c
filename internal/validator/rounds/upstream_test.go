package rounds_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/horde-compute/horde/internal/validator/minertest"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
	"github.com/horde-compute/horde/sig"
)

// upstreamExcuse is an organic job's started receipt another validator
// signed and the miner countersigned, in upstream's Receipt shape.
func upstreamExcuse(t *testing.T, signer *sig.Hotkey, miner *minertest.Miner) json.RawMessage {
	p := &receipt.StartedPayload{Base: receipt.Base{JobUUID: "organic", MinerHotkey: miner.Hotkey.SS58(), ValidatorHotkey: signer.SS58(),
		Timestamp: receipt.At(time.Now().Add(-time.Second))}, ExecutorClass: class, IsOrganic: true, TTL: 60}
	vs, err := receipt.Sign(signer, p)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := receipt.New(p, vs)
	r.MinerSignature, _ = receipt.Sign(miner.Hotkey, p)
	return minertest.UpstreamReceipt(r)
}

// A round over upstream miners: synthetic jobs in upstream's shapes, a busy
// decline excused by a receipt in upstream's shape, and the receipts read
// back from the miners' pages.
func TestRoundUpstreamMiners(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		other := minertest.Hotkey(t)
		honest := minertest.New(t, map[string]int{class: 2})
		honest.Upstream = true
		busy := minertest.New(t, map[string]int{class: 1})
		busy.Upstream = true
		busy.Reply = func(p minertest.Peer, f protocol.Message) {
			if in, ok := f.(*protocol.V0InitialJobRequest); ok {
				minertest.UpstreamDecline(p, in.JobUUID, upstreamExcuse(t, other, busy))
			}
		}
		f := newFixtureWith(t, false, validators(other), nil, honest, busy)
		defer f.close()
		// Two rounds in the same page: the second reads what was added to the
		// page since the first (a Range request).
		if _, err := f.r.Round(t.Context()); err != nil {
			t.Fatal(err)
		}
		rep, err := f.r.Round(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range []*minertest.Miner{honest, busy} {
			if v := m.Violations(); len(v) > 0 {
				t.Errorf("upstream refuses:\n%s", strings.Join(v, "\n"))
			}
		}
		if cr := rep.Details[honest.Hotkey.SS58()].Classes[class]; cr.Passed != 2 {
			t.Errorf("honest: %+v", cr)
		}
		if cr := rep.Details[busy.Hotkey.SS58()].Classes[class]; cr.Excused != 1 {
			t.Errorf("busy: %+v", cr)
		}
		if rr := rep.Details[honest.Hotkey.SS58()].RejectedReceipts; len(rr) != 0 {
			t.Errorf("receipts refused: %v", rr)
		}
		n := 0
		for _, res := range rep.Results {
			if res.Miner != honest.Hotkey.SS58() {
				continue
			}
			rs, err := f.st.ReceiptsForJob(t.Context(), res.JobUUID)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rs {
				if r.MinerSignature != "" {
					n++
				}
			}
		}
		if n != 6 { // started, accepted, finished of two jobs
			t.Errorf("%d receipts countersigned from the pages, want 6", n)
		}
		if cur, _ := f.st.ReceiptCursor(t.Context(), honest.Hotkey.SS58()); !strings.HasPrefix(cur, fmt.Sprint(receipt.PageAt(time.Now()))+":") {
			t.Errorf("cursor %q: not in the page of now", cur)
		}
	})
}
