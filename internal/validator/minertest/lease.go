package minertest

import (
	"context"
	"sync"

	"github.com/horde-compute/horde/internal/validator/jobrun"
	"github.com/horde-compute/horde/protocol"
)

// Lease is a jobrun.Lease straight to a Miner, without a pool: frames the
// run sends are answered into the run's inbox.
type Lease struct {
	m     *Miner
	inbox *queue

	mu       sync.Mutex
	released []bool // each Release call's busy flag
	sendErr  error
}

var _ jobrun.Lease = (*Lease)(nil)

// Lease returns a lease on m.
func (m *Miner) Lease() *Lease { return &Lease{m: m, inbox: newQueue()} }

// Miner implements jobrun.Lease.
func (l *Lease) Miner() string { return l.m.Hotkey.SS58() }

// Capabilities implements jobrun.Capable.
func (l *Lease) Capabilities() protocol.Capabilities { return l.m.Capabilities() }

// Send implements jobrun.Link: the miner answers into the inbox.
func (l *Lease) Send(ctx context.Context, m protocol.Message) error {
	l.mu.Lock()
	err := l.sendErr
	l.mu.Unlock()
	if err != nil {
		return err
	}
	if l.inbox.ended() {
		return ErrClosed
	}
	return l.m.take(leasePeer{l}, m)
}

// FailSends makes every later Send fail with err.
func (l *Lease) FailSends(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sendErr = err
}

// Next implements jobrun.Inbox.
func (l *Lease) Next(ctx context.Context) (protocol.Message, error) { return l.inbox.next(ctx) }

// Push queues m in the inbox as if the miner sent it.
func (l *Lease) Push(m protocol.Message) { leasePeer{l}.Send(m) }

// Release implements jobrun.Lease.
func (l *Lease) Release(busy bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.released = append(l.released, busy)
}

// Released returns the busy flag of each Release call.
func (l *Lease) Released() []bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]bool(nil), l.released...)
}

type leasePeer struct{ l *Lease }

func (p leasePeer) Send(m protocol.Message) {
	if w, err := p.l.m.reply(m); err == nil {
		p.l.inbox.put(w)
	}
}

func (p leasePeer) Close() { p.l.inbox.end(jobrun.ErrLost) }
