package route_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/validator/jobrun"
	"github.com/horde-compute/horde/internal/validator/minertest"
	"github.com/horde-compute/horde/internal/validator/route"
	"github.com/horde-compute/horde/protocol"
)

const class = protocol.ClassTest

type fixture struct {
	net    *minertest.Net
	pool   *route.Pool
	miners []*minertest.Miner
	ns     []chain.Neuron
}

// newFixture puts miners with the given executors of class on a network and
// syncs a pool with them.
func newFixture(t *testing.T, executors ...int) *fixture {
	f := &fixture{net: &minertest.Net{}}
	for _, n := range executors {
		m := minertest.New(t, map[string]int{class: n})
		f.miners = append(f.miners, m)
		f.ns = append(f.ns, f.net.Add(m))
	}
	f.pool = route.NewPool(f.net, "validator", nil)
	f.pool.Sync(t.Context(), f.ns)
	return f
}

func want(job string) jobrun.Want {
	return jobrun.Want{Job: job, Class: class, Tried: map[string]bool{}, Until: time.Now().Add(time.Minute)}
}

// acquire asks in the background; the result arrives on the channel.
func (f *fixture) acquire(ctx context.Context, w jobrun.Want) <-chan result {
	ch := make(chan result, 1)
	go func() {
		l, err := f.pool.Acquire(ctx, w)
		ch <- result{l, err}
	}()
	return ch
}

type result struct {
	l   jobrun.Lease
	err error
}

func TestPickMostFreeNeverTried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, 1, 3, 3)
		defer f.pool.Close()
		picked := map[string]int{}
		for range 40 {
			l, err := f.pool.Acquire(t.Context(), want("j"))
			if err != nil {
				t.Fatal(err)
			}
			picked[l.Miner()]++
			l.Release(false)
		}
		if picked[f.miners[0].Hotkey.SS58()] != 0 || picked[f.miners[1].Hotkey.SS58()] == 0 || picked[f.miners[2].Hotkey.SS58()] == 0 {
			t.Errorf("picks %v: want both miners with 3 free, never the one with 1", picked)
		}
		w := want("j")
		w.Tried[f.miners[1].Hotkey.SS58()] = true
		w.Tried[f.miners[2].Hotkey.SS58()] = true
		l, err := f.pool.Acquire(t.Context(), w)
		if err != nil || l.Miner() != f.miners[0].Hotkey.SS58() {
			t.Fatalf("with the best tried: %v %v", l, err)
		}
		w.Tried[f.miners[0].Hotkey.SS58()] = true
		if _, err := f.pool.Acquire(t.Context(), w); !errors.Is(err, route.ErrNoMiner) {
			t.Errorf("all tried: %v", err)
		}
		l.Release(false)
		l.Release(false) // twice is harmless
		if f.pool.Connected() != 3 {
			t.Errorf("%d connected", f.pool.Connected())
		}
	})
}

// Leases count against the manifest: with every executor leased, a job
// waits in line; waiters are served in order as executors free up.
func TestWaitersServedInOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, 1)
		defer f.pool.Close()
		ctx := t.Context()
		held, err := f.pool.Acquire(ctx, want("a"))
		if err != nil {
			t.Fatal(err)
		}
		waited := 0
		var chans []<-chan result
		for _, job := range []string{"b", "c", "d"} {
			w := want(job)
			w.Waiting = func() { waited++ }
			chans = append(chans, f.acquire(ctx, w))
			synctest.Wait()
		}
		if waited != 3 {
			t.Errorf("%d told to wait", waited)
		}
		for i, ch := range chans {
			select {
			case r := <-ch:
				t.Fatalf("waiter %d served while the executor is taken: %v", i, r.err)
			default:
			}
			held.Release(false)
			r := <-ch
			if r.err != nil {
				t.Fatalf("waiter %d: %v", i, r.err)
			}
			held = r.l
		}
		held.Release(false)
	})
}

// A job that asks again (its miner declined as busy) keeps the place it
// first had in line: it is served before jobs that came after it.
func TestAskingAgainKeepsItsPlace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, 1)
		defer f.pool.Close()
		ctx := t.Context()
		held, err := f.pool.Acquire(ctx, want("a"))
		if err != nil {
			t.Fatal(err)
		}
		first := time.Now()
		time.Sleep(time.Second) // "b" and "c" come later than "again" first asked
		b := f.acquire(ctx, want("b"))
		synctest.Wait()
		c := f.acquire(ctx, want("c"))
		synctest.Wait()
		w := want("again")
		w.Since = first
		again := f.acquire(ctx, w)
		synctest.Wait()
		for _, next := range []struct {
			name string
			ch   <-chan result
		}{{"again", again}, {"b", b}, {"c", c}} {
			held.Release(false)
			r := <-next.ch
			if r.err != nil {
				t.Fatalf("%s: %v", next.name, r.err)
			}
			held = r.l
		}
		held.Release(false)
	})
}

func TestWaitersWokenByPoolChanges(t *testing.T) {
	t.Run("manifest grows", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFixture(t, 1)
			defer f.pool.Close()
			held, _ := f.pool.Acquire(t.Context(), want("a"))
			defer held.Release(false)
			ch := f.acquire(t.Context(), want("b"))
			synctest.Wait()
			f.net.Conns(f.miners[0])[0].Push(&protocol.V0ExecutorManifestRequest{Manifest: map[string]int{class: 2}})
			if r := <-ch; r.err != nil {
				t.Fatal(r.err)
			} else {
				r.l.Release(false)
			}
		})
	})
	t.Run("manifest drops the class", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFixture(t, 1)
			defer f.pool.Close()
			held, _ := f.pool.Acquire(t.Context(), want("a"))
			defer held.Release(false)
			ch := f.acquire(t.Context(), want("b"))
			synctest.Wait()
			f.net.Conns(f.miners[0])[0].Push(&protocol.V0ExecutorManifestRequest{Manifest: map[string]int{}})
			if r := <-ch; !errors.Is(r.err, route.ErrNoMiner) {
				t.Fatalf("got %v", r.err)
			}
		})
	})
	t.Run("miner connects", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFixture(t, 1)
			defer f.pool.Close()
			late := minertest.New(t, map[string]int{class: 1})
			n := f.net.Add(late)
			f.net.SetDown(late, true)
			f.pool.Sync(t.Context(), append(f.ns, n))
			held, _ := f.pool.Acquire(t.Context(), want("a"))
			defer held.Release(false)
			ch := f.acquire(t.Context(), want("b"))
			synctest.Wait()
			f.net.SetDown(late, false)
			f.pool.Sync(t.Context(), append(f.ns, n))
			r := <-ch
			if r.err != nil || r.l.Miner() != late.Hotkey.SS58() {
				t.Fatalf("got %v %v", r.l, r.err)
			}
			r.l.Release(false)
		})
	})
	t.Run("only miner goes down", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFixture(t, 1)
			defer f.pool.Close()
			held, _ := f.pool.Acquire(t.Context(), want("a"))
			ch := f.acquire(t.Context(), want("b"))
			synctest.Wait()
			f.net.SetDown(f.miners[0], true)
			if r := <-ch; !errors.Is(r.err, route.ErrNoMiner) {
				t.Fatalf("waiter: %v", r.err)
			}
			if _, err := held.Next(t.Context()); !errors.Is(err, jobrun.ErrLost) {
				t.Errorf("running job: %v", err)
			}
			if err := held.Send(t.Context(), &protocol.V0CancelJobRequest{JobUUID: "a"}); !errors.Is(err, route.ErrNotConnected) {
				t.Errorf("send on a lost session: %v", err)
			}
			held.Release(false)
		})
	})
	t.Run("queue timeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFixture(t, 1)
			defer f.pool.Close()
			held, _ := f.pool.Acquire(t.Context(), want("a"))
			defer held.Release(false)
			start := time.Now()
			if _, err := f.pool.Acquire(t.Context(), want("b")); !errors.Is(err, route.ErrQueueTimeout) || time.Since(start) != time.Minute {
				t.Fatalf("%v after %s", err, time.Since(start))
			}
			w := want("c")
			w.Until = time.Time{}
			if _, err := f.pool.Acquire(t.Context(), w); !errors.Is(err, route.ErrQueueTimeout) || time.Since(start) != time.Minute {
				t.Fatalf("no wait: %v after %s", err, time.Since(start))
			}
		})
	})
	t.Run("context ends", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFixture(t, 1)
			defer f.pool.Close()
			held, _ := f.pool.Acquire(t.Context(), want("a"))
			defer held.Release(false)
			ctx, cancel := context.WithCancel(t.Context())
			ch := f.acquire(ctx, want("b"))
			synctest.Wait()
			cancel()
			if r := <-ch; !errors.Is(r.err, context.Canceled) {
				t.Fatalf("got %v", r.err)
			}
		})
	})
	t.Run("pool closes", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFixture(t, 1)
			held, _ := f.pool.Acquire(t.Context(), want("a"))
			ch := f.acquire(t.Context(), want("b"))
			synctest.Wait()
			f.pool.Close()
			if r := <-ch; !errors.Is(r.err, route.ErrClosed) {
				t.Fatalf("got %v", r.err)
			}
			held.Release(false)
			if _, err := f.pool.Acquire(t.Context(), want("c")); !errors.Is(err, route.ErrClosed) {
				t.Errorf("after close: %v", err)
			}
			if !f.net.Conns(f.miners[0])[0].Closed() {
				t.Error("session left open")
			}
		})
	})
}

// A miner that declined as busy is not picked while its hold lasts; the
// hold doubles with each busy decline in a row, up to BusyMax.
func TestBusyHold(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, 1)
		defer f.pool.Close()
		var holds []time.Duration
		for range 8 {
			l, err := f.pool.Acquire(t.Context(), want("j"))
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			l.Release(true)
			l, err = f.pool.Acquire(t.Context(), want("j"))
			if err != nil {
				t.Fatal(err)
			}
			holds = append(holds, time.Since(start))
			l.Release(true)
			time.Sleep(2 * route.BusyMax) // let the hold end without a success
		}
		wantMS := []time.Duration{25, 100, 400, 1000, 1000, 1000, 1000, 1000} // two busy declines an iteration
		for i := range wantMS {
			if holds[i] != wantMS[i]*time.Millisecond {
				t.Errorf("holds %v, want %v ms", holds, wantMS)
				break
			}
		}
		// A job the miner took starts the holds afresh.
		l, _ := f.pool.Acquire(t.Context(), want("k"))
		l.Release(false)
		l, _ = f.pool.Acquire(t.Context(), want("k"))
		start := time.Now()
		l.Release(true)
		l, _ = f.pool.Acquire(t.Context(), want("k"))
		if time.Since(start) != route.BusyFirst {
			t.Errorf("hold after a success: %s", time.Since(start))
		}
		l.Release(false)
	})
}

func TestMetagraphChanges(t *testing.T) {
	t.Run("miner leaves", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFixture(t, 1, 1)
			defer f.pool.Close()
			w := want("a")
			w.Tried[f.miners[1].Hotkey.SS58()] = true
			running, err := f.pool.Acquire(t.Context(), w)
			if err != nil {
				t.Fatal(err)
			}
			f.pool.Sync(t.Context(), f.ns[1:])
			w = want("b")
			w.Tried[f.miners[1].Hotkey.SS58()] = true
			if _, err := f.pool.Acquire(t.Context(), w); !errors.Is(err, route.ErrNoMiner) {
				t.Errorf("a miner that left got a job: %v", err)
			}
			conn := f.net.Conns(f.miners[0])[0]
			if conn.Closed() {
				t.Fatal("session closed under a running job")
			}
			if err := running.Send(t.Context(), &protocol.V0StopJobRequest{JobUUID: "a"}); err != nil {
				t.Errorf("running job cut off: %v", err)
			}
			running.Release(false)
			synctest.Wait()
			if !conn.Closed() {
				t.Error("session of a miner that left stays open after its last job")
			}
			if _, err := f.pool.Connect(t.Context(), f.miners[0].Hotkey.SS58()); !errors.Is(err, route.ErrUnknownMiner) {
				t.Errorf("connect: %v", err)
			}
		})
	})
	t.Run("miner moves", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFixture(t, 2)
			defer f.pool.Close()
			m := f.miners[0]
			running, _ := f.pool.Acquire(t.Context(), want("a"))
			moved := f.net.Move(m)
			f.pool.Sync(t.Context(), []chain.Neuron{moved})
			conns := f.net.Conns(m)
			if len(conns) != 2 || f.net.Dials(m) != 2 {
				t.Fatalf("%d sessions after the move", len(conns))
			}
			if conns[0].Closed() || conns[1].Closed() {
				t.Fatal("a session closed too early")
			}
			// The new session serves new jobs with the whole manifest.
			l, err := f.pool.Acquire(t.Context(), want("b"))
			if err != nil {
				t.Fatal(err)
			}
			l2, err := f.pool.Acquire(t.Context(), want("c"))
			if err != nil {
				t.Fatal(err)
			}
			l.Release(false)
			l2.Release(false)
			running.Release(false)
			synctest.Wait()
			if !conns[0].Closed() || conns[1].Closed() {
				t.Errorf("closed: old %v new %v", conns[0].Closed(), conns[1].Closed())
			}
		})
	})
}

// A job's inbox keeps every message in order, however many arrive before
// the job reads them; the end of the session comes after them.
func TestInboxDropsNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, 1)
		defer f.pool.Close()
		l, _ := f.pool.Acquire(t.Context(), want("j"))
		conn := f.net.Conns(f.miners[0])[0]
		const n = route.MaxQueued - 1
		for i := range n {
			conn.Push(&protocol.V0VolumeResult{JobUUID: "j", MessageID: string(rune('a' + i%26))})
		}
		conn.Push(&protocol.V0MainHotkeyMessage{MainHotkey: "x"})
		conn.Push(&protocol.GenericError{Details: "miner grumbles"})
		conn.Push(&protocol.V0VolumesReadyRequest{JobUUID: "other"})
		conn.Push(&protocol.V0JobFailedRequest{JobUUID: "j", Message: "terminal"})
		synctest.Wait()
		conn.Close("")
		for i := range n {
			m, err := l.Next(t.Context())
			if err != nil || m.(*protocol.V0VolumeResult).MessageID != string(rune('a'+i%26)) {
				t.Fatalf("message %d: %v %v", i, m, err)
			}
		}
		if m, err := l.Next(t.Context()); err != nil || m.(*protocol.V0JobFailedRequest).Message != "terminal" {
			t.Fatalf("terminal message: %v %v", m, err)
		}
		if _, err := l.Next(t.Context()); !errors.Is(err, jobrun.ErrLost) {
			t.Fatalf("after the end: %v", err)
		}
		l.Release(false)
	})
}

func TestInboxFlooded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, 1)
		defer f.pool.Close()
		l, _ := f.pool.Acquire(t.Context(), want("j"))
		defer l.Release(false)
		conn := f.net.Conns(f.miners[0])[0]
		for range route.MaxQueued + 5 {
			conn.Push(&protocol.V0VolumeResult{JobUUID: "j"})
		}
		// The job's end, sent after the flood, is not dropped.
		conn.Push(&protocol.V0JobFinishedRequest{JobUUID: "j"})
		synctest.Wait()
		for i := range route.MaxQueued {
			if _, err := l.Next(t.Context()); err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
		}
		if m, err := l.Next(t.Context()); err != nil || m.MessageType() != "V0JobFinishedRequest" {
			t.Fatalf("after the flood: %v, %v; want the job's end", m, err)
		}
		if _, err := l.Next(t.Context()); !errors.Is(err, route.ErrFlooded) {
			t.Fatalf("got %v", err)
		}
	})
}

func TestPinnedAndNamedLeases(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, 1)
		defer f.pool.Close()
		trusted := minertest.New(t, map[string]int{class: 5})
		n := f.net.Add(trusted)
		f.pool.Pin(n)
		f.pool.Pin(n) // again: nothing changes
		held, _ := f.pool.Acquire(t.Context(), want("a"))
		defer held.Release(false)
		w := want("b")
		w.Until = time.Time{}
		if _, err := f.pool.Acquire(t.Context(), w); !errors.Is(err, route.ErrQueueTimeout) {
			t.Errorf("the pinned miner was picked: %v", err)
		}
		l, err := f.pool.LeasePinned(t.Context(), trusted.Hotkey.SS58(), "t", class)
		if err != nil || l.Miner() != trusted.Hotkey.SS58() {
			t.Fatalf("pinned lease: %v", err)
		}
		if err := l.Send(t.Context(), &protocol.V0StopJobRequest{JobUUID: "t"}); err != nil {
			t.Error(err)
		}
		l.Release(false)
		if _, err := f.pool.LeasePinned(t.Context(), f.miners[0].Hotkey.SS58(), "t", class); !errors.Is(err, route.ErrUnknownMiner) {
			t.Errorf("unpinned: %v", err)
		}
		f.pool.Pin(f.net.Move(trusted)) // moves: the new address is dialled
		if l, err := f.pool.LeasePinned(t.Context(), trusted.Hotkey.SS58(), "u", class); err != nil {
			t.Errorf("after the move: %v", err)
		} else {
			l.Release(false)
		}
		if f.net.Dials(trusted) != 2 {
			t.Errorf("%d dials", f.net.Dials(trusted))
		}

		// Named leases on the metagraph's miners, busy or not.
		m := f.miners[0].Hotkey.SS58()
		manifest, err := f.pool.Connect(t.Context(), m)
		if err != nil || manifest[class] != 1 {
			t.Fatalf("connect: %v %v", manifest, err)
		}
		l, err = f.pool.LeaseOn(m, "s", class)
		if err != nil {
			t.Fatal(err)
		}
		l.Release(false)
		if _, err := f.pool.LeaseOn("nobody", "s", class); !errors.Is(err, route.ErrUnknownMiner) {
			t.Errorf("unknown: %v", err)
		}
		f.net.SetDown(f.miners[0], true)
		synctest.Wait()
		if _, err := f.pool.LeaseOn(m, "s", class); !errors.Is(err, route.ErrNotConnected) {
			t.Errorf("down: %v", err)
		}
		if _, err := f.pool.Connect(t.Context(), m); err == nil {
			t.Error("connected to a miner that is down")
		}
	})
}
