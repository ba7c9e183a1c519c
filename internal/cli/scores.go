package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/store/backend"
	"github.com/horde-compute/horde/internal/validator"
)

func (e *env) validatorScores(args []string) error {
	fs := e.flags("validator scores")
	db := fs.String("db", "validator.db", "the validator's SQLite database file, or PostgreSQL URL")
	rounds := fs.Int("rounds", 3, "how many of the last rounds")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := e.parseFlags(fs, args); err != nil {
		return err
	}
	st, err := backend.Open(e.ctx, *db)
	if err != nil {
		return err
	}
	defer st.Close()
	scores, err := st.LatestScores(e.ctx, *rounds)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(scores)
	}
	if len(scores) == 0 {
		fmt.Fprintln(e.stdout, "no rounds yet")
		return nil
	}
	excuses := map[int64][]store.ExcuseVerdict{}
	for _, s := range scores {
		if _, ok := excuses[s.Cycle]; !ok {
			if excuses[s.Cycle], err = st.ExcuseVerdicts(e.ctx, s.Cycle); err != nil {
				return err
			}
		}
	}
	printScores(e.stdout, scores, excuses)
	return nil
}

// printScores prints rounds as tables: per miner and class, what was claimed,
// sent, passed, failed (with reasons) and excused (with every excuse refused
// and why), time against the allowance, and the resulting score and weight,
// with the jobs paid, counted unpaid (and why) and still waiting.
func printScores(w io.Writer, scores []store.MinerScore, excuses map[int64][]store.ExcuseVerdict) {
	var cycle int64 = -1
	for _, s := range scores {
		if s.Cycle != cycle {
			cycle = s.Cycle
			fmt.Fprintf(w, "\nround of %s (cycle %d)\n", s.At.Local().Format("2006-01-02 15:04:05"), s.Cycle)
			fmt.Fprintf(w, "  %-50s %-16s %7s %4s %6s %6s %7s %9s %9s %9s %7s\n", "MINER", "CLASS", "CLAIMED", "SENT", "PASSED", "FAILED", "EXCUSED", "TOOK", "ALLOWED", "SCORE", "WEIGHT")
		}
		var d validator.ScoreDetails
		json.Unmarshal(s.Details, &d)
		classes := make([]string, 0, len(d.Classes))
		for c := range d.Classes {
			classes = append(classes, c)
		}
		sort.Strings(classes)
		if len(classes) == 0 {
			note := d.Note
			if note == "" {
				note = "no classes tested"
			}
			fmt.Fprintf(w, "  %-50s %-16s %s; score %.3f, weight %.3f\n", s.Miner, "-", note, s.Score, s.Weight)
			continue
		}
		for i, c := range classes {
			cr := d.Classes[c]
			score, weight := "", ""
			if i == 0 {
				score, weight = fmt.Sprintf("%.3f", s.Score), fmt.Sprintf("%.3f", s.Weight)
			}
			fmt.Fprintf(w, "  %-50s %-16s %7d %4d %6d %6d %7d %8.2fs %8.2fs %9s %7s\n", s.Miner, c, cr.Claimed, cr.Sent, cr.Passed, cr.Failed,
				cr.Excused, float64(cr.MaxTookMS)/1000, float64(cr.ExpectedMS)/1000, score, weight)
			for _, r := range dedupe(cr.Reasons) {
				fmt.Fprintf(w, "      ✗ %s\n", r)
			}
			var refused []string
			for _, v := range excuses[s.Cycle] {
				if v.Miner == s.Miner && v.Class == c && !v.Valid {
					refused = append(refused, fmt.Sprintf("excuse refused: job %s signed by %s: %s", orNone(v.Job), orNone(v.Signer), v.Reason))
				}
			}
			for _, r := range dedupe(refused) {
				fmt.Fprintf(w, "      ✗ %s\n", r)
			}
		}
		if d.Note != "" {
			fmt.Fprintf(w, "      ! %s\n", d.Note)
		}
		if len(d.Receipts) > 0 {
			fmt.Fprintf(w, "      %d jobs paid (%v executor-seconds)\n", len(d.Receipts), roundMap(d.ExecutorSeconds))
		}
		for _, why := range slices.Sorted(maps.Keys(d.Unpaid)) {
			fmt.Fprintf(w, "      %d jobs counted unpaid: %s\n", d.Unpaid[why], why)
		}
		if d.Pending > 0 {
			fmt.Fprintf(w, "      %d finished jobs wait for a later round (miner unreachable or receipts not countersigned yet)\n", d.Pending)
		}
		for _, r := range dedupe(d.RejectedReceipts) {
			fmt.Fprintf(w, "      receipt refused: %s\n", r)
		}
	}
}

func orNone(s string) string {
	if s == "" {
		return "(unreadable)"
	}
	return s
}

func dedupe(xs []string) []string {
	seen := map[string]int{}
	var out []string
	for _, x := range xs {
		if seen[x] == 0 {
			out = append(out, x)
		}
		seen[x]++
	}
	for i, x := range out {
		if n := seen[x]; n > 1 {
			out[i] = fmt.Sprintf("%s (×%d)", x, n)
		}
	}
	return out
}

func roundMap(m map[string]float64) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s: %.2f", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}
