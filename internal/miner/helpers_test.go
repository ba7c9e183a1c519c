package miner

import (
	"testing"
	"time"

	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
	"github.com/horde-compute/horde/sig"
)

func newKey(t testing.TB) *sig.Hotkey {
	t.Helper()
	k, err := sig.FromSeed(sig.RandomSeed())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// startedOffer builds the offer a validator signs for a job on a miner.
func startedOffer(t testing.TB, v *sig.Hotkey, miner, uuid, class string, organic bool, at time.Time) *protocol.V0InitialJobRequest {
	t.Helper()
	p := &receipt.StartedPayload{Base: receipt.Base{JobUUID: uuid, MinerHotkey: miner, ValidatorHotkey: v.SS58(), Timestamp: receipt.At(at)},
		ExecutorClass: class, IsOrganic: organic, TTL: 60}
	s, err := receipt.Sign(v, p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := receipt.Bytes(p)
	if err != nil {
		t.Fatal(err)
	}
	return &protocol.V0InitialJobRequest{JobUUID: uuid, ExecutorClass: class, DockerImage: "img",
		JobStartedReceiptPayload: b, JobStartedReceiptSignature: s}
}
