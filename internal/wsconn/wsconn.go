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
	"sync"

	"github.com/coder/websocket"

	"github.com/horde-compute/horde/protocol"
)

// ErrClosed is returned by Recv once the peer has gone.
var ErrClosed = errors.New("connection closed")

// Conn is one WebSocket session carrying protocol messages. Send may be
// called from many goroutines; Recv from one.
type Conn struct {
	ws  *websocket.Conn
	log *slog.Logger
	mu  sync.Mutex
}

func wrap(ws *websocket.Conn, log *slog.Logger) *Conn {
	ws.SetReadLimit(protocol.MaxMessageSize)
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Conn{ws: ws, log: log}
}

// Dial opens a session to url.
func Dial(ctx context.Context, url string, log *slog.Logger) (*Conn, error) {
	ws, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial %s: HTTP %d: %w", url, resp.StatusCode, err)
		}
		return nil, fmt.Errorf("dial %s: %w", url, err)
	}
	return wrap(ws, log), nil
}

// Accept upgrades an HTTP request to a session.
func Accept(w http.ResponseWriter, r *http.Request, log *slog.Logger) (*Conn, error) {
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		return nil, fmt.Errorf("accept websocket: %w", err)
	}
	return wrap(ws, log), nil
}

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
// unknown message types) are answered with GenericError, logged and skipped:
// a bad message never ends the session. Cancelling ctx closes the session.
func (c *Conn) Recv(ctx context.Context) (protocol.Message, error) {
	for {
		_, b, err := c.ws.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("%w: %w", ErrClosed, err)
		}
		m, err := protocol.Decode(b)
		if err == nil {
			return m, nil
		}
		c.log.Warn("bad message from peer", "err", err, "bytes", len(b))
		if serr := c.Send(ctx, &protocol.GenericError{Details: err.Error()}); serr != nil {
			return nil, serr
		}
	}
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
	conn, err := Accept(w, r, log)
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
