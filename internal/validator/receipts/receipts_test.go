package receipts_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/store/sqlite"
	"github.com/horde-compute/horde/internal/validator/receipts"
	"github.com/horde-compute/horde/receipt"
	"github.com/horde-compute/horde/sig"
)

// transport serves requests with a handler, in memory.
type transport func(w http.ResponseWriter, r *http.Request)

func (f transport) RoundTrip(r *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	f(rec, r)
	return rec.Result(), nil
}

type failing struct{}

func (failing) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("connection refused")
}

func hotkey(t testing.TB) *sig.Hotkey {
	k, err := sig.FromSeed(sig.RandomSeed())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

type fixture struct {
	v, m *sig.Hotkey
	st   *sqlite.DB
	c    *receipts.Collector
	n    chain.Neuron
}

func newFixture(t testing.TB) *fixture {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "v.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &fixture{v: hotkey(t), m: hotkey(t), st: st}
	f.c = &receipts.Collector{Validator: f.v.SS58(), Store: st}
	f.n = chain.Neuron{Hotkey: f.m.SS58(), AxonInfo: chain.AxonInfo{IP: "192.0.2.1", Port: 8000}}
	return f
}

// signed returns the validator-signed started and finished receipts of job
// on miner, stored as the validator keeps them unless keep is false.
func (f *fixture) signed(t testing.TB, signer *sig.Hotkey, job, miner string, keep bool) []receipt.Receipt {
	base := receipt.Base{JobUUID: job, MinerHotkey: miner, ValidatorHotkey: signer.SS58(), Timestamp: receipt.At(time.Now())}
	var out []receipt.Receipt
	for _, p := range []receipt.Payload{&receipt.StartedPayload{Base: base, ExecutorClass: "c", TTL: 60},
		&receipt.FinishedPayload{Base: base, TimeStarted: base.Timestamp, TimeTookUS: 1_000_000, ScoreStr: "1.000000"}} {
		s, err := receipt.Sign(signer, p)
		if err != nil {
			t.Fatal(err)
		}
		r, err := receipt.New(p, s)
		if err != nil {
			t.Fatal(err)
		}
		if keep {
			if err := f.st.PutReceipt(t.Context(), r); err != nil {
				t.Fatal(err)
			}
		}
		out = append(out, r)
	}
	return out
}

// countersign signs rs with k, as the miner serves them.
func countersign(t testing.TB, k *sig.Hotkey, rs []receipt.Receipt) []receipt.Receipt {
	var out []receipt.Receipt
	for _, r := range rs {
		p, err := r.Decode()
		if err != nil {
			t.Fatal(err)
		}
		r.MinerSignature, _ = receipt.Sign(k, p)
		out = append(out, r)
	}
	return out
}

// serve serves rs as pages of store.StoredReceipt, ids from 1, recording the cursors asked for.
func serve(rs []receipt.Receipt, afters *[]string) transport {
	return func(w http.ResponseWriter, r *http.Request) {
		*afters = append(*afters, r.URL.Query().Get("after"))
		var after, limit int
		fmt.Sscan(r.URL.Query().Get("after"), &after)
		fmt.Sscan(r.URL.Query().Get("limit"), &limit)
		enc := json.NewEncoder(w)
		n := 0
		for i, rc := range rs {
			if i+1 > after && n < limit {
				enc.Encode(store.StoredReceipt{ID: int64(i + 1), Receipt: rc})
				n++
			}
		}
	}
}

func minerSigned(t *testing.T, st *sqlite.DB, job string) int {
	rs, err := st.ReceiptsForJob(t.Context(), job)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range rs {
		if r.MinerSignature != "" {
			n++
		}
	}
	return n
}

func TestCollectHonest(t *testing.T) {
	f := newFixture(t)
	served := countersign(t, f.m, f.signed(t, f.v, "j", f.m.SS58(), true))
	var afters []string
	f.c.HTTP = &http.Client{Transport: serve(served, &afters)}
	if refused := f.c.Collect(t.Context(), f.n); len(refused) != 0 {
		t.Fatalf("refused %v", refused)
	}
	if n := minerSigned(t, f.st, "j"); n != 2 {
		t.Errorf("%d receipts countersigned, want 2", n)
	}
	// Fetched again: from the cursor, nothing new, nothing counted twice.
	if refused := f.c.Collect(t.Context(), f.n); len(refused) != 0 {
		t.Fatalf("refused %v", refused)
	}
	if strings.Join(afters, ",") != "0,2" {
		t.Errorf("cursors asked for: %v", afters)
	}
	// A restarted validator goes on from the cursor it kept.
	again := &receipts.Collector{Validator: f.v.SS58(), Store: f.st, HTTP: f.c.HTTP}
	if refused := again.Collect(t.Context(), f.n); len(refused) != 0 {
		t.Errorf("after a restart: refused %v", refused)
	}
	if strings.Join(afters, ",") != "0,2,2" {
		t.Errorf("cursors asked for: %v", afters)
	}
	// Served again from the start (a replaying miner, a lost cursor): still counted once.
	if err := f.st.SetReceiptCursor(t.Context(), f.m.SS58(), ""); err != nil {
		t.Fatal(err)
	}
	if refused := again.Collect(t.Context(), f.n); len(refused) != 0 {
		t.Errorf("replayed receipts refused: %v", refused)
	}
	if n := minerSigned(t, f.st, "j"); n != 2 {
		t.Errorf("%d receipts countersigned", n)
	}
}

// flaky is a store whose PutReceipt fails while fail is set.
type flaky struct {
	*sqlite.DB
	fail bool
}

func (s *flaky) PutReceipt(ctx context.Context, r receipt.Receipt) error {
	if s.fail {
		return errors.New("disk full")
	}
	return s.DB.PutReceipt(ctx, r)
}

// A receipt that could not be recorded is fetched again next time: the
// cursor stays before it.
func TestCollectStoreFailure(t *testing.T) {
	f := newFixture(t)
	served := countersign(t, f.m, f.signed(t, f.v, "j", f.m.SS58(), true))
	var afters []string
	st := &flaky{DB: f.st, fail: true}
	c := &receipts.Collector{Validator: f.v.SS58(), Store: st, HTTP: &http.Client{Transport: serve(served, &afters)}}
	refused := c.Collect(t.Context(), f.n)
	if len(refused) != 1 || !strings.Contains(refused[0], "disk full") || !errors.Is(c.Accept(t.Context(), f.m.SS58(), served[0]), receipts.ErrStore) {
		t.Fatalf("refused %v", refused)
	}
	if cur, _ := f.st.ReceiptCursor(t.Context(), f.m.SS58()); cur != "" {
		t.Errorf("cursor moved past a receipt not recorded: %q", cur)
	}
	st.fail = false
	if refused := c.Collect(t.Context(), f.n); len(refused) != 0 {
		t.Fatalf("refused %v", refused)
	}
	if n := minerSigned(t, f.st, "j"); n != 2 || strings.Join(afters, ",") != "0,0" {
		t.Errorf("%d countersigned, cursors asked for %v", n, afters)
	}
	if cur, _ := f.st.ReceiptCursor(t.Context(), f.m.SS58()); cur != "2" {
		t.Errorf("cursor %q", cur)
	}
}

func TestCollectRefuses(t *testing.T) {
	other := hotkey(t)
	tests := []struct {
		name  string
		serve func(t *testing.T, f *fixture) []receipt.Receipt
		want  string // in every refusal
		count int    // refusals
	}{
		{"forged by another key", func(t *testing.T, f *fixture) []receipt.Receipt {
			return countersign(t, other, f.signed(t, f.v, "j", f.m.SS58(), true))
		}, "invalid receipt", 2},
		{"altered payload", func(t *testing.T, f *fixture) []receipt.Receipt {
			rs := f.signed(t, f.v, "j", f.m.SS58(), true)
			p, _ := rs[1].Decode()
			p.(*receipt.FinishedPayload).TimeTookUS *= 10
			rs[1].Payload, _ = json.Marshal(p)
			rs[1].ValidatorSignature, _ = receipt.Sign(f.v, p) // even re-signed by us, it is not what we stored
			return countersign(t, f.m, rs[1:])
		}, "differs from the one this validator signed", 1},
		{"never signed by this validator", func(t *testing.T, f *fixture) []receipt.Receipt {
			return countersign(t, f.m, f.signed(t, f.v, "j", f.m.SS58(), false))
		}, "was never signed by this validator", 2},
		{"names another miner", func(t *testing.T, f *fixture) []receipt.Receipt {
			return countersign(t, other, f.signed(t, f.v, "j", other.SS58(), true))
		}, "names miner", 2},
		{"no miner signature", func(t *testing.T, f *fixture) []receipt.Receipt {
			return f.signed(t, f.v, "j", f.m.SS58(), true)
		}, "has no miner signature", 2},
		{"undecodable", func(t *testing.T, f *fixture) []receipt.Receipt {
			return []receipt.Receipt{{Type: "bogus", Payload: json.RawMessage(`{}`)}}
		}, "invalid receipt", 1},
		{"another validator's receipts are skipped", func(t *testing.T, f *fixture) []receipt.Receipt {
			return countersign(t, f.m, f.signed(t, other, "j", f.m.SS58(), false))
		}, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			var afters []string
			f.c.HTTP = &http.Client{Transport: serve(tt.serve(t, f), &afters)}
			refused := f.c.Collect(t.Context(), f.n)
			if len(refused) != tt.count {
				t.Fatalf("refused %v, want %d", refused, tt.count)
			}
			for _, r := range refused {
				if !strings.Contains(r, tt.want) {
					t.Errorf("refusal %q lacks %q", r, tt.want)
				}
			}
			if n := minerSigned(t, f.st, "j"); n != 0 {
				t.Errorf("%d receipts countersigned", n)
			}
		})
	}
}

func TestCollectFetchFailures(t *testing.T) {
	f := newFixture(t)
	for _, tt := range []struct {
		name string
		rt   http.RoundTripper
		want string
	}{
		{"unreachable", failing{}, "fetch receipts: "},
		{"http error", transport(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusInternalServerError) }), "fetch receipts: HTTP 500"},
		{"garbage line", transport(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "{not json") }), "undecodable receipt line"},
	} {
		f.c.HTTP = &http.Client{Transport: tt.rt}
		refused := f.c.Collect(t.Context(), f.n)
		if len(refused) == 0 || !strings.Contains(refused[len(refused)-1], tt.want) {
			t.Errorf("%s: %v", tt.name, refused)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	f.c.HTTP = nil
	if refused := f.c.Collect(ctx, f.n); len(refused) != 1 {
		t.Errorf("cancelled: %v", refused)
	}
}

// A miner with more than a page of receipts is read page after page.
func TestCollectPages(t *testing.T) {
	f := newFixture(t)
	foreign := countersign(t, f.m, f.signed(t, hotkey(t), "x", f.m.SS58(), false))
	var rs []receipt.Receipt
	for range receipts.PageSize {
		rs = append(rs, foreign[0])
	}
	rs = append(rs, countersign(t, f.m, f.signed(t, f.v, "j", f.m.SS58(), true))...)
	var afters []string
	f.c.HTTP = &http.Client{Transport: serve(rs, &afters)}
	if refused := f.c.Collect(t.Context(), f.n); len(refused) != 0 {
		t.Fatalf("refused %v", refused)
	}
	if strings.Join(afters, ",") != fmt.Sprintf("0,%d", receipts.PageSize) {
		t.Errorf("cursors asked for: %v", afters)
	}
	if n := minerSigned(t, f.st, "j"); n != 2 {
		t.Errorf("%d countersigned", n)
	}
}
