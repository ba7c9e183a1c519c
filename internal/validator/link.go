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
)

// conn is a session with the facilitator.
type conn interface {
	Send(ctx context.Context, m protocol.Message) error
	Recv(ctx context.Context) (protocol.Message, error)
	Close(reason string) error
}

func dialFacilitator(log *slog.Logger) func(ctx context.Context, url string) (conn, error) {
	return func(ctx context.Context, url string) (conn, error) {
		c, err := wsconn.Dial(ctx, url, log)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
}

// Link timing.
const (
	heartbeatEvery  = 60 * time.Second
	responseTimeout = 30 * time.Second
	backoffFirst    = 200 * time.Millisecond
	backoffMax      = 10 * time.Second
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

// facilitatorSession authenticates, then takes the facilitator's messages
// while a sender drains the outbox; it returns when the session ends.
func (v *Validator) facilitatorSession(ctx context.Context) error {
	c, err := v.dial(ctx, v.cfg.FacilitatorURL)
	if err != nil {
		return err
	}
	defer c.Close("validator stopping")
	if err := c.Send(ctx, wsconn.NewFacilitatorAuth(v.cfg.Hotkey, time.Now())); err != nil {
		return err
	}
	first, err := c.Recv(ctx)
	if err != nil {
		return err
	}
	if r, ok := first.(*protocol.Response); !ok || r.Status != "success" {
		return fmt.Errorf("facilitator refused authentication: %+v", first)
	}
	v.log.Info("connected to facilitator")
	v.facilitatorUp.Store(true)
	sctx, cancel := context.WithCancel(ctx)
	responses := make(chan *protocol.Response, 1)
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
func (v *Validator) sendLoop(ctx context.Context, c conn, responses <-chan *protocol.Response) error {
	heartbeat := time.NewTicker(heartbeatEvery)
	defer heartbeat.Stop()
	roundTrip := func(m protocol.Message) (*protocol.Response, error) {
		if err := c.Send(ctx, m); err != nil {
			return nil, err
		}
		t := time.NewTimer(responseTimeout)
		defer t.Stop()
		select {
		case r := <-responses:
			return r, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
			return nil, fmt.Errorf("no response from the facilitator to %s", m.MessageType())
		}
	}
	for {
		items, err := v.out.st.PeekOutbox(ctx, 100)
		if err != nil {
			return err
		}
		for _, it := range items {
			m, err := protocol.Decode(it.Message)
			if err == nil {
				var r *protocol.Response
				if r, err = roundTrip(m); err != nil {
					return err
				}
				if r.Status != "success" {
					v.log.Warn("facilitator refused an update; dropping it", "errors", r.Errors)
				}
			} else {
				v.log.Error("outbox: undecodable message dropped", "err", err)
			}
			if err := v.out.st.AckOutbox(ctx, it.ID); err != nil {
				return err
			}
		}
		if len(items) == 100 {
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
