package facilitator

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
)

// This file: the validator link's transport. A validator dials in over
// WebSocket, authenticates, and then sends status updates, volume results
// and reports, each answered with a Response; jobs, cancels, stops, volume
// messages and pairs go the other way.

// sender is the one thing the logic asks of a validator's session.
type sender interface {
	Send(ctx context.Context, m protocol.Message) error
}

// session is a connected validator.
type session struct {
	hotkey string
	link   sender
}

func (s *session) send(ctx context.Context, m protocol.Message) error { return s.link.Send(ctx, m) }

// validator returns the session of a connected validator, or nil.
func (f *Facilitator) validator(hotkey string) *session {
	if hotkey == "" {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.validators[hotkey]
}

// connect registers a validator's session (replacing an older one of the
// same hotkey) and wakes the dispatcher; the returned func unregisters it.
func (f *Facilitator) connect(s *session) (disconnect func()) {
	f.mu.Lock()
	f.validators[s.hotkey] = s
	f.mu.Unlock()
	f.log.Info("validator connected", "validator", s.hotkey)
	f.kick()
	return func() {
		f.mu.Lock()
		if f.validators[s.hotkey] == s {
			delete(f.validators, s.hotkey)
		}
		f.mu.Unlock()
		f.log.Info("validator disconnected", "validator", s.hotkey)
	}
}

// gated holds back what is sent on a session until it opens.
type gated struct {
	conn *wsconn.Conn
	open chan struct{}
}

func (g *gated) Send(ctx context.Context, m protocol.Message) error {
	select {
	case <-g.open:
	case <-ctx.Done():
		return ctx.Err()
	}
	return g.conn.Send(ctx, m)
}

// serveValidator handles a validator's session.
func (f *Facilitator) serveValidator(w http.ResponseWriter, r *http.Request) {
	conn, first, err := wsconn.AcceptAuth(w, r, f.log)
	if err != nil {
		return
	}
	ctx := r.Context()
	auth, ok := first.(*protocol.V0AuthenticationRequest)
	var hotkey string
	if !ok {
		err = fmt.Errorf("first message must be V0AuthenticationRequest, got %s", first.MessageType())
	} else {
		hotkey, err = wsconn.CheckFacilitatorAuth(auth, f.cfg.AllowValidator, f.guard, time.Now())
	}
	if err != nil {
		f.log.Warn("validator refused", "err", err)
		conn.Send(ctx, linkError("authentication", err))
		conn.CloseWith("unauthorized")
		return
	}
	// Registered before it hears success, so a validator that has heard it
	// can be given jobs; nothing is sent before that success.
	link := &gated{conn: conn, open: make(chan struct{})}
	disconnect := f.connect(&session{hotkey: hotkey, link: link})
	defer disconnect()
	defer conn.Close("session ended")
	err = conn.Send(ctx, linkOK)
	close(link.open)
	if err != nil {
		return
	}
	for {
		m, err := conn.Recv(ctx)
		if err != nil {
			return
		}
		if resp := f.fromValidator(ctx, hotkey, m); resp != nil {
			if err := conn.Send(ctx, resp); err != nil {
				return
			}
		}
	}
}

// fromValidator acts on one message of a validator's and returns the answer.
func (f *Facilitator) fromValidator(ctx context.Context, hotkey string, m protocol.Message) protocol.Message {
	switch m := m.(type) {
	case *protocol.V0JobStatusUpdate:
		if err := f.statusUpdate(ctx, hotkey, m); err != nil {
			f.log.Warn("status update refused", "job", m.UUID, "validator", hotkey, "err", err)
			return linkError("status_update", err)
		}
	case *protocol.V0JobVolumeResult:
		f.volumeResult(m)
	case *protocol.V0ValidatorReport:
		if err := f.storeReport(ctx, hotkey, m); err != nil {
			f.log.Error("report not stored", "validator", hotkey, "err", err)
			return linkError("report", fmt.Errorf("report not stored"))
		}
	case *protocol.V0Heartbeat, *protocol.V0MachineSpecsUpdate:
	default:
		return &protocol.GenericError{Details: "unexpected message " + m.MessageType()}
	}
	return linkOK
}
