package storetest

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/protocol"
)

// Clients are the numbers of concurrent clients BenchIntake measures.
var Clients = []int{1, 8, 64}

// BenchIntake measures job intake as a facilitator does it, one job per
// op: the job is created, claimed for a validator (dispatch), and its
// status goes to accepted and then completed; so many clients at once, on
// a fresh store of open's each. It reports jobs/s.
func BenchIntake(b *testing.B, open func(b *testing.B) Store) {
	for _, clients := range Clients {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			s := open(b)
			ctx := b.Context()
			spec := protocol.JobSpec{ExecutorClass: protocol.ClassTest, DockerImage: "horde/job:dev", ExecutionTimeLimit: 30}
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for c := range clients {
				wg.Go(func() {
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						id := fmt.Sprintf("job-%d", i)
						now := time.Now().UTC()
						rec := store.JobRecord{UUID: id, Spec: spec, Status: protocol.StatusSent, CreatedAt: now,
							Signature: protocol.Signature{Signatory: fmt.Sprintf("client-%d", c), Signature: id}}
						if err := s.CreateJob(ctx, rec); err != nil {
							b.Error(err)
							return
						}
						rec.UpdatedAt = now
						if ok, err := s.ClaimJob(ctx, rec, "validator"); err != nil || !ok {
							b.Errorf("claim %s: %v, %v", id, ok, err)
							return
						}
						for _, st := range []protocol.JobStatus{protocol.StatusAccepted, protocol.StatusCompleted} {
							if err := s.AddStatus(ctx, id, protocol.StatusEntry{Status: st, CreatedAt: time.Now().UTC()}); err != nil {
								b.Error(err)
								return
							}
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "jobs/s")
		})
	}
}
