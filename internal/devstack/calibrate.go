package devstack

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/internal/miner"
	"github.com/horde-compute/horde/internal/synthetic"
	"github.com/horde-compute/horde/protocol"
)

// ErrNoSeparation is returned by Calibrate, with usable parameters, when
// two jobs pinned to one core were not clearly slower than two on their own
// cores: on this machine (loaded, or with one free core) the synthetic check
// cannot tell an honest miner from one claiming two executors on one core.
var ErrNoSeparation = errors.New("shared-core jobs are not clearly slower than jobs on their own cores")

// minSeparation is the ratio of the shared-core time to the own-core time
// below which Calibrate reports ErrNoSeparation.
const minSeparation = 1.4

// calibrationRounds is how many times the pair of measurements is repeated.
const calibrationRounds = 3

// Calibrate sizes synthetic work for two executors of the test class on this
// machine by timing the job image in containers, as executors run it. The
// matrix side makes one job take about target alone. Then, in each of a few
// rounds, two jobs on their own cores and two pinned to one core (a miner
// claiming two executors with the hardware of one) run back to back, so
// both see the same load, and their ratio is taken within the round. The
// allowance is the own-core time times the square root of the median ratio:
// half-way in ratio, so that a load that slows every job by the same factor
// moves honest and cheating miners alike away from it, by the same margin.
// Calibrate takes at most a few minutes plus 40 × target. For dev stacks and
// tests only, where every miner shares this machine; real classes are sized
// by configuration.
func Calibrate(ctx context.Context, cli executor.Runtime, target time.Duration) (synthetic.Params, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute+40*target)
	defer cancel()
	run := func(cpuset string, args ...string) (time.Duration, error) {
		dir, err := os.MkdirTemp("", "horde-calibrate-")
		if err != nil {
			return 0, err
		}
		defer os.RemoveAll(dir)
		class := miner.DefaultClasses()[protocol.ClassTest]
		class.CPUSet = cpuset
		req := &protocol.V0JobRequest{JobUUID: "calibrate", DockerImage: images.JobImage, DockerRunCmd: args, ArtifactsDir: "/artifacts"}
		cfg := executor.ContainerConfig(req, class, executor.Paths{Volume: dir, Output: dir, Artifacts: dir}, "calibrate")
		start := time.Now()
		id, err := cli.ContainerCreate(ctx, "", cfg)
		if err != nil {
			return 0, err
		}
		defer func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			cli.ContainerRemove(rctx, id)
		}()
		if err := cli.ContainerStart(ctx, id); err != nil {
			return 0, err
		}
		if _, err := cli.ContainerWait(ctx, id); err != nil {
			return 0, err
		}
		return time.Since(start), nil
	}
	pair := func(cpuset string, args ...string) (time.Duration, error) {
		var mu sync.Mutex
		var worst time.Duration
		var first error
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() {
				d, err := run(cpuset, args...)
				mu.Lock()
				defer mu.Unlock()
				worst = max(worst, d)
				if first == nil {
					first = err
				}
			})
		}
		wg.Wait()
		return worst, first
	}
	base, err := run("", "echo")
	if err != nil {
		return synthetic.Params{}, err
	}
	const probe = 400
	t, err := run("", "matmul", "1", strconv.Itoa(probe))
	if err != nil {
		return synthetic.Params{}, err
	}
	n := max(int(probe*math.Cbrt(float64(target)/float64(max(t-base, time.Millisecond)))), 16)
	var owns, ratios []float64
	for range calibrationRounds {
		own, err := pair("", "matmul", "1", strconv.Itoa(n))
		if err != nil {
			return synthetic.Params{}, fmt.Errorf("calibrate: %w", err)
		}
		shared, err := pair("0", "matmul", "1", strconv.Itoa(n))
		if err != nil {
			return synthetic.Params{}, fmt.Errorf("calibrate: %w", err)
		}
		owns = append(owns, float64(own))
		ratios = append(ratios, float64(shared)/float64(max(own, time.Millisecond)))
	}
	own, ratio := median(owns), median(ratios)
	p := synthetic.Calibrate(target) // the search space; timing does not rest on it
	p.MatrixN, p.Expected = n, allowance(time.Duration(own), ratio)
	if ratio < minSeparation {
		return p, fmt.Errorf("calibrate: %w (ratio %.2f, want ≥ %.2f)", ErrNoSeparation, ratio, minSeparation)
	}
	return p, nil
}

// allowance is how long an honest pair may take: own, the time of two jobs
// on their own cores, times the square root of ratio, how many times longer
// two jobs pinned to one core took (at least own).
func allowance(own time.Duration, ratio float64) time.Duration {
	return time.Duration(float64(own) * math.Sqrt(max(ratio, 1)))
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
