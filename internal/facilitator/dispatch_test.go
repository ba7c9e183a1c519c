package facilitator

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/store/sqlite"
	"github.com/horde-compute/horde/protocol"
)

// These tests drive the logic through in-process validator sessions (no
// sockets) inside synctest bubbles, where time is virtual: a 30 s redispatch
// takes no real time, and synctest fails a test whose goroutines outlive it.

type sent struct {
	at time.Time
	m  protocol.Message
}

// fakeLink records what the facilitator sends a validator.
type fakeLink struct{ sent chan sent }

func newLink() *fakeLink { return &fakeLink{sent: make(chan sent, 64)} }

func (l *fakeLink) Send(_ context.Context, m protocol.Message) error {
	l.sent <- sent{time.Now(), m}
	return nil
}

// none reports whether nothing was sent (call after synctest.Wait).
func (l *fakeLink) none() bool { return len(l.sent) == 0 }

var _ sender = (*fakeLink)(nil)

// bubble opens a store and a facilitator inside the current bubble and
// runs it; the returned func stops it, waits for Run and closes the store.
func bubble(t *testing.T, cfg Config) (*Facilitator, *sqlite.DB, func()) {
	t.Helper()
	db, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "f.db"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Store, cfg.AllowValidator = db, func(string) bool { return true }
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	return f, db, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		db.Close()
	}
}

// connect registers an in-process horde session of every capability.
func connect(t *testing.T, f *Facilitator, hotkey string, l sender) {
	t.Helper()
	if _, err := f.connect(t.Context(), &session{hotkey: hotkey, link: l, caps: protocol.FacilitatorCapabilities}); err != nil {
		t.Fatal(err)
	}
}

var signatures int

func clientSig() protocol.Signature {
	signatures++
	return protocol.Signature{SignatureType: protocol.SignatureTypeBittensor, Signatory: "client", Signature: time.Now().String() + string(rune('a'+signatures))}
}

func TestRedispatchTiming(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, _, stop := bubble(t, Config{Redispatch: 30 * time.Second, DispatchEvery: 5 * time.Second})
		defer stop()
		links := map[string]*fakeLink{"A": newLink(), "B": newLink()}
		for hk, l := range links {
			connect(t, f, hk, l)
		}
		j, err := f.create(t.Context(), spec(), clientSig(), false)
		if err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		var holder, other *fakeLink
		var first sent
		select {
		case first = <-links["A"].sent:
			holder, other = links["A"], links["B"]
		case first = <-links["B"].sent:
			holder, other = links["B"], links["A"]
		default:
			t.Fatal("the job went to nobody")
		}
		if m, ok := first.m.(*protocol.V2JobRequest); !ok || m.UUID != j.UUID {
			t.Fatalf("first message: %+v", first.m)
		}
		second := <-holder.sent // time moves on until it comes
		if took := second.at.Sub(first.at); took <= 30*time.Second || took > 35*time.Second {
			t.Errorf("given again after %s, want within one tick after 30s", took)
		}
		synctest.Wait()
		if !other.none() {
			t.Errorf("the other validator was given %+v", <-other.sent)
		}
		// Acknowledged: never given again.
		hk := "A"
		if holder == links["B"] {
			hk = "B"
		}
		if err := f.statusUpdate(t.Context(), hk, true, &protocol.V0JobStatusUpdate{UUID: j.UUID, Status: protocol.StatusReceived}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * f.cfg.Redispatch)
		synctest.Wait()
		if !holder.none() || !other.none() {
			t.Errorf("an acknowledged job was given again")
		}
	})
}

func TestJobsDispatchedWhenAValidatorConnects(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, db, stop := bubble(t, Config{})
		defer stop()
		j, err := f.create(t.Context(), spec(), clientSig(), false)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Minute) // a dozen ticks with nobody to give it to
		synctest.Wait()
		if rec, err := db.Job(t.Context(), j.UUID); err != nil || rec.ValidatorHotkey != "" || rec.Status != protocol.StatusSent {
			t.Fatalf("waiting job: %+v %v", rec, err)
		}
		l := newLink()
		start := time.Now()
		connect(t, f, "V", l)
		got := <-l.sent
		if m, ok := got.m.(*protocol.V2JobRequest); !ok || m.UUID != j.UUID || !got.at.Equal(start) {
			t.Errorf("on connect: %+v at +%s, want the waiting job at once", got.m, got.at.Sub(start))
		}
	})
}

// failingLink fails every send, as a session that broke does.
type failingLink struct{}

func (failingLink) Send(context.Context, protocol.Message) error { return errors.New("broken pipe") }

func TestFailedSendKeepsTheJobWaiting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, db, stop := bubble(t, Config{})
		defer stop()
		connect(t, f, "broken", failingLink{})
		j, err := f.create(t.Context(), spec(), clientSig(), false)
		if err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if rec, err := db.Job(t.Context(), j.UUID); err != nil || rec.ValidatorHotkey != "" {
			t.Fatalf("a job never delivered stays unassigned: %+v %v", rec, err)
		}
	})
}

func TestVolumeMessageTimesOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, db, stop := bubble(t, Config{VolumeTimeout: 15 * time.Minute})
		defer stop()
		l := newLink()
		connect(t, f, "V", l)
		s := clientSig()
		j, err := f.create(t.Context(), spec(), s, false)
		if err != nil {
			t.Fatal(err)
		}
		<-l.sent
		if err := db.AddStatus(t.Context(), j.UUID, protocol.StatusEntry{Status: protocol.StatusStreaming, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err = f.sendVolume(t.Context(), j.UUID, s.Signatory, protocol.VolumeMessage{OutputUpload: &protocol.OutputUpload{
			OutputUploadType: protocol.UploadZipPut, URL: "http://127.0.0.1/out.zip"}})
		if !errors.Is(err, ErrTimeout) || time.Since(start) != 15*time.Minute {
			t.Errorf("after %s: %v, want a timeout after 15m", time.Since(start), err)
		}
		if m, ok := (<-l.sent).m.(*protocol.V0JobVolumeRequest); !ok || m.OutputUpload == nil {
			t.Errorf("validator got %+v", m)
		}
		// A result nobody waits for any more is dropped.
		f.volumeResult(&protocol.V0JobVolumeResult{UUID: j.UUID, MessageID: "late"})
	})
}

func TestCancelWhenTheValidatorIsAway(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, db, stop := bubble(t, Config{})
		defer stop()
		s := clientSig()
		j, err := f.create(t.Context(), spec(), s, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.SetAssignment(t.Context(), j.UUID, "gone", ""); err != nil {
			t.Fatal(err)
		}
		ch := f.subscribe(j.UUID)
		defer f.unsubscribe(j.UUID, ch)
		got, err := f.cancel(t.Context(), j.UUID, s.Signatory, false)
		if err != nil || got.Status != protocol.StatusCancelled {
			t.Fatalf("cancel: %+v %v", got, err)
		}
		select {
		case <-ch:
		default:
			t.Error("watchers not told of the cancel")
		}
		if _, err := f.cancel(t.Context(), j.UUID, "someone else", false); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("cancel by another client: %v", err)
		}
	})
}
