package protocol

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// This file: what a horde miner needs to serve upstream ComputeHorde
// validators unchanged (the refusal codes, the classes and pattern forms
// upstream's models use) and the miner's own image policy for validators
// that send no horde fields (see upstream_miner.go for the negotiation).

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

// Patterns are huggingface allow_patterns: upstream's model takes a string
// or a list of strings (or null); horde always writes a list.
type Patterns []string

// UnmarshalJSON reads a string, a list of strings or null.
func (p *Patterns) UnmarshalJSON(b []byte) error {
	var s *string
	if err := json.Unmarshal(b, &s); err == nil {
		if s == nil {
			*p = nil
		} else {
			*p = Patterns{*s}
		}
		return nil
	}
	var l []string
	if err := json.Unmarshal(b, &l); err != nil {
		return fmt.Errorf("allow_patterns: want a string or a list of strings: %w", err)
	}
	*p = l
	return nil
}
