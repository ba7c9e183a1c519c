// Package promtooltest is the gate of tests that run Prometheus' promtool
// (Debian's prometheus package; .ci/prometheus installs it): with
// HORDE_PROMTOOL_TESTS=off such tests skip, otherwise they fail loudly when
// promtool is missing.
package promtooltest

import (
	"bytes"
	"os"
	"os/exec"
	"testing"
)

// Path returns promtool's path, or skips or fails the test as the gate says.
func Path(t testing.TB) string {
	t.Helper()
	if os.Getenv("HORDE_PROMTOOL_TESTS") == "off" {
		t.Skip("HORDE_PROMTOOL_TESTS=off")
	}
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool is missing (install it with `bash .ci/prometheus`, Debian's prometheus package, "+
			"or skip with HORDE_PROMTOOL_TESTS=off): %v", err)
	}
	return p
}

// CheckMetrics runs `promtool check metrics` on an exposition and fails the
// test with promtool's complaints.
func CheckMetrics(t testing.TB, name string, exposition []byte) {
	t.Helper()
	cmd := exec.Command(Path(t), "check", "metrics")
	cmd.Stdin = bytes.NewReader(exposition)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("promtool check metrics on %s: %v\n%s", name, err, out)
	}
}
