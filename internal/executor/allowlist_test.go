package executor

import "testing"

// The miner's allow-list for streaming jobs that come without a validator's
// pin: an image is listed by its name, its id or a repo digest.
func TestStreamingAllowList(t *testing.T) {
	id := "sha256:" + "0000000000000000000000000000000000000000000000000000000000000001"
	repo := "sha256:" + "0000000000000000000000000000000000000000000000000000000000000002"
	other := "sha256:" + "00000000000000000000000000000000000000000000000000000000000000ff"
	for _, c := range []struct {
		name    string
		allow   []string
		byName  bool
		byDigst bool
	}{
		{"by name", []string{"llm:1"}, true, false},
		{"by name, implied registry", []string{"docker.io/library/llm:1"}, true, false},
		{"by id", []string{other, id}, false, true},
		{"by repo digest", []string{repo}, false, true},
		{"not listed", []string{"llm:2", other}, false, false},
		{"a digest is not a name", []string{id}, false, true},
		{"nothing", nil, false, false},
	} {
		if got := listedByName("llm:1", c.allow); got != c.byName {
			t.Errorf("%s: by name = %v", c.name, got)
		}
		if got := listedByDigest(id, []string{"registry/llm@" + repo}, c.allow); got != c.byDigst {
			t.Errorf("%s: by digest = %v", c.name, got)
		}
	}
}
