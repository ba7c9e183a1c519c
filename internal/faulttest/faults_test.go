package faulttest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/horde-compute/horde/protocol"
)

// row is one line of the suite's table.
type row struct {
	scenario, expected, observed string
	detect                       time.Duration // from the fault to the first sign of it in the job's history (-1: none to detect)
	lost                         int
}

// The bound the suite holds horde to, from the validator's deadlines: a job
// whose miner is gone (or frozen) ends at the latest when the job's time
// runs out — reserve 7 s, startup slack 5 s, leeway 5 s, and its download,
// execution and upload limits (5, 12, 5 s) — plus 10 s for a loaded machine.
const (
	execLimit = 12 // seconds: the faulted jobs' execution limit
	bound     = (7+5+5+5+execLimit+5)*time.Second + 10*time.Second
)

// TestFaults brings up the deployment once and runs every scenario on it,
// in turn, each leaving it whole for the next; then prints the table.
//
// Timing-sensitive: a lost or frozen miner's job must end within bound
// (the validator's deadlines plus 10 s), and a call to a killed streaming
// miner must fail within 45 s; both are wall-clock checks.
func TestFaults(t *testing.T) {
	d := up(t)
	var rows []row
	for _, s := range []struct {
		name string
		run  func(t *testing.T, d *deployment) row
	}{
		{"1a miner killed during execute", minerKilledDuringExecute},
		{"1b miner killed before execute", minerKilledBeforeExecute},
		{"2 validator killed and restarted", validatorRestarted},
		{"3 facilitator restarted", facilitatorRestarted},
		{"4 validator-miner cut 30s", validatorMinerCut},
		{"5 facilitator-validator cut", facilitatorValidatorCut},
		{"6 miner paused", minerPaused},
		{"7 streaming miner killed", streamingMinerKilled},
	} {
		var r row
		ok := t.Run(s.name, func(t *testing.T) { r = s.run(t, d) })
		r.scenario = s.name
		if !ok && r.observed == "" {
			r.observed = "FAILED (see the test's errors)"
		}
		rows = append(rows, r)
		if !ok {
			d.restore()
		}
	}
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\texpected\tobserved\tdetected in\tjobs lost")
	for _, r := range rows {
		det := "-"
		if r.detect > 0 {
			det = fmt.Sprintf("%.2fs", r.detect.Seconds())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", r.scenario, r.expected, r.observed, det, r.lost)
		if r.lost != 0 {
			t.Errorf("%s: %d jobs lost", r.scenario, r.lost)
		}
	}
	tw.Flush()
	t.Logf("fault suite:\n%s", b.String())
	fmt.Fprintf(os.Stdout, "\n%s\n", b.String())
}

// restore undoes what a failed scenario may have left: every host
// unpaused, running and on its networks, for the next scenario.
func (d *deployment) restore() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, h := range d.hosts {
		d.eng.Do(ctx, h.Name, "unpause")
		d.eng.Do(ctx, h.Name, "start")
		for _, ep := range h.Nets {
			d.eng.Connect(ctx, h.Name, ep) // refused if still connected
		}
	}
}

func (d *deployment) do(t *testing.T, role, action string) time.Time {
	t.Helper()
	at := time.Now()
	if err := d.eng.Do(t.Context(), d.hosts[role].Name, action); err != nil {
		t.Fatalf("%s %s: %v", action, role, err)
	}
	return at
}

func scenarioCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// 1a: a miner SIGKILLed while its job executes: the job ends with a precise
// reason within the bound; when the miner is back, nothing of the job is left.
func minerKilledDuringExecute(t *testing.T, d *deployment) row {
	ctx := scenarioCtx(t)
	r := row{expected: fmt.Sprintf("job ends with a reason within %s; nothing left after the miner restarts", bound)}
	w := d.submit(ctx, d.spec(execLimit, "sleep", "30"))
	role := d.roleOf(w.minerOf(ctx))
	if _, _, ok := w.until(ctx, protocol.StatusVolumesReady); !ok || role == "" {
		t.Fatalf("the job never executed (miner %q)", role)
	}
	killed := d.do(t, role, "kill")
	j, at, err := w.end(ctx)
	if err != nil {
		r.lost = 1
		t.Fatal(err)
	}
	r.detect = at.Sub(killed)
	r.observed = reason(j)
	if j.Status == protocol.StatusCompleted || r.detect > bound {
		t.Errorf("job %s after its miner was killed, in %s", r.observed, r.detect)
	}
	d.do(t, role, "start")
	if err := d.clean(ctx, j.UUID); err != nil {
		t.Error(err)
		r.observed += "; LEFTOVERS"
	} else {
		r.observed += "; nothing left after restart"
	}
	return r
}

// 1b: a miner killed before its job executes: the job is offered to it
// while it is frozen (it has the most free executors: the other one runs a
// job), it is killed before answering, and the job is retried on the other
// miner and completes.
func minerKilledBeforeExecute(t *testing.T, d *deployment) row {
	ctx := scenarioCtx(t)
	r := row{expected: "the job is retried on the other miner and completes"}
	busy := d.submit(ctx, d.spec(execLimit, "sleep", "8"))
	other := d.roleOf(busy.minerOf(ctx))
	victim := map[string]string{"miner1": "miner2", "miner2": "miner1"}[other]
	if victim == "" {
		t.Fatalf("the first job went to %q", other)
	}
	d.do(t, victim, "pause")
	w := d.submit(ctx, d.spec(execLimit, "sleep", "1"))
	select { // let the validator offer it to the frozen miner
	case <-time.After(time.Second):
	case <-ctx.Done():
	}
	killed := d.do(t, victim, "kill")
	var done int
	for _, w := range []*watch{busy, w} {
		j, _, err := w.end(ctx)
		if err != nil {
			r.lost++
			t.Error(err)
			continue
		}
		if j.Status == protocol.StatusCompleted {
			done++
		} else {
			t.Errorf("job %s: %s", j.UUID, reason(j))
		}
	}
	j, at, _ := w.end(ctx)
	r.detect = at.Sub(killed)
	ran := d.roleOf(w.minerOf(ctx))
	r.observed = fmt.Sprintf("%d/2 completed; the job offered to the killed %s ran on %s", done, victim, ran)
	if j != nil && ran != other {
		t.Errorf("the job ran on %q, want %s", ran, other)
	}
	d.do(t, victim, "start")
	return r
}

// 2: the validator killed while a job executes, then restarted: the job
// ends with a reason (or completes), the facilitator's history shows it,
// and each status came once.
func validatorRestarted(t *testing.T, d *deployment) row {
	ctx := scenarioCtx(t)
	r := row{expected: "job ends with a reason, history shows it, each status once"}
	w := d.submit(ctx, d.spec(execLimit, "sleep", "6"))
	if _, _, ok := w.until(ctx, protocol.StatusVolumesReady); !ok {
		t.Fatal("the job never executed")
	}
	killed := d.do(t, "validator", "kill")
	d.do(t, "validator", "start")
	j, at, err := w.end(ctx)
	if err != nil {
		r.lost = 1
		t.Fatal(err)
	}
	r.detect = at.Sub(killed)
	r.observed = reason(j)
	for s, n := range counts(j) {
		if n > 1 && s != protocol.StatusStreaming {
			t.Errorf("status %s %d times in the history: delivered more than once", s, n)
			r.observed += fmt.Sprintf("; %s x%d", s, n)
		}
	}
	if !j.Status.Terminal() {
		t.Errorf("job %s", j.Status)
	}
	return r
}

// 3: the facilitator restarted while jobs run: no job or status lost,
// clients' watches continue, the validator reconnects.
func facilitatorRestarted(t *testing.T, d *deployment) row {
	ctx := scenarioCtx(t)
	r := row{expected: "every job completes, no status lost, watches continue"}
	var ws []*watch
	for range 3 {
		ws = append(ws, d.submit(ctx, d.spec(execLimit, "sleep", "4")))
	}
	for _, w := range ws {
		w.until(ctx, protocol.StatusAccepted)
	}
	restarted := d.do(t, "facilitator", "restart")
	var done int
	var last time.Time
	for _, w := range ws {
		j, at, err := w.end(ctx)
		if err != nil {
			r.lost++
			t.Error(err)
			continue
		}
		last = later(last, at)
		c := counts(j)
		if j.Status == protocol.StatusCompleted && c[protocol.StatusAccepted] == 1 && c[protocol.StatusCompleted] == 1 {
			done++
		} else {
			t.Errorf("job %s: %s, history %v", j.UUID, reason(j), c)
		}
	}
	r.detect = -1
	r.observed = fmt.Sprintf("%d/%d completed with whole histories, last %.1fs after the restart", done, len(ws), last.Sub(restarted).Seconds())
	return r
}

// 4: the validator's network to a miner cut for 30 s while the job
// executes, then healed: the job ends correctly, receipts counted once.
func validatorMinerCut(t *testing.T, d *deployment) row {
	ctx := scenarioCtx(t)
	r := row{expected: "job ends (completed or a reason) after healing; receipts once"}
	w := d.submit(ctx, d.spec(60, "sleep", "5"))
	role := d.roleOf(w.minerOf(ctx))
	if _, _, ok := w.until(ctx, protocol.StatusVolumesReady); !ok || role == "" {
		t.Fatal("the job never executed")
	}
	h := d.hosts[role]
	cut := time.Now()
	if err := d.eng.Disconnect(ctx, h.Name, h.Nets[len(h.Nets)-1].Network); err != nil {
		t.Fatal(err)
	}
	select { // the fault lasts 30 s, whatever horde does meanwhile
	case <-time.After(30 * time.Second):
	case <-ctx.Done():
	}
	if err := d.eng.Connect(ctx, h.Name, h.Nets[len(h.Nets)-1]); err != nil {
		t.Fatal(err)
	}
	j, at, err := w.end(ctx)
	if err != nil {
		r.lost = 1
		t.Fatal(err)
	}
	r.detect = at.Sub(cut)
	r.observed = reason(j)
	if c := counts(j); c[protocol.StatusCompleted] > 1 || c[protocol.StatusFailed] > 1 {
		t.Errorf("history %v", c)
	}
	if m := j.StatusHistory[len(j.StatusHistory)-1].Metadata; j.Status == protocol.StatusCompleted && m != nil {
		seen := map[string]int{}
		for _, rc := range m.Receipts {
			seen[string(rc)]++
		}
		for _, n := range seen {
			if n > 1 {
				t.Errorf("a receipt counted %d times", n)
			}
		}
		r.observed += fmt.Sprintf("; %d receipts", len(m.Receipts))
	}
	return r
}

// 5: the facilitator⇄validator link cut while jobs are submitted: they
// wait, are dispatched after healing, and none runs twice.
func facilitatorValidatorCut(t *testing.T, d *deployment) row {
	ctx := scenarioCtx(t)
	r := row{expected: "jobs wait, run after healing, none twice"}
	h := d.hosts["validator"]
	ep := h.Nets[0] // validators network
	if err := d.eng.Disconnect(ctx, h.Name, ep.Network); err != nil {
		t.Fatal(err)
	}
	var ws []*watch
	for range 2 {
		ws = append(ws, d.submit(ctx, d.spec(execLimit, "sleep", "1")))
	}
	select { // jobs submitted during the cut wait
	case <-time.After(5 * time.Second):
	case <-ctx.Done():
	}
	healed := time.Now()
	if err := d.eng.Connect(ctx, h.Name, ep); err != nil {
		t.Fatal(err)
	}
	var done int
	var last time.Time
	for _, w := range ws {
		j, at, err := w.end(ctx)
		if err != nil {
			r.lost++
			t.Error(err)
			continue
		}
		last = later(last, at)
		c := counts(j)
		if c[protocol.StatusAccepted] > 1 {
			t.Errorf("job %s accepted %d times: ran twice?", j.UUID, c[protocol.StatusAccepted])
		}
		if j.Status == protocol.StatusCompleted {
			done++
		}
	}
	r.detect = last.Sub(healed)
	r.observed = fmt.Sprintf("%d/%d completed once; detected = healing to the last job done", done, len(ws))
	if done != len(ws) {
		t.Error(r.observed)
	}
	return r
}

// 6: a miner frozen (docker pause) while its job executes: treated like a
// lost one, within the bound.
func minerPaused(t *testing.T, d *deployment) row {
	ctx := scenarioCtx(t)
	r := row{expected: fmt.Sprintf("job ends with a reason within %s", bound)}
	w := d.submit(ctx, d.spec(execLimit, "sleep", "30"))
	role := d.roleOf(w.minerOf(ctx))
	if _, _, ok := w.until(ctx, protocol.StatusVolumesReady); !ok || role == "" {
		t.Fatal("the job never executed")
	}
	paused := d.do(t, role, "pause")
	j, at, err := w.end(ctx)
	d.do(t, role, "unpause")
	if err != nil {
		r.lost = 1
		t.Fatal(err)
	}
	r.detect = at.Sub(paused)
	r.observed = reason(j)
	if j.Status == protocol.StatusCompleted || r.detect > bound {
		t.Errorf("job %s, %s after its miner froze", r.observed, r.detect)
	}
	if err := d.clean(ctx, j.UUID); err != nil {
		t.Error(err)
		r.observed += "; LEFTOVERS"
	}
	return r
}

// 7: a streaming job whose miner is killed: the client's call fails
// clearly, no receipt for the unfinished reply, the job ends with a reason.
func streamingMinerKilled(t *testing.T, d *deployment) row {
	ctx := scenarioCtx(t)
	r := row{expected: "call fails, no receipt, job ends with a reason"}
	spec := &protocol.JobSpec{ExecutorClass: protocol.ClassTest, DockerImage: d.tags.LLM, Args: []string{},
		DownloadTimeLimit: 30, ExecutionTimeLimit: 120, UploadTimeLimit: 30, StreamingStartTimeLimit: 60}
	st, err := d.client.StartStreaming(ctx, spec, func(protocol.StatusEntry) {})
	if err != nil {
		t.Fatal(err)
	}
	w := d.follow(ctx, st.JobUUID)
	hc, err := st.HTTPClient()
	if err != nil {
		t.Fatal(err)
	}
	req := []byte(`{"prompt": "a validator", "max_tokens": 8, "temperature": 0}`)
	if _, err := st.Call(ctx, hc, "POST", "/v1/completions", req, &bytes.Buffer{}); err != nil {
		t.Fatalf("call before the fault: %v", err)
	}
	role := d.roleOf(st.MinerHotkey)
	killed := d.do(t, role, "kill")
	cctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	res, callErr := st.Call(cctx, hc, "POST", "/v1/completions", req, &bytes.Buffer{})
	failed := time.Since(killed)
	timedOut := cctx.Err() != nil
	cancel()
	switch {
	case timedOut:
		t.Errorf("the call to a killed miner hung until the caller gave up (%s): %v", failed, callErr)
		r.observed = "call hung"
	case callErr == nil:
		t.Errorf("a call to a killed miner succeeded: %+v", res)
		r.observed = "call succeeded!"
	case res != nil && res.Receipt != nil:
		t.Errorf("a receipt for a failed call: %+v", res.Receipt)
	default:
		r.observed = fmt.Sprintf("call failed in %.1fs: %s", failed.Seconds(), firstLine(callErr.Error()))
	}
	j, at, err := w.end(ctx)
	if err != nil {
		r.lost = 1
		d.do(t, role, "start")
		t.Fatal(err)
	}
	r.detect = at.Sub(killed)
	r.observed += "; job " + reason(j)
	if j.Status == protocol.StatusCompleted {
		t.Errorf("streaming job completed after its miner was killed")
	}
	d.do(t, role, "start")
	d.client.Stop(ctx, st.JobUUID)
	return r
}

// firstLine is the end of an error's first line: its cause.
func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 60 {
		s = "…" + s[len(s)-60:]
	}
	return s
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
