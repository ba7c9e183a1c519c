// Package jobprog is the demo and test job: the program of the job image
// (images.JobImage), which the fake runtime also runs in-process.
//
//	demo             summarise /volume into /output/result.json
//	echo ARGS…       print ARGS
//	sleep SECONDS    sleep
//	exit CODE        exit with CODE (after printing to stderr)
//	net              probe for a network without sending a packet:
//	                 exit 7 if there is none (the expected case)
//	dial ADDR        open a TCP connection to ADDR (host:port): exit 0 if
//	                 it opens, 7 if not (the expected case for a job)
//	write NAME BYTES write an output file of BYTES zero bytes, streamed
//	random NAME BYTES write an output file of BYTES incompressible bytes
//	symlink NAME TARGET  make /output/NAME a symbolic link to TARGET
//	fifo NAME        make /output/NAME a FIFO (a named pipe)
//	env NAME         print an environment variable
//	search SALT HASH SPACE   find the secret of a synthetic search job
//	matmul SEED N            multiply two seeded n×n matrices into /artifacts
//
// symlink and fifo take an absolute NAME as a path of the container
// (/artifacts/x). Every mode ends when ctx does, as a killed container
// would. What a mode shows depends on where it runs: in a container, net probes the
// container's real network; in the fake runtime it only asks the fake, which
// says there is none, and search and matmul take this process's CPU, with
// no class limits, so their timing means nothing.
package jobprog

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/horde-compute/horde/internal/images/prog"
	"github.com/horde-compute/horde/internal/synthetic"
)

// Main runs the program and returns its exit code.
func Main(ctx context.Context, e *prog.Env) int {
	args := e.Args
	if len(args) == 0 {
		args = []string{"demo"}
	}
	fail := func(code int, err error) int {
		fmt.Fprintln(e.Stderr, err)
		return code
	}
	switch args[0] {
	case "demo":
		if err := demo(e); err != nil {
			return fail(1, err)
		}
	case "echo":
		fmt.Fprintln(e.Stdout, strings.Join(args[1:], " "))
	case "sleep":
		s, _ := strconv.ParseFloat(arg(args, 1), 64)
		t := time.NewTimer(time.Duration(s * float64(time.Second)))
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return fail(1, ctx.Err())
		}
		fmt.Fprintln(e.Stdout, "slept", s)
	case "exit":
		code, _ := strconv.Atoi(arg(args, 1))
		fmt.Fprintf(e.Stderr, "exiting with %d\n", code)
		return code
	case "net":
		// A UDP "connection" only looks up a route; no packet leaves. The
		// address is TEST-NET-1 (RFC 5737), which nothing answers anyway.
		c, err := e.Dial(ctx, "udp", "192.0.2.1:9")
		if err != nil {
			fmt.Fprintln(e.Stdout, "network unreachable:", err)
			return 7
		}
		c.Close()
		fmt.Fprintln(e.Stdout, "network reachable: a route to the outside exists")
	case "dial":
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := e.Dial(dctx, "tcp", arg(args, 1))
		cancel()
		if err != nil {
			fmt.Fprintln(e.Stdout, "dial failed:", err)
			return 7
		}
		c.Close()
		fmt.Fprintln(e.Stdout, "dial connected to", arg(args, 1))
	case "write", "random":
		n, _ := strconv.ParseInt(arg(args, 2), 10, 64)
		wrote, err := writeOutput(ctx, e, arg(args, 1), n, args[0] == "random")
		if err != nil {
			fmt.Fprintln(e.Stdout, "wrote", wrote)
			return fail(1, err)
		}
		fmt.Fprintln(e.Stdout, "wrote", wrote)
	case "symlink":
		p, err := e.Path(outputPath(arg(args, 1)))
		if err == nil {
			err = os.Symlink(arg(args, 2), p)
		}
		if err != nil {
			return fail(1, err)
		}
		fmt.Fprintln(e.Stdout, "linked", arg(args, 1), "to", arg(args, 2))
	case "fifo":
		p, err := e.Path(outputPath(arg(args, 1)))
		if err == nil {
			err = syscall.Mkfifo(p, 0o644)
		}
		if err != nil {
			return fail(1, err)
		}
		fmt.Fprintln(e.Stdout, "made FIFO", arg(args, 1))
	case "env":
		fmt.Fprintln(e.Stdout, e.Getenv(arg(args, 1)))
	case "search":
		space, _ := strconv.ParseUint(arg(args, 3), 10, 64)
		secret, ok, err := synthetic.FindSecretContext(ctx, arg(args, 1), arg(args, 2), space)
		if err != nil {
			return fail(1, err)
		}
		if !ok {
			fmt.Fprintln(e.Stderr, "no secret in the search space")
			return 1
		}
		fmt.Fprintln(e.Stdout, secret)
	case "matmul":
		seed, _ := strconv.ParseUint(arg(args, 1), 10, 64)
		n, _ := strconv.Atoi(arg(args, 2))
		a, b := synthetic.Inputs(seed, n)
		c, err := synthetic.MultiplyContext(ctx, a, b)
		if err != nil {
			return fail(1, err)
		}
		dir, err := e.Path("/artifacts")
		if err == nil {
			err = synthetic.WriteChunks(dir, c.Encode())
		}
		if err != nil {
			return fail(1, err)
		}
		fmt.Fprintf(e.Stdout, "multiplied %dx%d\n", n, n)
	default:
		fmt.Fprintf(e.Stderr, "unknown mode %q\n", args[0])
		return 2
	}
	return 0
}

// writeOutput writes n bytes to /output/name a chunk at a time (a job
// filling a disk holds no more than a chunk in memory): zeros, or with
// random, bytes from a seeded ChaCha8 stream, which no compressor shrinks.
// It returns what was written, also when the disk refuses more.
func writeOutput(ctx context.Context, e *prog.Env, name string, n int64, random bool) (int64, error) {
	p, err := e.Path(filepath.Join("/output", name))
	if err != nil {
		return 0, err
	}
	f, err := os.Create(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	rng := rand.NewChaCha8([32]byte{'h', 'o', 'r', 'd', 'e'})
	var wrote int64
	for wrote < n {
		if err := ctx.Err(); err != nil {
			return wrote, err
		}
		chunk := buf[:min(int64(len(buf)), n-wrote)]
		if random {
			rng.Read(chunk)
		}
		k, err := f.Write(chunk)
		wrote += int64(k)
		if err != nil {
			return wrote, err
		}
	}
	return wrote, f.Close()
}

// outputPath is name under /output, or name itself if absolute.
func outputPath(name string) string {
	if filepath.IsAbs(name) {
		return name
	}
	return filepath.Join("/output", name)
}

func arg(a []string, i int) string {
	if i < len(a) {
		return a[i]
	}
	return ""
}

// demo hashes every input file and writes a summary, proving volumes in and outputs out.
func demo(e *prog.Env) error {
	type file struct {
		Path   string `json:"path"`
		Bytes  int    `json:"bytes"`
		SHA256 string `json:"sha256"`
		Words  int    `json:"words"`
	}
	volume, err := e.Path("/volume")
	if err != nil {
		return err
	}
	output, err := e.Path("/output")
	if err != nil {
		return err
	}
	var files []file
	filepath.WalkDir(volume, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(volume, p)
		sum := sha256.Sum256(b)
		files = append(files, file{Path: filepath.ToSlash(rel), Bytes: len(b), SHA256: hex.EncodeToString(sum[:]), Words: len(strings.Fields(string(b)))})
		return nil
	})
	out, _ := json.MarshalIndent(map[string]any{"files": files, "host": e.Hostname}, "", "  ")
	if err := os.WriteFile(filepath.Join(output, "result.json"), out, 0o644); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	for _, f := range files {
		fmt.Fprintf(e.Stdout, "%s: %d bytes, %d words, sha256 %s\n", f.Path, f.Bytes, f.Words, f.SHA256[:16])
	}
	fmt.Fprintf(e.Stdout, "processed %d input files; result in /output/result.json\n", len(files))
	return nil
}
