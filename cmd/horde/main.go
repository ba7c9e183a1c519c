// Command horde runs every role of horde; see 'horde help'.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/horde-compute/horde/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err == nil {
		return
	}
	code := 1
	var ee *cli.ExitError
	if errors.As(err, &ee) {
		code = ee.Code
	}
	if !errors.Is(err, flag.ErrHelp) && !errors.Is(err, cli.ErrQuiet) {
		fmt.Fprintln(os.Stderr, "horde:", err)
	}
	os.Exit(code)
}
