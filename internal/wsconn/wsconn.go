// Package wsconn carries protocol messages over WebSocket and authenticates
// sessions: signed, timestamped auth messages that are refused when stale,
// replayed or wrongly signed, and one-time tokens. It knows no jobs.
package wsconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"

	"github.com/coder/websocket"

	"github.com/horde-compute/horde/protocol"
)

// ErrClosed is returned by Recv once the peer has gone.
var ErrClosed = errors.New("connection closed")

// Conn is one WebSocket session carrying protocol messages. Send may be
// called from many goroutines; Recv from one.
type Conn struct {
	ws       *websocket.Conn
	log      *slog.Logger
	mu       sync.Mutex
	decode   func([]byte) (protocol.Message, error)
	badFrame func(error) protocol.Message
	peerCaps []string
}

// Options shape a session: how its frames decode and what answers a frame
// that does not, and the capabilities to advertise on the upgrade.
type Options struct {
	// Capabilities are sent in protocol.HeaderCapabilities: on the upgrade
	// request by Dial, in the 101 response by Accept.
	Capabilities []string
	// Decode reads a frame (default protocol.Decode).
	Decode func([]byte) (protocol.Message, error)
	// BadFrame returns the answer to a frame that does not decode, or nil
	// for none (default: GenericError with the reason). On the facilitator
	// link neither side may answer with GenericError: the upstream peer
	// cannot read one and would answer it in turn, without end.
	BadFrame func(error) protocol.Message
}

func wrap(ws *websocket.Conn, log *slog.Logger, o Options, peerCaps []string) *Conn {
	ws.SetReadLimit(protocol.MaxMessageSize)
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Conn{ws: ws, log: log, decode: o.Decode, badFrame: o.BadFrame, peerCaps: peerCaps}
	if c.decode == nil {
		c.decode = protocol.Decode
	}
	if c.badFrame == nil {
		c.badFrame = func(err error) protocol.Message { return &protocol.GenericError{Details: err.Error()} }
	}
	return c
}

// NoAnswer is an Options.BadFrame that answers nothing.
func NoAnswer(error) protocol.Message { return nil }

// Dial opens a session to url.
func Dial(ctx context.Context, url string, log *slog.Logger) (*Conn, error) {
	return DialWith(ctx, url, Options{}, log)
}

// DialWith opens a session to url with options. The peer's capabilities,
// from its 101 response, are PeerCapabilities (none from an upstream peer).
func DialWith(ctx context.Context, url string, o Options, log *slog.Logger) (*Conn, error) {
	opts := &websocket.DialOptions{CompressionMode: websocket.CompressionDisabled}
	if len(o.Capabilities) > 0 {
		opts.HTTPHeader = http.Header{protocol.HeaderCapabilities: {protocol.FormatCapabilities(o.Capabilities)}}
	}
	ws, resp, err := websocket.Dial(ctx, url, opts)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial %s: HTTP %d: %w", url, resp.StatusCode, err)
		}
		return nil, fmt.Errorf("dial %s: %w", url, err)
	}
	return wrap(ws, log, o, protocol.ParseCapabilities(resp.Header.Get(protocol.HeaderCapabilities))), nil
}

// Accept upgrades an HTTP request to a session.
func Accept(w http.ResponseWriter, r *http.Request, log *slog.Logger) (*Conn, error) {
	return AcceptWith(w, r, Options{}, log)
}

// AcceptWith upgrades an HTTP request to a session with options; the
// peer's capabilities, from its upgrade request, are PeerCapabilities.
func AcceptWith(w http.ResponseWriter, r *http.Request, o Options, log *slog.Logger) (*Conn, error) {
	if len(o.Capabilities) > 0 {
		w.Header().Set(protocol.HeaderCapabilities, protocol.FormatCapabilities(o.Capabilities))
	}
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		return nil, fmt.Errorf("accept websocket: %w", err)
	}
	var caps []string
	if h, ok := r.Header[http.CanonicalHeaderKey(protocol.HeaderCapabilities)]; ok {
		caps = protocol.ParseCapabilities(strings.Join(h, ","))
	}
	return wrap(ws, log, o, caps), nil
}

// PeerCapabilities are the capabilities the peer advertised on the upgrade.
func (c *Conn) PeerCapabilities() []string { return c.peerCaps }

// Send writes one message.
func (c *Conn) Send(ctx context.Context, m protocol.Message) error {
	b, err := protocol.Encode(m)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ws.Write(ctx, websocket.MessageText, b); err != nil {
		return fmt.Errorf("send %s: %w", m.MessageType(), err)
	}
	return nil
}

// Recv reads the next message. Frames that do not decode (malformed JSON,
// unknown message types) are answered as the options say (by default with
// GenericError), logged and skipped: a bad message never ends the session.
// Cancelling ctx closes the session.
func (c *Conn) Recv(ctx context.Context) (protocol.Message, error) {
	for {
		_, b, err := c.ws.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("%w: %w", ErrClosed, err)
		}
		m, err := c.decode(b)
		if err == nil {
			return m, nil
		}
		c.log.Warn("bad message from peer", "err", err, "bytes", len(b))
		if answer := c.badFrame(err); answer != nil {
			if serr := c.Send(ctx, answer); serr != nil {
				return nil, serr
			}
		}
	}
}

// Ping checks that the peer still answers: it sends a WebSocket ping and
// waits for the pong. Someone must be in Recv meanwhile (the pong is read
// there).
func (c *Conn) Ping(ctx context.Context) error {
	if err := c.ws.Ping(ctx); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	return nil
}

// Close ends the session with a normal closure and a reason.
func (c *Conn) Close(reason string) error {
	return c.ws.Close(websocket.StatusNormalClosure, reason)
}

// CloseWith ends the session with a policy-violation status (auth failures).
func (c *Conn) CloseWith(reason string) error {
	if len(reason) > 120 {
		reason = reason[:120]
	}
	return c.ws.Close(websocket.StatusPolicyViolation, reason)
}

// AcceptAuth upgrades the request and reads the session's first message,
// its authentication, which must arrive within MaxAuthAge. The session is
// closed when none arrives.
func AcceptAuth(w http.ResponseWriter, r *http.Request, log *slog.Logger) (*Conn, protocol.Message, error) {
	return AcceptAuthWith(w, r, Options{}, log)
}

// AcceptAuthWith is AcceptAuth with options.
func AcceptAuthWith(w http.ResponseWriter, r *http.Request, o Options, log *slog.Logger) (*Conn, protocol.Message, error) {
	conn, err := AcceptWith(w, r, o, log)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(r.Context(), MaxAuthAge)
	defer cancel()
	first, err := conn.Recv(ctx)
	if err != nil {
		conn.CloseWith("no auth message")
		return nil, nil, fmt.Errorf("no auth message: %w", err)
	}
	return conn, first, nil
}
