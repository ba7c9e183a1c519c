package validation

import "math"

// DetectionProbability is the chance of catching a miner that cheats on a
// fraction f of its requests within n requests, when a fraction s of
// requests is replayed and each replayed cheat is caught.
func DetectionProbability(f, s float64, n int) float64 {
	return 1 - math.Pow(1-f*s, float64(n))
}

// RequestsUntilDetection is how many requests it takes to catch such a
// miner with probability p: ln(1−p) / ln(1−f·s).
func RequestsUntilDetection(p, f, s float64) float64 {
	if f*s <= 0 {
		return math.Inf(1)
	}
	return math.Log(1-p) / math.Log(1-f*s)
}
