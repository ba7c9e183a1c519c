package validation

import (
	"math"
	"testing"
)

func TestDetectionTheory(t *testing.T) {
	// f = 10 %, s = 1 %, P = 99 %: about 4,603 requests.
	n := RequestsUntilDetection(0.99, 0.10, 0.01)
	if math.Abs(n-4603.2) > 1 {
		t.Errorf("requests until detection = %.1f", n)
	}
	if p := DetectionProbability(0.10, 0.01, int(math.Ceil(n))); p < 0.99 || p > 0.9901 {
		t.Errorf("probability after %v requests = %v", n, p)
	}
	if !math.IsInf(RequestsUntilDetection(0.99, 0, 0.01), 1) {
		t.Error("an honest miner is caught eventually")
	}
}
