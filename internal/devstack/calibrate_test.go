package devstack

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/executor/fakert"
	"github.com/horde-compute/horde/internal/images"
)

// The allowance lies half-way in ratio between the own-core and the
// shared-core time: the same factor of load moves both away from it alike.
func TestAllowance(t *testing.T) {
	for _, tc := range []struct {
		own   time.Duration
		ratio float64
		want  time.Duration
	}{
		{time.Second, 4, 2 * time.Second},
		{time.Second, 1, time.Second},
		{time.Second, 0.5, time.Second}, // shared faster than own: no less than own
		{300 * time.Millisecond, 2.25, 450 * time.Millisecond},
	} {
		if got := allowance(tc.own, tc.ratio); got != tc.want {
			t.Errorf("allowance(%s, %.2f) = %s, want %s", tc.own, tc.ratio, got, tc.want)
		}
		// Honest (own×k) and cheating (shared×k) pairs slowed by the same
		// factor k stay on their sides while k is below √ratio.
		if tc.ratio > 1 {
			k := 0.99 * float64(tc.want) / float64(tc.own)
			if honest := time.Duration(float64(tc.own) * k); honest > tc.want {
				t.Errorf("honest pair slowed %.2f× fails", k)
			}
			if cheat := time.Duration(float64(tc.own) * tc.ratio / k); cheat <= tc.want {
				t.Errorf("cheating pair sped up %.2f× passes", k)
			}
		}
	}
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median = %v", got)
	}
	if got := median([]float64{4, 1, 2, 3}); got != 2.5 {
		t.Errorf("median = %v", got)
	}
}

// Calibrate runs end to end on the fake runtime, which pins no cores: the
// two kinds of pair take about as long, so it usually reports
// ErrNoSeparation (noise may say otherwise: not asserted), and in any case
// returns usable parameters.
func TestCalibrateOnFake(t *testing.T) {
	rt := fakert.New()
	defer rt.Close(context.Background())
	images.RegisterFake(rt)
	p, err := Calibrate(t.Context(), rt, 50*time.Millisecond)
	if err != nil && !errors.Is(err, ErrNoSeparation) {
		t.Fatal(err)
	}
	t.Logf("params %+v, %v", p, err)
	if p.MatrixN < 16 || p.Expected <= 0 || p.SearchSpace == 0 {
		t.Errorf("params %+v", p)
	}
}
