package main

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	sr "github.com/horde-compute/horde/streamreceipt"
)

// runRole runs one process of the bench: the echo service, horde's proxy,
// or the load generator (which prints its result as JSON).
func runRole(ctx context.Context, role string, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet(role, flag.ContinueOnError)
	dir := fs.String("dir", "", "directory with the keys")
	addr := fs.String("listen", "127.0.0.1:0", "listen address")
	up := fs.String("upstream", "", "service URL (horde)")
	tokens := fs.Int("tokens", 200, "SSE tokens (echo)")
	gap := fs.Duration("gap", time.Millisecond, "time between SSE tokens (echo)")
	spec := fs.String("spec", "", "load, as JSON (load)")
	prof := fs.String("cpuprofile", "", "write a CPU profile of the role here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ready := func(a string) { fmt.Fprintln(stdout, a) }
	if *prof != "" {
		f, err := os.Create(*prof)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	switch role {
	case "echo":
		return serveEcho(ctx, *addr, *tokens, *gap, ready)
	case "horde", "hordenet", "gofloor", "handloop", "handsign":
		k, err := readKeys(*dir)
		if err != nil {
			return err
		}
		u, err := url.Parse(*up)
		if err != nil {
			return err
		}
		switch role {
		case "gofloor":
			return serveGoFloor(ctx, k, *addr, u, ready)
		case "hordenet":
			return serveHordeNetHTTP(ctx, k, *addr, u, ready)
		case "handloop", "handsign":
			return serveHandLoop(ctx, k, *addr, u, role == "handsign", ready)
		}
		return serveHorde(ctx, k, *addr, u, ready)
	default:
		k, err := readKeys(*dir)
		if err != nil {
			return err
		}
		var s loadSpec
		if err := json.Unmarshal([]byte(*spec), &s); err != nil {
			return err
		}
		res, err := runLoad(ctx, k, s)
		if err != nil {
			return err
		}
		return json.NewEncoder(stdout).Encode(res)
	}
}

// child is a started role process.
type child struct {
	cmd  *exec.Cmd
	addr string
}

func (c *child) stop() {
	c.cmd.Process.Signal(os.Interrupt)
	c.cmd.Wait()
}

// pinned returns a command for the bench binary's role, pinned to core.
func pinned(ctx context.Context, core string, name string, args ...string) *exec.Cmd {
	if core == "" {
		return exec.CommandContext(ctx, name, args...)
	}
	return exec.CommandContext(ctx, "taskset", append([]string{"-c", core, name}, args...)...)
}

// startRole starts a serving role and waits for the address it prints.
func startRole(ctx context.Context, core string, stderr io.Writer, args ...string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := pinned(ctx, core, self, args...)
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("%s did not start: %w", args[0], err)
	}
	return &child{cmd: cmd, addr: strings.TrimSpace(line)}, nil
}

// procStat is a process tree's CPU time and resident memory.
type procStat struct {
	cpu, sys time.Duration // sys: the kernel's part of cpu
	rss      int64         // bytes
	faults   int64         // minor page faults
}

// statTree reads pid's and its children's CPU time and RSS from /proc.
func statTree(pid int) procStat {
	var s procStat
	pids := []int{pid}
	if ents, err := os.ReadDir("/proc"); err == nil {
		for _, e := range ents {
			p, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if f := statFields(p); len(f) > 3 && f[3] == strconv.Itoa(pid) {
				pids = append(pids, p)
			}
		}
	}
	for _, p := range pids {
		f := statFields(p)
		if len(f) < 24 {
			continue
		}
		ut, _ := strconv.ParseInt(f[13], 10, 64)
		st, _ := strconv.ParseInt(f[14], 10, 64)
		rss, _ := strconv.ParseInt(f[23], 10, 64)
		s.cpu += time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ is 100
		s.sys += time.Duration(st) * 10 * time.Millisecond
		mf, _ := strconv.ParseInt(f[9], 10, 64)
		s.faults += mf
		s.rss += rss * int64(os.Getpagesize())
	}
	return s
}

// statFields splits /proc/pid/stat into its fields, the command name as one.
func statFields(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return append([]string{s[:strings.IndexByte(s, ' ')], s[strings.IndexByte(s, '(') : i+1]}, strings.Fields(s[i+1:])...)
}

// nginxConf is nginx's configuration for the bench: as close as nginx gets
// to horde's proxy (TLS 1.3, the client's certificate required and pinned
// by fingerprint, kept-alive upstream, nothing buffered that streams).
func nginxConf(dir, listen, upstream, fingerprint string) string {
	return fmt.Sprintf(`worker_processes 1;
daemon off;
master_process on;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  upstream service { server %[3]s; keepalive 256; }
  server {
    listen %[2]s ssl http2;
    ssl_certificate %[1]s/job.crt;
    ssl_certificate_key %[1]s/job.key;
    ssl_protocols TLSv1.3;
    ssl_verify_client optional_no_ca;
    keepalive_requests 1000000;
    client_body_buffer_size 128k;
    location / {
      if ($ssl_client_fingerprint != "%[4]s") { return 403; }
      proxy_pass http://service;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
`, dir, listen, upstream, fingerprint)
}

// freePort returns a loopback address nobody listens on (for nginx).
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// startNginx writes nginx's configuration and starts it, pinned.
func startNginx(ctx context.Context, core string, k *keys, upstream string, stderr io.Writer) (*child, error) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		for _, p := range []string{"/usr/sbin/nginx", "/sbin/nginx"} {
			if _, e := os.Stat(p); e == nil {
				bin, err = p, nil
			}
		}
	}
	if err != nil {
		if bin, err = installNginx(ctx, stderr); err != nil {
			return nil, fmt.Errorf("nginx is not installed and could not be (%w): apt-get install nginx, or run with -nginx=false", err)
		}
	}
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	c, err := sr.ParseCert(k.clientCrt)
	if err != nil {
		return nil, err
	}
	fp := sha1.Sum(c.Raw)
	conf := filepath.Join(k.dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(nginxConf(k.dir, addr, upstream, hex.EncodeToString(fp[:]))), 0o600); err != nil {
		return nil, err
	}
	cmd := pinned(ctx, core, bin, "-c", conf, "-p", k.dir, "-e", filepath.Join(k.dir, "nginx-error.log"))
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	// Wait until it accepts connections.
	for i := 0; ; i++ {
		cn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			cn.Close()
			break
		}
		if i > 100 {
			cmd.Process.Kill()
			cmd.Wait()
			log, _ := os.ReadFile(filepath.Join(k.dir, "nginx-error.log"))
			return nil, fmt.Errorf("nginx did not start: %s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return &child{cmd: cmd, addr: addr}, nil
}

// installNginx installs Debian's nginx with apt-get (as root only).
func installNginx(ctx context.Context, stderr io.Writer) (string, error) {
	if os.Geteuid() != 0 {
		return "", errors.New("not root")
	}
	fmt.Fprintln(stderr, "bench: installing Debian's nginx (apt-get install nginx)")
	install := func() error {
		cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "--no-install-recommends", "nginx")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = stderr, stderr
		return cmd.Run()
	}
	if err := install(); err != nil {
		update := exec.CommandContext(ctx, "apt-get", "update")
		update.Stdout, update.Stderr = stderr, stderr
		if err := errors.Join(update.Run(), install()); err != nil {
			return "", err
		}
	}
	for _, p := range []string{"/usr/sbin/nginx", "/sbin/nginx"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return exec.LookPath("nginx")
}

// row is one line of the table.
type row struct {
	target, proto, load string
	res                 *loadResult
	cpu, sys            time.Duration // of the proxy under test, over the measured part (sys: in the kernel)
	rss, rssGrowth      int64
	calls               sysCalls
}

// sysCalls counts a process's system calls (strace -c).
type sysCalls struct{ reads, writes, total int64 }

// workerPid is nginx's worker (the master's child) or pid itself.
func workerPid(pid int) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := statFields(p); len(f) > 3 && f[3] == strconv.Itoa(pid) {
			return p
		}
	}
	return pid
}

func readStrace(file string) sysCalls {
	var c sysCalls
	b, _ := os.ReadFile(file)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		n, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil {
			continue
		}
		switch f[len(f)-1] {
		case "read", "readv", "recvfrom", "recvmsg":
			c.reads += n
		case "write", "writev", "sendto", "sendmsg", "sendfile":
			c.writes += n
		case "total":
			c.total = n
			continue
		}
	}
	return c
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	d := fs.Duration("d", 3*time.Second, "measured time per row")
	warm := fs.Duration("warmup", 500*time.Millisecond, "warm-up per row")
	conns := fs.Int("conns", 8, "connections (HTTP/1.1) or streams (HTTP/2)")
	useNginx := fs.Bool("nginx", true, "measure nginx too (needs Debian's nginx)")
	loadCore := fs.String("load-core", "0", "core for the load generator (empty: no pinning)")
	targetCore := fs.String("target-core", "1", "core for the service and the proxy under test (empty: no pinning)")
	only := fs.String("only", "", "comma-separated subset of rows: direct, nginx, horde; only when named: gofloor (Go's httputil reverse proxy, no receipts), handloop and handsign (a hand-written HTTP/1.1 loop, without and with a receipt's hashing and signing), hordenet (horde's proxy on net/http's server, as before h1)")
	sizes := fs.String("sizes", "1024,65536", "POST body sizes (empty: none)")
	gap := fs.Duration("gap", time.Millisecond, "time between SSE tokens")
	prof := fs.String("cpuprofile", "", "write a CPU profile of horde's proxy here")
	flat := fs.Int("memory", 0, "instead of the table: send this many 1 KiB requests to horde's proxy and print its RSS every tenth")
	sse := fs.Bool("sse", true, "measure the SSE rows")
	protosFlag := fs.String("protos", "h1,h2", "protocols over TLS: h1, h2 or both")
	trace := fs.Bool("strace", false, "count the proxy's system calls per request with strace -c (slows the rows down)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		*loadCore, *targetCore = "", ""
	}
	dir, err := os.MkdirTemp("", "horde-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	k, err := makeKeys(dir)
	if err != nil {
		return err
	}
	echo, err := startRole(ctx, *targetCore, stderr, "echo", "-gap", gap.String())
	if err != nil {
		return err
	}
	defer echo.stop()
	named := func(name string) bool { return strings.Contains(","+*only+",", ","+name+",") }
	want := func(name string) bool { return *only == "" || named(name) }
	type target struct {
		name string
		url  string
		tls  bool
		pid  int
	}
	var targets []target
	if want("direct") {
		targets = append(targets, target{"direct (plain HTTP)", "http://" + echo.addr, false, 0})
	}
	if *useNginx && want("nginx") {
		ng, err := startNginx(ctx, *targetCore, k, echo.addr, stderr)
		if err != nil {
			return err
		}
		defer ng.stop()
		targets = append(targets, target{"nginx", "https://" + ng.addr, true, ng.cmd.Process.Pid})
	}
	if named("gofloor") {
		gp, err := startRole(ctx, *targetCore, stderr, "gofloor", "-dir", dir, "-upstream", "http://"+echo.addr)
		if err != nil {
			return err
		}
		defer gp.stop()
		targets = append(targets, target{"Go httputil, no receipts", "https://" + gp.addr, true, gp.cmd.Process.Pid})
	}
	for _, hl := range []struct{ role, name string }{{"handloop", "hand-written loop, no receipts"}, {"handsign", "hand-written loop, signing"}, {"hordenet", "horde proxy on net/http"}} {
		if !named(hl.role) {
			continue
		}
		gp, err := startRole(ctx, *targetCore, stderr, hl.role, "-dir", dir, "-upstream", "http://"+echo.addr)
		if err != nil {
			return err
		}
		defer gp.stop()
		targets = append(targets, target{hl.name, "https://" + gp.addr, true, gp.cmd.Process.Pid})
	}
	if want("horde") {
		hp, err := startRole(ctx, *targetCore, stderr, "horde", "-dir", dir, "-upstream", "http://"+echo.addr, "-cpuprofile", *prof)
		if err != nil {
			return err
		}
		defer hp.stop()
		targets = append(targets, target{"horde proxy", "https://" + hp.addr, true, hp.cmd.Process.Pid})
	}
	if *flat > 0 {
		if len(targets) == 0 || targets[len(targets)-1].name != "horde proxy" {
			return errors.New("-memory needs horde's proxy (-only horde)")
		}
		return memoryRun(ctx, targets[len(targets)-1].url, targets[len(targets)-1].pid, dir, *loadCore, *conns, *flat, stdout, stderr)
	}
	var loads []loadSpec
	for _, s := range strings.Split(*sizes, ",") {
		if strings.TrimSpace(s) == "" {
			continue // -sizes '': the SSE rows alone
		}
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("-sizes: %w", err)
		}
		loads = append(loads, loadSpec{Size: n})
	}
	if *sse {
		loads = append(loads, loadSpec{Size: 1024, SSE: true})
	}
	var tlsProtos []bool
	for _, p := range strings.Split(*protosFlag, ",") {
		switch strings.TrimSpace(p) {
		case "h1":
			tlsProtos = append(tlsProtos, false)
		case "h2":
			tlsProtos = append(tlsProtos, true)
		default:
			return fmt.Errorf("-protos: %q is neither h1 nor h2", p)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var rows []row
	for _, l := range loads {
		for _, t := range targets {
			protos := []bool{false}
			if t.tls {
				protos = tlsProtos
			}
			for _, h2 := range protos {
				spec := l
				spec.URL, spec.TLS, spec.HTTP2, spec.Conns, spec.Duration, spec.Warmup = t.url, t.tls, h2, *conns, *d, *warm
				js, _ := json.Marshal(spec)
				var before procStat
				pid := t.pid
				if pid == 0 {
					pid = echo.cmd.Process.Pid
				}
				cmd := pinned(ctx, *loadCore, self, "load", "-dir", dir, "-spec", string(js))
				cmd.Stderr = stderr
				// The target's CPU is read over the measured part only:
				// the load generator prints nothing until it is done, so
				// read it once the warm-up is over.
				out, err := cmd.StdoutPipe()
				if err != nil {
					return err
				}
				if err := cmd.Start(); err != nil {
					return err
				}
				time.Sleep(*warm + 50*time.Millisecond)
				var st *exec.Cmd
				traceFile := filepath.Join(dir, "strace.out")
				if *trace && t.pid != 0 {
					st = exec.CommandContext(ctx, "strace", "-c", "-f", "-o", traceFile, "-p", strconv.Itoa(workerPid(t.pid)))
					if err := st.Start(); err != nil {
						return fmt.Errorf("strace: %w", err)
					}
				}
				before = statTree(pid)
				b, _ := io.ReadAll(out)
				after := statTree(pid)
				var calls sysCalls
				if st != nil {
					st.Process.Signal(os.Interrupt)
					st.Wait()
					calls = readStrace(traceFile)
				}
				if err := cmd.Wait(); err != nil {
					return fmt.Errorf("load on %s: %w", t.name, err)
				}
				var res loadResult
				if err := json.Unmarshal(b, &res); err != nil {
					return fmt.Errorf("load on %s: %w (%s)", t.name, err, b)
				}
				proto := "HTTP/1.1"
				if h2 {
					proto = "HTTP/2"
				} else if !t.tls {
					proto = "HTTP/1.1 plain"
				}
				if h2 && res.HTTP2 < res.Requests {
					proto = fmt.Sprintf("HTTP/2 offered, %d/%d got", res.HTTP2, res.Requests)
				}
				load := fmt.Sprintf("%d KiB POST", l.Size/1024)
				if l.SSE {
					load = "SSE 200 tokens"
				}
				r := row{target: t.name, proto: proto, load: load, res: &res, rss: after.rss, rssGrowth: after.rss - before.rss, calls: calls}
				if t.pid != 0 {
					r.cpu, r.sys = after.cpu-before.cpu, after.sys-before.sys
				}
				rows = append(rows, r)
				fmt.Fprintf(stderr, "%-22s %-16s %-26s %8.0f req/s  %.2f page faults/req  errors %d %s\n", t.name, load, proto,
					float64(res.Requests)/res.Elapsed.Seconds(), float64(after.faults-before.faults)/float64(max(res.Requests, 1)), res.Errors, res.FirstErr)
			}
		}
	}
	printTable(stdout, rows, *conns)
	return nil
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 2, 64)
}

func printTable(w io.Writer, rows []row, conns int) {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintf(tw, "load (%d conns)\ttarget\tprotocol\treq/s\tp50 / p99 ms\tTTFT p50 / p99 ms\tgap p50 / p99 ms\tproxy CPU s / 10k req (kernel %%)\tproxy RSS MB (Δ in row)\terrors\treceipts\tsyscalls / req (read, write, all)\n", conns)
	for _, r := range rows {
		rps := float64(r.res.Requests) / r.res.Elapsed.Seconds()
		cpu, rss := "—", "—"
		if r.cpu > 0 || r.target != "direct (plain HTTP)" {
			cpu = strconv.FormatFloat(r.cpu.Seconds()/float64(max(r.res.Requests, 1))*10000, 'f', 2, 64)
			if r.cpu > 0 {
				cpu += fmt.Sprintf(" (%.0f %%)", 100*r.sys.Seconds()/r.cpu.Seconds())
			}
			rss = fmt.Sprintf("%.1f (%+.1f)", float64(r.rss)/(1<<20), float64(r.rssGrowth)/(1<<20))
		}
		ttft, gap := "—", "—"
		if r.res.TTFT50 > 0 {
			ttft, gap = ms(r.res.TTFT50)+" / "+ms(r.res.TTFT99), ms(r.res.Gap50)+" / "+ms(r.res.Gap99)
		}
		calls := "—"
		if r.calls.total > 0 {
			n := float64(max(r.res.Requests, 1))
			calls = fmt.Sprintf("%.1f, %.1f, %.1f", float64(r.calls.reads)/n, float64(r.calls.writes)/n, float64(r.calls.total)/n)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t%s / %s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", r.load, r.target, r.proto, rps, ms(r.res.P50), ms(r.res.P99),
			ttft, gap, cpu, rss, r.res.Errors, r.res.Receipts, calls)
	}
	tw.Flush()
}

// memoryRun sends n client-stamped 1 KiB requests to horde's proxy in ten
// parts and prints its RSS after each: flat, as receipts go to disk.
func memoryRun(ctx context.Context, url string, pid int, dir, core string, conns, n int, stdout, stderr io.Writer) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "requests\tproxy RSS MB\treq/s\n0\t%.1f\t—\n", float64(statTree(pid).rss)/(1<<20))
	sent := 0
	for part := 1; part <= 10; part++ {
		spec := loadSpec{URL: url, TLS: true, Conns: conns, Size: 1024, Duration: time.Hour, Warmup: time.Millisecond, Requests: n / 10}
		js, _ := json.Marshal(spec)
		cmd := pinned(ctx, core, self, "load", "-dir", dir, "-spec", string(js))
		cmd.Stderr = stderr
		out, err := cmd.Output()
		if err != nil {
			return err
		}
		var res loadResult
		if err := json.Unmarshal(out, &res); err != nil {
			return err
		}
		if res.Errors > 0 {
			return fmt.Errorf("%d errors: %s", res.Errors, res.FirstErr)
		}
		sent += int(res.Requests)
		fmt.Fprintf(stdout, "%d\t%.1f\t%.0f\n", sent, float64(statTree(pid).rss)/(1<<20), float64(res.Requests)/res.Elapsed.Seconds())
	}
	return nil
}
