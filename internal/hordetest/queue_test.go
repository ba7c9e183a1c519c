package hordetest

import (
	"testing"

	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/protocol"
)

// A job submitted when the last one has ended gets the executor at once:
// the miner counts an executor free as soon as its job has reported its
// end (before the validator hears of it), so the next offer is not declined
// as busy while the executor tidies up, and the job never waits.
func TestNextJobNotDeclinedWhileExecutorTidiesUp(t *testing.T) {
	h := StartFake(t, devstack.Config{Manifest: map[string]int{protocol.ClassTest: 1}})
	for range 10 {
		j := h.Run(t, Spec("echo", "hi"))
		if j.Status != protocol.StatusCompleted {
			t.Fatalf("job %s: %s", j.UUID, j.Status)
		}
		for _, e := range j.StatusHistory {
			if e.Metadata != nil && e.Metadata.Comment == "waiting for a free executor" {
				t.Fatalf("job %s waited for the only executor, free since the last job ended: %+v", j.UUID, j.StatusHistory)
			}
		}
	}
}
