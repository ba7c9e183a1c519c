package blob

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrDestination marks a URL or address that job data may not be fetched
// from or sent to: a scheme other than http/https, or an address that is not
// public and not on the operator's allow-list.
var ErrDestination = errors.New("destination refused")

// DialGuard decides where job data may go: volume and upload URLs come from
// clients, and without it a client could make the miner's host fetch its own
// loopback services, its LAN or a cloud metadata endpoint and read the
// answer back through the job (SSRF).
//
// Every connection is checked when it is dialled, after DNS, on the address
// actually connected to (so DNS rebinding and redirects gain nothing):
// loopback, unspecified, link-local, private (RFC 1918), shared (CGNAT
// 100.64/10), unique-local, multicast and reserved addresses, and
// IPv4-mapped, NAT64 and 6to4 forms of them, are refused unless the
// operator's allow-list names them. Redirects are followed only to http and
// https. Environment proxies are never used (the guard must see the real
// destination).
//
// A nil *DialGuard allows only public addresses.
type DialGuard struct {
	prefixes  []netip.Prefix          // any port on these
	addrPorts map[netip.AddrPort]bool // this address and port
	hostPorts map[string]bool         // this name and port, as dialled
	entries   []string                // as given, for String
	once      sync.Once
	client    *http.Client
}

// NewDialGuard returns a guard that also allows the listed destinations:
// CIDR prefixes ("10.0.0.0/8", "fd00::/8", any port), addresses
// ("192.168.1.5", any port), or host:port ("127.0.0.1:9000", "[::1]:9000",
// "minio:9000": that port only; a name is matched as the URL names it).
func NewDialGuard(allow ...string) (*DialGuard, error) {
	g := &DialGuard{addrPorts: map[netip.AddrPort]bool{}, hostPorts: map[string]bool{}}
	for _, e := range allow {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		g.entries = append(g.entries, e)
		if p, err := netip.ParsePrefix(e); err == nil {
			p = p.Masked()
			if p.Addr().Is4In6() {
				p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			}
			g.prefixes = append(g.prefixes, p)
			continue
		}
		if a, err := netip.ParseAddr(e); err == nil {
			a = a.Unmap().WithZone("")
			g.prefixes = append(g.prefixes, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		if ap, err := netip.ParseAddrPort(e); err == nil {
			g.addrPorts[netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())] = true
			continue
		}
		host, port, err := net.SplitHostPort(e)
		if n, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil || n == 0 || host == "" || strings.ContainsAny(host, "/ ") {
			return nil, fmt.Errorf("allow-list entry %q: want a CIDR prefix (10.0.0.0/8), an address (192.168.1.5) or host:port (minio:9000)", e)
		}
		g.hostPorts[strings.ToLower(host)+":"+port] = true
	}
	return g, nil
}

// String lists the allow-list.
func (g *DialGuard) String() string {
	if g == nil || len(g.entries) == 0 {
		return "public addresses only"
	}
	return "public addresses and " + strings.Join(g.entries, ", ")
}

// Check says whether a connection to ap may be made; host is the name that
// was dialled (the URL's host).
func (g *DialGuard) Check(host string, ap netip.AddrPort) error {
	a := ap.Addr().Unmap().WithZone("")
	ap = netip.AddrPortFrom(a, ap.Port())
	if g != nil {
		if g.hostPorts[strings.ToLower(host)+":"+strconv.Itoa(int(ap.Port()))] || g.addrPorts[ap] {
			return nil
		}
		for _, p := range g.prefixes {
			if p.Contains(a) {
				return nil
			}
		}
	}
	if k := special(a); k != "" {
		return fmt.Errorf("%w: %s is not a public address (%s) and not on the operator's allow-list", ErrDestination, ap, k)
	}
	return nil
}

type namedPrefix struct {
	p    netip.Prefix
	kind string
}

var specialPrefixes = func() []namedPrefix {
	var out []namedPrefix
	for _, e := range []struct{ kind, prefixes string }{
		{"unspecified", "0.0.0.0/8 ::/128"},
		{"loopback", "127.0.0.0/8 ::1/128"},
		{"private", "10.0.0.0/8 172.16.0.0/12 192.168.0.0/16"},
		{"shared (CGNAT)", "100.64.0.0/10"},
		{"link-local", "169.254.0.0/16 fe80::/10"},
		{"unique-local", "fc00::/7 fec0::/10"},
		{"multicast", "224.0.0.0/4 ff00::/8"},
		{"reserved", "192.0.0.0/24 198.18.0.0/15 240.0.0.0/4 ::/96 64:ff9b:1::/48 100::/64 2001::/32 2001:db8::/32"},
	} {
		for _, s := range strings.Fields(e.prefixes) {
			out = append(out, namedPrefix{netip.MustParsePrefix(s), e.kind})
		}
	}
	return out
}()

var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// special names the kind of a non-public address, or returns "".
func special(a netip.Addr) string {
	a = a.Unmap()
	// IPv6 forms that carry an IPv4 address reach that address.
	if a.Is6() {
		b := a.As16()
		switch {
		case nat64.Contains(a):
			if k := special(netip.AddrFrom4([4]byte(b[12:16]))); k != "" {
				return k + " (through NAT64)"
			}
		case sixToFour.Contains(a):
			if k := special(netip.AddrFrom4([4]byte(b[2:6]))); k != "" {
				return k + " (through 6to4)"
			}
		}
	}
	for _, np := range specialPrefixes {
		if np.p.Contains(a) {
			return np.kind
		}
	}
	return ""
}

// DialContext dials TCP like net.Dialer, refusing (with ErrDestination)
// any address the guard does not allow, checked on the resolved address of
// every attempt.
func (g *DialGuard) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("%w: network %s", ErrDestination, network)
	}
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDestination, err)
	}
	d := net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second,
		Control: func(_, resolved string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(resolved)
			if err != nil {
				return fmt.Errorf("%w: %s: %v", ErrDestination, resolved, err)
			}
			return g.Check(host, ap)
		}}
	return d.DialContext(ctx, network, address)
}

// Client returns the HTTP client that goes only where the guard allows,
// following at most 10 redirects, each to http or https.
func (g *DialGuard) Client() *http.Client {
	if g == nil {
		return defaultGuarded
	}
	g.once.Do(func() { g.client = g.newClient() })
	return g.client
}

var defaultGuarded = (*DialGuard)(nil).newClient()

func (g *DialGuard) newClient() *http.Client {
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           g.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &http.Client{Transport: tr, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if len(via) >= 10 {
			return fmt.Errorf("%w: more than 10 redirects", ErrDestination)
		}
		return checkURL(req.URL)
	}}
}

// checkURL refuses URLs other than http and https with a host.
func checkURL(u *url.URL) error {
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%w: scheme %q (only http and https)", ErrDestination, u.Scheme)
	}
	if u.Host == "" {
		return fmt.Errorf("%w: URL has no host", ErrDestination)
	}
	return nil
}

// parseURL parses a client's URL and checks its scheme.
func parseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: bad URL %s", ErrDestination, redact(raw))
	}
	if err := checkURL(u); err != nil {
		return nil, fmt.Errorf("%w (%s)", err, redact(raw))
	}
	return u, nil
}
