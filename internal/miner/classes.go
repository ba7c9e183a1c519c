package miner

import (
	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/protocol"
)

// DefaultClasses gives each known executor class its container limits.
func DefaultClasses() map[string]executor.ClassSpec {
	const gib = 1 << 30
	return map[string]executor.ClassSpec{
		protocol.ClassTest:            {MemoryBytes: 1 * gib, NanoCPUs: 1e9, Pids: 256},
		protocol.ClassCPU8c16gb:       {MemoryBytes: 16 * gib, NanoCPUs: 8e9, Pids: 4096},
		protocol.ClassGPU24:           {MemoryBytes: 64 * gib, NanoCPUs: 16e9, Pids: 4096, GPUs: 1},
		protocol.ClassSpinUp4minGPU24: {MemoryBytes: 64 * gib, NanoCPUs: 16e9, Pids: 4096, GPUs: 1},
		protocol.ClassLLMA6000:        {MemoryBytes: 64 * gib, NanoCPUs: 16e9, Pids: 4096, GPUs: 1},
	}
}
