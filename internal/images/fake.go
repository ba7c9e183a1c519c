package images

import (
	"context"

	"github.com/horde-compute/horde/internal/executor/fakert"
	"github.com/horde-compute/horde/internal/images/jobprog"
	"github.com/horde-compute/horde/internal/images/llmprog"
	"github.com/horde-compute/horde/internal/images/prog"
)

// RegisterFake gives a fake runtime horde's images under their names
// (JobImage, LLMImage), running in-process the very programs the images
// run. Their ids are fakert.ImageID of the names.
func RegisterFake(rt *fakert.Runtime) {
	rt.Register(JobImage, inProcess(jobprog.Main))
	rt.Register(LLMImage, inProcess(llmprog.Main))
}

// inProcess runs an image's program in a fake container.
func inProcess(main func(context.Context, *prog.Env) int) fakert.Program {
	return func(ctx context.Context, c *fakert.Container) int {
		return main(ctx, &prog.Env{
			Args:     c.Args,
			Getenv:   func(k string) string { return c.Env[k] },
			Path:     c.Path,
			Stdout:   c.Stdout,
			Stderr:   c.Stderr,
			Listen:   c.Listen,
			Dial:     c.Dial,
			Hostname: c.Hostname(),
		})
	}
}
