// Command isolate is the init container of every job Pod that must have no
// network (package kube): it deletes every network interface of the Pod's
// network namespace but loopback, through rtnetlink, so that the job
// container, which shares that namespace and starts after it, has only lo.
// It needs CAP_NET_ADMIN and nothing else; kube builds it into a
// FROM-scratch image.
//
//	isolate unnet    delete every interface but loopback, then check none is left
//	isolate noroute  delete every default route (IPv4 and IPv6), then check
//	                 none is left: only the Pod's own subnet stays reachable
//	                 (a streaming job's service, which the executor's proxy
//	                 reaches on the Pod's address)
//
// The same image moves a job's directories in and out of its Pod (package
// podfiles):
//
//	isolate receive NAME=DIR…  one tar stream from stdin into the DIRs
//	isolate send NAME=DIR…     the DIRs' regular files to stdout as one tar stream
//	isolate keep               wait until stopped
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/horde-compute/horde/internal/executor/kube/podfiles"
)

func main() {
	if len(os.Args) >= 2 && (os.Args[1] == "receive" || os.Args[1] == "send" || os.Args[1] == "keep") {
		os.Exit(podfiles.Main(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	if len(os.Args) != 2 || (os.Args[1] != "unnet" && os.Args[1] != "noroute") {
		fmt.Fprintln(os.Stderr, "usage: isolate unnet | isolate noroute")
		os.Exit(2)
	}
	if os.Args[1] == "noroute" {
		if err := noroute(); err != nil {
			fmt.Fprintln(os.Stderr, "isolate:", err)
			os.Exit(1)
		}
		fmt.Println("isolate: every default route removed")
		return
	}
	if err := unnet(); err != nil {
		fmt.Fprintln(os.Stderr, "isolate:", err)
		os.Exit(1)
	}
	fmt.Println("isolate: every interface but lo removed")
}

// noroute deletes default routes of both families until none is left.
func noroute() error {
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, syscall.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return err
	}
	seq := uint32(0)
	for _, family := range []byte{syscall.AF_INET, syscall.AF_INET6} {
		for i := 0; ; i++ {
			if i > 64 {
				return fmt.Errorf("default routes of family %d keep coming back", family)
			}
			seq++
			// nlmsghdr (16 bytes) + rtmsg (12 bytes): dst_len 0, the main
			// table, any scope, protocol and type: a default route.
			msg := make([]byte, 28)
			binary.NativeEndian.PutUint32(msg[0:], 28)
			binary.NativeEndian.PutUint16(msg[4:], syscall.RTM_DELROUTE)
			binary.NativeEndian.PutUint16(msg[6:], syscall.NLM_F_REQUEST|syscall.NLM_F_ACK)
			binary.NativeEndian.PutUint32(msg[8:], seq)
			msg[16] = family
			msg[20] = syscall.RT_TABLE_MAIN
			msg[22] = syscall.RT_SCOPE_NOWHERE
			err := ask(fd, msg)
			if errors.Is(err, syscall.ESRCH) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EAFNOSUPPORT) {
				break // none left (or no IPv6 here)
			}
			if err != nil {
				return fmt.Errorf("delete a default route: %w", err)
			}
		}
	}
	for _, f := range []string{"/proc/net/route"} {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			if fields := strings.Fields(line); len(fields) > 7 && fields[1] == "00000000" && fields[7] == "00000000" {
				return fmt.Errorf("a default route is still there: %s", line)
			}
		}
	}
	return nil
}

// unnet deletes every link but loopback, then checks that only loopback is left.
func unnet() error {
	ifs, err := net.Interfaces()
	if err != nil {
		return err
	}
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, syscall.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return err
	}
	for seq, i := range ifs {
		if i.Flags&net.FlagLoopback != 0 {
			continue
		}
		if err := dellink(fd, uint32(seq+1), i.Index); err != nil {
			return fmt.Errorf("delete %s: %w", i.Name, err)
		}
	}
	left, err := net.Interfaces()
	if err != nil {
		return err
	}
	for _, i := range left {
		if i.Flags&net.FlagLoopback == 0 {
			return fmt.Errorf("interface %s is still there", i.Name)
		}
	}
	return nil
}

// dellink sends RTM_DELLINK for index and reads the kernel's answer.
func dellink(fd int, seq uint32, index int) error {
	// nlmsghdr (16 bytes) + ifinfomsg (16 bytes)
	msg := make([]byte, 32)
	binary.NativeEndian.PutUint32(msg[0:], 32)
	binary.NativeEndian.PutUint16(msg[4:], syscall.RTM_DELLINK)
	binary.NativeEndian.PutUint16(msg[6:], syscall.NLM_F_REQUEST|syscall.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], seq)
	msg[16] = syscall.AF_UNSPEC
	binary.NativeEndian.PutUint32(msg[20:], uint32(index))
	return ask(fd, msg)
}

// ask sends one netlink request and reads the kernel's acknowledgement.
func ask(fd int, msg []byte) error {
	if err := syscall.Sendto(fd, msg, 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	n, _, err := syscall.Recvfrom(fd, buf, 0)
	if err != nil {
		return err
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if m.Header.Type == syscall.NLMSG_ERROR && len(m.Data) >= 4 {
			if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
				return syscall.Errno(-code)
			}
			return nil
		}
	}
	return errors.New("no answer from the kernel")
}
