package protocol

import (
	"slices"
	"strings"
)

// This file: what the validator ⇄ miner link needs to serve upstream
// ComputeHorde validators unchanged, and how a horde miner and a horde
// validator find out that both speak horde's additions.
//
// Negotiation: a horde validator lists its extensions in
// ValidatorAuthForMiner.Capabilities (upstream's miner ignores the field; it
// is not signed, so stripping it only falls back to upstream). A horde miner
// lists its own in V0ExecutorManifestRequest.Capabilities (upstream's
// validator ignores the field). An extension is used on a session only when
// both listed it; a validator that lists nothing is served exactly as
// upstream's miner serves it.

// UnauthorizedError codes: upstream's enum, the only values an upstream
// validator's parser accepts.
const (
	// UnauthorizedTokenTooOld: the auth message is stale (or was used before).
	UnauthorizedTokenTooOld = "TOKEN_TOO_OLD"
	// UnauthorizedUnknownValidator: the hotkey is not a validator this miner
	// knows, or the auth message does not prove it is.
	UnauthorizedUnknownValidator = "UNKNOWN_VALIDATOR"
	// UnauthorizedValidatorInactive: a registered hotkey without a validator permit.
	UnauthorizedValidatorInactive = "VALIDATOR_INACTIVE"
)

// UpstreamExecutorClasses are the executor classes upstream's ExecutorClass
// enum has. Upstream's validator parses a manifest as a map keyed by that
// enum, so one other class makes it refuse the whole manifest.
var UpstreamExecutorClasses = []string{ClassSpinUp4minGPU24, ClassGPU24, ClassLLMA6000, ClassTest, ClassCPU8c16gb}

// IsUpstreamExecutorClass reports whether upstream's enum has class.
func IsUpstreamExecutorClass(class string) bool {
	return slices.Contains(UpstreamExecutorClasses, class)
}

// Miner-link extensions (values of the Capabilities fields).
const (
	// MinerCapCancel: V0CancelJobRequest.
	MinerCapCancel = "cancel"
	// MinerCapStop: V0StopJobRequest.
	MinerCapStop = "stop"
	// MinerCapVolumeMessages: V0VolumeRequest / V0VolumeResult.
	MinerCapVolumeMessages = "volume_messages"
	// MinerCapAllowPull: V0InitialJobRequest.AllowPull is honoured.
	MinerCapAllowPull = "allow_pull"
	// MinerCapImageDigest: V0InitialJobRequest.ImageDigest pins a streaming
	// job's image.
	MinerCapImageDigest = "image_digest"
	// MinerCapClasses: executor classes outside upstream's enum may be in
	// the manifest.
	MinerCapClasses = "classes"
)

// MinerCapabilities is what a horde miner offers.
var MinerCapabilities = []string{MinerCapCancel, MinerCapStop, MinerCapVolumeMessages, MinerCapAllowPull, MinerCapImageDigest, MinerCapClasses}

// ImagePullPolicy says when a miner's executors may pull a job's image that
// is not present.
type ImagePullPolicy string

// Image pull policies.
const (
	// PullIfValidatorAllows: only when the validator sent AllowPull (horde
	// validators); an upstream validator's jobs need the image present.
	PullIfValidatorAllows ImagePullPolicy = "validator"
	// PullAlways: any job's image may be pulled, as upstream's executor does.
	PullAlways ImagePullPolicy = "always"
	// PullNever: images must be present.
	PullNever ImagePullPolicy = "never"
)

// Valid reports whether p is a known policy ("" counts as the default).
func (p ImagePullPolicy) Valid() bool {
	switch p {
	case "", PullIfValidatorAllows, PullAlways, PullNever:
		return true
	}
	return false
}

// IsImageDigest reports whether an allow-list entry is a digest
// ("sha256:" and 64 hex digits) rather than an image name.
func IsImageDigest(entry string) bool {
	h, ok := strings.CutPrefix(entry, "sha256:")
	if !ok || len(h) != 64 {
		return false
	}
	for _, c := range h {
		if !strings.ContainsRune("0123456789abcdef", c) {
			return false
		}
	}
	return true
}

// SameImageName reports whether two image references name the same image:
// equal once a missing tag is read as ":latest" and Docker Hub's implied
// prefixes ("docker.io/", "library/") are dropped.
func SameImageName(a, b string) bool {
	return a != "" && normalImageName(a) == normalImageName(b)
}

func normalImageName(s string) string {
	s = strings.TrimPrefix(s, "docker.io/")
	s = strings.TrimPrefix(s, "index.docker.io/")
	s = strings.TrimPrefix(s, "library/")
	if strings.Contains(s, "@") {
		return s
	}
	if i := strings.LastIndex(s, ":"); i < 0 || strings.Contains(s[i:], "/") {
		s += ":latest"
	}
	return s
}
