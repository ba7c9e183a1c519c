// Package synthetic makes the jobs validators use to verify the hardware
// miners claim: each generator yields a job whose answer the validator knows
// or can check cheaply, a checker, and the time the class should take.
package synthetic

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/horde-compute/horde/protocol"
)

// ErrWrongAnswer marks a result that fails its check.
var ErrWrongAnswer = errors.New("wrong answer")

// Result is what a synthetic job returned.
type Result struct {
	Stdout    string
	Artifacts map[string]string
}

// Task is one synthetic job and how to judge it.
type Task struct {
	Generator    string
	Args         []string
	ArtifactsDir string
	// Expected is how long the execution should take on the class at most.
	Expected time.Duration
	Check    func(Result) error
}

// Params size the work for one executor class.
type Params struct {
	// SearchSpace is the number of candidates a search job tries at most.
	SearchSpace uint64
	// MatrixN is the side of the matrices a matmul job multiplies.
	MatrixN int
	// Expected bounds a job's execution time on an honest executor of the class.
	Expected time.Duration
	// Weight multiplies the class's executor-seconds in scores.
	Weight float64
}

// DefaultParams sizes work per class. CPU classes run for real; GPU classes
// are sized by configuration (these numbers are for the test image on CPUs).
func DefaultParams() map[string]Params {
	return map[string]Params{
		protocol.ClassTest:            {SearchSpace: 200_000, MatrixN: 192, Expected: 5 * time.Second, Weight: 1},
		protocol.ClassCPU8c16gb:       {SearchSpace: 2_000_000, MatrixN: 512, Expected: 20 * time.Second, Weight: 2},
		protocol.ClassGPU24:           {SearchSpace: 2_000_000, MatrixN: 512, Expected: 20 * time.Second, Weight: 10},
		protocol.ClassSpinUp4minGPU24: {SearchSpace: 2_000_000, MatrixN: 512, Expected: 20 * time.Second, Weight: 8},
		protocol.ClassLLMA6000:        {SearchSpace: 2_000_000, MatrixN: 512, Expected: 20 * time.Second, Weight: 10},
	}
}

// Generator makes synthetic tasks.
type Generator interface {
	Name() string
	Generate(p Params, rng *rand.Rand) Task
}

// Search is a known-answer search: the validator picks a secret, publishes
// its salted hash and the search space; the job must find the secret. Costly
// to compute, one comparison to check.
type Search struct{}

// Name implements Generator.
func (Search) Name() string { return "search" }

// Generate implements Generator.
func (Search) Generate(p Params, rng *rand.Rand) Task {
	secret := rng.Uint64N(p.SearchSpace)
	salt := fmt.Sprintf("%016x:", rng.Uint64())
	want := strconv.FormatUint(secret, 10)
	return Task{
		Generator: "search",
		Args:      []string{"search", salt, SearchHash(salt, secret), strconv.FormatUint(p.SearchSpace, 10)},
		Expected:  p.Expected,
		Check: func(r Result) error {
			lines := strings.Fields(r.Stdout)
			if len(lines) == 0 {
				return fmt.Errorf("%w: no answer printed", ErrWrongAnswer)
			}
			if got := lines[len(lines)-1]; got != want {
				return fmt.Errorf("%w: answered %.20q", ErrWrongAnswer, got)
			}
			return nil
		},
	}
}

// Matmul multiplies two seeded matrices sized to the class; the validator
// checks the product with Freivalds' algorithm in O(n²).
type Matmul struct{}

// Name implements Generator.
func (Matmul) Name() string { return "matmul" }

// Generate implements Generator.
func (Matmul) Generate(p Params, rng *rand.Rand) Task {
	seed, checkSeed, n := rng.Uint64(), rng.Uint64(), p.MatrixN
	const dir = "/artifacts"
	return Task{
		Generator:    "matmul",
		Args:         []string{"matmul", strconv.FormatUint(seed, 10), strconv.Itoa(n)},
		ArtifactsDir: dir,
		Expected:     p.Expected,
		Check: func(r Result) error {
			raw, err := JoinChunks(r.Artifacts, dir)
			if err != nil {
				return fmt.Errorf("%w: %v", ErrWrongAnswer, err)
			}
			c, ok := DecodeMatrix(raw, n)
			if !ok {
				return fmt.Errorf("%w: product is %d bytes, want a %dx%d matrix mod p", ErrWrongAnswer, len(raw), n, n)
			}
			a, b := Inputs(seed, n)
			if !Freivalds(a, b, c, checkSeed, 2) {
				return fmt.Errorf("%w: product fails Freivalds' check", ErrWrongAnswer)
			}
			return nil
		},
	}
}

// Generators are the generators validators use by default, one per round in
// turn. Matmul comes first: its cost is fixed, so its time tells shared
// hardware apart; a search's cost depends on where the secret lies.
func Generators() []Generator { return []Generator{Matmul{}, Search{}} }

// Calibrate sizes a search to take about target on one core of this
// machine and a matrix product likewise, measured in this process; a job may
// take 1.5 × target plus 100 ms. Real classes are sized by configuration;
// dev stacks measure the job image in a container instead (devstack).
func Calibrate(target time.Duration) Params {
	const probe = 160
	a, b := Inputs(1, probe)
	start := time.Now()
	Multiply(a, b)
	perCube := float64(time.Since(start)) / (probe * probe * probe)
	n := int(math.Cbrt(float64(target) / perCube))
	start = time.Now()
	const hashes = 200_000
	FindSecret("calibrate:", SearchHash("calibrate:", hashes), hashes+1)
	perHash := float64(time.Since(start)) / hashes
	return Params{MatrixN: max(n, 16), SearchSpace: uint64(max(float64(target)/perHash, 1000)),
		Expected: target*3/2 + 100*time.Millisecond, Weight: 1}
}
