package validator

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/horde-compute/horde/receipt"
	"github.com/horde-compute/horde/sig"
)

func TestValidExcuses(t *testing.T) {
	v, _ := sig.FromSeed(sig.RandomSeed())
	m, _ := sig.FromSeed(sig.RandomSeed())
	other, _ := sig.FromSeed(sig.RandomSeed())
	excuse := func(signer *sig.Hotkey, miner, class string, organic bool, age time.Duration) json.RawMessage {
		p := &receipt.StartedPayload{Base: receipt.Base{JobUUID: "j", MinerHotkey: miner, ValidatorHotkey: v.SS58(), Timestamp: receipt.At(time.Now().Add(-age))},
			ExecutorClass: class, IsOrganic: organic, TTL: 60}
		s, _ := receipt.Sign(signer, p)
		r, _ := receipt.New(p, s)
		b, _ := json.Marshal(r)
		return b
	}
	val := &Validator{}
	tests := []struct {
		name string
		ex   json.RawMessage
		want int
	}{
		{"valid", excuse(v, m.SS58(), "c", true, 0), 1},
		{"synthetic job", excuse(v, m.SS58(), "c", false, 0), 0},
		{"other class", excuse(v, m.SS58(), "d", true, 0), 0},
		{"other miner", excuse(v, other.SS58(), "c", true, 0), 0},
		{"expired", excuse(v, m.SS58(), "c", true, 2*time.Minute), 0},
		{"forged", excuse(other, m.SS58(), "c", true, 0), 0},
		{"garbage", json.RawMessage(`{"receipt_type": 5}`), 0},
	}
	for _, tt := range tests {
		if got := val.validExcuses(m.SS58(), "c", []json.RawMessage{tt.ex}); got != tt.want {
			t.Errorf("%s: %d valid, want %d", tt.name, got, tt.want)
		}
	}
}
