// Command isolate is the init container of every job Pod that must have no
// network (package kube): it deletes every network interface of the Pod's
// network namespace but loopback, through rtnetlink, so that the job
// container, which shares that namespace and starts after it, has only lo.
// It needs CAP_NET_ADMIN and nothing else; kube builds it into a
// FROM-scratch image.
//
//	isolate unnet   delete every interface but loopback, then check none is left
package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
)

func main() {
	if len(os.Args) != 2 || os.Args[1] != "unnet" {
		fmt.Fprintln(os.Stderr, "usage: isolate unnet")
		os.Exit(2)
	}
	if err := unnet(); err != nil {
		fmt.Fprintln(os.Stderr, "isolate:", err)
		os.Exit(1)
	}
	fmt.Println("isolate: every interface but lo removed")
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
