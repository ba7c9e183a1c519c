package isolate

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Table is the name of the netfilter table (family inet) Firewall makes.
const Table = "horde_isolate"

// Firewall makes the table Table in this network namespace: two base
// chains, on the input and the output hooks, whose policy is drop and
// which accept only loopback, packets from one of allow (input) and
// answers to one of allow (output: connections it opened); ICMPv6 neighbour discovery too when an IPv6 address is
// allowed. A drop in any base chain is final whatever other tables say,
// so nothing another table holds reopens the namespace. The table is then
// read back from the kernel and compared with what was asked: a mismatch
// is an error.
func Firewall(allow []netip.Addr) error { return firewall(allow) }

// firewall is Firewall through a netlink connection made with opts (a
// test's: another namespace).
func firewall(allow []netip.Addr, opts ...nftables.ConnOption) error {
	if len(allow) == 0 {
		return errors.New("firewall: no address allowed: the proxy could not reach the service")
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("firewall: netlink: %w", err)
	}
	if old, err := c.ListTableOfFamily(Table, nftables.TableFamilyINet); err == nil && old != nil {
		c.DelTable(old) // a restarted init container: start over
	}
	t := c.AddTable(&nftables.Table{Name: Table, Family: nftables.TableFamilyINet})
	want := Rules(allow)
	for _, ch := range chains(t) {
		c.AddChain(ch)
		for _, exprs := range want[ch.Name] {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("firewall: install the rules: %w (does the Pod have CAP_NET_ADMIN, and its node's kernel nf_tables?)", err)
	}
	return check(allow, opts...)
}

// chains are the table's two base chains.
func chains(t *nftables.Table) []*nftables.Chain {
	drop := nftables.ChainPolicyDrop
	return []*nftables.Chain{
		{Name: "input", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &drop},
		{Name: "output", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &drop},
	}
}

// Rules are the rules of each chain (by name) for allow, in order.
func Rules(allow []netip.Addr) map[string][][]expr.Any {
	out := map[string][][]expr.Any{}
	v6 := false
	for _, dir := range []struct {
		chain    string
		ifKey    expr.MetaKey
		off4     uint32
		off6     uint32
		isOutput bool
	}{
		{"input", expr.MetaKeyIIFNAME, 12, 8, false},  // saddr
		{"output", expr.MetaKeyOIFNAME, 16, 24, true}, // daddr
	} {
		rules := [][]expr.Any{{
			&expr.Meta{Key: dir.ifKey, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname("lo")},
			&expr.Verdict{Kind: expr.VerdictAccept},
		}}
		for _, a := range allow {
			proto, off := byte(unix.NFPROTO_IPV4), dir.off4
			if a.Is6() {
				proto, off, v6 = unix.NFPROTO_IPV6, dir.off6, true
			}
			rule := []expr.Any{
				&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(a.BitLen() / 8)},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()},
			}
			if dir.isOutput {
				// Only answers: the service never opens a connection, not
				// even to an allowed address (the Pod's gateway is often the
				// node itself: its kubelet, NodePorts).
				rule = append(rule, established()...)
			}
			rules = append(rules, append(rule, &expr.Verdict{Kind: expr.VerdictAccept}))
		}
		if v6 {
			// Neighbour solicitation and advertisement: without them no
			// IPv6 packet reaches the proxy's address.
			for _, typ := range []byte{135, 136} {
				rules = append(rules, []expr.Any{
					&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
					&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMPV6}},
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{typ}},
					&expr.Verdict{Kind: expr.VerdictAccept},
				})
			}
		}
		out[dir.chain] = rules
	}
	return out
}

// established matches packets of a connection conntrack has seen both ways
// (or related to one, as an ICMP error is).
func established() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
}

// ifname is an interface name as the kernel compares it (IFNAMSIZ bytes).
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

// Check reads the table Table back from the kernel and says whether it
// is exactly what Firewall(allow) makes: both chains on their hooks with
// policy drop, and their rules, in order, and nothing else.
func Check(allow []netip.Addr) error { return check(allow) }

func check(allow []netip.Addr, opts ...nftables.ConnOption) error {
	c, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("firewall check: netlink: %w", err)
	}
	t, err := c.ListTableOfFamily(Table, nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("firewall check: table %s: %w", Table, err)
	}
	got, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("firewall check: chains: %w", err)
	}
	byName := map[string]*nftables.Chain{}
	for _, ch := range got {
		if ch.Table.Name == Table {
			byName[ch.Name] = ch
		}
	}
	want := Rules(allow)
	wantChains := chains(t)
	if len(byName) != len(wantChains) {
		return fmt.Errorf("firewall check: %d chains in %s, want %d", len(byName), Table, len(wantChains))
	}
	for _, w := range wantChains {
		ch := byName[w.Name]
		switch {
		case ch == nil:
			return fmt.Errorf("firewall check: no chain %s", w.Name)
		case ch.Hooknum == nil || *ch.Hooknum != *w.Hooknum || ch.Type != w.Type:
			return fmt.Errorf("firewall check: chain %s is not a filter chain on its hook", w.Name)
		case ch.Policy == nil || *ch.Policy != nftables.ChainPolicyDrop:
			return fmt.Errorf("firewall check: chain %s does not drop what no rule accepts", w.Name)
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return fmt.Errorf("firewall check: rules of %s: %w", w.Name, err)
		}
		if len(rules) != len(want[w.Name]) {
			return fmt.Errorf("firewall check: chain %s has %d rules, want %d", w.Name, len(rules), len(want[w.Name]))
		}
		for i, r := range rules {
			if !reflect.DeepEqual(r.Exprs, want[w.Name][i]) {
				return fmt.Errorf("firewall check: chain %s rule %d is %#v, want %#v", w.Name, i, r.Exprs, want[w.Name][i])
			}
		}
	}
	return nil
}
