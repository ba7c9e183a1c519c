package validator

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// minerClient is the validator's session with one miner; messages are routed
// to jobs by job_uuid.
type minerClient struct {
	neuron chain.Neuron
	log    *slog.Logger

	mu       sync.Mutex
	conn     *wsconn.Conn
	manifest map[string]int
	inflight map[string]int                   // by class
	jobs     map[string]chan protocol.Message // by job uuid
	dialing  chan struct{}                    // closed when a dial ends
	done     chan struct{}                    // closed when conn's reader ends
}

func newMinerClient(n chain.Neuron, log *slog.Logger) *minerClient {
	return &minerClient{neuron: n, log: log.With("miner", n.Hotkey), inflight: map[string]int{}, jobs: map[string]chan protocol.Message{}}
}

func (mc *minerClient) url() string {
	return "ws://" + net.JoinHostPort(mc.neuron.AxonInfo.IP, strconv.Itoa(mc.neuron.AxonInfo.Port)) + protocol.ValidatorAuthPath
}

// connect makes sure the session is up, dialling and authenticating if needed,
// and waits for the miner's manifest.
func (mc *minerClient) connect(ctx context.Context, k *sig.Hotkey, wg *sync.WaitGroup, life context.Context) error {
	mc.mu.Lock()
	if mc.conn != nil {
		mc.mu.Unlock()
		return nil
	}
	if mc.dialing != nil {
		ch := mc.dialing
		mc.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		mc.mu.Lock()
		ok := mc.conn != nil
		mc.mu.Unlock()
		if !ok {
			return fmt.Errorf("miner %s: not connected", mc.neuron.Hotkey)
		}
		return nil
	}
	mc.dialing = make(chan struct{})
	mc.mu.Unlock()
	err := mc.dial(ctx, k, wg, life)
	mc.mu.Lock()
	close(mc.dialing)
	mc.dialing = nil
	mc.mu.Unlock()
	return err
}

func (mc *minerClient) dial(ctx context.Context, k *sig.Hotkey, wg *sync.WaitGroup, life context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := wsconn.Dial(dctx, mc.url()+k.SS58(), mc.log)
	if err != nil {
		return fmt.Errorf("miner %s: %w", mc.neuron.Hotkey, err)
	}
	if err := conn.Send(dctx, wsconn.NewValidatorAuth(k, mc.neuron.Hotkey, time.Now())); err != nil {
		conn.Close("")
		return err
	}
	// The first answer is the manifest, or UnauthorizedError.
	first, err := conn.Recv(dctx)
	if err != nil {
		conn.Close("")
		return fmt.Errorf("miner %s: no manifest: %w", mc.neuron.Hotkey, err)
	}
	switch m := first.(type) {
	case *protocol.V0ExecutorManifestRequest:
		mc.mu.Lock()
		mc.manifest = m.Manifest
		mc.conn = conn
		mc.done = make(chan struct{})
		mc.mu.Unlock()
	case *protocol.UnauthorizedError:
		conn.Close("")
		return fmt.Errorf("miner %s refused us: %s", mc.neuron.Hotkey, m.Details)
	default:
		conn.Close("")
		return fmt.Errorf("miner %s: expected manifest, got %s", mc.neuron.Hotkey, first.MessageType())
	}
	wg.Go(func() { mc.read(life, conn) })
	return nil
}

// read routes the miner's messages to jobs until the session ends; then every
// job on this miner is told the connection was lost (a nil message).
func (mc *minerClient) read(ctx context.Context, conn *wsconn.Conn) {
	defer func() {
		mc.mu.Lock()
		mc.conn = nil
		close(mc.done)
		jobs := mc.jobs
		mc.jobs = map[string]chan protocol.Message{}
		mc.mu.Unlock()
		for _, ch := range jobs {
			close(ch)
		}
		conn.Close("")
	}()
	for {
		m, err := conn.Recv(ctx)
		if err != nil {
			mc.log.Info("miner session ended", "err", err)
			return
		}
		switch m := m.(type) {
		case *protocol.V0ExecutorManifestRequest:
			mc.mu.Lock()
			mc.manifest = m.Manifest
			mc.mu.Unlock()
			continue
		case *protocol.V0MainHotkeyMessage, *protocol.V0MachineSpecsRequest:
			continue
		case *protocol.GenericError:
			mc.log.Warn("miner reported an error", "details", m.Details)
			continue
		}
		id := protocol.JobUUIDOf(m)
		mc.mu.Lock()
		ch := mc.jobs[id]
		mc.mu.Unlock()
		if ch == nil {
			mc.log.Debug("message for unknown job", "job", id, "type", m.MessageType())
			continue
		}
		select {
		case ch <- m:
		default:
			mc.log.Warn("job inbox full; dropping message", "job", id, "type", m.MessageType())
		}
	}
}

// free returns the executors of class the validator believes are free.
func (mc *minerClient) free(class string) int {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if mc.manifest == nil {
		return 0
	}
	return mc.manifest[class] - mc.inflight[class]
}

// manifestCopy returns the miner's latest manifest.
func (mc *minerClient) manifestCopy() map[string]int {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	out := make(map[string]int, len(mc.manifest))
	for k, n := range mc.manifest {
		out[k] = n
	}
	return out
}

// offers reports whether the miner's manifest has executors of class.
func (mc *minerClient) offers(class string) bool {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	return mc.manifest[class] > 0
}

// register opens a job inbox and counts the executor as taken.
func (mc *minerClient) register(uuid, class string) (chan protocol.Message, bool) {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if mc.conn == nil {
		return nil, false
	}
	ch := make(chan protocol.Message, 16)
	mc.jobs[uuid] = ch
	mc.inflight[class]++
	return ch, true
}

func (mc *minerClient) unregister(uuid, class string) {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	delete(mc.jobs, uuid)
	mc.inflight[class]--
}

func (mc *minerClient) send(ctx context.Context, m protocol.Message) error {
	mc.mu.Lock()
	conn := mc.conn
	mc.mu.Unlock()
	if conn == nil {
		return fmt.Errorf("miner %s: not connected", mc.neuron.Hotkey)
	}
	return conn.Send(ctx, m)
}
