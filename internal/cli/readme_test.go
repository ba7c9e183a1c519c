package cli

import (
	"os"
	"strings"
	"testing"
)

// TestREADME keeps README.md true to the commands: its first commands are
// the two set-up commands, it shows what 'go run ./cmd/horde dev' prints,
// and it points nowhere outside the repository.
func TestREADME(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	var code []string // indented code lines, in order
	lines := map[string]bool{}
	for _, l := range strings.Split(readme, "\n") {
		if strings.HasPrefix(l, "    ") && strings.TrimSpace(l) != "" {
			code = append(code, strings.TrimSpace(l))
		}
		lines[strings.TrimSpace(l)] = true
	}
	if len(code) < 2 || code[0] != "go run ./cmd/horde dev demo" || code[1] != "bash .ci/test" {
		t.Errorf("README's first commands are %q, want the two set-up commands", code[:min(2, len(code))])
	}
	printed := devHelp("go run ./cmd/horde", "http://127.0.0.1:9000", "$PWD/.horde/dev/wallets", "http://127.0.0.1:PORT", ".horde/dev/objects")
	for _, l := range strings.Split(printed, "\n") {
		if l = strings.TrimSpace(l); l != "" && !lines[l] {
			t.Errorf("README does not show this line 'horde dev' prints:\n%s", l)
		}
	}
	// The design notes live outside; the repository's own docs/ are fine.
	inside := strings.NewReplacer("docs/PROTOCOL.md", "", "docs/ARCHITECTURE.md", "").Replace(readme)
	for _, outside := range []string{"../shared", "/work/", "PROTOCOL.md", "ARCHITECTURE.md"} {
		if strings.Contains(inside, outside) {
			t.Errorf("README points outside the repository: %q", outside)
		}
	}
}
