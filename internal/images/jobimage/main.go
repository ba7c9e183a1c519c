// Command jobimage is the demo and test job: a static binary put in a
// FROM-scratch image so that horde runs real containers without a registry.
//
//	jobimage demo             summarise /volume into /output/result.json
//	jobimage echo ARGS…       print ARGS
//	jobimage sleep SECONDS    sleep
//	jobimage exit CODE        exit with CODE (after printing to stderr)
//	jobimage net              probe for a network without sending a packet:
//	                          exit 7 if there is none (the expected case)
//	jobimage write NAME BYTES write an output file of BYTES bytes
//	jobimage env NAME         print an environment variable
//	jobimage search SALT HASH SPACE   find the secret of a synthetic search job
//	jobimage matmul SEED N            multiply two seeded n×n matrices into /artifacts
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/horde-compute/horde/internal/synthetic"
)

func main() {
	args := os.Args[1:]
	if len(args) == 0 {
		args = []string{"demo"}
	}
	switch args[0] {
	case "demo":
		demo()
	case "echo":
		fmt.Println(strings.Join(args[1:], " "))
	case "sleep":
		s, _ := strconv.ParseFloat(arg(args, 1), 64)
		time.Sleep(time.Duration(s * float64(time.Second)))
		fmt.Println("slept", s)
	case "exit":
		code, _ := strconv.Atoi(arg(args, 1))
		fmt.Fprintf(os.Stderr, "exiting with %d\n", code)
		os.Exit(code)
	case "net":
		// A UDP "connection" only looks up a route; no packet leaves. The
		// address is TEST-NET-1 (RFC 5737), which nothing answers anyway.
		c, err := net.Dial("udp", "192.0.2.1:9")
		if err != nil {
			fmt.Println("network unreachable:", err)
			os.Exit(7)
		}
		c.Close()
		fmt.Println("network reachable: a route to the outside exists")
	case "write":
		n, _ := strconv.Atoi(arg(args, 2))
		if err := os.WriteFile(filepath.Join("/output", arg(args, 1)), make([]byte, n), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("wrote", n)
	case "env":
		fmt.Println(os.Getenv(arg(args, 1)))
	case "search":
		space, _ := strconv.ParseUint(arg(args, 3), 10, 64)
		secret, ok := synthetic.FindSecret(arg(args, 1), arg(args, 2), space)
		if !ok {
			fmt.Fprintln(os.Stderr, "no secret in the search space")
			os.Exit(1)
		}
		fmt.Println(secret)
	case "matmul":
		seed, _ := strconv.ParseUint(arg(args, 1), 10, 64)
		n, _ := strconv.Atoi(arg(args, 2))
		c := synthetic.Multiply(synthetic.Inputs(seed, n))
		if err := synthetic.WriteChunks("/artifacts", c.Encode()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Printf("multiplied %dx%d\n", n, n)
	default:
		fmt.Fprintf(os.Stderr, "unknown mode %q\n", args[0])
		os.Exit(2)
	}
}

func arg(a []string, i int) string {
	if i < len(a) {
		return a[i]
	}
	return ""
}

// demo hashes every input file and writes a summary, proving volumes in and outputs out.
func demo() {
	type file struct {
		Path   string `json:"path"`
		Bytes  int    `json:"bytes"`
		SHA256 string `json:"sha256"`
		Words  int    `json:"words"`
	}
	var files []file
	filepath.WalkDir("/volume", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		sum := sha256.Sum256(b)
		files = append(files, file{Path: strings.TrimPrefix(p, "/volume/"), Bytes: len(b), SHA256: hex.EncodeToString(sum[:]), Words: len(strings.Fields(string(b)))})
		return nil
	})
	out, _ := json.MarshalIndent(map[string]any{"files": files, "host": hostname()}, "", "  ")
	if err := os.WriteFile("/output/result.json", out, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "write output:", err)
		os.Exit(1)
	}
	for _, f := range files {
		fmt.Printf("%s: %d bytes, %d words, sha256 %s\n", f.Path, f.Bytes, f.Words, f.SHA256[:16])
	}
	fmt.Printf("processed %d input files; result in /output/result.json\n", len(files))
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}
