package cli

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/store/sqlite"
	"github.com/horde-compute/horde/internal/validator"
	"github.com/horde-compute/horde/protocol"
)

// `horde validator scores` shows, from the validator's store, every excuse
// refused and why, the executors excused, and the jobs counted unpaid or
// still waiting.
func TestValidatorScoresShowsExcusesAndPay(t *testing.T) {
	db := filepath.Join(t.TempDir(), "validator.db")
	st, err := sqlite.Open(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	d := validator.ScoreDetails{Reachable: true, Receipts: []string{"j1"}, ExecutorSeconds: map[string]float64{protocol.ClassTest: 12},
		Unpaid: map[string]int{"did not complete: its finished receipt pays 0": 2}, Pending: 1,
		Classes: map[string]*validator.ClassResult{protocol.ClassTest: {Claimed: 3, Sent: 3, Passed: 1, Excused: 1, Failed: 1,
			Reasons: []string{"declined as busy without valid excuses (1 valid for 2 busy declines)"}, Gate: false}}}
	b, _ := json.Marshal(d)
	if err := st.PutScores(t.Context(), []store.MinerScore{{Cycle: 7, Miner: "5Miner", Score: 12, Weight: 1, Details: b, At: at}}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutExcuseVerdicts(t.Context(), []store.ExcuseVerdict{
		{Cycle: 7, Miner: "5Miner", Class: protocol.ClassTest, DeclinedJob: "d1", Job: "o1", Signer: "5Other", Valid: true, At: at},
		{Cycle: 7, Miner: "5Miner", Class: protocol.ClassTest, DeclinedJob: "d2", Job: "o2", Signer: "5Miner", Reason: "signed by the miner itself (5Miner)", At: at},
		{Cycle: 7, Miner: "5Miner", Class: protocol.ClassTest, DeclinedJob: "d2", Reason: "not a job-started receipt: no payload object", At: at},
	}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	out, errs, code := run(t, nil, "validator", "scores", "--db", db)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, errs)
	}
	for _, want := range []string{"EXCUSED", "excuse refused: job o2 signed by 5Miner: signed by the miner itself (5Miner)",
		"excuse refused: job (unreadable) signed by (unreadable): not a job-started receipt", "declined as busy without valid excuses",
		"1 jobs paid (always_on.test: 12.00 executor-seconds)", "2 jobs counted unpaid: did not complete", "1 finished jobs wait for a later round"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "job o1") {
		t.Errorf("a valid excuse is shown as refused:\n%s", out)
	}
}
