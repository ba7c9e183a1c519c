package facilitator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/horde-compute/horde/internal/dashboard"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/protocol"
)

// This file: what the dashboard reads (dashboard.Source), from the store,
// the sessions and the validators' reports. It knows no HTTP.

var _ dashboard.Source = (*Facilitator)(nil)

// Overview implements dashboard.Source.
func (f *Facilitator) Overview(ctx context.Context, limit int) (*dashboard.Overview, error) {
	recs, _, err := f.cfg.Store.ListJobs(ctx, "", 0, limit)
	if err != nil {
		return nil, err
	}
	o := &dashboard.Overview{Jobs: []dashboard.Job{}}
	for _, rec := range recs {
		hist, err := f.cfg.Store.History(ctx, rec.UUID)
		if err != nil {
			return nil, err
		}
		o.Jobs = append(o.Jobs, dashJob(rec, hist))
	}
	reps, err := f.cfg.Store.Reports(ctx)
	if err != nil {
		return nil, err
	}
	vals := map[string]*dashboard.Validator{}
	for _, vs := range f.sessions("") {
		vals[vs.hotkey] = &dashboard.Validator{Hotkey: vs.hotkey, Connected: true}
	}
	executors := map[string]*dashboard.ClassCount{}
	for hk, b := range reps {
		m, err := protocol.Decode(b)
		rep, ok := m.(*protocol.V0ValidatorReport)
		if err != nil || !ok {
			continue
		}
		v := vals[hk]
		if v == nil {
			v = &dashboard.Validator{Hotkey: hk}
			vals[hk] = v
		}
		v.Cycle, v.ReportAt = rep.Cycle, rep.At
		v.Miners = reportedMiners(rep.Scores)
		for _, mn := range v.Miners {
			for _, c := range mn.Classes {
				e := executors[c.Class]
				if e == nil {
					e = &dashboard.ClassCount{Class: c.Class}
					executors[c.Class] = e
				}
				e.Executors += c.Executors
				e.Passed += c.Passed
				e.Failed += c.Failed
			}
		}
		o.Windows = append(o.Windows, reportedWindows(hk, rep.Windows)...)
	}
	for _, v := range vals {
		o.Validators = append(o.Validators, *v)
	}
	sort.Slice(o.Validators, func(i, j int) bool { return o.Validators[i].Hotkey < o.Validators[j].Hotkey })
	for _, e := range executors {
		o.Executors = append(o.Executors, *e)
	}
	sort.Slice(o.Executors, func(i, j int) bool { return o.Executors[i].Class < o.Executors[j].Class })
	sort.Slice(o.Windows, func(i, j int) bool { return o.Windows[i].At.After(o.Windows[j].At) })
	return o, nil
}

// Job implements dashboard.Source: any client's job, for operators.
func (f *Facilitator) Job(ctx context.Context, id string) (*dashboard.Job, error) {
	rec, err := f.cfg.Store.Job(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("job %s: %w", id, dashboard.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	hist, err := f.cfg.Store.History(ctx, id)
	if err != nil {
		return nil, err
	}
	j := dashJob(rec, hist)
	return &j, nil
}

// Subscribe implements dashboard.Source: the channel is signalled when any
// job's history grows, a validator comes or goes, or a report arrives.
func (f *Facilitator) Subscribe() (<-chan struct{}, func()) {
	ch := f.subscribe(anyJob)
	return ch, func() { f.unsubscribe(anyJob, ch) }
}

// anyJob is the watchers' key of those who watch every job (and the
// validators): no job has an empty uuid.
const anyJob = ""

// dashJob is a job as the dashboard shows it.
func dashJob(rec store.JobRecord, hist []protocol.StatusEntry) dashboard.Job {
	j := dashboard.Job{UUID: rec.UUID, Status: string(rec.Status), Terminal: rec.Status.Terminal(), Image: rec.Spec.DockerImage,
		Class: rec.Spec.ExecutorClass, Streaming: rec.Spec.StreamingDetails != nil, Validator: rec.ValidatorHotkey, Miner: rec.MinerHotkey,
		Created: rec.CreatedAt}
	for i, e := range hist {
		st := dashboard.Stage{Name: string(e.Status), At: e.CreatedAt}
		if i+1 < len(hist) {
			st.Took = hist[i+1].CreatedAt.Sub(e.CreatedAt)
		}
		j.Stages = append(j.Stages, st)
		m := e.Metadata
		if m == nil {
			continue
		}
		if m.MinerHotkey != "" && j.Miner == "" {
			j.Miner = m.MinerHotkey
		}
		switch {
		case m.JobRejectionDetails != nil:
			j.Reason, j.Message = string(m.JobRejectionDetails.Reason), m.JobRejectionDetails.Message
		case m.JobFailureDetails != nil:
			j.Reason, j.Message = string(m.JobFailureDetails.Reason), m.JobFailureDetails.Message
		case m.HordeFailureDetails != nil:
			j.Reason, j.Message = string(m.HordeFailureDetails.Reason), m.HordeFailureDetails.Message
		case m.Comment != "":
			j.Message = m.Comment
		}
		if d := m.StreamingDetails; d != nil && d.StreamingServerAddress != "" {
			j.URL = "https://" + net.JoinHostPort(d.StreamingServerAddress, strconv.Itoa(d.StreamingServerPort))
		}
		if len(m.Timings) > 0 {
			j.Timings = j.Timings[:0]
			for k, ms := range m.Timings {
				j.Timings = append(j.Timings, dashboard.Stage{Name: k, Took: time.Duration(ms) * time.Millisecond})
			}
			slices.SortFunc(j.Timings, func(a, b dashboard.Stage) int { return strings.Compare(a.Name, b.Name) })
		}
	}
	if n := len(hist); n > 0 {
		j.Total = hist[n-1].CreatedAt.Sub(rec.CreatedAt)
		if !j.Terminal {
			j.Total = time.Since(rec.CreatedAt)
		}
	}
	return j
}

// reportedMiners reads a report's scores: each miner's score, weight and
// executors by class (what the validator's scoring details say).
func reportedMiners(b json.RawMessage) []dashboard.Miner {
	var scores []struct {
		Miner   string  `json:"miner"`
		Score   float64 `json:"score"`
		Weight  float64 `json:"weight"`
		Details struct {
			Reachable bool   `json:"reachable"`
			Note      string `json:"note"`
			Classes   map[string]struct {
				Claimed int `json:"claimed"`
				Passed  int `json:"passed"`
				Failed  int `json:"failed"`
			} `json:"classes"`
		} `json:"details"`
	}
	if json.Unmarshal(b, &scores) != nil {
		return nil
	}
	var out []dashboard.Miner
	for _, s := range scores {
		m := dashboard.Miner{Hotkey: s.Miner, Score: s.Score, Weight: s.Weight, Reachable: s.Details.Reachable, Note: s.Details.Note}
		for class, c := range s.Details.Classes {
			m.Classes = append(m.Classes, dashboard.ClassCount{Class: class, Executors: c.Claimed, Passed: c.Passed, Failed: c.Failed})
		}
		slices.SortFunc(m.Classes, func(a, b dashboard.ClassCount) int { return strings.Compare(a.Class, b.Class) })
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Weight > out[j].Weight })
	return out
}

// reportedWindows reads the validation windows a report carries.
func reportedWindows(validator string, b json.RawMessage) []dashboard.Window {
	if len(b) == 0 {
		return nil
	}
	var ws []protocol.ReportedWindow
	if json.Unmarshal(b, &ws) != nil {
		return nil
	}
	var out []dashboard.Window
	for _, w := range ws {
		var body struct {
			Pairs          int     `json:"pairs"`
			Checked        int     `json:"checked"`
			Failed         int     `json:"failed"`
			TrustedSeconds float64 `json:"trusted_executor_seconds"`
			Verdicts       []struct {
				JobUUID   string `json:"job_uuid"`
				RequestID string `json:"request_id"`
				Miner     string `json:"miner"`
				Verdict   struct {
					Pass   bool   `json:"pass"`
					Detail string `json:"detail"`
				} `json:"verdict"`
				Error string `json:"error"`
			} `json:"verdicts"`
		}
		json.Unmarshal(w.Body, &body)
		dw := dashboard.Window{Validator: validator, ID: w.ID, Image: w.Image, At: w.At, Pairs: body.Pairs, Checked: body.Checked,
			Failed: body.Failed, TrustedSeconds: body.TrustedSeconds}
		for _, v := range body.Verdicts {
			detail := v.Verdict.Detail
			if v.Error != "" {
				detail = v.Error
			}
			dw.Verdicts = append(dw.Verdicts, dashboard.Verdict{JobUUID: v.JobUUID, RequestID: v.RequestID, Miner: v.Miner, Pass: v.Verdict.Pass && v.Error == "", Detail: detail})
		}
		out = append(out, dw)
	}
	return out
}
