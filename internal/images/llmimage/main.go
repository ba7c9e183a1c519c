// Command llmimage is the demo streaming service (package llmprog) as a
// static binary, put in a FROM-scratch image (images.LLMImage).
package main

import (
	"context"
	"os"

	"github.com/horde-compute/horde/internal/images/llmprog"
	"github.com/horde-compute/horde/internal/images/prog"
)

func main() {
	os.Exit(llmprog.Main(context.Background(), prog.OS(os.Args[1:])))
}
