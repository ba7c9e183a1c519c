package kube_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/horde-compute/horde/internal/executor/kube"
	"github.com/horde-compute/horde/internal/miner"
	"github.com/horde-compute/horde/protocol"
)

func TestFit(t *testing.T) {
	const gib = 1 << 30
	classes := miner.DefaultClasses()
	tests := []struct {
		name   string
		free   []kube.Free
		wanted map[string]int
		want   map[string]int
	}{
		{"one small node", []kube.Free{{Node: "a", MilliCPU: 1900, MemoryBytes: 7 * gib}},
			map[string]int{protocol.ClassTest: 4}, map[string]int{protocol.ClassTest: 1}},
		{"memory bounds", []kube.Free{{Node: "a", MilliCPU: 64000, MemoryBytes: 3*gib + 1}},
			map[string]int{protocol.ClassTest: 10}, map[string]int{protocol.ClassTest: 3}},
		{"no GPU, no GPU class", []kube.Free{{Node: "a", MilliCPU: 64000, MemoryBytes: 256 * gib}},
			map[string]int{protocol.ClassGPU24: 2, protocol.ClassTest: 1}, map[string]int{protocol.ClassGPU24: 0, protocol.ClassTest: 1}},
		{"GPU nodes, shared with CPU classes", []kube.Free{
			{Node: "g1", MilliCPU: 32000, MemoryBytes: 128 * gib, GPUs: 2},
			{Node: "g2", MilliCPU: 16000, MemoryBytes: 64 * gib, GPUs: 1},
		}, map[string]int{protocol.ClassGPU24: 4, protocol.ClassCPU8c16gb: 2},
			map[string]int{protocol.ClassGPU24: 3, protocol.ClassCPU8c16gb: 0}},
		{"all together never more than fits", []kube.Free{
			{Node: "g1", MilliCPU: 40000, MemoryBytes: 160 * gib, GPUs: 2},
		}, map[string]int{protocol.ClassGPU24: 1, protocol.ClassCPU8c16gb: 5},
			map[string]int{protocol.ClassGPU24: 1, protocol.ClassCPU8c16gb: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := kube.Fit(tt.free, classes, tt.wanted)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Fit (-want +got):\n%s", diff)
			}
		})
	}
}
