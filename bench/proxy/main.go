// Command proxy measures, in one run, a zero-work echo service reached
// directly, through nginx (Debian's package: TLS 1.3, a required and pinned
// client certificate, kept-alive upstream, worker_processes 1) and through
// horde's signing proxy, with one load generator (client certificates,
// kept-alive connections), for 1 KiB and 64 KiB POST bodies and a
// server-sent-events reply of 200 tokens, over HTTP/1.1 and HTTP/2. Every
// row pins the load generator to one core and the service and the proxy
// under test to the other (taskset). It prints one table.
//
//	go run ./bench/proxy            # all rows, 3 s each
//	go run ./bench/proxy -d 10s -conns 32
//
// Roles run as child processes of the same binary (the first argument names
// the role), so each one's CPU time and memory can be read from /proc.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// Run runs the bench (or, with a role as the first argument, one of its processes).
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "echo", "horde", "hordenet", "gofloor", "handloop", "handsign", "load":
			return runRole(ctx, args[0], args[1:], stdout)
		}
	}
	return runBench(ctx, args, stdout, stderr)
}
