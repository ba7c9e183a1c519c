package cli

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/store/backend"
	"github.com/horde-compute/horde/internal/validation"
	"github.com/horde-compute/horde/internal/validator"
)

func (e *env) validatorValidations(args []string) error {
	fs := e.flags("validator validations")
	db := fs.String("db", "validator.db", "the validator's SQLite database file, or PostgreSQL URL")
	limit := fs.Int("windows", 10, "how many of the last windows")
	evidence := fs.Bool("evidence", false, "print the evidence of proven cheats (JSON lines) instead")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := e.parseFlags(fs, args); err != nil {
		return err
	}
	st, err := backend.Open(e.ctx, *db)
	if err != nil {
		return err
	}
	defer st.Close()
	if *evidence {
		cheats, err := st.Cheats(e.ctx, time.Time{})
		if err != nil {
			return err
		}
		enc := json.NewEncoder(e.stdout)
		for _, c := range cheats {
			enc.Encode(rechecked{c, recheck(c)})
		}
		return nil
	}
	ws, err := st.Windows(e.ctx, *limit)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(ws)
	}
	if len(ws) == 0 {
		fmt.Fprintln(e.stdout, "no validation windows yet")
		return nil
	}
	for _, w := range ws {
		var r validator.WindowReport
		json.Unmarshal(w.Body, &r)
		fmt.Fprintf(e.stdout, "window %d, %s, %s (%s comparator)\n", w.ID, w.At.Local().Format("2006-01-02 15:04:05"), r.Image, r.Comparator)
		fmt.Fprintf(e.stdout, "  pairs gathered %d, checked %d, failed %d\n", r.Pairs, r.Checked, r.Failed)
		fmt.Fprintf(e.stdout, "  trusted executor-seconds %.1f for %.1f streaming seconds covered\n", r.TrustedSeconds, r.CoveredSeconds)
		fmt.Fprintf(e.stdout, "  chance this sampling catches a miner cheating on 10%% of requests: %.1f%%\n", 100*r.Detection)
		for _, v := range r.Verdicts {
			mark := "✓"
			if v.Error != "" {
				mark = "? " + v.Error
			} else if !v.Verdict.Pass {
				mark = "✗ CHEAT"
			}
			fmt.Fprintf(e.stdout, "    %s  miner %s  job %s  request %s: %s\n", mark, short(v.Miner), v.JobUUID[:8], v.RequestID, v.Verdict.Detail)
			if !v.Verdict.Pass && v.Replay != "" {
				fmt.Fprintf(e.stdout, "        replayed request sha256 %s\n", v.Replay)
			}
		}
	}
	return nil
}

// rechecked is a cheat as --evidence prints it: with the result of checking
// its evidence again, as anyone holding it can.
type rechecked struct {
	store.Cheat
	Recheck string `json:"recheck"`
}

// recheck re-verifies a cheat's evidence (validation.CheckEvidence): "ok",
// or why it does not hold.
func recheck(c store.Cheat) string {
	var head struct {
		Format string `json:"format"`
	}
	json.Unmarshal(c.Evidence, &head)
	if head.Format != validation.EvidenceFormat {
		return fmt.Sprintf("evidence format %q is not %s: it does not show the replayed request", head.Format, validation.EvidenceFormat)
	}
	var ev validation.Evidence
	if err := json.Unmarshal(c.Evidence, &ev); err != nil {
		return "evidence does not decode: " + err.Error()
	}
	rc, err := validation.CheckEvidence(&ev)
	switch {
	case err != nil:
		return err.Error()
	case rc.RequestDigest() != c.ReplaySHA256:
		return fmt.Sprintf("the recorded replay %s is not the signed request %s", c.ReplaySHA256, rc.RequestDigest())
	}
	return "ok"
}
