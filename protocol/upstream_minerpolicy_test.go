package protocol

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// allow_patterns as upstream's model takes it: a string, a list or null.
func TestPatterns(t *testing.T) {
	for in, want := range map[string]Patterns{`"*.json"`: {"*.json"}, `["a", "b"]`: {"a", "b"}, `null`: nil, `[]`: {}} {
		var v struct {
			P Patterns `json:"allow_patterns"`
		}
		if err := json.Unmarshal([]byte(`{"allow_patterns": `+in+`}`), &v); err != nil || !cmp.Equal(v.P, want) {
			t.Errorf("%s → %#v, %v", in, v.P, err)
		}
	}
	var v Volume
	if err := json.Unmarshal([]byte(`{"volume_type": "huggingface_volume", "repo_id": "r", "allow_patterns": 3}`), &v); err == nil {
		t.Error("a number is not a pattern")
	}
	b, _ := json.Marshal(Volume{VolumeType: VolumeHuggingFace, RepoID: "r", AllowPattern: Patterns{"x"}})
	if !strings.Contains(string(b), `"allow_patterns":["x"]`) {
		t.Errorf("written as %s", b)
	}
}

func TestIsImageDigest(t *testing.T) {
	for in, want := range map[string]bool{"sha256:" + strings.Repeat("0a", 32): true, "sha256:" + strings.Repeat("0A", 32): false, "sha256:abc": false, "llm:1": false, "": false} {
		if IsImageDigest(in) != want {
			t.Errorf("IsImageDigest(%q) != %v", in, want)
		}
	}
}

func TestUnauthorizedCodesAreUpstreams(t *testing.T) {
	// upstream's UnauthorizedError.Code enum, as in its schema.
	for _, c := range []string{UnauthorizedTokenTooOld, UnauthorizedUnknownValidator, UnauthorizedValidatorInactive} {
		if c != "TOKEN_TOO_OLD" && c != "UNKNOWN_VALIDATOR" && c != "VALIDATOR_INACTIVE" {
			t.Errorf("code %q is not upstream's", c)
		}
	}
}
