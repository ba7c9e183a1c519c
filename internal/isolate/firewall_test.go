package isolate

import (
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// inNewNetns runs f on a thread in a network namespace of its own, with
// an nftables connection option that reaches it; the thread is thrown
// away after (never unlocked). Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN).
func inNewNetns(t *testing.T, f func(opt nftables.ConnOption)) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: a network namespace of its own")
	}
	done := make(chan struct{})
	go func() { // owned: waited for below
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Errorf("open the namespace: %v", err)
			return
		}
		defer unix.Close(fd)
		f(nftables.WithNetNSFd(fd))
	}()
	<-done
}

func TestFirewallInstalledAndChecked(t *testing.T) {
	allow := []netip.Addr{netip.MustParseAddr("10.222.0.1"), netip.MustParseAddr("fd00::1")}
	inNewNetns(t, func(opt nftables.ConnOption) {
		if err := check(allow, opt); err == nil {
			t.Error("check passed before any rule was installed")
		}
		if err := firewall(allow, opt); err != nil {
			t.Fatalf("firewall: %v", err)
		}
		// Installed twice (a restarted init container): the same table.
		if err := firewall(allow, opt); err != nil {
			t.Fatalf("firewall again: %v", err)
		}
		// Another allowed address than the one installed: refused.
		if err := check([]netip.Addr{netip.MustParseAddr("10.222.0.9"), allow[1]}, opt); err == nil || !strings.Contains(err.Error(), "rule 1") {
			t.Errorf("check of another address: %v", err)
		}
		c, err := nftables.New(opt)
		if err != nil {
			t.Fatal(err)
		}
		tbl := &nftables.Table{Name: Table, Family: nftables.TableFamilyINet}
		// An attacker's accept-all rule appended: the check sees it.
		chs, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			t.Fatal(err)
		}
		var input *nftables.Chain
		for _, ch := range chs {
			if ch.Name == "input" {
				input = ch
			}
		}
		rules, err := c.GetRules(tbl, input)
		if err != nil || len(rules) != 5 { // lo, two addresses, two of neighbour discovery
			t.Fatalf("input rules: %d %v", len(rules), err)
		}
		c.DelRule(rules[len(rules)-1])
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := check(allow, opt); err == nil || !strings.Contains(err.Error(), "rules") {
			t.Errorf("check after a rule was deleted: %v", err)
		}
		// A policy of accept instead of drop: the check sees it.
		accept := nftables.ChainPolicyAccept
		input.Policy = &accept
		c.AddChain(input)
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := check(allow, opt); err == nil || !strings.Contains(err.Error(), "does not drop") {
			t.Errorf("check of an accepting chain: %v", err)
		}
	})
}

func TestFirewallNeedsAnAddress(t *testing.T) {
	if err := Firewall(nil); err == nil {
		t.Error("a firewall allowing nobody was made")
	}
}

func TestSources(t *testing.T) {
	got, err := sources([]string{"10.0.0.1", "::ffff:10.0.0.2", "fd00::5"})
	if err != nil || len(got) != 3 || got[1] != netip.MustParseAddr("10.0.0.2") {
		t.Fatalf("sources: %v %v", got, err)
	}
	for _, bad := range []string{"0.0.0.0", "224.0.0.1", "fe80::1%eth0", "example.com", ""} {
		if _, err := sources([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestMainUsage(t *testing.T) {
	var out, errb strings.Builder
	for _, args := range [][]string{nil, {"service"}, {"unnet", "x"}, {"nope"}, {"service", "not-an-address"}} {
		if code := Main(t.Context(), args, nil, &out, &errb); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
}
