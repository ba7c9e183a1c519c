// Package podfiles is the side inside a job's Pod of how package kube moves
// a job's directories between the executor and a Pod on any node of a
// cluster, through the Kubernetes API alone (the Pod has no network): the
// programs of the isolate image's "receive", "send" and "keep" commands.
//
//	receive NAME=DIR…  read one tar stream from stdin into the DIRs (the
//	                   executor attaches to the Pod's "files" init
//	                   container), then exit so the job container starts
//	keep               wait until stopped (the Pod's "keeper" container,
//	                   which outlives the job container, so that its
//	                   directories can still be read)
//	send NAME=DIR…     write the regular files of the DIRs to stdout as one
//	                   tar stream (run by exec in the keeper)
//
// Streams are package blob's (WriteTar, ExtractTar): what the job wrote is
// read through no link, no FIFO or device opened; the executor takes the
// stream as hostile again when it unpacks it.
package podfiles

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/horde-compute/horde/internal/blob"
)

// MaxFiles bounds the files of one stream, in and out (the uploader has
// its own, smaller bound).
const MaxFiles = 100_000

// Main runs command args[0] with the rest as its arguments; it returns the
// process's exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: receive NAME=DIR… | send NAME=DIR… | keep")
		return 2
	}
	var err error
	switch args[0] {
	case "receive":
		var dirs map[string]string
		if dirs, err = parseDirs(args[1:]); err == nil {
			td := map[string]blob.TarDir{}
			for k, v := range dirs {
				td[k] = blob.TarDir{Path: v}
			}
			err = blob.ExtractTar(ctx, stdin, td, MaxFiles)
		}
	case "send":
		var dirs map[string]string
		if dirs, err = parseDirs(args[1:]); err == nil {
			err = blob.WriteTar(ctx, stdout, dirs, MaxFiles, func(path, kind string) {
				fmt.Fprintf(stderr, "left out %s: a %s\n", path, kind)
			})
		}
	case "keep":
		ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		<-ctx.Done()
		return 0
	default:
		fmt.Fprintf(stderr, "unknown command %q: receive, send or keep\n", args[0])
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", args[0], err)
		return 1
	}
	return 0
}

// parseDirs reads NAME=DIR arguments.
func parseDirs(args []string) (map[string]string, error) {
	if len(args) == 0 {
		return nil, errors.New("no NAME=DIR given")
	}
	out := map[string]string{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" || !strings.HasPrefix(v, "/") {
			return nil, fmt.Errorf("%q: want NAME=/dir", a)
		}
		if _, err := os.Stat(v); err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, nil
}

// Args are the arguments of command (receive or send) for dirs (name → directory).
func Args(command string, dirs map[string]string) []string {
	out := []string{command}
	for _, k := range sortedKeys(dirs) {
		out = append(out, k+"="+dirs[k])
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
