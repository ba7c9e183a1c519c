package isolate

import (
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The firewall at work between two network namespaces joined by a veth
// pair: "node" holds the Pod's gateway (10.99.0.1) and another address on
// the same link (10.99.0.3, another Pod on the subnet); "pod" runs
// 'isolate service gateway' and listens. The gateway connects; the other
// address, one link away, is dropped both ways; the Pod cannot open a
// connection even to the gateway.
func TestServiceOnlyForTheProxy(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("needs iproute2's ip: ", err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	node, pod := "hi-node-"+hex.EncodeToString(b), "hi-pod-"+hex.EncodeToString(b)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", node)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", node).Run() })
	ip("netns", "add", pod)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", pod).Run() })
	ip("-n", node, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", pod)
	ip("-n", node, "addr", "add", "10.99.0.1/24", "dev", "v0")
	ip("-n", node, "addr", "add", "10.99.0.3/24", "dev", "v0")
	ip("-n", node, "link", "set", "v0", "up")
	ip("-n", pod, "addr", "add", "10.99.0.2/24", "dev", "v1")
	ip("-n", pod, "link", "set", "v1", "up")
	ip("-n", pod, "link", "set", "lo", "up")
	ip("-n", pod, "route", "add", "default", "via", "10.99.0.1")

	var ln net.Listener
	in(t, pod, func() {
		var out, errb strings.Builder
		if code := Main(t.Context(), []string{"service", Gateway}, nil, &out, &errb); code != 0 {
			t.Errorf("isolate service gateway: exit %d: %s", code, errb.String())
			return
		}
		var err error
		if ln, err = net.Listen("tcp", "10.99.0.2:8000"); err != nil {
			t.Error(err)
		}
	})
	if ln == nil {
		t.FailNow()
	}
	defer ln.Close()
	go func() { // owned: ends when ln closes
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "hello")
			c.Close()
		}
	}()
	dial := func(from string) error {
		var err error
		in(t, node, func() {
			d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
			var c net.Conn
			if c, err = d.Dial("tcp", "10.99.0.2:8000"); err == nil {
				_, err = io.ReadAll(c)
				c.Close()
			}
		})
		return err
	}
	if err := dial("10.99.0.1"); err != nil {
		t.Errorf("the gateway (the proxy's place) cannot reach the service: %v", err)
	}
	if err := dial("10.99.0.3"); err == nil {
		t.Error("another address on the Pod's link reached the service")
	}
	// Out of the Pod: nothing but the gateway.
	var outErr error
	in(t, pod, func() {
		var c net.Conn
		if c, outErr = net.DialTimeout("tcp", "10.99.0.3:22", 2*time.Second); outErr == nil {
			c.Close()
		}
	})
	if outErr == nil || !strings.Contains(outErr.Error(), "timeout") {
		t.Errorf("the service's Pod dialling 10.99.0.3: %v, want a timeout (dropped)", outErr)
	}
	// Nor may it open a connection to the gateway, which answers it: the
	// gateway is often the node itself (its kubelet, NodePorts).
	var nodeLn net.Listener
	in(t, node, func() {
		var err error
		if nodeLn, err = net.Listen("tcp", "10.99.0.1:10250"); err != nil {
			t.Error(err)
		}
	})
	if nodeLn == nil {
		t.FailNow()
	}
	defer nodeLn.Close()
	in(t, pod, func() {
		var c net.Conn
		if c, outErr = net.DialTimeout("tcp", "10.99.0.1:10250", 2*time.Second); outErr == nil {
			c.Close()
		}
	})
	if outErr == nil || !strings.Contains(outErr.Error(), "timeout") {
		t.Errorf("the service's Pod dialling its gateway's 10250: %v, want a timeout (dropped)", outErr)
	}
}

// in runs f on a thread in the named network namespace (ip netns); the
// thread is thrown away after.
func in(t *testing.T, name string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { // owned: waited for below
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		fd, err := unix.Open("/var/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Errorf("open netns %s: %v", name, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			t.Errorf("setns %s: %v", name, err)
			return
		}
		f()
	}()
	<-done
}
