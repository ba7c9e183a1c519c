// Package prog is the world the programs of horde's images see: their
// arguments and environment, the job's directories, standard streams and the
// network. In a container (OS) it is the process's own. The in-process fake
// runtime (package fakert, through images.RegisterFake) hands the same
// programs host directories bound where the container has them, loopback
// listeners, and a network that reaches nothing; so one program's code runs in
// an image, in a test without Docker, and (later) as a subcommand of horde.
package prog

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"strconv"
)

// Env is what a program runs with. Every field is set.
type Env struct {
	// Args are the arguments after the program's name.
	Args []string
	// Getenv returns an environment variable ("" if unset).
	Getenv func(string) string
	// Path returns where a path of the container ("/output/result.json")
	// is, or an error if the container has nothing there.
	Path func(string) (string, error)
	// Stdout and Stderr are the program's standard output and error.
	Stdout, Stderr io.Writer
	// Listen listens on a TCP port of the container (all its addresses).
	Listen func(port int) (net.Listener, error)
	// Dial connects out, as far as the container's network lets it.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Hostname is the container's host name.
	Hostname string
}

// OS is the environment of this process, for a program that is the
// process: in a container, paths are the container's own.
func OS(args []string) *Env {
	host, _ := os.Hostname()
	var d net.Dialer
	return &Env{
		Args:   args,
		Getenv: os.Getenv,
		Path: func(p string) (string, error) {
			if !path.IsAbs(p) {
				return "", fmt.Errorf("%s: not an absolute path", p)
			}
			return path.Clean(p), nil
		},
		Stdout:   os.Stdout,
		Stderr:   os.Stderr,
		Listen:   func(port int) (net.Listener, error) { return net.Listen("tcp", ":"+strconv.Itoa(port)) },
		Dial:     d.DialContext,
		Hostname: host,
	}
}
