package validator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/validator/windows"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// conn is an authenticated session with the facilitator. Has says whether
// both ends speak an extension (protocol.FacilitatorCapabilities): an
// upstream facilitator speaks none.
type conn interface {
	Send(ctx context.Context, m protocol.Message) error
	Recv(ctx context.Context) (protocol.Message, error)
	Close(reason string) error
	Has(capability string) bool
}

// dialFacilitator negotiates with the facilitator (wsconn.DialFacilitator):
// horde's replay-proof auth when it offers it, else upstream's, unless
// requireHorde.
func dialFacilitator(k *sig.Hotkey, caps []string, requireHorde bool, log *slog.Logger) func(ctx context.Context, url string) (conn, error) {
	return func(ctx context.Context, url string) (conn, error) {
		s, err := wsconn.DialFacilitator(ctx, url, k, caps, requireHorde, log)
		if err != nil {
			return nil, err
		}
		return s, nil
	}
}

// Link timing.
const (
	heartbeatEvery  = 60 * time.Second
	responseTimeout = 30 * time.Second
	// outboxPage is how many queued messages go to the facilitator at once,
	// before their answers are awaited.
	outboxPage   = 100
	backoffFirst = 200 * time.Millisecond
	backoffMax   = 10 * time.Second
)

// outbox holds messages for the facilitator until it has acknowledged
// them, in the validator's store: nothing is lost while the link is down or
// across a restart.
type outbox struct {
	st   store.Outbox
	log  *slog.Logger
	wake chan struct{}
}

func newOutbox(st store.Outbox, log *slog.Logger) *outbox {
	return &outbox{st: st, log: log, wake: make(chan struct{}, 1)}
}

// Push queues m for the facilitator.
func (o *outbox) Push(m protocol.Message) {
	b, err := protocol.Encode(m)
	if err == nil {
		err = o.st.PushOutbox(context.Background(), b)
	}
	if err != nil {
		o.log.Error("outbox: message not queued", "type", m.MessageType(), "err", err)
		return
	}
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// PushStatus records a job's status and queues m for the facilitator, in
// one transaction (store.Outbox.AddStatusPush): neither happens when it
// fails.
func (o *outbox) PushStatus(ctx context.Context, uuid string, e protocol.StatusEntry, m protocol.Message) error {
	b, err := protocol.Encode(m)
	if err != nil {
		return err
	}
	if err := o.st.AddStatusPush(ctx, uuid, e, b); err != nil {
		return err
	}
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return nil
}

// facilitatorLoop keeps a session with the facilitator, reconnecting with backoff.
func (v *Validator) facilitatorLoop(ctx context.Context) {
	backoff := backoffFirst
	for ctx.Err() == nil {
		start := time.Now()
		err := v.facilitatorSession(ctx)
		v.facilitatorUp.Store(false)
		if ctx.Err() != nil {
			return
		}
		v.log.Warn("facilitator session ended", "err", err)
		if time.Since(start) > time.Minute {
			backoff = backoffFirst
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, backoffMax)
	}
}

// facilitatorSession connects (authenticated), then takes the
// facilitator's messages while a sender drains the outbox; it returns when
// the session ends.
func (v *Validator) facilitatorSession(ctx context.Context) error {
	c, err := v.dial(ctx, v.cfg.FacilitatorURL)
	if err != nil {
		return err
	}
	defer c.Close("validator stopping")
	v.log.Info("connected to facilitator", "upstream", !c.Has(protocol.CapAuthV1))
	v.facilitatorUp.Store(true)
	sctx, cancel := context.WithCancel(ctx)
	responses := make(chan *protocol.Response, outboxPage) // a page of messages is answered at once
	var wg sync.WaitGroup
	// The sender ends with the session: cancelled first, then waited for,
	// so a message awaiting its answer does not hold the session (and the
	// reconnect) for the answer's timeout.
	defer func() {
		cancel()
		wg.Wait()
	}()
	wg.Go(func() { // owned: the sender drains the outbox while the session lives
		defer cancel()
		if err := v.sendLoop(sctx, c, responses); err != nil && sctx.Err() == nil {
			v.log.Warn("facilitator sender stopped", "err", err)
		}
	})
	for {
		m, err := c.Recv(sctx)
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *protocol.V2JobRequest:
			v.accept(ctx, m)
		case *protocol.V0JobCheated:
			v.cheated(ctx, m)
		case *protocol.V0JobVolumeRequest:
			if !v.driver.Relay(ctx, m.UUID, &protocol.V0VolumeRequest{JobUUID: m.UUID, MessageID: m.MessageID, Volume: m.Volume, OutputUpload: m.OutputUpload}) {
				v.out.Push(&protocol.V0JobVolumeResult{UUID: m.UUID, MessageID: m.MessageID, Error: "the job is not running on this validator"})
			}
		case *protocol.V0StreamPairReport:
			err := v.windows.TakePair(ctx, m)
			if err != nil {
				v.log.Warn("reported pair not kept", "job", m.UUID, "err", err)
			}
			if m.ID != 0 && (err == nil || !errors.Is(err, windows.ErrNotKept)) {
				// Kept (or refused for good): the facilitator may forget it.
				// Unacknowledged, it comes again on the next session.
				ack := &protocol.V0StreamPairAck{ID: m.ID}
				if err != nil {
					ack.Error = err.Error()
				}
				v.out.Push(ack)
			}
		case *protocol.V0StopJobByFacilitator:
			if !v.StopJob(m.UUID) {
				v.log.Info("stop for a job not serving here", "job", m.UUID)
			}
		case *protocol.V0CancelJobByFacilitator:
			if !v.CancelJob(m.UUID) {
				v.log.Info("cancel for a job not running here", "job", m.UUID)
			}
		case *protocol.Response:
			select {
			case responses <- m:
			default:
				v.log.Warn("unexpected response from facilitator", "status", m.Status)
			}
		}
	}
}

// sendLoop sends queued messages in order, each acknowledged by the
// facilitator's Response before it leaves the outbox, plus heartbeats.
// To an upstream facilitator it sends only what upstream knows, in
// upstream's shape, each status of a job once; it waits for no answer to a
// heartbeat (upstream sends none).
func (v *Validator) sendLoop(ctx context.Context, c conn, responses <-chan *protocol.Response) error {
	heartbeat := time.NewTicker(heartbeatEvery)
	defer heartbeat.Stop()
	answered := c.Has(protocol.CapResponses)
	wait := func() (*protocol.Response, error) {
		t := time.NewTimer(responseTimeout)
		defer t.Stop()
		select {
		case r := <-responses:
			return r, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
			return nil, errors.New("no response from the facilitator")
		}
	}
	roundTrip := func(m protocol.Message) (*protocol.Response, error) {
		if err := c.Send(ctx, m); err != nil {
			return nil, err
		}
		if _, ok := m.(*protocol.V0Heartbeat); ok && !answered {
			return &protocol.Response{Status: "success"}, nil
		}
		r, err := wait()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m.MessageType(), err)
		}
		return r, nil
	}
	// A page of the outbox goes out at once, pipelined: the facilitator
	// answers each message, in order, on the one session, so the answers
	// are matched to the messages by their order and one round trip (not
	// one per message) is spent on a page.
	type sent struct {
		id int64
		m  protocol.Message // nil: acknowledged without an answer
	}
	for {
		items, err := v.out.st.PeekOutbox(ctx, outboxPage)
		if err != nil {
			return err
		}
		var inflight []sent
		var sendErr error
		for _, it := range items {
			m, err := protocol.Decode(it.Message)
			if err == nil {
				m = v.forFacilitator(c, m)
			} else {
				v.log.Error("outbox: undecodable message dropped", "err", err)
				m = nil
			}
			if m != nil {
				if sendErr = c.Send(ctx, m); sendErr != nil {
					v.unsent(m)
					break
				}
			}
			inflight = append(inflight, sent{id: it.ID, m: m})
		}
		// The messages answered leave the outbox together, in one commit,
		// also when an answer fails to come (those before it were answered).
		acked := make([]int64, 0, len(inflight))
		for i, s := range inflight {
			if s.m != nil {
				r, err := wait()
				if err != nil {
					for _, u := range inflight[i:] {
						if u.m != nil {
							v.unsent(u.m) // it goes again on the next session
						}
					}
					if aerr := v.out.st.AckOutbox(context.WithoutCancel(ctx), acked...); aerr != nil {
						v.log.Warn("outbox: answered messages not removed; they go again", "err", aerr)
					}
					return fmt.Errorf("%s: %w", s.m.MessageType(), err)
				}
				if r.Status != "success" {
					v.log.Warn("facilitator refused an update; dropping it", "errors", r.Errors)
				}
			}
			acked = append(acked, s.id)
		}
		if err := v.out.st.AckOutbox(ctx, acked...); err != nil {
			return err
		}
		if sendErr != nil {
			return sendErr
		}
		if len(items) == outboxPage {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-v.out.wake:
		case <-heartbeat.C:
			if _, err := roundTrip(&protocol.V0Heartbeat{}); err != nil {
				return err
			}
		}
	}
}

// maxSentStatuses bounds the (job, status) pairs remembered for an
// upstream facilitator.
const maxSentStatuses = 100_000

// forFacilitator returns m as facilitator c takes it, or nil when c has no
// use for it: a horde facilitator takes everything; an upstream one no
// message of an extension, a status in upstream's shape, and each status of
// a job once ((job, status) is unique upstream: a repeat is refused).
func (v *Validator) forFacilitator(c conn, m protocol.Message) protocol.Message {
	if cp := protocol.FacilitatorCapabilityOf(m); cp != "" && !c.Has(cp) {
		v.log.Debug("not for this facilitator", "type", m.MessageType(), "capability", cp)
		return nil
	}
	u, ok := m.(*protocol.V0JobStatusUpdate)
	if !ok || c.Has(protocol.CapResponses) {
		return m
	}
	u = protocol.UpstreamStatusUpdate(*u)
	key := u.UUID + "\x00" + string(u.Status)
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.sentStatus[key] {
		return nil
	}
	if v.sentStatus == nil || len(v.sentStatus) >= maxSentStatuses {
		v.sentStatus = map[string]bool{} // bounded: a repeat long after is refused upstream, and dropped
	}
	v.sentStatus[key] = true
	return u
}

// unsent forgets that status update m went to an upstream facilitator: its
// session ended before the facilitator answered.
func (v *Validator) unsent(m protocol.Message) {
	if u, ok := m.(*protocol.V0JobStatusUpdate); ok {
		v.mu.Lock()
		delete(v.sentStatus, u.UUID+"\x00"+string(u.Status))
		v.mu.Unlock()
	}
}
