package route

import (
	"context"
	"sync"

	"github.com/horde-compute/horde/protocol"
)

// Inbox holds one job's messages from its miner in arrival order. It drops
// none: when the session ends, Next returns what was queued and then
// ErrLost. A miner that queues more than MaxQueued unread messages ends the
// inbox with ErrFlooded (after what was queued); its job's terminal message
// (finished, failed, declined), should it come with the flood, is kept
// still, so the job ends with the miner's own word.
type Inbox struct {
	mu    sync.Mutex
	queue []protocol.Message
	err   error
	ready chan struct{} // signalled when something was queued or the inbox ended
}

func newInbox() *Inbox { return &Inbox{ready: make(chan struct{}, 1)} }

func (in *Inbox) put(m protocol.Message) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.err != nil && (in.err != ErrFlooded || !terminal(m)) {
		return
	}
	if len(in.queue) >= MaxQueued && !terminal(m) {
		in.err = ErrFlooded
	} else {
		in.queue = append(in.queue, m)
	}
	in.signal()
}

// terminal reports whether m ends a job on the miner's side.
func terminal(m protocol.Message) bool {
	switch m.(type) {
	case *protocol.V0JobFinishedRequest, *protocol.V0JobFailedRequest, *protocol.V0HordeFailedRequest,
		*protocol.V0DeclineJobRequest, *protocol.V0ExecutorFailedRequest, *protocol.V0StreamingJobNotReadyRequest:
		return true
	}
	return false
}

func (in *Inbox) end(err error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.err == nil {
		in.err = err
	}
	in.signal()
}

func (in *Inbox) signal() {
	select {
	case in.ready <- struct{}{}:
	default:
	}
}

// Next returns the oldest queued message, waiting for one; then the error
// that ended the inbox; or ctx's error. One reader at a time.
func (in *Inbox) Next(ctx context.Context) (protocol.Message, error) {
	for {
		in.mu.Lock()
		if len(in.queue) > 0 {
			m := in.queue[0]
			in.queue[0] = nil
			in.queue = in.queue[1:]
			in.mu.Unlock()
			return m, nil
		}
		err := in.err
		in.mu.Unlock()
		if err != nil {
			return nil, err
		}
		select {
		case <-in.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
