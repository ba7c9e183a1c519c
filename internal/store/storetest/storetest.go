// Package storetest is the conformance suite every store backend passes.
package storetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
)

// Store is what a backend offers.
type Store interface {
	store.Jobs
	store.Receipts
	store.Outbox
	store.Scores
	store.Reports
	store.Pairs
	store.Validations
	store.CheatReports
	store.Ledger
	store.Excuses
}

// Run runs the suite against stores made by open (a fresh, empty one per call).
func Run(t *testing.T, open func(t *testing.T) Store) {
	t.Run("jobs", func(t *testing.T) { testJobs(t, open(t)) })
	t.Run("receipts", func(t *testing.T) { testReceipts(t, open(t)) })
	t.Run("outbox", func(t *testing.T) { testOutbox(t, open(t)) })
	t.Run("scores", func(t *testing.T) { testScores(t, open(t)) })
	t.Run("pairs", func(t *testing.T) { testPairs(t, open(t)) })
	t.Run("validations", func(t *testing.T) { testValidations(t, open(t)) })
	t.Run("cheat reports", func(t *testing.T) { testCheatReports(t, open(t)) })
	t.Run("ledger", func(t *testing.T) { testLedger(t, open(t)) })
	t.Run("excuses", func(t *testing.T) { testExcuses(t, open(t)) })
}

func testJobs(t *testing.T, s Store) {
	ctx := t.Context()
	now := time.Now().UTC().Truncate(time.Microsecond)
	j := store.JobRecord{UUID: "j1", Spec: protocol.JobSpec{ExecutorClass: "c", DockerImage: "i", ExecutionTimeLimit: 5},
		Signature: protocol.Signature{Signatory: "alice", Signature: "s1"}, Status: protocol.StatusSent, CreatedAt: now}
	if err := s.CreateJob(ctx, j); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateJob(ctx, j); !errors.Is(err, store.ErrDuplicate) {
		t.Errorf("duplicate uuid: %v", err)
	}
	replay := j
	replay.UUID = "j2"
	if err := s.CreateJob(ctx, replay); !errors.Is(err, store.ErrDuplicate) {
		t.Errorf("replayed signature: %v", err)
	}
	// The same signature bytes in another base64 text (issue #15 row 6: the
	// unused low bits of the last character set) are the same signature.
	b64 := "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw=="
	first := j
	first.UUID, first.Status, first.Signature = "r1", protocol.StatusCompleted, protocol.Signature{Signatory: "carol", Signature: b64}
	if err := s.CreateJob(ctx, first); err != nil {
		t.Fatal(err)
	}
	reenc := first
	reenc.UUID, reenc.Signature.Signature = "r2", b64[:85]+"x=="
	if err := s.CreateJob(ctx, reenc); !errors.Is(err, store.ErrDuplicate) {
		t.Errorf("re-encoded signature: %v", err)
	}
	if _, err := s.Job(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("missing job: %v", err)
	}
	for _, st := range []protocol.JobStatus{protocol.StatusAccepted, protocol.StatusFailed, protocol.StatusCompleted} {
		if err := s.AddStatus(ctx, "j1", protocol.StatusEntry{Status: st, CreatedAt: now,
			Metadata: &protocol.StatusMetadata{Comment: string(st)}}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Job(ctx, "j1")
	if err != nil || got.Status != protocol.StatusFailed || got.Spec.DockerImage != "i" {
		t.Errorf("job = %+v, %v; a terminal status must stick", got, err)
	}
	h, err := s.History(ctx, "j1")
	if err != nil || len(h) != 4 || h[1].Metadata.Comment != "accepted" {
		t.Errorf("history = %+v, %v", h, err)
	}
	s.CreateJob(ctx, store.JobRecord{UUID: "j3", Signature: protocol.Signature{Signatory: "bob", Signature: "s3"}, Status: protocol.StatusSent, CreatedAt: now.Add(time.Second)})
	list, total, err := s.ListJobs(ctx, "alice", 0, 10)
	if err != nil || total != 1 || len(list) != 1 {
		t.Errorf("list alice = %d/%d, %v", len(list), total, err)
	}
	un, err := s.Unfinished(ctx)
	if err != nil || len(un) != 1 || un[0].UUID != "j3" {
		t.Fatalf("unfinished = %+v, %v", un, err)
	}
	// j3 is sent and no validator has it: it is to be handed out. Given to
	// a validator it is not, until its assignment is older than stale.
	if ds, err := s.Dispatchable(ctx, now); err != nil || len(ds) != 1 || ds[0].UUID != "j3" {
		t.Fatalf("dispatchable = %+v, %v", ds, err)
	}
	s.CreateJob(ctx, store.JobRecord{UUID: "j4", Signature: protocol.Signature{Signatory: "bob", Signature: "s4"}, Status: protocol.StatusSent, CreatedAt: now.Add(2 * time.Second)})
	if err := s.SetAssignment(ctx, "j4", "v", ""); err != nil {
		t.Fatal(err)
	}
	if ds, err := s.Dispatchable(ctx, time.Now().Add(-time.Hour)); err != nil || len(ds) != 1 || ds[0].UUID != "j3" {
		t.Fatalf("dispatchable, j4 given a moment ago = %+v, %v", ds, err)
	}
	if ds, err := s.Dispatchable(ctx, time.Now().Add(time.Hour)); err != nil || len(ds) != 2 || ds[0].UUID != "j3" || ds[1].UUID != "j4" {
		t.Fatalf("dispatchable, j4 stale = %+v, %v", ds, err)
	}
	if err := s.AddStatus(ctx, "j4", protocol.StatusEntry{Status: protocol.StatusCancelled, CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if ds, err := s.Dispatchable(ctx, time.Now().Add(time.Hour)); err != nil || len(ds) != 1 {
		t.Fatalf("dispatchable, j4 cancelled = %+v, %v", ds, err)
	}
	un, err = s.Unfinished(ctx)
	if err != nil || len(un) != 1 || un[0].UUID != "j3" {
		t.Fatalf("unfinished = %+v, %v", un, err)
	}
	testClaim(t, s, un[0])
}

// testClaim: of several claims of the same record, read once, one wins.
func testClaim(t *testing.T, s Store, seen store.JobRecord) {
	ctx := t.Context()
	won := make(chan string, 8)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			v := fmt.Sprintf("v%d", i)
			ok, err := s.ClaimJob(ctx, seen, v)
			if err != nil {
				t.Errorf("claim as %s: %v", v, err)
			}
			if ok {
				won <- v
			}
		})
	}
	wg.Wait()
	close(won)
	var winners []string
	for v := range won {
		winners = append(winners, v)
	}
	if len(winners) != 1 {
		t.Fatalf("claims won by %v, want exactly one", winners)
	}
	got, err := s.Job(ctx, seen.UUID)
	if err != nil || got.ValidatorHotkey != winners[0] || !got.UpdatedAt.After(seen.UpdatedAt) {
		t.Errorf("claimed job = %+v, %v; want it given to %s, updated later", got, err, winners[0])
	}
	// A claim of the job as it is now wins; one of the old record does not.
	if ok, err := s.ClaimJob(ctx, seen, "late"); ok || err != nil {
		t.Errorf("claim of a stale record = %v, %v", ok, err)
	}
	if ok, err := s.ClaimJob(ctx, got, "again"); !ok || err != nil {
		t.Errorf("claim of the current record = %v, %v", ok, err)
	}
	if err := s.AddStatus(ctx, seen.UUID, protocol.StatusEntry{Status: protocol.StatusAccepted, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	accepted, _ := s.Job(ctx, seen.UUID)
	if ok, _ := s.ClaimJob(ctx, accepted, "x"); ok {
		t.Errorf("claimed a job that is no longer sent")
	}
}

func testReceipts(t *testing.T, s Store) {
	ctx := t.Context()
	p := &receipt.StartedPayload{Base: receipt.Base{JobUUID: "j1", MinerHotkey: "m", ValidatorHotkey: "v", Timestamp: receipt.At(time.Now())}, ExecutorClass: "c", TTL: 5}
	r, err := receipt.New(p, "0xaa")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutReceipt(ctx, r); err != nil {
		t.Fatal(err)
	}
	r.MinerSignature = "0xbb"
	if err := s.PutReceipt(ctx, r); err != nil {
		t.Fatal(err)
	}
	r.MinerSignature = "0xcc"
	s.PutReceipt(ctx, r) // a second countersignature does not overwrite the first
	got, err := s.ReceiptsForJob(ctx, "j1")
	if err != nil || len(got) != 1 || got[0].MinerSignature != "0xbb" {
		t.Fatalf("receipts = %+v, %v", got, err)
	}
	// The same job offered to another miner has receipts of its own.
	p2 := *p
	p2.MinerHotkey = "m2"
	r2, _ := receipt.New(&p2, "0xdd")
	if err := s.PutReceipt(ctx, r2); err != nil {
		t.Fatal(err)
	}
	if both, _ := s.ReceiptsForJob(ctx, "j1"); len(both) != 2 {
		t.Errorf("receipts of a job with two miners = %d, want 2", len(both))
	}
	page, err := s.ReceiptsAfter(ctx, 0, 1)
	if err != nil || len(page) != 1 || page[0].ID == 0 {
		t.Fatalf("after 0 = %+v, %v", page, err)
	}
	if rest, _ := s.ReceiptsAfter(ctx, page[0].ID, 10); len(rest) != 1 {
		t.Errorf("after last = %d", len(rest))
	}
	// By the time they were stored, in the order they were.
	in, err := s.ReceiptsStoredIn(ctx, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil || len(in) != 2 || in[0].ID >= in[1].ID || in[0].Receipt.MinerSignature != "0xbb" {
		t.Errorf("stored in the last hour = %+v, %v", in, err)
	}
	if later, err := s.ReceiptsStoredIn(ctx, time.Now().Add(time.Hour), time.Now().Add(2*time.Hour)); err != nil || len(later) != 0 {
		t.Errorf("stored in the next hour = %+v, %v", later, err)
	}
}

func testOutbox(t *testing.T, s Store) {
	ctx := t.Context()
	for _, m := range []string{"a", "b", "c"} {
		if err := s.PushOutbox(ctx, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	items, err := s.PeekOutbox(ctx, 2)
	if err != nil || len(items) != 2 || string(items[0].Message) != "a" || string(items[1].Message) != "b" {
		t.Fatalf("peek = %+v, %v", items, err)
	}
	if err := s.AckOutbox(ctx, items[0].ID); err != nil {
		t.Fatal(err)
	}
	items, _ = s.PeekOutbox(ctx, 10)
	if len(items) != 2 || string(items[0].Message) != "b" {
		t.Errorf("after ack = %+v", items)
	}
	// A page acknowledged at once; nothing to acknowledge is no error.
	if err := s.AckOutbox(ctx, items[0].ID, items[1].ID); err != nil {
		t.Fatal(err)
	}
	if err := s.AckOutbox(ctx); err != nil {
		t.Fatal(err)
	}
	if items, _ = s.PeekOutbox(ctx, 10); len(items) != 0 {
		t.Errorf("after acking a page = %+v", items)
	}
	// A status and its message: both, or (the job unknown) neither.
	now := time.Now().UTC().Truncate(time.Microsecond)
	if err := s.CreateJob(ctx, store.JobRecord{UUID: "ob1", Signature: protocol.Signature{Signatory: "carol", Signature: "ob1"}, Status: protocol.StatusReceived, CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddStatusPush(ctx, "ob1", protocol.StatusEntry{Status: protocol.StatusAccepted, CreatedAt: now}, []byte("d")); err != nil {
		t.Fatal(err)
	}
	if err := s.AddStatusPush(ctx, "nope", protocol.StatusEntry{Status: protocol.StatusAccepted, CreatedAt: now}, []byte("e")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("status of an unknown job: %v", err)
	}
	h, err := s.History(ctx, "ob1")
	if err != nil || len(h) != 2 || h[1].Status != protocol.StatusAccepted {
		t.Errorf("history = %+v, %v", h, err)
	}
	if items, _ = s.PeekOutbox(ctx, 10); len(items) != 1 || string(items[0].Message) != "d" {
		t.Errorf("outbox after statuses = %+v", items)
	}
}

func testScores(t *testing.T, s Store) {
	ctx := t.Context()
	now := time.Now().UTC().Truncate(time.Microsecond)
	for i, passed := range []bool{true, false} {
		r := store.SyntheticResult{Cycle: 7, Miner: "m", Class: "c", JobUUID: string(rune('a' + i)), Generator: "g", Passed: passed, Reason: "r", TookMS: 5, ExpectedMS: 9, At: now}
		if err := s.PutSyntheticResult(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	rs, err := s.SyntheticResults(ctx, 7)
	if err != nil || len(rs) != 2 || !rs[0].Passed || rs[1].Passed || !rs[0].At.Equal(now) {
		t.Errorf("results = %+v, %v", rs, err)
	}
	for cycle := int64(1); cycle <= 3; cycle++ {
		if err := s.PutScores(ctx, []store.MinerScore{{Cycle: cycle, Miner: "a", Score: 1, Weight: 0.25, Details: []byte(`{}`), At: now},
			{Cycle: cycle, Miner: "b", Score: 3, Weight: 0.75, Details: []byte(`{"x":1}`), At: now}}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.LatestScores(ctx, 2)
	if err != nil || len(got) != 4 || got[0].Cycle != 3 || got[0].Miner != "b" || got[3].Cycle != 2 {
		t.Errorf("latest = %+v, %v", got, err)
	}
	if err := s.PutReport(ctx, "v", []byte(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	reps, err := s.Reports(ctx)
	if err != nil || string(reps["v"]) != `{"a":1}` {
		t.Errorf("reports = %v, %v", reps, err)
	}
}

func testPairs(t *testing.T, s Store) {
	ctx := t.Context()
	for i, img := range []string{"a", "b", "a"} {
		p := store.PairRecord{JobUUID: "j", RequestID: string(rune('x' + i)), Image: img, MinerHotkey: "m", ValidatorHotkey: "v", At: time.Now(),
			Pair: protocol.StreamPair{Path: "/p", RequestB64: "cQ=="}, Proof: protocol.StreamingServerDetails{MinerSignature: "0x1"}}
		if err := s.PutPair(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutPair(ctx, store.PairRecord{JobUUID: "j", RequestID: "x", Image: "a"}); !errors.Is(err, store.ErrDuplicate) {
		t.Errorf("duplicate request id: %v", err)
	}
	ps, ids, err := s.PairsForImage(ctx, "a", 0, 10)
	if err != nil || len(ps) != 2 || ps[0].RequestID != "x" || ps[1].Pair.Path != "/p" {
		t.Fatalf("pairs = %+v %v", ps, err)
	}
	if rest, _, _ := s.PairsForImage(ctx, "a", ids[0], 10); len(rest) != 1 || rest[0].Proof.MinerSignature != "0x1" {
		t.Errorf("after first = %+v", rest)
	}
	pending, pids, err := s.UnforwardedPairs(ctx, "v", 10)
	if err != nil || len(pending) != 3 {
		t.Fatalf("unforwarded = %d, %v", len(pending), err)
	}
	if err := s.MarkForwarded(ctx, "another validator", pids[0]); err != nil {
		t.Fatal(err)
	}
	if pending, _, _ = s.UnforwardedPairs(ctx, "v", 10); len(pending) != 3 {
		t.Errorf("another validator's ack delivered a pair: %d left", len(pending))
	}
	s.MarkForwarded(ctx, "v", pids[0])
	if pending, _, _ = s.UnforwardedPairs(ctx, "v", 10); len(pending) != 2 {
		t.Errorf("after forwarding one: %d", len(pending))
	}
}

func testValidations(t *testing.T, s Store) {
	ctx := t.Context()
	before := time.Now().Add(-time.Second)
	if last, err := s.LastPair(ctx, "img"); err != nil || last != 0 {
		t.Fatalf("last pair of nothing = %d, %v", last, err)
	}
	id, err := s.PutWindow(ctx, store.Window{Image: "img", LastPair: 7, Body: []byte(`{"checked":3}`), At: time.Now()},
		[]store.Cheat{{Miner: "m", JobUUID: "j", RequestID: "r1", ReplaySHA256: "ab12", Evidence: []byte(`{"pair":1}`), At: time.Now()},
			{Miner: "m2", JobUUID: "j2", Evidence: []byte(`{"pair":2}`), At: time.Now()}})
	if err != nil || id == 0 {
		t.Fatal(err)
	}
	if last, _ := s.LastPair(ctx, "img"); last != 7 {
		t.Errorf("last pair = %d", last)
	}
	ws, err := s.Windows(ctx, 5)
	if err != nil || len(ws) != 1 || string(ws[0].Body) != `{"checked":3}` {
		t.Errorf("windows = %+v %v", ws, err)
	}
	cs, err := s.Cheats(ctx, before)
	if err != nil || len(cs) != 2 || cs[0].Window != id || cs[0].Miner != "m" || cs[0].RequestID != "r1" || cs[0].ReplaySHA256 != "ab12" ||
		string(cs[0].Evidence) != `{"pair":1}` || cs[1].RequestID != "" || cs[1].ReplaySHA256 != "" {
		t.Errorf("cheats = %+v %v", cs, err)
	}
}

func testCheatReports(t *testing.T, s Store) {
	ctx := t.Context()
	at := time.Now().UTC().Truncate(time.Microsecond)
	r := store.CheatRecord{JobUUID: "j1", TrustedJobUUID: "t1", Reporter: "alice", ValidatorHotkey: "v",
		Details: []byte(`{"b": 1, "a": [2.50]}`), Signature: protocol.Signature{Signatory: "alice", Signature: "s", TimestampNS: 7, SignatureScope: "FullRequest"}, At: at}
	if err := s.PutCheatReport(ctx, r); err != nil {
		t.Fatal(err)
	}
	again := r
	again.TrustedJobUUID = "t2"
	if err := s.PutCheatReport(ctx, again); !errors.Is(err, store.ErrDuplicate) {
		t.Errorf("second report on a job: %v", err)
	}
	other := store.CheatRecord{JobUUID: "j2", TrustedJobUUID: "t1", Reporter: "alice", ValidatorHotkey: "w", At: at}
	if err := s.PutCheatReport(ctx, other); err != nil {
		t.Fatal(err)
	}
	got, ids, err := s.UnforwardedCheatReports(ctx, "v", 10)
	if err != nil || len(got) != 1 {
		t.Fatalf("pending for v: %v, %v", got, err)
	}
	if string(got[0].Details) != string(r.Details) || got[0].Signature != r.Signature || !got[0].At.Equal(at) || got[0].Reporter != "alice" {
		t.Errorf("kept %+v", got[0])
	}
	if err := s.MarkCheatForwarded(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := s.UnforwardedCheatReports(ctx, "v", 10); len(got) != 0 {
		t.Errorf("forwarded report still pending")
	}
	if got, _, _ := s.UnforwardedCheatReports(ctx, "w", 10); len(got) != 1 || string(got[0].Details) != "null" {
		t.Errorf("report without details: %+v", got)
	}
}

func testLedger(t *testing.T, s Store) {
	ctx := t.Context()
	put := func(p receipt.Payload, minerSig string) {
		t.Helper()
		r, err := receipt.New(p, "0xaa")
		if err != nil {
			t.Fatal(err)
		}
		r.MinerSignature = minerSig
		if err := s.PutReceipt(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	base := func(job, miner string) receipt.Base {
		return receipt.Base{JobUUID: job, MinerHotkey: miner, ValidatorHotkey: "v", Timestamp: receipt.At(time.Now())}
	}
	// j1 started long before it finished; j2 on two miners; j3 has no started receipt; j4 is still running.
	put(&receipt.StartedPayload{Base: base("j1", "m"), ExecutorClass: "c1", TTL: 5}, "")
	put(&receipt.StartedPayload{Base: base("j2", "m"), ExecutorClass: "c2", TTL: 5}, "")
	put(&receipt.StartedPayload{Base: base("j2", "n"), ExecutorClass: "c2", TTL: 5}, "")
	put(&receipt.StartedPayload{Base: base("j4", "m"), ExecutorClass: "c1", TTL: 5}, "")
	put(&receipt.FinishedPayload{Base: base("j2", "n"), ScoreStr: "0"}, "")
	put(&receipt.FinishedPayload{Base: base("j1", "m"), ScoreStr: "3.000000"}, "0xm1")
	put(&receipt.FinishedPayload{Base: base("j3", "m"), ScoreStr: "1.000000"}, "")
	j2 := &receipt.FinishedPayload{Base: base("j2", "m"), ScoreStr: "2.000000"}
	put(j2, "")
	put(j2, "0xm2") // countersigned later

	jobOf := func(r receipt.Receipt) string {
		var b receipt.Base
		json.Unmarshal(r.Payload, &b)
		return b.JobUUID + "@" + b.MinerHotkey
	}
	work, err := s.Uncounted(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, w := range work {
		started := "-"
		if w.Started != nil {
			started = jobOf(*w.Started)
			if w.Started.Type != receipt.JobStarted {
				t.Errorf("started receipt of type %s", w.Started.Type)
			}
		}
		got = append(got, jobOf(w.Finished)+" "+started+" "+w.Finished.MinerSignature)
	}
	want := []string{"j2@n j2@n ", "j1@m j1@m 0xm1", "j3@m - ", "j2@m j2@m 0xm2"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("uncounted = %q, want %q", got, want)
	}

	now := time.Now().UTC().Truncate(time.Microsecond)
	scores := []store.MinerScore{{Cycle: 5, Miner: "m", Score: 3, Weight: 1, Details: []byte(`{}`), At: now}}
	c5 := []store.Counted{{JobUUID: "j1", Miner: "m", Class: "c1", Cycle: 5, Pay: 3}, {JobUUID: "j2", Miner: "n", Class: "c2", Cycle: 5, Reason: "failed"}}
	if err := s.PutCycle(ctx, scores, c5); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Counted(ctx, 5); err != nil || fmt.Sprint(got) != fmt.Sprint(c5) {
		t.Errorf("counted = %+v, %v; want %+v", got, err, c5)
	}
	if sc, _ := s.LatestScores(ctx, 1); len(sc) != 1 || sc[0].Cycle != 5 {
		t.Errorf("scores of the cycle = %+v", sc)
	}
	if work, _ = s.Uncounted(ctx); len(work) != 2 {
		t.Errorf("after cycle 5: %d uncounted, want 2", len(work))
	}
	// A job is counted once: a cycle that counts it again stores nothing.
	again := []store.Counted{{JobUUID: "j3", Miner: "m", Cycle: 6}, {JobUUID: "j1", Miner: "m", Cycle: 6, Pay: 3}}
	if err := s.PutCycle(ctx, []store.MinerScore{{Cycle: 6, Miner: "m", Details: []byte(`{}`), At: now}}, again); !errors.Is(err, store.ErrDuplicate) {
		t.Errorf("counting j1 twice: %v", err)
	}
	if sc, _ := s.LatestScores(ctx, 1); sc[0].Cycle != 5 {
		t.Errorf("a refused cycle stored its scores: %+v", sc)
	}
	if got, _ := s.Counted(ctx, 6); len(got) != 0 {
		t.Errorf("a refused cycle counted %+v", got)
	}
	if err := s.PutCycle(ctx, nil, []store.Counted{{JobUUID: "j4", Miner: "m", Cycle: 6}}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("counting a job that has not finished: %v", err)
	}

	if c, err := s.ReceiptCursor(ctx, "m"); err != nil || c != "" {
		t.Errorf("first cursor = %q, %v", c, err)
	}
	for _, c := range []string{"7", "12"} {
		if err := s.SetReceiptCursor(ctx, "m", c); err != nil {
			t.Fatal(err)
		}
	}
	if c, err := s.ReceiptCursor(ctx, "m"); err != nil || c != "12" {
		t.Errorf("cursor = %q, %v", c, err)
	}
	if c, _ := s.ReceiptCursor(ctx, "n"); c != "" {
		t.Errorf("another miner's cursor = %q", c)
	}
}

func testExcuses(t *testing.T, s Store) {
	ctx := t.Context()
	now := time.Now().UTC().Truncate(time.Microsecond)
	vs := []store.ExcuseVerdict{
		{Cycle: 3, Miner: "m", Class: "c", DeclinedJob: "d", Job: "o1", Signer: "v", Valid: true, At: now},
		{Cycle: 3, Miner: "m", Class: "c", DeclinedJob: "d", Job: "o2", Signer: "m", Reason: "signed by the miner itself", At: now},
		{Cycle: 4, Miner: "m", Class: "c", DeclinedJob: "e", Reason: "undecodable", At: now},
	}
	if err := s.PutExcuseVerdicts(ctx, vs); err != nil {
		t.Fatal(err)
	}
	got, err := s.ExcuseVerdicts(ctx, 3)
	if err != nil || fmt.Sprint(got) != fmt.Sprint(vs[:2]) {
		t.Errorf("verdicts = %+v, %v", got, err)
	}
}
