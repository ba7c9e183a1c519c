package jobrun_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/validator/jobrun"
	"github.com/horde-compute/horde/internal/validator/minertest"
	"github.com/horde-compute/horde/internal/validator/route"
	"github.com/horde-compute/horde/protocol"
)

// horde is a driver over a pool of in-process miners.
type horde struct {
	d    *jobrun.Driver
	pool *route.Pool
	net  *minertest.Net
}

func newHorde(t *testing.T, miners ...*minertest.Miner) *horde {
	h := &horde{net: &minertest.Net{}}
	var ns []chain.Neuron
	for _, m := range miners {
		ns = append(ns, h.net.Add(m))
	}
	h.pool = route.NewPool(h.net, "validator", nil)
	h.pool.Sync(t.Context(), ns)
	h.d = &jobrun.Driver{Params: jobrun.Params{Hotkey: minertest.Hotkey(t), Timing: jobrun.DefaultTiming(), Receipts: &receipts{}},
		Pool: h.pool, MaxAttempts: 3, QueueTimeout: 30 * time.Second}
	return h
}

// drive runs a job in the background; wait returns its notes when it ended.
func (h *horde) drive(ctx context.Context, uuid string, spec *protocol.JobSpec) (wait func() *notes) {
	n := &notes{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.d.Drive(ctx, jobrun.Job{UUID: uuid, Spec: spec, Organic: true}, n)
	}()
	return func() *notes { <-done; return n }
}

func declining(reason protocol.JobRejectionReason) func(minertest.Peer, protocol.Message) {
	return func(p minertest.Peer, f protocol.Message) {
		if in, ok := f.(*protocol.V0InitialJobRequest); ok {
			p.Send(&protocol.V0DeclineJobRequest{JobUUID: in.JobUUID, Reason: reason, Message: "fake says " + string(reason)})
		}
	}
}

func comments(n *notes) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for _, e := range n.statuses {
		if e.Metadata != nil && e.Metadata.Comment != "" {
			out = append(out, e.Metadata.Comment)
		}
	}
	return out
}

// A job another miner declines or loses is retried elsewhere; a busy
// decline costs no attempt and is not news to the client.
func TestDriveRetriesElsewhere(t *testing.T) {
	vanish := func(p minertest.Peer, f protocol.Message) {
		if in, ok := f.(*protocol.V0InitialJobRequest); ok {
			p.Send(&protocol.V0AcceptJobRequest{JobUUID: in.JobUUID})
			p.Close()
		}
	}
	for _, tt := range []struct {
		name    string
		reply   func(minertest.Peer, protocol.Message)
		retried bool
	}{
		{"busy", declining(protocol.RejectBusy), false},
		{"refuse", declining(protocol.RejectUnknown), true},
		{"vanish", vanish, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fake := minertest.New(t, map[string]int{protocol.ClassTest: 10}) // picked first: most free
				fake.Reply = tt.reply
				good := minertest.New(t, map[string]int{protocol.ClassTest: 2})
				h := newHorde(t, fake, good)
				defer h.pool.Close()
				n := h.drive(t.Context(), "j", batchSpec())()
				last := n.last()
				if last.Status != protocol.StatusCompleted || last.Metadata.MinerHotkey != good.Hotkey.SS58() {
					t.Fatalf("last %s by %s", last.Status, last.Metadata.MinerHotkey)
				}
				if got := len(fake.Offers()); got != 1 {
					t.Errorf("fake got %d offers, want 1", got)
				}
				retried := false
				for _, c := range comments(n) {
					retried = retried || strings.HasPrefix(c, "retrying: miner "+fake.Hotkey.SS58())
				}
				if retried != tt.retried {
					t.Errorf("retry shown: %v, want %v (%v)", retried, tt.retried, comments(n))
				}
				if len(last.Metadata.Receipts) < 3 {
					t.Errorf("final status carries %d receipts", len(last.Metadata.Receipts))
				}
			})
		})
	}
}

func TestDriveRejects(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var ms []*minertest.Miner
		for i := range 3 {
			m := minertest.New(t, map[string]int{protocol.ClassTest: 3 - i})
			m.Reply = declining(protocol.RejectUnknown)
			ms = append(ms, m)
		}
		h := newHorde(t, ms...)
		defer h.pool.Close()
		start := time.Now()

		// Every miner declines: the job is rejected naming each decline.
		h.d.MaxAttempts = 4
		last := h.drive(t.Context(), "j", batchSpec())().last()
		d := last.Metadata.JobRejectionDetails
		if last.Status != protocol.StatusRejected || d.Reason != protocol.RejectNoMiner || d.RejectedBy != protocol.ByValidator {
			t.Fatalf("last %s %+v", last.Status, d)
		}
		want := fmt.Sprintf("no miner with a free always_on.test executor after miner %s declined (unknown): fake says unknown; miner %s declined",
			ms[0].Hotkey.SS58(), ms[1].Hotkey.SS58())
		if !strings.HasPrefix(d.Message, want) || strings.Count(d.Message, "declined") != 3 {
			t.Errorf("message %q", d.Message)
		}
		if n := len(ms[0].Offers()) + len(ms[1].Offers()) + len(ms[2].Offers()); n != 3 {
			t.Errorf("%d offers, want 3", n)
		}

		// The last attempt's decline is the job's end.
		h.d.MaxAttempts = 2
		last = h.drive(t.Context(), "k", batchSpec())().last()
		if d := last.Metadata.JobRejectionDetails; last.Status != protocol.StatusRejected || d.RejectedBy != protocol.ByMiner || last.Metadata.MinerHotkey != ms[1].Hotkey.SS58() {
			t.Errorf("last %s %+v by %s", last.Status, d, last.Metadata.MinerHotkey)
		}

		// A class nobody offers is rejected at once.
		spec := batchSpec()
		spec.ExecutorClass = protocol.ClassGPU24
		last = h.drive(t.Context(), "l", spec)().last()
		if last.Status != protocol.StatusRejected || last.Metadata.JobRejectionDetails.Message != "no miner with a free always_on.gpu-24gb executor" {
			t.Errorf("unknown class: %s %+v", last.Status, last.Metadata.JobRejectionDetails)
		}
		if time.Since(start) != 0 {
			t.Errorf("took %s", time.Since(start))
		}
	})
}

// Jobs that find the only executor taken wait in line and are served in
// the order they came, each as soon as the one before frees the executor.
func TestDriveQueuesFirstComeFirstServed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, map[string]int{protocol.ClassTest: 1})
		h := newHorde(t, m)
		defer h.pool.Close()
		ctx := t.Context()
		first := h.drive(ctx, "a", streamSpec()) // serves until stopped
		synctest.Wait()
		var waits []func() *notes
		for _, id := range []string{"b", "c", "d"} {
			waits = append(waits, h.drive(ctx, id, batchSpec()))
			synctest.Wait() // in line before the next comes
		}
		start := time.Now()
		time.Sleep(10 * time.Second)
		if !h.d.Relay(ctx, "a", &protocol.V0StopJobRequest{JobUUID: "a"}) {
			t.Fatal("relay to the serving job refused")
		}
		if h.d.Relay(ctx, "nope", &protocol.V0StopJobRequest{JobUUID: "nope"}) {
			t.Error("relay to an unknown job accepted")
		}
		if last := first().last(); last.Status != protocol.StatusCompleted {
			t.Fatalf("first: %s", last.Status)
		}
		for i, w := range waits {
			n := w()
			if last := n.last(); last.Status != protocol.StatusCompleted {
				t.Errorf("job %d: %s", i, last.Status)
			}
			if c := comments(n); len(c) == 0 || c[0] != "waiting for a free executor" {
				t.Errorf("job %d comments %v", i, c)
			}
		}
		var order []string
		for _, o := range m.Offers() {
			order = append(order, o.JobUUID)
		}
		if strings.Join(order, "") != "abcd" {
			t.Errorf("served in order %v", order)
		}
		if time.Since(start) != 10*time.Second {
			t.Errorf("served %s after the stop", time.Since(start)-10*time.Second)
		}
	})
}

func TestDriveQueueTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, map[string]int{protocol.ClassTest: 1})
		h := newHorde(t, m)
		defer h.pool.Close()
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		h.drive(ctx, "a", streamSpec())
		synctest.Wait()
		start := time.Now()
		last := h.drive(ctx, "b", batchSpec())().last()
		if last.Status != protocol.StatusRejected || time.Since(start) != h.d.QueueTimeout {
			t.Errorf("%s after %s", last.Status, time.Since(start))
		}
		cancel()
	})
}

// A miner that declines as busy is held back, offered the job again after
// a hold that doubles each time, without using up attempts.
func TestDriveWaitsOutBusyMiner(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, map[string]int{protocol.ClassTest: 1})
		var mu sync.Mutex
		busy := 3
		m.Reply = func(p minertest.Peer, f protocol.Message) {
			mu.Lock()
			defer mu.Unlock()
			if _, ok := f.(*protocol.V0InitialJobRequest); ok && busy > 0 {
				busy--
				declining(protocol.RejectBusy)(p, f)
				return
			}
			m.Honest(p, f)
		}
		h := newHorde(t, m)
		defer h.pool.Close()
		h.d.MaxAttempts = 1
		start := time.Now()
		n := h.drive(t.Context(), "j", batchSpec())()
		if last := n.last(); last.Status != protocol.StatusCompleted {
			t.Fatalf("%s %+v", last.Status, last.Metadata)
		}
		if took := time.Since(start); took != route.BusyFirst*(1+2+4) {
			t.Errorf("took %s, want holds of 25+50+100ms", took)
		}
		if c := comments(n); len(c) != 1 || c[0] != "waiting for a free executor" {
			t.Errorf("comments %v", c)
		}
	})
}

func TestDriveCancel(t *testing.T) {
	for _, tt := range []struct {
		name   string
		cause  error
		status protocol.JobStatus
	}{
		{"by the client", jobrun.ErrCancelled, protocol.StatusCancelled},
		{"validator stops", nil, protocol.StatusHordeFailed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				m := minertest.New(t, map[string]int{protocol.ClassTest: 1})
				h := newHorde(t, m)
				defer h.pool.Close()
				ctx, cancel := context.WithCancelCause(t.Context())
				running := h.drive(ctx, "a", streamSpec())
				synctest.Wait()
				waiting := h.drive(ctx, "b", batchSpec())
				synctest.Wait()
				cancel(tt.cause)
				if last := running().last(); last.Status != tt.status {
					t.Errorf("running job: %s %+v", last.Status, last.Metadata)
				}
				if !contains(frameTypes(m.Got()), "V0CancelJobRequest") {
					t.Error("miner not told to cancel")
				}
				last := waiting().last()
				if tt.cause != nil && last.Status != protocol.StatusCancelled || tt.cause == nil && last.Status != protocol.StatusRejected {
					t.Errorf("waiting job: %s", last.Status)
				}
			})
		})
	}
}
