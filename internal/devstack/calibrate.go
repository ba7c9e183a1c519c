package devstack

import (
	"context"
	"math"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/internal/miner"
	"github.com/horde-compute/horde/internal/synthetic"
	"github.com/horde-compute/horde/protocol"
)

// Calibrate sizes synthetic work for two executors of the test class on this
// machine by timing the job image in containers, as executors run it. The
// matrix side makes one job take about target alone; the allowance lies
// half-way between two jobs on their own cores and two pinned to one core (a
// miner claiming two executors with the hardware of one). For dev stacks and
// tests only, where every miner shares this machine; real classes are sized
// by configuration.
func Calibrate(ctx context.Context, cli executor.Runtime, target time.Duration) (synthetic.Params, error) {
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
		defer cli.ContainerRemove(context.WithoutCancel(ctx), id)
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
	own, err := pair("", "matmul", "1", strconv.Itoa(n))
	if err != nil {
		return synthetic.Params{}, err
	}
	shared, err := pair("0", "matmul", "1", strconv.Itoa(n))
	if err != nil {
		return synthetic.Params{}, err
	}
	p := synthetic.Calibrate(target) // the search space; timing does not rest on it
	p.MatrixN, p.Expected = n, (own+shared)/2
	return p, nil
}
