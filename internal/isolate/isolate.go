// Package isolate takes a job Pod's network away from inside the Pod: it is
// the program of the Pod's init container (package kube), which shares the
// Pod's network namespace with the job container and runs before it, with
// CAP_NET_ADMIN alone; the job container never has that capability, so it
// can undo none of it. It needs no policy engine in the cluster: the
// kernel of the Pod's node enforces what it sets up.
//
//	isolate unnet            delete every interface but loopback, then check
//	                         none is left (jobs without network)
//	isolate noroute          delete every default route (IPv4 and IPv6),
//	                         then check none is left
//	isolate service FROM...  noroute, then a netfilter table in the Pod's
//	                         namespace that accepts only loopback and
//	                         traffic from and to the FROM addresses (the
//	                         executor's signing proxy, as the Pod sees it
//	                         connect) and drops everything else; read back
//	                         through netlink and checked before it exits.
//	                         FROM "gateway" is the Pod's default gateway
//	                         (what a proxy on the Pod's node connects from)
//
// The same image moves a job's directories in and out of its Pod when they
// are copied through the API server (package podfiles):
//
//	isolate receive NAME=DIR…  one tar stream from stdin into the DIRs
//	isolate send NAME=DIR…     the DIRs' regular files to stdout as one tar stream
//	isolate keep               wait until stopped
//
// It is 'horde program isolate' in the image horde makes from its own
// binary, and command internal/executor/kube/isolate for tests.
package isolate

import (
	"context"
	"fmt"
	"io"
	"net/netip"

	"github.com/horde-compute/horde/internal/executor/kube/podfiles"
)

// Gateway, given as a FROM address, stands for the Pod's default gateway.
const Gateway = "gateway"

const usage = "usage: isolate unnet | isolate noroute | isolate service FROM... (an address or gateway) | isolate receive|send NAME=DIR... | isolate keep"

// Main runs the program with args (without its name) and returns its exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	switch args[0] {
	case "receive", "send", "keep":
		return podfiles.Main(ctx, args, stdin, stdout, stderr)
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "isolate:", err)
		return 1
	}
	switch {
	case args[0] == "unnet" && len(args) == 1:
		if err := unnet(); err != nil {
			return fail(err)
		}
		fmt.Fprintln(stdout, "isolate: every interface but lo removed")
	case args[0] == "noroute" && len(args) == 1:
		if err := noroute(); err != nil {
			return fail(err)
		}
		fmt.Fprintln(stdout, "isolate: every default route removed")
	case args[0] == "service" && len(args) > 1:
		from, err := sources(args[1:])
		if err != nil {
			fmt.Fprintln(stderr, "isolate:", err)
			fmt.Fprintln(stderr, usage)
			return 2
		}
		if err := noroute(); err != nil {
			return fail(err)
		}
		if err := Firewall(from); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "isolate: every default route removed; only lo and %v in and out, checked\n", from)
	default:
		fmt.Fprintln(stderr, usage)
		return 2
	}
	return 0
}

// sources parses FROM arguments; "gateway" is read from the routing table
// (so before noroute runs).
func sources(args []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, a := range args {
		if a == Gateway {
			gw, err := gateway()
			if err != nil {
				return nil, err
			}
			out = append(out, gw)
			continue
		}
		ip, err := netip.ParseAddr(a)
		if err != nil || ip.Zone() != "" || ip.IsUnspecified() || ip.IsMulticast() {
			return nil, fmt.Errorf("FROM %q: want a unicast address or %s", a, Gateway)
		}
		out = append(out, ip.Unmap())
	}
	return out, nil
}
