package chain

import (
	"path/filepath"
	"testing"
)

func TestParseShapes(t *testing.T) {
	pylon := `{"block": {"number": 7, "hash": "0xab"}, "neurons": {"5A": {"uid": 1, "axon_info": {"ip": "127.0.0.1", "port": 9000}, "stake": 10, "validator_permit": false},
		"5V": {"uid": 0, "hotkey": "5V", "axon_info": {"ip": "0.0.0.0", "port": 0}, "stake": 1000, "validator_permit": true}}}`
	m, err := Parse([]byte(pylon))
	if err != nil {
		t.Fatal(err)
	}
	if m.Block != 7 || len(m.Neurons) != 2 || m.Neurons[1].Hotkey != "5A" {
		t.Fatalf("parsed %+v", m)
	}
	if !m.IsValidator("5V") || m.IsValidator("5A") || m.IsValidator("5X") {
		t.Error("validator permits wrong")
	}
	if ms := m.Miners(); len(ms) != 1 || ms[0].Hotkey != "5A" {
		t.Errorf("miners = %+v", ms)
	}
	list, err := Parse([]byte(`{"block": 3, "neurons": [{"uid": 0, "hotkey": "5A"}]}`))
	if err != nil || list.Block != 3 || len(list.Neurons) != 1 {
		t.Errorf("list shape: %+v %v", list, err)
	}
	if _, err := Parse([]byte(`{"neurons": 5}`)); err == nil {
		t.Error("bad neurons accepted")
	}
	path := filepath.Join(t.TempDir(), "m.json")
	if err := Write(path, m); err != nil {
		t.Fatal(err)
	}
	again, err := File{path}.Metagraph(t.Context())
	if err != nil || len(again.Neurons) != 2 || again.Block != 7 {
		t.Errorf("round trip: %+v %v", again, err)
	}
}
