// Package route is the validator's pool of miners: one session per miner of
// the metagraph (plus pinned miners outside it, such as the validator's
// trusted miner), each with the miner's manifest, the executors this
// validator has in flight there, and an inbox per job. It picks the miner
// for a job — the most free executors of the class, ties at random, never one
// the job was offered to already — and keeps jobs that find every executor
// taken in line, first come, first served, until an executor frees, a
// manifest grows or a miner connects.
//
// Sessions are the only part that touches the network, through a Dialer
// (WebSocket in production, in-memory in tests).
package route

import (
	"context"
	"errors"
	"time"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/protocol"
)

// Conn is an authenticated session with one miner. Send may be called from
// many goroutines, Recv from one.
type Conn interface {
	Send(ctx context.Context, m protocol.Message) error
	Recv(ctx context.Context) (protocol.Message, error)
	Close(reason string) error
}

// Capable is a Conn that knows the extensions its miner advertised when the
// session opened (protocol.V0ExecutorManifestRequest.Capabilities). A Conn
// that is not Capable speaks upstream's protocol only.
type Capable interface {
	Capabilities() protocol.Capabilities
}

// Dialer opens an authenticated session with a miner and returns it with
// the manifest the miner answered with.
type Dialer interface {
	Dial(ctx context.Context, n chain.Neuron) (Conn, map[string]int, error)
}

// Errors of the pool.
var (
	ErrNoMiner      = errors.New("no connected miner offers the executor class")
	ErrQueueTimeout = errors.New("no executor freed up in time")
	ErrNotConnected = errors.New("miner session is down")
	ErrUnknownMiner = errors.New("miner is not in the pool")
	ErrClosed       = errors.New("miner pool closed")
	// ErrFlooded ends a job's inbox when the miner sent more messages for
	// the job than it read: a misbehaving miner. (An inbox whose session
	// ended returns jobrun.ErrLost.)
	ErrFlooded = errors.New("miner flooded the job with messages")
)

// Tunables of the pool.
const (
	// DialTimeout bounds one dial and authentication.
	DialTimeout = 5 * time.Second
	// BusyFirst and BusyMax bound how long a miner that declined as busy is
	// held back before it is offered jobs of the class again; the hold
	// doubles with each busy decline in a row. A busy miner sends nothing
	// when it frees up, so this is the one wait that is timed.
	BusyFirst = 25 * time.Millisecond
	BusyMax   = time.Second
	// MaxQueued bounds the messages waiting in one job's inbox.
	MaxQueued = 1024
)
