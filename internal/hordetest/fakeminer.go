package hordetest

import (
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// FakeMiner is a misbehaving miner speaking the real protocol: it advertises
// many free executors (so validators try it first) and then declines every
// job as busy ("busy") or for another reason ("refuse"), or accepts and
// drops the connection ("vanish").
type FakeMiner struct {
	Hotkey *sig.Hotkey
	Offers atomic.Int32
	Neuron chain.Neuron
}

// NewFakeMiner starts a fake miner for the test.
func NewFakeMiner(t testing.TB, mode string) *FakeMiner {
	k, err := sig.FromSeed(sig.RandomSeed())
	if err != nil {
		t.Fatal(err)
	}
	f := &FakeMiner{Hotkey: k}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := wsconn.Accept(w, r, nil)
		if err != nil {
			return
		}
		ctx := r.Context()
		if _, err := conn.Recv(ctx); err != nil { // auth: the fake trusts anyone
			return
		}
		conn.Send(ctx, &protocol.V0ExecutorManifestRequest{Manifest: map[string]int{protocol.ClassTest: 10}})
		for {
			m, err := conn.Recv(ctx)
			if err != nil {
				return
			}
			req, ok := m.(*protocol.V0InitialJobRequest)
			if !ok {
				continue
			}
			f.Offers.Add(1)
			switch mode {
			case "busy":
				conn.Send(ctx, &protocol.V0DeclineJobRequest{JobUUID: req.JobUUID, Reason: protocol.RejectBusy, Message: "fake miner is always busy"})
			case "refuse":
				conn.Send(ctx, &protocol.V0DeclineJobRequest{JobUUID: req.JobUUID, Reason: protocol.RejectUnknown, Message: "fake miner refuses"})
			case "vanish":
				conn.Send(ctx, &protocol.V0AcceptJobRequest{JobUUID: req.JobUUID})
				conn.Close("gone")
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	host, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	f.Neuron = chain.Neuron{Hotkey: k.SS58(), Active: true, AxonInfo: chain.AxonInfo{IP: host, Port: atoi(port)}}
	return f
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}
