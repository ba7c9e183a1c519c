package facilitator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
)

// This file: the validator link's transport. A validator dials in over
// WebSocket, authenticates, and then sends status updates (and, horde's,
// volume results and reports); jobs (and horde's cancels, stops, volume
// messages and pairs) go the other way.
//
// A session speaks upstream's protocol exactly unless both ends advertised
// an extension (protocol.HeaderCapabilities on the upgrade; see
// protocol/facilitator.go). An upstream session (upstream's auth, no
// capabilities) gets Response frames without message_type, no answer to
// heartbeats or machine specs, Response(error) for a frame it sent that
// does not decode, and nothing horde-only.
//
// One validator has at most one session. When another authenticates as a
// connected validator, the connected one is pinged: if it answers, the
// newcomer is refused (a replayed or re-encoded auth never takes a
// validator's place); if not, its session ends and the newcomer's begins
// (a validator reconnecting over a half-open connection is let in).

// sender is what the logic asks of a validator's session.
type sender interface {
	Send(ctx context.Context, m protocol.Message) error
}

// session is a connected validator.
type session struct {
	hotkey string
	link   sender
	// caps are the extensions both ends speak (none: upstream).
	caps []string
	// ping checks that the validator still answers; end ends the session.
	ping func(ctx context.Context) error
	end  func()

	mu sync.Mutex
	// sentPairs are the pairs sent on this session awaiting their acks.
	sentPairs map[int64]bool
}

// pairSent reports whether pair id is yet to be sent on this session, and
// notes it sent.
func (s *session) pairSent(id int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sentPairs[id] {
		return false
	}
	if s.sentPairs == nil {
		s.sentPairs = map[int64]bool{}
	}
	s.sentPairs[id] = true
	return true
}

func (s *session) pairDone(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sentPairs, id)
}

func (s *session) send(ctx context.Context, m protocol.Message) error { return s.link.Send(ctx, m) }

func (s *session) has(capability string) bool { return slices.Contains(s.caps, capability) }

// respond returns the answer to a validator's message in the session's framing.
func (s *session) respond(kind string, err error) protocol.Message {
	r := protocol.Response{Status: "success"}
	if err != nil {
		r = protocol.Response{Status: "error", Errors: []protocol.ResponseError{{Msg: err.Error(), Type: kind}}}
	}
	if s.has(protocol.CapResponses) {
		return &r
	}
	u := protocol.UpstreamResponse(r)
	return &u
}

// validator returns the session of a connected validator, or nil.
func (f *Facilitator) validator(hotkey string) *session {
	if hotkey == "" {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.validators[hotkey]
}

// errAlreadyConnected refuses a second session of a connected validator.
var errAlreadyConnected = errors.New("this validator is connected already; its session stays")

// connect registers a validator's session and wakes the dispatcher; the
// returned func unregisters it. A connected validator that still answers
// keeps its place: the newcomer gets errAlreadyConnected.
func (f *Facilitator) connect(ctx context.Context, s *session) (disconnect func(), err error) {
	f.mu.Lock()
	old := f.validators[s.hotkey]
	if old == nil {
		f.validators[s.hotkey] = s
	}
	f.mu.Unlock()
	if old != nil {
		pctx, cancel := context.WithTimeout(ctx, f.cfg.PingTimeout)
		err := old.ping(pctx)
		cancel()
		if err == nil {
			return nil, errAlreadyConnected
		}
		f.mu.Lock()
		taken := f.validators[s.hotkey] == old
		if taken {
			f.validators[s.hotkey] = s
		}
		f.mu.Unlock()
		if !taken {
			return nil, errAlreadyConnected // someone else came between
		}
		f.log.Warn("validator's old session does not answer; the new one takes its place", "validator", s.hotkey, "err", err)
		old.end()
	}
	if old == nil {
		f.metrics.Validators(1)
	}
	f.log.Info("validator connected", "validator", s.hotkey, "capabilities", s.caps)
	f.publish(anyJob)
	f.kick()
	return func() {
		f.mu.Lock()
		if f.validators[s.hotkey] == s {
			delete(f.validators, s.hotkey)
			f.metrics.Validators(-1)
		}
		f.mu.Unlock()
		f.publish(anyJob)
		f.log.Info("validator disconnected", "validator", s.hotkey)
	}, nil
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

// authenticate checks a session's first message and returns the
// validator's hotkey and the session's capabilities.
func (f *Facilitator) authenticate(first protocol.Message, advertised []string, now time.Time) (string, []string, string, error) {
	switch m := first.(type) {
	case *protocol.V0HordeAuthenticationRequest:
		hotkey, err := wsconn.CheckFacilitatorAuth(m, f.cfg.AllowValidator, f.guard, now)
		if err != nil {
			return "", nil, authErrorType(err), err
		}
		caps := protocol.CommonCapabilities(protocol.FacilitatorCapabilities, advertised)
		if advertised == nil {
			// A horde validator from before negotiation: horde auth, no
			// header. Transition rule, to be dropped once validators
			// advertise.
			caps = protocol.FacilitatorCapabilities
		}
		if !slices.Contains(caps, protocol.CapAuthV1) {
			caps = append(caps, protocol.CapAuthV1)
		}
		return hotkey, caps, "", nil
	case *protocol.V0AuthenticationRequest:
		if !f.cfg.AllowUpstreamAuth {
			return "", nil, "auth.signature_invalid", fmt.Errorf("upstream authentication (replayable) is not allowed here: " +
				"advertise " + protocol.CapAuthV1 + " and send V0HordeAuthenticationRequest")
		}
		if slices.Contains(advertised, protocol.CapAuthV1) {
			return "", nil, "auth.signature_invalid", fmt.Errorf("this validator advertised %s: it must authenticate with it", protocol.CapAuthV1)
		}
		hotkey, err := wsconn.CheckUpstreamFacilitatorAuth(m, f.cfg.AllowValidator, f.guard, now)
		if err != nil {
			return "", nil, authErrorType(err), err
		}
		caps := protocol.CommonCapabilities(protocol.FacilitatorCapabilities, advertised)
		return hotkey, slices.DeleteFunc(caps, func(c string) bool { return c == protocol.CapAuthV1 }), "", nil
	}
	return "", nil, "auth.not_authenticated", fmt.Errorf("first message must be V0AuthenticationRequest or V0HordeAuthenticationRequest, got %s", first.MessageType())
}

// authErrorType is upstream's error type for a refused auth.
func authErrorType(err error) string {
	if errors.Is(err, wsconn.ErrNotAllowed) {
		return "auth.validator_not_found"
	}
	return "auth.signature_invalid"
}

// serveValidator handles a validator's session.
func (f *Facilitator) serveValidator(w http.ResponseWriter, r *http.Request) {
	// Until it authenticates, a session is answered in upstream's framing
	// unless its upgrade advertised horde's; after, in the one negotiated.
	s := &session{}
	conn, err := wsconn.AcceptWith(w, r, wsconn.Options{Capabilities: protocol.FacilitatorCapabilities,
		BadFrame: func(err error) protocol.Message {
			if s.has(protocol.CapResponses) {
				return &protocol.GenericError{Details: err.Error()}
			}
			return s.respond("parse_error", err) // upstream answers what it cannot parse so
		}}, f.log)
	if err != nil {
		return
	}
	advertised := conn.PeerCapabilities()
	if slices.Contains(advertised, protocol.CapResponses) {
		s.caps = []string{protocol.CapResponses}
	}
	ctx := r.Context()
	actx, cancel := context.WithTimeout(ctx, wsconn.MaxAuthAge)
	first, err := conn.Recv(actx)
	cancel()
	if err != nil {
		conn.CloseWith("no auth message")
		return
	}
	if _, ok := first.(*protocol.V0HordeAuthenticationRequest); ok && advertised == nil {
		s.caps = []string{protocol.CapResponses} // a horde validator from before negotiation
	}
	hotkey, caps, kind, err := f.authenticate(first, advertised, time.Now())
	if err != nil {
		f.log.Warn("validator refused", "err", err)
		conn.Send(ctx, s.respond(kind, err))
		conn.CloseWith("unauthorized")
		return
	}
	sctx, end := context.WithCancel(ctx)
	defer end()
	link := &gated{conn: conn, open: make(chan struct{})}
	s = &session{hotkey: hotkey, link: link, caps: caps, ping: conn.Ping, end: end}
	// Registered before it hears success, so a validator that has heard it
	// can be given jobs; nothing is sent before that success.
	disconnect, err := f.connect(ctx, s)
	if err != nil {
		f.log.Warn("validator's second session refused", "validator", hotkey, "err", err)
		conn.Send(ctx, s.respond("auth.already_connected", err))
		conn.CloseWith("validator already connected")
		return
	}
	defer disconnect()
	defer conn.Close("session ended")
	err = conn.Send(sctx, s.respond("", nil))
	close(link.open)
	if err != nil {
		return
	}
	for {
		m, err := conn.Recv(sctx)
		if err != nil {
			return
		}
		if resp := f.fromValidator(sctx, s, m); resp != nil {
			if err := conn.Send(sctx, resp); err != nil {
				return
			}
		}
	}
}

// fromValidator acts on one message of a validator's and returns the
// answer, or nil for none.
func (f *Facilitator) fromValidator(ctx context.Context, s *session, m protocol.Message) protocol.Message {
	horde := s.has(protocol.CapResponses)
	switch m := m.(type) {
	case *protocol.V0JobStatusUpdate:
		if err := f.statusUpdate(ctx, s.hotkey, horde, m); err != nil {
			f.log.Warn("status update refused", "job", m.UUID, "validator", s.hotkey, "err", err)
			return s.respond("job.not_found", err)
		}
		return s.respond("", nil)
	case *protocol.V0Heartbeat, *protocol.V0MachineSpecsUpdate:
		if horde {
			return s.respond("", nil)
		}
		return nil // upstream answers neither
	case *protocol.V0JobVolumeResult:
		if s.has(protocol.CapVolumeMessages) {
			f.volumeResult(m)
			return s.respond("", nil)
		}
	case *protocol.V0StreamPairAck:
		if s.has(protocol.CapStreamPairAcks) {
			if err := f.pairAcked(ctx, s, m); err != nil {
				f.log.Error("pair ack not recorded", "validator", s.hotkey, "err", err)
				return s.respond("pair", errors.New("ack not recorded"))
			}
			return s.respond("", nil)
		}
	case *protocol.V0ValidatorReport:
		if s.has(protocol.CapReports) {
			if err := f.storeReport(ctx, s.hotkey, m); err != nil {
				f.log.Error("report not stored", "validator", s.hotkey, "err", err)
				return s.respond("report", fmt.Errorf("report not stored"))
			}
			return s.respond("", nil)
		}
	case *protocol.V0AuthenticationRequest, *protocol.V0HordeAuthenticationRequest:
		return s.respond("auth.already_authenticated", errors.New("already authenticated"))
	}
	return s.respond("unsupported", fmt.Errorf("unexpected message %s", m.MessageType()))
}
