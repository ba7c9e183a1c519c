package facilitator

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/store/postgres"
	"github.com/horde-compute/horde/internal/store/postgres/pgtest"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// replicas starts n facilitators over one fresh PostgreSQL schema, each
// with connections and an HTTP server of its own, as n processes would be;
// their clients share one key.
func replicas(t testing.TB, n int, cfg Config) []*harness {
	t.Helper()
	url := pgtest.Schema(t)
	key := hotkey(t)
	var hs []*harness
	for range n {
		db, err := postgres.Open(t.Context(), url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		h := newHarnessOn(t, cfg, db)
		h.key, h.client = key, client.New(h.url, key)
		hs = append(hs, h)
	}
	return hs
}

// A client submits at one replica and watches, reports pairs, stops and
// cancels at another, while the job's validator is connected to the first. Nothing
// but the replicas' notices wakes them (no periodic dispatch).
func TestReplicasServeAsOne(t *testing.T) {
	hs := replicas(t, 2, Config{DispatchEvery: time.Hour})
	a, b := hs[0], hs[1]
	k := hotkey(t)
	a.allow(k)
	b.allow(k)
	v := b.connectAs(k)

	j := a.create(spec())
	if got := v.nextJob(); got.UUID != j.UUID {
		t.Fatalf("validator at b got job %s, want %s (submitted at a)", got.UUID, j.UUID)
	}

	statuses := make(chan protocol.JobStatus, 16)
	watched := make(chan error, 1)
	go func() { // owned: the test waits for watched
		_, err := a.client.Watch(a.ctx(), j.UUID, func(e protocol.StatusEntry) { statuses <- e.Status })
		watched <- err
	}()
	wait := func(want protocol.JobStatus) {
		t.Helper()
		for {
			select {
			case s := <-statuses:
				if s == want {
					return
				}
			case <-a.ctx().Done():
				t.Fatalf("watcher at a never saw %s", want)
			}
		}
	}
	v.status(j.UUID, protocol.StatusAccepted, nil)
	wait(protocol.StatusAccepted)
	jk, _ := streamingReady(t, v, j.UUID)
	wait(protocol.StatusStreaming)

	if err := a.client.ReportPair(a.ctx(), j.UUID, jk.pair(j.UUID, "r1", []byte("q"), []byte("a"), time.Now())); err != nil {
		t.Fatalf("pair reported at a: %v", err)
	}
	if m, ok := v.next().(*protocol.V0StreamPairReport); !ok || m.UUID != j.UUID {
		t.Fatalf("validator at b got %+v, want the pair reported at a", m)
	}

	stopped := make(chan error, 1)
	go func() { // owned: the test waits for stopped
		_, err := a.client.Stop(a.ctx(), j.UUID)
		stopped <- err
	}()
	if m, ok := v.next().(*protocol.V0StopJobByFacilitator); !ok || m.UUID != j.UUID {
		t.Fatalf("validator at b got %+v, want the stop asked at a", m)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("stop at a: %v", err)
	}

	cancelled := make(chan error, 1)
	go func() { // owned: the test waits for cancelled
		_, err := a.client.Cancel(a.ctx(), j.UUID)
		cancelled <- err
	}()
	if m, ok := v.next().(*protocol.V0CancelJobByFacilitator); !ok || m.UUID != j.UUID {
		t.Fatalf("validator at b got %+v, want the cancel asked at a", m)
	}
	if err := <-cancelled; err != nil {
		t.Fatalf("cancel at a: %v", err)
	}
	v.status(j.UUID, protocol.StatusCancelled, nil)
	wait(protocol.StatusCancelled)
	if err := <-watched; err != nil {
		t.Fatalf("watch at a: %v", err)
	}
}

// worker is a validator that runs every job it is given once: it reports
// it accepted and completed, and reports so again (without running it)
// when given a job it has. Like a validator's outbox, it reports every
// job's statuses again when it connects: the facilitator it told before
// may have died before storing them.
type worker struct {
	key *sig.Hotkey
	ran chan string // each job, the first time
	// answers, if not nil, hears of every answer to a status it reported.
	answers chan struct{}

	mu  sync.Mutex
	got map[string]int // times each job was given
}

func newWorker(t testing.TB, hs ...*harness) *worker {
	w := &worker{key: hotkey(t), ran: make(chan string, 1024), got: map[string]int{}}
	for _, h := range hs {
		h.allow(w.key)
	}
	return w
}

// serve connects to h and works until the session ends; connected is
// closed once the facilitator has let it in.
func (w *worker) serve(ctx context.Context, h *harness, connected chan<- struct{}) error {
	conn, resp, err := h.dial(w.key, protocol.FacilitatorCapabilities)
	if err != nil {
		return err
	}
	defer conn.Close("done")
	if resp.Status != "success" {
		return errorf("refused: %+v", resp)
	}
	close(connected)
	report := func(id string) error {
		for _, s := range []protocol.JobStatus{protocol.StatusAccepted, protocol.StatusCompleted} {
			if err := conn.Send(ctx, &protocol.V0JobStatusUpdate{UUID: id, Status: s}); err != nil {
				return err
			}
		}
		return nil
	}
	w.mu.Lock()
	var had []string
	for id := range w.got {
		had = append(had, id)
	}
	w.mu.Unlock()
	for _, id := range had {
		if report(id) != nil {
			return nil
		}
	}
	for {
		m, err := conn.Recv(ctx)
		if err != nil {
			return nil // the facilitator went away, or the test ended
		}
		if _, ok := m.(*protocol.Response); ok && w.answers != nil {
			w.answers <- struct{}{}
		}
		j, ok := m.(*protocol.V2JobRequest)
		if !ok {
			continue
		}
		w.mu.Lock()
		w.got[j.UUID]++
		first := w.got[j.UUID] == 1
		w.mu.Unlock()
		if first {
			w.ran <- j.UUID
		}
		if report(j.UUID) != nil {
			return nil
		}
	}
}

type testError string

func (e testError) Error() string { return string(e) }

func errorf(format string, args ...any) error {
	return testError(fmt.Sprintf(format, args...))
}

// One replica dies while dispatching, as clients submit to it: jobs it
// claimed and never sent (one made so for certain: "orphan"), and jobs it
// sent whose statuses it never stored, are given again by the other, to
// the same validator, which has reconnected there. Every job runs, on
// exactly one validator, once.
func TestReplicaDiesMidDispatch(t *testing.T) {
	hs := replicas(t, 2, Config{Redispatch: 200 * time.Millisecond, DispatchEvery: 20 * time.Millisecond})
	a, b := hs[0], hs[1]
	w1, w2 := newWorker(t, a, b), newWorker(t, a, b)
	ctx, cancel := context.WithTimeout(t.Context(), failsafe)
	defer cancel()

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	up1, up2 := make(chan struct{}), make(chan struct{})
	wg.Go(func() { // w1 works at a, and at b once a is gone
		if err := w1.serve(ctx, a, up1); err != nil {
			t.Errorf("w1 at a: %v", err)
			return
		}
		if ctx.Err() == nil {
			if err := w1.serve(ctx, b, make(chan struct{})); err != nil {
				t.Errorf("w1 at b: %v", err)
			}
		}
	})
	wg.Go(func() {
		if err := w2.serve(ctx, b, up2); err != nil {
			t.Errorf("w2 at b: %v", err)
		}
	})
	for _, up := range []chan struct{}{up1, up2} {
		select {
		case <-up:
		case <-ctx.Done():
			t.Fatal("a worker never connected")
		}
	}

	// Clients submit at a, one job after another, until a dies.
	submitted := make(chan struct{})
	wg.Go(func() {
		defer close(submitted)
		for range 200 {
			if _, err := a.client.CreateJob(ctx, spec()); err != nil {
				return // a is gone
			}
		}
	})
	ran := map[string]string{} // job → the worker that ran it
	take := func() {
		t.Helper()
		select {
		case id := <-w1.ran:
			ran[id] = "w1"
		case id := <-w2.ran:
			ran[id] = "w2"
		case <-ctx.Done():
			t.Fatalf("jobs stopped running: %d ran", len(ran))
		}
	}
	for countOf(ran, "w1") < 5 {
		take()
	}
	a.kill()
	// A job a claimed for w1 and never sent: a died in between.
	orphan := store.JobRecord{UUID: "orphan", Spec: *spec(), Signature: protocol.Signature{Signatory: a.key.SS58(), Signature: "orphan"},
		Status: protocol.StatusSent, ValidatorHotkey: w1.key.SS58(), CreatedAt: time.Now().UTC()}
	if err := b.db.CreateJob(ctx, orphan); err != nil {
		t.Fatal(err)
	}
	<-submitted
	for range 10 {
		if _, err := b.client.CreateJob(ctx, spec()); err != nil {
			t.Fatalf("submit at b: %v", err)
		}
	}

	all, total, err := b.db.ListJobs(ctx, "", 0, 1000)
	if err != nil || total != len(all) {
		t.Fatalf("jobs = %d of %d, %v", len(all), total, err)
	}
	for {
		missing := 0
		for _, j := range all {
			if ran[j.UUID] == "" {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		take()
	}
	again := 0
	for _, j := range all {
		w1.mu.Lock()
		n1 := w1.got[j.UUID]
		w1.mu.Unlock()
		w2.mu.Lock()
		n2 := w2.got[j.UUID]
		w2.mu.Unlock()
		if n1+n2 > 1 {
			again++
		}
		if n1 > 0 && n2 > 0 {
			t.Errorf("job %s given to both validators", j.UUID)
		}
		done, err := b.client.Watch(ctx, j.UUID, func(protocol.StatusEntry) {})
		if err != nil || done.Status != protocol.StatusCompleted {
			t.Errorf("job %s: %v, %v; want completed", j.UUID, done, err)
		}
	}
	if ran["orphan"] != "w1" {
		t.Errorf("the job a claimed for w1 ran on %q", ran["orphan"])
	}
	t.Logf("%d jobs: %d on w1, %d on w2, %d given again to their validator; a died after w1 ran 5",
		len(all), countOf(ran, "w1"), countOf(ran, "w2"), again)
}

func countOf(m map[string]string, v string) int {
	n := 0
	for _, x := range m {
		if x == v {
			n++
		}
	}
	return n
}
