package protocol

import (
	"bufio"
	"encoding/json"
	"os"
	"testing"
)

// upstreamVectors returns the messages of upstream's vectors on the links named.
func upstreamVectors(t *testing.T, links ...string) map[string]json.RawMessage {
	t.Helper()
	f, err := os.Open("testdata/upstream/messages.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]json.RawMessage{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var v struct {
			Name, Link string
			JSON       json.RawMessage
		}
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatal(err)
		}
		for _, l := range links {
			if v.Link == l {
				out[v.Name] = v.JSON
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("no vectors")
	}
	return out
}

// Every message an upstream miner sends a validator decodes, with the
// fields the validator reads.
func TestUpstreamMinerMessagesDecode(t *testing.T) {
	for name, b := range upstreamVectors(t, "miner->validator", "all", "both") {
		m, err := Decode(b)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		switch m := m.(type) {
		case *V0DeclineJobRequest:
			if m.Reason == "" {
				t.Errorf("%s: %+v", name, m)
			}
		case *V0ExecutorManifestRequest:
			if len(m.Manifest) == 0 || m.Capabilities.Horde() {
				t.Errorf("%s: %+v", name, m)
			}
		}
	}
}
