package hordetest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/synthetic"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
	"github.com/horde-compute/horde/sig"
)

// FakeMiner is a miner speaking the real protocol with in-process executors,
// honest or not. Mode says how it treats jobs:
//
//	busy    declines every job as busy
//	refuse  declines every job for another reason
//	vanish  accepts, then drops the connection
//	honest  computes synthetic answers (search, matmul) in-process
//	wrong   answers every job wrongly
//	slow    answers right, but takes Delay to execute
//	silent  accepts, then never says anything again
//
// Receipts says how it serves its receipts: "" (countersigned honestly),
// "forge" (signed by another key), "alter" (payload changed) or "replay"
// (each receipt served twice). Excuses says what a busy decline carries: ""
// (nothing) or "self" (job-started receipts of client jobs it signed itself,
// as if it were a validator, each with a ttl of 2^30 s).
type FakeMiner struct {
	Hotkey   *sig.Hotkey
	Offers   atomic.Int32
	Neuron   chain.Neuron
	Mode     string
	Receipts string
	Excuses  string
	Delay    time.Duration
	Manifest map[string]int

	mu       sync.Mutex
	receipts []receipt.Receipt
}

// NewFakeMiner starts a fake miner for the test with 10 always_on.test executors.
func NewFakeMiner(t testing.TB, mode string) *FakeMiner {
	return StartFakeMiner(t, &FakeMiner{Mode: mode})
}

// StartFakeMiner serves f until the test ends.
func StartFakeMiner(t testing.TB, f *FakeMiner) *FakeMiner {
	if f.Hotkey == nil {
		k, err := sig.FromSeed(sig.RandomSeed())
		if err != nil {
			t.Fatal(err)
		}
		f.Hotkey = k
	}
	if f.Manifest == nil {
		f.Manifest = map[string]int{protocol.ClassTest: 10}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+protocol.ValidatorAuthPath+"{hotkey}", f.serve)
	mux.HandleFunc("GET /receipts", f.serveReceipts)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	host, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p, _ := strconv.Atoi(port)
	f.Neuron = chain.Neuron{Hotkey: f.Hotkey.SS58(), Active: true, AxonInfo: chain.AxonInfo{IP: host, Port: p}}
	return f
}

func (f *FakeMiner) serve(w http.ResponseWriter, r *http.Request) {
	conn, first, err := wsconn.AcceptAuth(w, r, nil)
	if err != nil || first == nil {
		return
	}
	ctx := r.Context()
	conn.Send(ctx, &protocol.V0ExecutorManifestRequest{Manifest: f.Manifest, Capabilities: protocol.MinerCapabilities})
	for {
		m, err := conn.Recv(ctx)
		if err != nil {
			return
		}
		switch m := m.(type) {
		case *protocol.V0InitialJobRequest:
			f.Offers.Add(1)
			switch f.Mode {
			case "busy":
				conn.Send(ctx, &protocol.V0DeclineJobRequest{JobUUID: m.JobUUID, Reason: protocol.RejectBusy, Message: "fake miner is always busy",
					Receipts: f.excuses(m.ExecutorClass)})
			case "refuse":
				conn.Send(ctx, &protocol.V0DeclineJobRequest{JobUUID: m.JobUUID, Reason: protocol.RejectUnknown, Message: "fake miner refuses"})
			case "vanish":
				conn.Send(ctx, &protocol.V0AcceptJobRequest{JobUUID: m.JobUUID})
				conn.Close("gone")
				return
			default:
				f.keep(receipt.JobStarted, m.JobStartedReceiptPayload, m.JobStartedReceiptSignature)
				conn.Send(ctx, &protocol.V0AcceptJobRequest{JobUUID: m.JobUUID})
				if f.Mode != "silent" {
					conn.Send(ctx, &protocol.V0ExecutorReadyRequest{JobUUID: m.JobUUID})
				}
			}
		case *protocol.V0JobRequest:
			go f.execute(ctx, conn, m) // ends with the session's context
		case *protocol.V0JobAcceptedReceiptRequest:
			f.keep(receipt.JobAccepted, m.Payload, m.Signature)
		case *protocol.V0JobFinishedReceiptRequest:
			f.keep(receipt.JobFinished, m.Payload, m.Signature)
		}
	}
}

// excuses are what a busy decline carries (see Excuses).
func (f *FakeMiner) excuses(class string) []json.RawMessage {
	if f.Excuses != "self" {
		return nil
	}
	var out []json.RawMessage
	for i := range f.Manifest[class] {
		p := &receipt.StartedPayload{Base: receipt.Base{JobUUID: fmt.Sprintf("client-job-%d", i), MinerHotkey: f.Hotkey.SS58(),
			ValidatorHotkey: f.Hotkey.SS58(), Timestamp: receipt.At(time.Now().Add(-time.Second))}, ExecutorClass: class, IsOrganic: true, TTL: 1 << 30}
		s, _ := receipt.Sign(f.Hotkey, p)
		r, _ := receipt.New(p, s)
		r.MinerSignature = s
		b, _ := json.Marshal(r)
		out = append(out, b)
	}
	return out
}

// execute plays an executor: volumes ready, execution, result.
func (f *FakeMiner) execute(ctx context.Context, conn *wsconn.Conn, m *protocol.V0JobRequest) {
	conn.Send(ctx, &protocol.V0VolumesReadyRequest{JobUUID: m.JobUUID})
	fin := &protocol.V0JobFinishedRequest{JobUUID: m.JobUUID}
	if f.Mode == "wrong" {
		fin.DockerProcessStdout = "42\n"
	} else {
		fin.DockerProcessStdout, fin.Artifacts = answer(m.DockerRunCmd)
	}
	if f.Delay > 0 {
		select {
		case <-time.After(f.Delay):
		case <-ctx.Done():
			return
		}
	}
	conn.Send(ctx, &protocol.V0ExecutionDoneRequest{JobUUID: m.JobUUID})
	conn.Send(ctx, fin)
}

// answer computes what the job image would print and leave as artifacts.
func answer(args []string) (string, map[string]string) {
	if len(args) == 0 {
		return "", nil
	}
	switch args[0] {
	case "search":
		space, _ := strconv.ParseUint(args[3], 10, 64)
		s, _ := synthetic.FindSecret(args[1], args[2], space)
		return fmt.Sprintf("%d\n", s), nil
	case "matmul":
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

func (f *FakeMiner) keep(t receipt.Type, payload json.RawMessage, signature string) {
	f.mu.Lock()
	f.receipts = append(f.receipts, receipt.Receipt{Type: t, Payload: payload, ValidatorSignature: signature})
	f.mu.Unlock()
}

// serveReceipts serves the kept receipts, countersigned as Receipts says.
func (f *FakeMiner) serveReceipts(w http.ResponseWriter, r *http.Request) {
	after, _ := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64)
	f.mu.Lock()
	rs := append([]receipt.Receipt(nil), f.receipts...)
	f.mu.Unlock()
	other, _ := sig.FromSeed(sig.RandomSeed())
	enc := json.NewEncoder(w)
	id := int64(0)
	for _, rc := range rs {
		p, err := rc.Decode()
		if err != nil {
			continue
		}
		signer := f.Hotkey
		switch f.Receipts {
		case "forge":
			signer = other
		case "alter":
			if fp, ok := p.(*receipt.FinishedPayload); ok {
				fp.TimeTookUS *= 10 // claim ten times the work
				rc.Payload, _ = json.Marshal(fp)
			}
		}
		rc.MinerSignature, _ = receipt.Sign(signer, p)
		copies := 1
		if f.Receipts == "replay" {
			copies = 2
		}
		for range copies {
			id++
			if id > after {
				enc.Encode(store.StoredReceipt{ID: id, Receipt: rc})
			}
		}
	}
}
