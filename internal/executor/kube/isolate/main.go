// Command isolate is the init container of every job Pod (package kube):
// the same program as 'horde program isolate' (package isolate), built
// alone so that tests can make its image from source.
package main

import (
	"context"
	"os"

	"github.com/horde-compute/horde/internal/isolate"
)

func main() { os.Exit(isolate.Main(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }
