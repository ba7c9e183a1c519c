// Command jobimage is the demo and test job (package jobprog) as a static
// binary, put in a FROM-scratch image (images.JobImage) so that horde runs
// real containers without a registry.
package main

import (
	"context"
	"os"

	"github.com/horde-compute/horde/internal/images/jobprog"
	"github.com/horde-compute/horde/internal/images/prog"
)

func main() {
	os.Exit(jobprog.Main(context.Background(), prog.OS(os.Args[1:])))
}
