// Package minertest plays miners in-process for the validator's tests. A
// Miner answers the frames a validator sends as its Reply says (Honest
// when nil), either over in-memory sessions dialled through a Net (which
// also serves the miners' receipts over an in-memory HTTP transport), or
// straight into a Lease for tests of one job's run. Frames are encoded and
// decoded as on the wire. No sockets, no goroutines of its own.
package minertest

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/schematest"
	"github.com/horde-compute/horde/internal/synthetic"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
	"github.com/horde-compute/horde/sig"
)

// Peer is the validator as a miner's Reply sees it.
type Peer interface {
	// Send queues m for the validator.
	Send(m protocol.Message)
	// Close ends the session.
	Close()
}

// Miner is an in-process miner.
type Miner struct {
	Hotkey   *sig.Hotkey
	Manifest map[string]int
	// Reply answers one frame from the validator; nil answers as Honest.
	Reply func(p Peer, m protocol.Message)
	// Upstream makes the miner an upstream ComputeHorde miner: it advertises
	// no extension, and UpstreamReply checks every frame against upstream's
	// models.
	Upstream bool
	// JobCert is the certificate (PEM) a streaming job serves with; nil
	// gives the placeholder "job-cert-" + uuid.
	JobCert func(uuid string) string

	mu         sync.Mutex
	violations []string // frames an upstream peer would refuse
	got        []protocol.Message
	initial    map[string]*protocol.V0InitialJobRequest
	receipts   []receipt.Receipt // validator-signed receipts given to the miner
	// receivedAt is when each of receipts came (its page, for Upstream miners).
	receivedAt []time.Time
	pageJunk   []pageLine
	// signedLines are receipts' page lines, countersigned once.
	signedLines [][]byte
}

// New returns a miner with a fresh hotkey and manifest.
func New(t testing.TB, manifest map[string]int) *Miner {
	t.Helper()
	return &Miner{Hotkey: Hotkey(t), Manifest: manifest}
}

// Hotkey returns a fresh hotkey.
func Hotkey(t testing.TB) *sig.Hotkey {
	t.Helper()
	k, err := sig.FromSeed(sig.RandomSeed())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// receive records a frame from the validator and answers it.
func (m *Miner) receive(p Peer, msg protocol.Message) {
	m.mu.Lock()
	m.got = append(m.got, msg)
	switch f := msg.(type) {
	case *protocol.V0InitialJobRequest:
		if m.initial == nil {
			m.initial = map[string]*protocol.V0InitialJobRequest{}
		}
		m.initial[f.JobUUID] = f
		m.receipts = append(m.receipts, receipt.Receipt{Type: receipt.JobStarted, Payload: f.JobStartedReceiptPayload, ValidatorSignature: f.JobStartedReceiptSignature})
		m.receivedAt = append(m.receivedAt, time.Now())
	case *protocol.V0JobAcceptedReceiptRequest:
		m.receipts = append(m.receipts, receipt.Receipt{Type: receipt.JobAccepted, Payload: f.Payload, ValidatorSignature: f.Signature})
		m.receivedAt = append(m.receivedAt, time.Now())
	case *protocol.V0JobFinishedReceiptRequest:
		m.receipts = append(m.receipts, receipt.Receipt{Type: receipt.JobFinished, Payload: f.Payload, ValidatorSignature: f.Signature})
		m.receivedAt = append(m.receivedAt, time.Now())
	}
	reply := m.Reply
	m.mu.Unlock()
	switch {
	case reply != nil:
	case m.Upstream:
		reply = m.UpstreamHonest
	default:
		reply = m.Honest
	}
	reply(p, msg)
}

// Capabilities returns the extensions the miner advertises: all of horde's,
// none when Upstream.
func (m *Miner) Capabilities() protocol.Capabilities {
	if m.Upstream {
		return nil
	}
	return protocol.MinerCapabilities
}

// Got returns the frames the miner received, in order.
func (m *Miner) Got() []protocol.Message {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]protocol.Message(nil), m.got...)
}

// Offers returns the job offers (V0InitialJobRequest) the miner received.
func (m *Miner) Offers() []*protocol.V0InitialJobRequest {
	var out []*protocol.V0InitialJobRequest
	for _, f := range m.Got() {
		if o, ok := f.(*protocol.V0InitialJobRequest); ok {
			out = append(out, o)
		}
	}
	return out
}

// Receipts returns the validator-signed receipts the miner was given.
func (m *Miner) Receipts() []receipt.Receipt {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]receipt.Receipt(nil), m.receipts...)
}

// Initial returns the offer of job uuid, if the miner got one.
func (m *Miner) Initial(uuid string) *protocol.V0InitialJobRequest {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.initial[uuid]
}

// Honest accepts every job, runs it at once and reports success: synthetic
// jobs get the right answer, streaming jobs serve (vouched for by the
// miner's signature) until stopped.
func (m *Miner) Honest(p Peer, msg protocol.Message) {
	switch f := msg.(type) {
	case *protocol.V0InitialJobRequest:
		p.Send(&protocol.V0AcceptJobRequest{JobUUID: f.JobUUID})
		p.Send(&protocol.V0ExecutorReadyRequest{JobUUID: f.JobUUID})
	case *protocol.V0JobRequest:
		p.Send(&protocol.V0VolumesReadyRequest{JobUUID: f.JobUUID})
		if in := m.Initial(f.JobUUID); in != nil && in.StreamingDetails != nil {
			p.Send(m.StreamingReady(f.JobUUID))
			return
		}
		p.Send(&protocol.V0ExecutionDoneRequest{JobUUID: f.JobUUID})
		p.Send(Finished(f))
	case *protocol.V0StopJobRequest:
		p.Send(&protocol.V0ExecutionDoneRequest{JobUUID: f.JobUUID})
		p.Send(&protocol.V0JobFinishedRequest{JobUUID: f.JobUUID, DockerProcessStdout: "stopped\n"})
	case *protocol.V0VolumeRequest:
		p.Send(&protocol.V0VolumeResult{JobUUID: f.JobUUID, MessageID: f.MessageID, Success: true})
	}
}

// StreamingReady says job uuid serves at 192.0.2.1:8443 with a job key the
// miner signs for.
func (m *Miner) StreamingReady(uuid string) *protocol.V0StreamingJobReadyRequest {
	r := &protocol.V0StreamingJobReadyRequest{JobUUID: uuid, IP: "192.0.2.1", Port: 8443, PublicKey: "job-cert-" + uuid}
	if m.JobCert != nil {
		r.PublicKey = m.JobCert(uuid)
	}
	r.MinerSignature = m.Hotkey.SignHex(protocol.StreamingReadyMessage(uuid, r.IP, r.Port, r.PublicKey))
	return r
}

// Finished is the honest result of a job: what the job image prints and
// leaves as artifacts for its arguments.
func Finished(f *protocol.V0JobRequest) *protocol.V0JobFinishedRequest {
	out, arts := Answer(f.DockerRunCmd)
	return &protocol.V0JobFinishedRequest{JobUUID: f.JobUUID, DockerProcessStdout: out, Artifacts: arts, Timings: map[string]int64{"execute": 1}}
}

// Answer computes what the job image prints and leaves as artifacts.
func Answer(args []string) (string, map[string]string) {
	if len(args) == 0 {
		return "", nil
	}
	switch args[0] {
	case "echo":
		return strings.Join(args[1:], " ") + "\n", nil
	case "search":
		if len(args) < 4 {
			return "", nil
		}
		space, _ := strconv.ParseUint(args[3], 10, 64)
		s, _ := synthetic.FindSecret(args[1], args[2], space)
		return fmt.Sprintf("%d\n", s), nil
	case "matmul":
		if len(args) < 3 {
			return "", nil
		}
		seed, _ := strconv.ParseUint(args[1], 10, 64)
		n, _ := strconv.Atoi(args[2])
		b := synthetic.Multiply(synthetic.Inputs(seed, n)).Encode()
		arts := map[string]string{}
		for i := 0; len(b) > 0; i++ {
			k := min(len(b), synthetic.ChunkSize)
			arts[fmt.Sprintf("/artifacts/c-%03d.bin", i)] = base64.StdEncoding.EncodeToString(b[:k])
			b = b[k:]
		}
		return "", arts
	}
	return "", nil
}

// Countersigned returns the miner's receipts signed by signer (the miner's
// hotkey when nil), as the miner serves them.
func (m *Miner) Countersigned(signer *sig.Hotkey) []receipt.Receipt {
	if signer == nil {
		signer = m.Hotkey
	}
	var out []receipt.Receipt
	for _, r := range m.Receipts() {
		p, err := r.Decode()
		if err != nil {
			continue
		}
		r.MinerSignature, _ = receipt.Sign(signer, p)
		out = append(out, r)
	}
	return out
}

// take passes a frame from the validator to the miner through the wire
// encoding; an Upstream miner first checks it against upstream's models and
// answers one they refuse with GenericError, as upstream's miner does.
func (m *Miner) take(p Peer, msg protocol.Message) error {
	b, err := protocol.Encode(msg)
	if err != nil {
		return err
	}
	if m.Upstream {
		if err := schematest.Check("protocol_messages.ValidatorToMinerMessage.union", b); err != nil {
			m.violate(fmt.Sprintf("validator sent %s", b), err)
			p.Send(&protocol.GenericError{Details: "Malformed message"})
			return nil
		}
	}
	w, err := protocol.Decode(b)
	if err != nil {
		return err
	}
	m.receive(p, w)
	return nil
}

// reply passes a frame from the miner to the validator through the wire
// encoding; an Upstream miner's frames are checked against upstream's
// models (the test miner must speak exactly as upstream's).
func (m *Miner) reply(msg protocol.Message) (protocol.Message, error) {
	b, err := protocol.Encode(msg)
	if err != nil {
		return nil, err
	}
	if m.Upstream {
		if err := schematest.Check("protocol_messages.MinerToValidatorMessage.union", b); err != nil {
			m.violate(fmt.Sprintf("upstream miner sent %s", b), err)
		}
	}
	return protocol.Decode(b)
}

func (m *Miner) violate(what string, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.violations = append(m.violations, what+": "+err.Error())
}

// Violations returns the frames, either way, that upstream's models refuse
// (Upstream miners only).
func (m *Miner) Violations() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.violations...)
}

// wire sends m through the wire encoding, as a socket would.
func wire(m protocol.Message) (protocol.Message, error) {
	b, err := protocol.Encode(m)
	if err != nil {
		return nil, err
	}
	return protocol.Decode(b)
}

// queue is one direction of an in-memory session.
type queue struct {
	mu     sync.Mutex
	msgs   []protocol.Message
	err    error
	signal chan struct{}
}

func newQueue() *queue { return &queue{signal: make(chan struct{}, 1)} }

func (q *queue) put(m protocol.Message) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err == nil {
		q.msgs = append(q.msgs, m)
	}
	q.wake()
}

func (q *queue) end(err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err == nil {
		q.err = err
	}
	q.wake()
}

func (q *queue) ended() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.err != nil
}

func (q *queue) wake() {
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

func (q *queue) next(ctx context.Context) (protocol.Message, error) {
	for {
		q.mu.Lock()
		if len(q.msgs) > 0 {
			m := q.msgs[0]
			q.msgs = q.msgs[1:]
			q.mu.Unlock()
			return m, nil
		}
		err := q.err
		q.mu.Unlock()
		if err != nil {
			return nil, err
		}
		select {
		case <-q.signal:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// ErrClosed is returned by a closed in-memory session.
var ErrClosed = errors.New("minertest: session closed")
