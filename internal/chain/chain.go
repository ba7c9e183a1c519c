// Package chain reads the metagraph (who is registered, where miners serve,
// who holds a validator permit). The file back-end reads the shape of Pylon's
// neurons endpoint from disk, for dev and static deployments.
package chain

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
)

// AxonInfo says where a neuron serves.
type AxonInfo struct {
	IP       string `json:"ip"`
	Port     int    `json:"port"`
	Protocol int    `json:"protocol,omitempty"`
}

// Neuron is one registered hotkey.
type Neuron struct {
	UID             int      `json:"uid"`
	Hotkey          string   `json:"hotkey"`
	Coldkey         string   `json:"coldkey,omitempty"`
	Active          bool     `json:"active"`
	AxonInfo        AxonInfo `json:"axon_info"`
	Stake           float64  `json:"stake"`
	ValidatorPermit bool     `json:"validator_permit"`
}

// Metagraph is the neurons of a subnet at a block.
type Metagraph struct {
	Block   int64    `json:"block"`
	Neurons []Neuron `json:"neurons"`
}

// Neuron returns the neuron with hotkey, if registered.
func (m *Metagraph) Neuron(hotkey string) (Neuron, bool) {
	for _, n := range m.Neurons {
		if n.Hotkey == hotkey {
			return n, true
		}
	}
	return Neuron{}, false
}

// IsValidator reports whether hotkey is registered with a validator permit.
func (m *Metagraph) IsValidator(hotkey string) bool {
	n, ok := m.Neuron(hotkey)
	return ok && n.ValidatorPermit
}

// Miners returns neurons that serve an axon, by stake-agnostic uid order.
func (m *Metagraph) Miners() []Neuron {
	var out []Neuron
	for _, n := range m.Neurons {
		if n.AxonInfo.Port != 0 && n.AxonInfo.IP != "" && n.AxonInfo.IP != "0.0.0.0" {
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UID < out[j].UID })
	return out
}

// Source yields the current metagraph.
type Source interface {
	Metagraph(ctx context.Context) (*Metagraph, error)
}

// File reads a metagraph from a JSON file on every call, so edits take effect
// at the next refresh. It accepts Pylon's shape ({"block": {...}, "neurons":
// {hotkey: neuron}}) and a plain list of neurons.
type File struct{ Path string }

// Metagraph implements Source.
func (f File) Metagraph(ctx context.Context) (*Metagraph, error) {
	b, err := os.ReadFile(f.Path)
	if err != nil {
		return nil, fmt.Errorf("metagraph: %w", err)
	}
	return Parse(b)
}

// Parse decodes a metagraph in Pylon's shape or as {"block": n, "neurons": [...]}.
func Parse(b []byte) (*Metagraph, error) {
	var raw struct {
		Block   json.RawMessage `json:"block"`
		Neurons json.RawMessage `json:"neurons"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("metagraph: %w", err)
	}
	m := &Metagraph{}
	var blk struct {
		Number int64 `json:"number"`
	}
	if json.Unmarshal(raw.Block, &blk) == nil {
		m.Block = blk.Number
	} else {
		json.Unmarshal(raw.Block, &m.Block)
	}
	var byKey map[string]Neuron
	if err := json.Unmarshal(raw.Neurons, &byKey); err == nil {
		for hk, n := range byKey {
			if n.Hotkey == "" {
				n.Hotkey = hk
			}
			m.Neurons = append(m.Neurons, n)
		}
	} else if err := json.Unmarshal(raw.Neurons, &m.Neurons); err != nil {
		return nil, fmt.Errorf("metagraph: neurons must be an object keyed by hotkey or a list: %w", err)
	}
	sort.Slice(m.Neurons, func(i, j int) bool { return m.Neurons[i].UID < m.Neurons[j].UID })
	return m, nil
}

// Write stores m in Pylon's shape at path.
func Write(path string, m *Metagraph) error {
	byKey := map[string]Neuron{}
	for _, n := range m.Neurons {
		byKey[n.Hotkey] = n
	}
	b, err := json.MarshalIndent(map[string]any{"block": map[string]any{"number": m.Block}, "neurons": byKey}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
