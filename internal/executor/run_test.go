package executor

import (
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/protocol"
)

func TestContainerConfigIsolation(t *testing.T) {
	req := &protocol.V0JobRequest{JobUUID: "j1", DockerImage: "img", DockerRunCmd: []string{"run", "it"},
		Env: map[string]string{"A": "1"}, ArtifactsDir: "/artifacts"}
	cpu := ClassSpec{MemoryBytes: 1 << 30, NanoCPUs: 2e9, Pids: 256}
	c := ContainerConfig(req, cpu, Paths{Volume: "/d/v", Output: "/d/o", Artifacts: "/d/a"}, "miner")
	pids := int64(256)
	want := docker.HostConfig{
		NetworkMode:    "none",
		Binds:          []string{"/d/v:/volume", "/d/o:/output", "/d/a:/artifacts"},
		Tmpfs:          map[string]string{"/tmp": "rw,nosuid,size=512m"},
		Memory:         1 << 30,
		MemorySwap:     1 << 30,
		NanoCPUs:       2e9,
		PidsLimit:      &pids,
		ReadonlyRootfs: true,
		SecurityOpt:    []string{"no-new-privileges"},
		CapDrop:        []string{"ALL"},
		LogConfig:      &docker.LogConfig{Type: "json-file", Config: map[string]string{"max-size": "8m", "max-file": "2"}},
	}
	if diff := cmp.Diff(want, c.HostConfig); diff != "" {
		t.Errorf("host config (-want +got):\n%s", diff)
	}
	if !c.NetworkDisabled || !slices.Equal(c.Cmd, []string{"run", "it"}) || !slices.Equal(c.Env, []string{"A=1"}) {
		t.Errorf("config = %+v", c)
	}
	if c.Labels[LabelJob] != "j1" || c.Labels[LabelOwner] != "miner" {
		t.Errorf("labels = %v", c.Labels)
	}
}

func TestContainerConfigGPU(t *testing.T) {
	tests := []struct {
		name   string
		class  ClassSpec
		preset string
		want   []docker.DeviceRequest
	}{
		{"cpu class", ClassSpec{}, "none", nil},
		{"one gpu", ClassSpec{GPUs: 1}, "none", []docker.DeviceRequest{{Driver: "nvidia", Count: 1, Capabilities: [][]string{{"gpu"}}}}},
		{"all gpus preset", ClassSpec{GPUs: 1}, "nvidia_all", []docker.DeviceRequest{{Driver: "nvidia", Count: -1, Capabilities: [][]string{{"gpu"}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := &protocol.V0JobRequest{JobUUID: "j", DockerImage: "img", DockerRunOptionsPreset: tt.preset}
			c := ContainerConfig(req, tt.class, Paths{}, "m")
			if diff := cmp.Diff(tt.want, c.HostConfig.DeviceRequests); diff != "" {
				t.Errorf("device requests (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTailBuffer(t *testing.T) {
	var b tailBuffer
	b.max = 5
	b.Write([]byte("abc"))
	b.Write([]byte("defgh"))
	if got := b.String(); got != "[truncated to the last 5 bytes]\ndefgh" {
		t.Errorf("tail = %q", got)
	}
}

// The finished message can carry every artifact collected and both logs.
func TestArtifactsFitTheMessage(t *testing.T) {
	encoded := (MaxArtifactsBytes + 2) / 3 * 4
	logs := 2 * 6 * MaxLogBytes // JSON may escape a byte as \u00XX
	if encoded+logs >= protocol.MaxMessageSize || ArtifactsDiskBytes < MaxArtifactsBytes {
		t.Errorf("artifacts %d encoded + logs %d vs message limit %d; disk %d", encoded, logs, protocol.MaxMessageSize, ArtifactsDiskBytes)
	}
}
