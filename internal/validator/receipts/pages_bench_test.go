package receipts_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/horde-compute/horde/receipt"
)

// BenchmarkCollectUpstreamPage reads one upstream page of 200 jobs (400
// receipts this validator signed, both signatures checked) from scratch.
func BenchmarkCollectUpstreamPage(b *testing.B) {
	t := b
	f := newFixture(t)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	u := &upstreamMiner{}
	f.c.Now, f.c.HTTP, f.c.PagesOnly = func() time.Time { return now }, &http.Client{Transport: transport(u.serve)}, true
	for i := range 200 {
		u.add(receipt.PageAt(now), lines(t, countersign(t, f.m, f.signed(t, f.v, fmt.Sprint("j", i), f.m.SS58(), true))...))
	}
	b.ResetTimer()
	for b.Loop() {
		if err := f.st.SetReceiptCursor(b.Context(), f.m.SS58(), ""); err != nil {
			b.Fatal(err)
		}
		if refused := f.c.Collect(b.Context(), f.n); len(refused) != 0 {
			b.Fatal(refused)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/400, "µs/receipt")
}
