package protocol

// This file: what horde adds on the validator ↔ miner link and how the two
// ends agree on it. An upstream miner and validator know none of it; a horde
// miner lists the extensions it speaks in its manifest
// (V0ExecutorManifestRequest.horde_capabilities, a field upstream's model
// ignores), and a horde validator uses an extension only with a miner that
// listed it. With a miner that lists none, the validator sends upstream's
// exact messages: V0InitialJobRequest without horde_* fields, and
// UpstreamJobRequest.

// Extensions of the validator ↔ miner link.
const (
	// MinerCapAllowPull: V0InitialJobRequest.horde_allow_pull.
	MinerCapAllowPull = "allow_pull"
	// MinerCapImageDigest: V0InitialJobRequest.horde_image_digest.
	MinerCapImageDigest = "image_digest"
	// MinerCapCancel: V0CancelJobRequest.
	MinerCapCancel = "cancel"
	// MinerCapStop: V0StopJobRequest.
	MinerCapStop = "stop"
	// MinerCapVolumeMessages: V0VolumeRequest and V0VolumeResult.
	MinerCapVolumeMessages = "volume_messages"
	// MinerCapReceiptsAfter: the miner serves GET /receipts?after=ID (one
	// store.StoredReceipt per line) besides upstream's pages.
	MinerCapReceiptsAfter = "receipts_after"
)

// MinerCapabilities are the extensions a horde miner speaks.
var MinerCapabilities = []string{MinerCapAllowPull, MinerCapImageDigest, MinerCapCancel, MinerCapStop,
	MinerCapVolumeMessages, MinerCapReceiptsAfter}

// Capabilities is a set of extensions a peer advertised.
type Capabilities []string

// Has reports whether c lists capability.
func (c Capabilities) Has(capability string) bool {
	for _, x := range c {
		if x == capability {
			return true
		}
	}
	return false
}

// Horde reports whether the peer advertised anything: it is horde.
func (c Capabilities) Horde() bool { return len(c) > 0 }

// Docker run option presets of V0JobRequest.
const (
	PresetNone      = "none"
	PresetNvidiaAll = "nvidia_all"
)

// ClassHasGPU reports whether upstream's executor class has a GPU (upstream
// validators then ask for the nvidia_all preset).
func ClassHasGPU(class string) bool {
	switch class {
	case ClassSpinUp4minGPU24, ClassGPU24, ClassLLMA6000:
		return true
	}
	return false
}

// Upstream drops a job whose volume comes both in V0InitialJobRequest and in
// V0JobRequest ("Received job volume twice"): the volume goes in the initial
// request only, as upstream's validator sends it.
// UpstreamJobRequest returns m as upstream's validator sends it: no volume
// (it went with the offer), docker_run_cmd a list, the preset by the class.
func UpstreamJobRequest(m V0JobRequest) *V0JobRequest {
	m.Volume = nil
	if m.DockerRunCmd == nil {
		m.DockerRunCmd = []string{}
	}
	m.DockerRunOptionsPreset = PresetNone
	if ClassHasGPU(m.ExecutorClass) {
		m.DockerRunOptionsPreset = PresetNvidiaAll
	}
	return &m
}
