// Command kubebuild makes sure the Kubernetes and etcd binaries that horde's
// Kubernetes tests need are in the cache, building them when missing (see
// package kubebin), and prints where they are and how long it took. CI runs
// it through .ci/kube before the tests.
//
//	go run ./internal/kubecluster/kubebuild
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/horde-compute/horde/internal/kubecluster/kubebin"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "kubebuild:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, stdout, stderr io.Writer) error {
	start := time.Now()
	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	root, err := kubebin.RepoRoot(wd)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	res, err := kubebin.Ensure(ctx, root, log, stderr)
	if err != nil {
		return err
	}
	for _, b := range []string{kubebin.APIServer, kubebin.Kubelet, kubebin.Etcd} {
		v, err := kubebin.Version(ctx, res.Dir, b)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %s\n", b, v)
	}
	what := "cached"
	if res.Built {
		what = fmt.Sprintf("built in %s", res.Took.Round(time.Second))
	}
	fmt.Fprintf(stdout, "kube binaries %s in %s (%s total)\n", what, res.Dir, time.Since(start).Round(time.Millisecond))
	return nil
}
