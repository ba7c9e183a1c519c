package facilitator

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/horde-compute/horde/protocol"
)

// What the dashboard reads: jobs with their stages and reasons, the
// connected validator with the miners, executors and windows of its report,
// and a signal on every change.
func TestDashboardSource(t *testing.T) {
	h := newHarness(t, Config{})
	changes, stop := h.f.Subscribe()
	defer stop()
	changed := func(what string) {
		t.Helper()
		select {
		case <-changes:
		case <-h.ctx().Done():
			t.Fatalf("no change signalled for %s", what)
		}
	}
	v := h.connect()
	changed("the validator's connection")
	job := h.create(spec())
	changed("the job")
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	scores := `[{"miner":"5Miner","score":2,"weight":1,"details":{"reachable":true,"classes":{"always_on.test":{"claimed":3,"passed":3,"failed":0}}}}]`
	windows := `[{"id":4,"image":"horde/llm","at":"2026-01-02T03:00:00Z","body":{"pairs":9,"checked":2,"failed":1,"trusted_executor_seconds":4.5,` +
		`"verdicts":[{"job_uuid":"` + job.UUID + `","request_id":"r1","miner":"5Miner","verdict":{"pass":false,"detail":"differs"}}]}}]`
	if r := v.request(&protocol.V0ValidatorReport{Cycle: 7, At: at, Scores: json.RawMessage(scores), Windows: json.RawMessage(windows)}); r.Status != "success" {
		t.Fatalf("report: %+v", r)
	}
	changed("the report")
	o, err := h.f.Overview(h.ctx(), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Jobs) != 1 || o.Jobs[0].UUID != job.UUID || o.Jobs[0].Status != string(protocol.StatusSent) || len(o.Jobs[0].Stages) != 1 {
		t.Errorf("jobs: %+v", o.Jobs)
	}
	if len(o.Validators) != 1 || !o.Validators[0].Connected || o.Validators[0].Cycle != 7 || len(o.Validators[0].Miners) != 1 ||
		o.Validators[0].Miners[0].Weight != 1 || o.Validators[0].Miners[0].Classes[0].Executors != 3 {
		t.Errorf("validators: %+v", o.Validators)
	}
	if len(o.Executors) != 1 || o.Executors[0].Class != "always_on.test" || o.Executors[0].Executors != 3 {
		t.Errorf("executors: %+v", o.Executors)
	}
	if len(o.Windows) != 1 || o.Windows[0].Failed != 1 || len(o.Windows[0].Verdicts) != 1 || o.Windows[0].Verdicts[0].Pass ||
		o.Windows[0].Verdicts[0].JobUUID != job.UUID {
		t.Errorf("windows: %+v", o.Windows)
	}
	j, err := h.f.Job(h.ctx(), job.UUID)
	if err != nil || j.UUID != job.UUID {
		t.Errorf("job: %+v %v", j, err)
	}
}
