package cli

import (
	"github.com/horde-compute/horde/internal/images/jobprog"
	"github.com/horde-compute/horde/internal/images/llmprog"
	"github.com/horde-compute/horde/internal/images/prog"
)

// program runs one of the programs of horde's images ('horde program job
// …', 'horde program llm …'): the entry points of images.JobImage and
// images.LLMImage, which hold this binary alone.
func (e *env) program(args []string) error {
	if len(args) == 0 {
		return usageErr("horde program needs a program: job or llm")
	}
	main := map[string]func() int{
		"job": func() int { return jobprog.Main(e.ctx, e.progEnv(args[1:])) },
		"llm": func() int { return llmprog.Main(e.ctx, e.progEnv(args[1:])) },
	}[args[0]]
	if main == nil {
		return usageErr("unknown program %q: job or llm", args[0])
	}
	if code := main(); code != 0 {
		return &ExitError{Code: code, Err: ErrQuiet}
	}
	return nil
}

// progEnv is this process's world for an image's program, with its
// standard streams those of the command.
func (e *env) progEnv(args []string) *prog.Env {
	p := prog.OS(args)
	p.Stdout, p.Stderr = e.stdout, e.stderr
	return p
}
