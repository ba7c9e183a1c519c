//go:build linux

package miner

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/store/sqlite"
	"github.com/horde-compute/horde/receipt"
)

// BenchmarkReceiptPage serves a page of 1000 receipts from SQLite, whole
// and as an empty Range (what a validator polling a quiet page costs): the
// current page, built on each request, and a complete one, cached.
func BenchmarkReceiptPage(b *testing.B) {
	b.Run("current", func(b *testing.B) { benchmarkReceiptPage(b, false) })
	b.Run("complete", func(b *testing.B) { benchmarkReceiptPage(b, true) })
}

func benchmarkReceiptPage(b *testing.B, complete bool) {
	st, err := sqlite.Open(b.Context(), b.TempDir()+"/miner.db")
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	v, m := hotkey(b, 1), hotkey(b, 2)
	at := time.Now()
	for i := range 1000 {
		p := &receipt.StartedPayload{Base: receipt.Base{JobUUID: fmt.Sprintf("job-%d", i), MinerHotkey: m.SS58(), ValidatorHotkey: v.SS58(), Timestamp: receipt.At(at)},
			ExecutorClass: "always_on.test", IsOrganic: true, TTL: 300}
		if err := st.PutReceipt(b.Context(), countersigned(b, v, m, p)); err != nil {
			b.Fatal(err)
		}
	}
	h := receiptPages{store: st, log: slog.New(slog.DiscardHandler)}
	if complete {
		h.cache = newPageCache()
		h.now = func() time.Time { return time.Now().Add(time.Hour) }
	}
	page := receipt.PageAt(time.Now())
	url := receipt.PagePrefix + strconv.FormatInt(page, 10) + ".jsonl"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, withPage(httptest.NewRequest(http.MethodGet, url, nil), page))
	size := rec.Body.Len()
	b.Run("whole", func(b *testing.B) {
		cpu := userCPU()
		for b.Loop() {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, withPage(httptest.NewRequest(http.MethodGet, url, nil), page))
		}
		b.ReportMetric(float64(size), "page-bytes")
		b.ReportMetric((userCPU()-cpu)*1e3/float64(b.N), "cpu-ms/op")
	})
	b.Run("range-at-end", func(b *testing.B) {
		cpu := userCPU()
		for b.Loop() {
			req := withPage(httptest.NewRequest(http.MethodGet, url, nil), page)
			req.Header.Set("Range", "bytes="+strconv.Itoa(size)+"-")
			h.ServeHTTP(httptest.NewRecorder(), req)
		}
		b.ReportMetric((userCPU()-cpu)*1e3/float64(b.N), "cpu-ms/op")
	})
}

// userCPU is the CPU time (user + system) this process has used, in
// seconds: the machine is shared, so wall time says little.
func userCPU() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func withPage(r *http.Request, page int64) *http.Request {
	r.SetPathValue("page", strconv.FormatInt(page, 10)+".jsonl")
	return r
}
