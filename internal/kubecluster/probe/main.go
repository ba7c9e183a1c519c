// Command probe reports what network a container has, for kubecluster's
// tests of Pod isolation. Put in a FROM-scratch image.
//
//	probe net ADDR…   print the interfaces, whether a default route exists,
//	                  and whether a TCP connection to each ADDR opens
//	probe unnet CMD…  delete every interface but loopback (needs
//	                  CAP_NET_ADMIN), then do CMD
package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: probe net ADDR… | probe unnet CMD…")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "net":
		report(os.Args[2:])
	case "unnet":
		if err := unnet(); err != nil {
			fmt.Fprintln(os.Stderr, "unnet:", err)
			os.Exit(1)
		}
		fmt.Println("removed every interface but lo")
		if len(os.Args) > 2 && os.Args[2] == "net" {
			report(os.Args[3:])
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown command", os.Args[1])
		os.Exit(2)
	}
}

// report prints one "key: value" line per fact.
func report(addrs []string) {
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		as, _ := i.Addrs()
		fmt.Printf("interface: %s %v\n", i.Name, as)
	}
	fmt.Printf("default-route: %v\n", defaultRoute())
	for _, a := range addrs {
		c, err := net.DialTimeout("tcp", a, 3*time.Second)
		if err != nil {
			fmt.Printf("dial %s: failed: %v\n", a, err)
			continue
		}
		c.Close()
		fmt.Printf("dial %s: connected\n", a)
	}
}

func defaultRoute() bool {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 2 && fields[1] == "00000000" {
			return true
		}
	}
	return false
}

// unnet deletes every link but loopback through rtnetlink.
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
		// nlmsghdr (16 bytes) + ifinfomsg (16 bytes)
		msg := make([]byte, 32)
		binary.NativeEndian.PutUint32(msg[0:], 32)
		binary.NativeEndian.PutUint16(msg[4:], syscall.RTM_DELLINK)
		binary.NativeEndian.PutUint16(msg[6:], syscall.NLM_F_REQUEST|syscall.NLM_F_ACK)
		binary.NativeEndian.PutUint32(msg[8:], uint32(seq+1))
		msg[16] = syscall.AF_UNSPEC
		binary.NativeEndian.PutUint32(msg[20:], uint32(i.Index))
		if err := syscall.Sendto(fd, msg, 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
			return fmt.Errorf("delete %s: %w", i.Name, err)
		}
		buf := make([]byte, 4096)
		n, _, err := syscall.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("delete %s: %w", i.Name, err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("delete %s: %w", i.Name, err)
		}
		for _, m := range msgs {
			if m.Header.Type == syscall.NLMSG_ERROR && len(m.Data) >= 4 {
				if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
					return fmt.Errorf("delete %s: %w", i.Name, syscall.Errno(-code))
				}
			}
		}
	}
	return nil
}
