package cli

import (
	"os"

	"github.com/horde-compute/horde/internal/images/jobprog"
	"github.com/horde-compute/horde/internal/images/llmprog"
	"github.com/horde-compute/horde/internal/images/prog"
	"github.com/horde-compute/horde/internal/isolate"
)

// program runs one of the programs of horde's images ('horde program job
// …', 'horde program llm …', 'horde program isolate …'): the entry points
// of images.JobImage, images.LLMImage and images.IsolateImage, which hold
// this binary alone.
func (e *env) program(args []string) error {
	if len(args) == 0 {
		return usageErr("horde program needs a program: job, llm or isolate")
	}
	main := map[string]func() int{
		"job": func() int { return jobprog.Main(e.ctx, e.progEnv(args[1:])) },
		"llm": func() int { return llmprog.Main(e.ctx, e.progEnv(args[1:])) },
		// The init container of Kubernetes job Pods (package kube).
		"isolate": func() int { return isolate.Main(e.ctx, args[1:], os.Stdin, e.stdout, e.stderr) },
	}[args[0]]
	if main == nil {
		return usageErr("unknown program %q: job, llm or isolate", args[0])
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
