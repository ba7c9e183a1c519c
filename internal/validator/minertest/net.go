package minertest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/validator/route"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
)

// Net is a network of in-process miners: a route.Dialer for their
// sessions and an http.RoundTripper for their receipts.
type Net struct {
	mu     sync.Mutex
	miners map[string]*entry // by hotkey
	next   int
}

type entry struct {
	m     *Miner
	addr  chain.AxonInfo
	down  bool
	conns []*Conn
	dials int
}

var (
	_ route.Dialer      = (*Net)(nil)
	_ http.RoundTripper = (*Net)(nil)
)

// Add puts m on the network at a fresh address and returns its neuron.
func (n *Net) Add(m *Miner) chain.Neuron {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.miners == nil {
		n.miners = map[string]*entry{}
	}
	e := &entry{m: m, addr: n.addrLocked()}
	n.miners[m.Hotkey.SS58()] = e
	return chain.Neuron{Hotkey: m.Hotkey.SS58(), Active: true, AxonInfo: e.addr}
}

func (n *Net) addrLocked() chain.AxonInfo {
	n.next++
	return chain.AxonInfo{IP: fmt.Sprintf("192.0.2.%d", n.next), Port: 8000, Protocol: 4}
}

// Move gives m a new address (its old one stops answering) and returns its neuron.
func (n *Net) Move(m *Miner) chain.Neuron {
	n.mu.Lock()
	defer n.mu.Unlock()
	e := n.miners[m.Hotkey.SS58()]
	e.addr = n.addrLocked()
	return chain.Neuron{Hotkey: m.Hotkey.SS58(), Active: true, AxonInfo: e.addr}
}

// SetDown makes m unreachable (down) or reachable again; going down ends
// its sessions.
func (n *Net) SetDown(m *Miner, down bool) {
	n.mu.Lock()
	e := n.miners[m.Hotkey.SS58()]
	e.down = down
	conns := e.conns
	n.mu.Unlock()
	if down {
		for _, c := range conns {
			c.Close("")
		}
	}
}

// Dials returns how often m was dialled successfully.
func (n *Net) Dials(m *Miner) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.miners[m.Hotkey.SS58()].dials
}

// Conns returns m's sessions, oldest first.
func (n *Net) Conns(m *Miner) []*Conn {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*Conn(nil), n.miners[m.Hotkey.SS58()].conns...)
}

// Dial implements route.Dialer: a session with the miner at n's address.
func (n *Net) Dial(ctx context.Context, nr chain.Neuron) (route.Conn, map[string]int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	e := n.miners[nr.Hotkey]
	if e == nil || e.down || e.addr != nr.AxonInfo {
		return nil, nil, fmt.Errorf("dial miner %s at %s:%d: connection refused", nr.Hotkey, nr.AxonInfo.IP, nr.AxonInfo.Port)
	}
	c := &Conn{m: e.m, in: newQueue()}
	e.conns = append(e.conns, c)
	e.dials++
	manifest := map[string]int{}
	for k, v := range e.m.Manifest {
		manifest[k] = v
	}
	return c, manifest, nil
}

// RoundTrip implements http.RoundTripper: GET /receipts on a miner's
// address serves its receipts, countersigned.
func (n *Net) RoundTrip(req *http.Request) (*http.Response, error) {
	host, port, _ := net.SplitHostPort(req.URL.Host)
	p, _ := strconv.Atoi(port)
	n.mu.Lock()
	var m *Miner
	for _, e := range n.miners {
		if e.addr.IP == host && e.addr.Port == p && !e.down {
			m = e.m
		}
	}
	n.mu.Unlock()
	if m == nil {
		return nil, fmt.Errorf("%s: connection refused", req.URL.Host)
	}
	rec := httptest.NewRecorder()
	m.ServeHTTP(rec, req)
	return rec.Result(), nil
}

// ServeHTTP serves the miner's receipts as the miner's /receipts does: one
// store.StoredReceipt per line, ids after ?after=, at most ?limit=.
//
// An Upstream miner serves upstream's pages instead (see servePage).
func (m *Miner) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if page, ok := receipt.ParsePagePath(r.URL.Path); ok {
		m.servePage(w, r, page)
		return
	}
	if r.URL.Path != "/receipts" || m.Upstream {
		http.NotFound(w, r)
		return
	}
	after, _ := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64)
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	n := 0
	for i, rc := range m.Countersigned(nil) {
		id := int64(i + 1)
		if id <= after || (limit > 0 && n >= limit) {
			continue
		}
		enc.Encode(store.StoredReceipt{ID: id, Receipt: rc})
		n++
	}
	bw.Flush()
}

// Conn is the validator's end of an in-memory session with a miner.
type Conn struct {
	m  *Miner
	in *queue // miner → validator
}

var _ route.Conn = (*Conn)(nil)

// Capabilities implements route.Capable.
func (c *Conn) Capabilities() protocol.Capabilities { return c.m.Capabilities() }

// Send implements route.Conn: the miner receives m and answers.
func (c *Conn) Send(ctx context.Context, m protocol.Message) error {
	if c.in.ended() {
		return fmt.Errorf("send %s: %w", m.MessageType(), ErrClosed)
	}
	return c.m.take(connPeer{c}, m)
}

// Recv implements route.Conn.
func (c *Conn) Recv(ctx context.Context) (protocol.Message, error) { return c.in.next(ctx) }

// Close implements route.Conn.
func (c *Conn) Close(string) error {
	c.in.end(ErrClosed)
	return nil
}

// Closed reports whether the session was closed (by either side).
func (c *Conn) Closed() bool { return c.in.ended() }

// Push queues m for the validator as if the miner sent it.
func (c *Conn) Push(m protocol.Message) { connPeer{c}.Send(m) }

type connPeer struct{ c *Conn }

func (p connPeer) Send(m protocol.Message) {
	if w, err := p.c.m.reply(m); err == nil {
		p.c.in.put(w)
	}
}

func (p connPeer) Close() { p.c.Close("") }
