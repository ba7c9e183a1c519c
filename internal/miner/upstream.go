package miner

// What the miner does so that upstream ComputeHorde validators can use it
// unchanged, and what it keeps for horde validators (see
// protocol/upstream_miner.go for the negotiation): auth refusals with
// upstream's codes, a manifest upstream's parser accepts, excuse receipts in
// upstream's shape, and the miner's own image policy (pulls, streaming
// images) for validators that send no horde fields.

import (
	"errors"
	"fmt"
	"slices"

	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
)

// authRefusal is the UnauthorizedError for a failed validator auth, with
// the code upstream's enum has for it: stale or replayed → TOKEN_TOO_OLD;
// a registered hotkey without a validator permit → VALIDATOR_INACTIVE;
// anything else (not registered, not the trusted validator, a bad
// signature, an auth for another miner) → UNKNOWN_VALIDATOR.
func authRefusal(err error, registered bool) *protocol.UnauthorizedError {
	code := protocol.UnauthorizedUnknownValidator
	switch {
	case errors.Is(err, wsconn.ErrStale), errors.Is(err, wsconn.ErrReplayed):
		code = protocol.UnauthorizedTokenTooOld
	case errors.Is(err, wsconn.ErrNotAllowed) && registered:
		code = protocol.UnauthorizedValidatorInactive
	}
	return &protocol.UnauthorizedError{Code: code, Details: err.Error()}
}

// registered reports whether hotkey is in the metagraph (with a permit or not).
func (m *Miner) registered(hotkey string) bool {
	if m.cfg.TrustedValidator != "" {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.meta == nil {
		return false
	}
	_, ok := m.meta.Neuron(hotkey)
	return ok
}

// manifestFor is the manifest a validator gets: the executors per class
// (upstream's classes only: Config.Validate sees to it) and, for horde
// validators, the extensions this miner speaks (upstream's model ignores
// the field); none when the miner plays upstream's.
func manifestFor(manifest map[string]int, upstreamOnly bool) *protocol.V0ExecutorManifestRequest {
	m := &protocol.V0ExecutorManifestRequest{Manifest: manifest}
	if !upstreamOnly {
		m.Capabilities = protocol.MinerCapabilities
	}
	return m
}

// imagePolicy is the miner's say on the images its executors run.
type imagePolicy struct {
	pull protocol.ImagePullPolicy
	// streaming lists the images streaming jobs without a validator's
	// digest may run, by name or by digest ("sha256:…").
	streaming []string
}

func (m *Miner) images() imagePolicy {
	return imagePolicy{pull: m.cfg.ImagePull, streaming: m.cfg.StreamingImages}
}

// forExecutor returns the initial request as the executor gets it: pulls
// as the miner's policy says, and, for a streaming job the validator did
// not pin (an upstream validator), the miner's allow-list.
func (p imagePolicy) forExecutor(req *protocol.V0InitialJobRequest) *protocol.V0InitialJobRequest {
	out := *req
	switch p.pull {
	case protocol.PullAlways:
		out.AllowPull = true
	case protocol.PullNever:
		out.AllowPull = false
	}
	out.ImageAllowList = nil
	if out.StreamingDetails != nil && out.ImageDigest == "" {
		out.ImageAllowList = slices.Clone(p.streaming)
	}
	return &out
}

// streamingRefusal says why a streaming job cannot run here before an
// executor is taken for it ("" when it may): no digest from the validator
// and nothing in the allow-list that could match its image.
func (p imagePolicy) streamingRefusal(req *protocol.V0InitialJobRequest) string {
	if req.StreamingDetails == nil || req.ImageDigest != "" {
		return ""
	}
	for _, e := range p.streaming {
		if protocol.IsImageDigest(e) || protocol.SameImageName(e, req.DockerImage) {
			return ""
		}
	}
	return fmt.Sprintf("streaming image %q is not on this miner's allow-list", req.DockerImage)
}
