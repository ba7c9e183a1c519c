package route

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// WSDialer dials miners over WebSocket and authenticates as Hotkey.
type WSDialer struct {
	Hotkey *sig.Hotkey
	Log    *slog.Logger
}

var _ Dialer = WSDialer{}

// Dial implements Dialer: it sends the validator's auth and reads the
// miner's first answer, its manifest (or UnauthorizedError).
func (d WSDialer) Dial(ctx context.Context, n chain.Neuron) (Conn, map[string]int, error) {
	url := "ws://" + net.JoinHostPort(n.AxonInfo.IP, strconv.Itoa(n.AxonInfo.Port)) + protocol.ValidatorAuthPath + d.Hotkey.SS58()
	log := d.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	conn, err := wsconn.Dial(ctx, url, log.With("miner", n.Hotkey))
	if err != nil {
		return nil, nil, fmt.Errorf("miner %s: %w", n.Hotkey, err)
	}
	if err := conn.Send(ctx, wsconn.NewValidatorAuth(d.Hotkey, n.Hotkey, time.Now())); err != nil {
		conn.Close("")
		return nil, nil, fmt.Errorf("miner %s: %w", n.Hotkey, err)
	}
	first, err := conn.Recv(ctx)
	if err != nil {
		conn.Close("")
		return nil, nil, fmt.Errorf("miner %s: no manifest: %w", n.Hotkey, err)
	}
	switch m := first.(type) {
	case *protocol.V0ExecutorManifestRequest:
		return &minerConn{conn, m.Capabilities}, m.Manifest, nil
	case *protocol.UnauthorizedError:
		conn.Close("")
		return nil, nil, fmt.Errorf("miner %s refused us: %s", n.Hotkey, m.Details)
	default:
		conn.Close("")
		return nil, nil, fmt.Errorf("miner %s: expected manifest, got %s", n.Hotkey, first.MessageType())
	}
}

// minerConn is a session with the extensions the miner advertised.
type minerConn struct {
	*wsconn.Conn
	caps protocol.Capabilities
}

func (c *minerConn) Capabilities() protocol.Capabilities { return c.caps }
