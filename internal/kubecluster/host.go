package kubecluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// What a cluster changes on the machine outside its own directory, and how
// it is put back. A journal written before anything is changed records the
// machine as it was found, so that the next Start can undo a run that
// crashed before its Stop.

// lockName is the abstract Unix socket whose owner runs the machine's one
// cluster: it needs no file and the kernel drops it when its process dies.
const lockName = "@horde-kube-cluster"

// globalDirs are created outside Dir by the kubelet, containerd or the CNI
// plugins whatever they are told. Those that did not exist are removed.
var globalDirs = []string{
	"/var/lib/kubelet", // device-plugins, plugins_registry
	"/var/log/containers",
	"/var/log/pods",
	"/var/lib/cni", // libcni's result cache
	"/usr/libexec/kubernetes",
	"/var/run/kubernetes",
	"/etc/kubernetes",
}

// sharedDirs may be created by the cluster but are shared with other
// programs (Docker's containerd puts its shim sockets in /run/containerd/s):
// they are removed only when empty.
var sharedDirs = []string{"/run/mount", "/run/containerd/s", "/run/containerd", "/var/run/netns", "/etc/cni/net.d", "/etc/cni", "/opt/cni/bin", "/opt/cni", "/opt/containerd"}

// sysctls the kubelet sets at start (vm.overcommit_memory, kernel.panic…)
// and the bridge plugin may set (ip_forward): restored at Stop.
var sysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
	"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding",
	"net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables",
}

// iptables chains the kubelet (KUBE-FIREWALL, KUBE-KUBELET-CANARY…) and the
// CNI plugins (CNI-…) create.
var chainPrefixes = []string{"KUBE-", "CNI-"}

var (
	iptablesTools  = []string{"iptables", "ip6tables"}
	iptablesTables = []string{"filter", "nat", "mangle"}
)

// journal is the machine as a cluster found it.
type journal struct {
	Dir     string              `json:"dir"`
	Bridge  string              `json:"bridge"`
	Sysctls map[string]string   `json:"sysctls"` // under /proc/sys → value
	Absent  []string            `json:"absent"`  // global and shared dirs, kubepods cgroups
	Chains  map[string][]string `json:"chains"`  // "iptables/nat" → KUBE-/CNI- chains already there
	// nftables tables (iptables-nft's "ip mangle", "ip6 nat"…) already there;
	// nil when nft is not installed.
	NftTables []string `json:"nftTables"`
}

func journalPath(dir string) string { return filepath.Join(dir, "journal.json") }

// record notes the machine as it is now and writes the journal into dir.
func record(ctx context.Context, dir, bridge string) (*journal, error) {
	j := &journal{Dir: dir, Bridge: bridge, Sysctls: map[string]string{}, Chains: map[string][]string{}}
	for _, s := range sysctls {
		if b, err := os.ReadFile(filepath.Join("/proc/sys", s)); err == nil {
			j.Sysctls[s] = strings.TrimSpace(string(b))
		}
	}
	for _, d := range append(append(slices.Clone(globalDirs), sharedDirs...), kubepodsCgroups()...) {
		if _, err := os.Lstat(d); errors.Is(err, fs.ErrNotExist) {
			j.Absent = append(j.Absent, d)
		}
	}
	for _, tool := range iptablesTools {
		for _, table := range iptablesTables {
			chains, err := listChains(ctx, tool, table)
			if err != nil {
				continue // no such table or tool (ip6tables without IPv6)
			}
			j.Chains[tool+"/"+table] = ours(chains)
		}
	}
	j.NftTables, _ = nftTables(ctx)
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(journalPath(dir), b, 0o644); err != nil {
		return nil, fmt.Errorf("write journal: %w", err)
	}
	return j, nil
}

func readJournal(dir string) (*journal, error) {
	b, err := os.ReadFile(journalPath(dir))
	if err != nil {
		return nil, err
	}
	var j journal
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("journal %s: %w", journalPath(dir), err)
	}
	if filepath.Clean(j.Dir) != filepath.Clean(dir) {
		return nil, fmt.Errorf("journal %s is for %q", journalPath(dir), j.Dir)
	}
	return &j, nil
}

// restore puts the machine back as j found it: it ends every process of the
// cluster (and of its Pods), unmounts what is mounted under its directory,
// removes the cgroups, bridge, iptables chains and directories that were not
// there, resets the sysctls and removes the cluster's directory. It goes on
// after an error and returns them all. With j nil it does what it can
// without knowing how the machine was: processes, mounts and dir.
func restore(ctx context.Context, dir string, j *journal, log *slog.Logger) error {
	var errs []error
	absent := map[string]bool{}
	if j != nil {
		for _, a := range j.Absent {
			absent[a] = true
		}
	}
	var cgroups []string
	for _, c := range kubepodsCgroups() {
		if absent[c] {
			cgroups = append(cgroups, c)
		}
	}
	errs = append(errs, killAll(ctx, dir, cgroups, log))
	errs = append(errs, removeShimSockets(dir))
	errs = append(errs, unmountUnder(dir))
	for _, c := range cgroups {
		errs = append(errs, removeCgroupTree(c))
	}
	if j != nil {
		if j.Bridge != "" {
			if _, err := net.InterfaceByName(j.Bridge); err == nil {
				errs = append(errs, run(ctx, "ip", "link", "delete", j.Bridge))
			}
		}
		errs = append(errs, removeChains(ctx, j.Chains, log))
		if j.NftTables != nil {
			errs = append(errs, removeNftTables(ctx, j.NftTables, log))
		}
		for _, s := range sysctls {
			v, ok := j.Sysctls[s]
			if !ok {
				continue
			}
			p := filepath.Join("/proc/sys", s)
			if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) != v {
				log.Debug("restoring sysctl", "name", s, "was", strings.TrimSpace(string(b)), "to", v)
				if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
					errs = append(errs, fmt.Errorf("restore sysctl %s: %w", s, err))
				}
			}
		}
		for _, d := range globalDirs {
			if absent[d] {
				errs = append(errs, os.RemoveAll(d))
			}
		}
		for _, d := range sharedDirs { // deepest first, in list order
			if absent[d] {
				if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) {
					errs = append(errs, err)
				}
			}
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
	}
	return errors.Join(errs...)
}

// killAll SIGKILLs every process whose command line names a path under dir
// (the components, containerd's shims) and every process in the cgroups
// (the Pods' containers), and waits until they are gone.
func killAll(ctx context.Context, dir string, cgroups []string, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		pids := clusterProcesses(dir, cgroups)
		if len(pids) == 0 {
			return nil
		}
		for _, pid := range pids {
			if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
				log.Debug("killed", "pid", pid, "cmd", cmdline(pid))
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("processes still alive after SIGKILL: %v: %w", pids, ctx.Err())
		case <-tick.C:
		}
	}
}

// clusterProcesses lists live (not zombie) processes of the cluster.
func clusterProcesses(dir string, cgroups []string) []int {
	self := os.Getpid()
	seen := map[int]bool{}
	var pids []int
	add := func(pid int) {
		if pid != self && !seen[pid] && alive(pid) {
			seen[pid] = true
			pids = append(pids, pid)
		}
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		for _, arg := range strings.Split(cmdline(pid), "\x00") {
			if strings.Contains(arg, dir+"/") {
				add(pid)
				break
			}
		}
	}
	for _, c := range cgroups {
		filepath.WalkDir(c, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(path)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					add(pid)
				}
			}
			return nil
		})
	}
	sort.Ints(pids)
	return pids
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return string(bytes.TrimRight(b, "\x00"))
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state …; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z'
}

// removeShimSockets removes the sockets that containerd's shims keep in
// /run/containerd/s (a place containerd 1.6 does not let us move) for the
// tasks under dir: a shim that was killed leaves its socket behind.
func removeShimSockets(dir string) error {
	files, _ := filepath.Glob(filepath.Join(dir, "containerd", "state", "io.containerd.runtime.v2.task", "*", "*", "address"))
	var errs []error
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		p := strings.TrimPrefix(strings.TrimSpace(string(b)), "unix://")
		if filepath.Dir(p) != "/run/containerd/s" {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// mount is one line of /proc/self/mountinfo.
type mount struct{ point, fstype string }

func mounts() []mount {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var ms []mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields, postf := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 5 || len(postf) < 1 {
			continue
		}
		ms = append(ms, mount{point: unescape(fields[4]), fstype: postf[0]})
	}
	return ms
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountUnder detaches every mount at or under dir, deepest first.
func unmountUnder(dir string) error {
	var points []string
	for _, m := range mounts() {
		if m.point == dir || strings.HasPrefix(m.point, dir+"/") {
			points = append(points, m.point)
		}
	}
	sort.Slice(points, func(i, k int) bool { return len(points[i]) > len(points[k]) })
	var errs []error
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// kubepodsCgroups are the kubelet's cgroup trees, one per cgroup hierarchy
// (the kubelet puts every Pod under /kubepods).
func kubepodsCgroups() []string {
	var out []string
	for _, m := range mounts() {
		if m.fstype == "cgroup" || m.fstype == "cgroup2" {
			out = append(out, filepath.Join(m.point, "kubepods"))
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// removeCgroupTree removes a cgroup and its children, deepest first.
func removeCgroupTree(root string) error {
	var dirs []string
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dirs[i], err))
		}
	}
	return errors.Join(errs...)
}

// listChains lists the chains of an iptables table.
func listChains(ctx context.Context, tool, table string) ([]string, error) {
	out, err := exec.CommandContext(ctx, tool, "-w", "5", "-t", table, "-S").Output()
	if err != nil {
		return nil, fmt.Errorf("%s -t %s -S: %w", tool, table, err)
	}
	var chains []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "-N" || f[0] == "-P") {
			chains = append(chains, f[1])
		}
	}
	return chains, nil
}

func ours(chains []string) []string {
	var out []string
	for _, c := range chains {
		for _, p := range chainPrefixes {
			if strings.HasPrefix(c, p) {
				out = append(out, c)
				break
			}
		}
	}
	return out
}

// removeChains deletes the KUBE-/CNI- chains that were not there before,
// and the rules of other chains that jump to them.
func removeChains(ctx context.Context, before map[string][]string, log *slog.Logger) error {
	var errs []error
	for key, had := range before {
		tool, table, _ := strings.Cut(key, "/")
		chains, err := listChains(ctx, tool, table)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		doomed := map[string]bool{}
		for _, c := range ours(chains) {
			if !slices.Contains(had, c) {
				doomed[c] = true
			}
		}
		if len(doomed) == 0 {
			continue
		}
		for _, c := range chains {
			if doomed[c] {
				continue
			}
			nums, err := jumpsTo(ctx, tool, table, c, doomed)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, n := range slices.Backward(nums) {
				errs = append(errs, run(ctx, tool, "-w", "5", "-t", table, "-D", c, strconv.Itoa(n)))
			}
		}
		for c := range doomed {
			errs = append(errs, run(ctx, tool, "-w", "5", "-t", table, "-F", c))
		}
		for c := range doomed {
			log.Debug("removing iptables chain", "tool", tool, "table", table, "chain", c)
			errs = append(errs, run(ctx, tool, "-w", "5", "-t", table, "-X", c))
		}
	}
	return errors.Join(errs...)
}

// jumpsTo returns the numbers of the rules of chain whose target is one of targets.
func jumpsTo(ctx context.Context, tool, table, chain string, targets map[string]bool) ([]int, error) {
	out, err := exec.CommandContext(ctx, tool, "-w", "5", "-t", table, "-L", chain, "-n", "--line-numbers").Output()
	if err != nil {
		return nil, fmt.Errorf("%s -t %s -L %s: %w", tool, table, chain, err)
	}
	var nums []int
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, err := strconv.Atoi(f[0])
		if err == nil && targets[f[1]] {
			nums = append(nums, n)
		}
	}
	return nums, nil
}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// nftTables lists the nftables tables as "family name".
func nftTables(ctx context.Context) ([]string, error) {
	out, err := exec.CommandContext(ctx, "nft", "list", "tables").Output()
	if err != nil {
		return nil, fmt.Errorf("nft list tables: %w", err)
	}
	tables := []string{}
	for _, line := range strings.Split(string(out), "\n") {
		if t, ok := strings.CutPrefix(strings.TrimSpace(line), "table "); ok {
			tables = append(tables, t)
		}
	}
	return tables, nil
}

// removeNftTables deletes the iptables-nft tables that the kubelet brought
// into being (it creates its canary chains in mangle, and in ip6 tables
// where none were) once they are empty again.
func removeNftTables(ctx context.Context, before []string, log *slog.Logger) error {
	now, err := nftTables(ctx)
	if err != nil {
		return err
	}
	tools := map[string]string{"ip": "iptables", "ip6": "ip6tables"}
	var errs []error
	for _, t := range now {
		family, name, _ := strings.Cut(t, " ")
		tool, ok := tools[family]
		if !ok || slices.Contains(before, t) || !slices.Contains(iptablesTables, name) {
			continue
		}
		out, err := exec.CommandContext(ctx, tool, "-w", "5", "-t", name, "-S").Output()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s -t %s -S: %w", tool, name, err))
			continue
		}
		empty := true
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if f := strings.Fields(line); len(f) != 3 || f[0] != "-P" || f[2] != "ACCEPT" {
				empty = false
			}
		}
		if empty {
			log.Debug("removing nftables table", "table", t)
			errs = append(errs, run(ctx, "nft", "delete", "table", family, name))
		}
	}
	return errors.Join(errs...)
}
