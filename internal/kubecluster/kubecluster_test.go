package kubecluster

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"

	"github.com/horde-compute/horde/internal/executor/docker/dockertest"
	"github.com/horde-compute/horde/internal/images"
)

// The tests share one cluster, started by the first that needs it and
// stopped by TestMain (or by TestMachineRestored, which needs the machine
// to itself). Tests in this package do not run in parallel.
var shared struct {
	mu sync.Mutex
	c  *Cluster
}

// probeImage is this package's network probe (./probe).
const probeImage = "horde/kubeprobe:dev"

func TestMain(m *testing.M) {
	code := m.Run()
	if err := stopShared(); err != nil {
		fmt.Fprintln(os.Stderr, "stop the shared cluster:", err)
		code = 1
	}
	os.Exit(code)
}

func stopShared() error {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.c == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := shared.c.Stop(ctx)
	shared.c = nil
	return err
}

// gate skips only when HORDE_KUBE_TESTS=off, or when the Docker Engine
// tests are off (the cluster's images are built by Docker): anything missing
// is a failure.
func gate(tb testing.TB) {
	tb.Helper()
	switch v := os.Getenv("HORDE_KUBE_TESTS"); v {
	case "off":
		tb.Skip("HORDE_KUBE_TESTS=off: the Kubernetes tests are skipped")
	case "", "on":
	default:
		tb.Fatalf("HORDE_KUBE_TESTS=%q: want off (skip the Kubernetes tests), on or unset", v)
	}
	dockertest.Engine(tb)
}

func testLog(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(b []byte) (int, error) {
	w.tb.Helper()
	w.tb.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// startOrFail starts a cluster, failing loudly with how to fix or skip.
func startOrFail(tb testing.TB, opts Options) *Cluster {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := Start(ctx, opts)
	if err != nil {
		tb.Fatalf("%v\n(HORDE_KUBE_TESTS=off skips the Kubernetes tests)", err)
	}
	tb.Logf("cluster started in %s", time.Since(start).Round(time.Millisecond))
	return c
}

// cluster returns the shared cluster with the test images imported.
func cluster(tb testing.TB) *Cluster {
	tb.Helper()
	gate(tb)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.c != nil {
		return shared.c
	}
	// Its logger must outlive the test that starts it.
	c := startOrFail(tb, Options{Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err := importTestImages(tb, c); err != nil {
		c.Stop(context.Background())
		tb.Fatal(err)
	}
	shared.c = c
	return c
}

func importTestImages(tb testing.TB, c *Cluster) error {
	ctx := context.Background()
	cli := dockertest.Engine(tb)
	for ref, pkg := range map[string]string{
		images.JobImage: "github.com/horde-compute/horde/internal/images/jobimage",
		probeImage:      "github.com/horde-compute/horde/internal/kubecluster/probe",
	} {
		if err := images.Build(ctx, cli, pkg, ref); err != nil {
			return err
		}
		start := time.Now()
		if err := c.ImportImage(ctx, ref); err != nil {
			return err
		}
		tb.Logf("imported %s in %s", ref, time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// jobPod is a Pod running one container of image once, as a job would:
// never pulled, no service account token, nothing privileged.
func jobPod(image string, args ...string) *corev1.Pod {
	no := false
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "job-" + rand.String(8), Labels: map[string]string{"app.kubernetes.io/managed-by": "horde-kubecluster-test"}},
		Spec: corev1.PodSpec{
			RestartPolicy:                corev1.RestartPolicyNever,
			AutomountServiceAccountToken: &no,
			Containers: []corev1.Container{{
				Name:            "job",
				Image:           image,
				Args:            args,
				ImagePullPolicy: corev1.PullNever,
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: &no,
					ReadOnlyRootFilesystem:   ptr(true),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
}

func ptr[T any](v T) *T { return &v }

// runPod creates pod in the default namespace, waits (by watching) until it
// has Succeeded or Failed, and returns it with its log. The Pod is deleted
// when the test ends.
func runPod(tb testing.TB, ctx context.Context, cs kubernetes.Interface, pod *corev1.Pod) (*corev1.Pod, string) {
	tb.Helper()
	pods := cs.CoreV1().Pods("default")
	created, err := pods.Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		pods.Delete(context.Background(), created.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))})
	})
	done, err := waitPod(ctx, cs, created, func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	})
	if err != nil {
		tb.Fatal(err)
	}
	log, err := pods.GetLogs(done.Name, &corev1.PodLogOptions{Container: "job"}).DoRaw(ctx)
	if err != nil {
		tb.Fatalf("logs of %s: %v", done.Name, err)
	}
	return done, string(log)
}

// waitPod watches pod until cond holds.
func waitPod(ctx context.Context, cs kubernetes.Interface, pod *corev1.Pod, cond func(*corev1.Pod) bool) (*corev1.Pod, error) {
	pods := cs.CoreV1().Pods(pod.Namespace)
	rv := pod.ResourceVersion
	for {
		if cond(pod) {
			return pod, nil
		}
		w, err := pods.Watch(ctx, metav1.ListOptions{
			FieldSelector:   fields.OneTermEqualSelector("metadata.name", pod.Name).String(),
			ResourceVersion: rv,
		})
		if err != nil {
			return nil, fmt.Errorf("watch pod %s: %w", pod.Name, err)
		}
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue // a bookmark or an error status: rewatch
			}
			pod, rv = p, p.ResourceVersion
			if cond(pod) {
				w.Stop()
				return pod, nil
			}
		}
		w.Stop()
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("wait for pod %s (phase %s): %w", pod.Name, pod.Status.Phase, err)
		}
	}
}

func dumpOnFailure(t *testing.T, c *Cluster) {
	t.Cleanup(func() {
		if t.Failed() {
			var b bytes.Buffer
			c.DumpLogs(&b, 40)
			t.Log(b.String())
		}
	})
}

// A Pod from a locally built FROM-scratch image runs to Succeeded and its
// log is read through the API server and the kubelet.
func TestPodSucceeds(t *testing.T) {
	c := cluster(t)
	dumpOnFailure(t, c)
	pod, log := runPod(t, t.Context(), c.Client(), jobPod(images.JobImage, "echo", "hello", "from", "kubernetes"))
	if pod.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("phase %s: %+v", pod.Status.Phase, pod.Status)
	}
	if log != "hello from kubernetes\n" {
		t.Errorf("log = %q", log)
	}
	if pod.Spec.NodeName != NodeName {
		t.Errorf("ran on %q", pod.Spec.NodeName)
	}
}

// A container that exits non-zero fails its Pod with the exit code.
func TestPodFails(t *testing.T) {
	c := cluster(t)
	dumpOnFailure(t, c)
	pod, log := runPod(t, t.Context(), c.Client(), jobPod(images.JobImage, "exit", "3"))
	if pod.Status.Phase != corev1.PodFailed {
		t.Fatalf("phase %s, want Failed", pod.Status.Phase)
	}
	if len(pod.Status.ContainerStatuses) != 1 || pod.Status.ContainerStatuses[0].State.Terminated == nil {
		t.Fatalf("container statuses: %+v", pod.Status.ContainerStatuses)
	}
	term := pod.Status.ContainerStatuses[0].State.Terminated
	if term.ExitCode != 3 || term.Reason != "Error" {
		t.Errorf("terminated: exit %d reason %q, want 3 Error", term.ExitCode, term.Reason)
	}
	if log != "exiting with 3\n" {
		t.Errorf("log = %q", log)
	}
}

// What network a Pod that is not on the host network gets from the CNI
// bridge, and what an init container with NET_ADMIN can take away from it.
func TestPodNetwork(t *testing.T) {
	c := cluster(t)
	dumpOnFailure(t, c)
	// A service on the node, as a miner's would be.
	l, err := net.Listen("tcp", net.JoinHostPort(c.NodeIP().String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer l.Close()
	wg.Go(func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	})
	hostAddr := l.Addr().String()

	t.Run("bridge", func(t *testing.T) {
		pod, log := runPod(t, t.Context(), c.Client(), jobPod(probeImage, "net", hostAddr))
		if pod.Status.Phase != corev1.PodSucceeded {
			t.Fatalf("phase %s: %s", pod.Status.Phase, log)
		}
		t.Logf("pod IP %s, node IP %s:\n%s", pod.Status.PodIP, c.NodeIP(), log)
		if pod.Spec.HostNetwork || pod.Status.PodIP == c.NodeIP().String() {
			t.Fatalf("the Pod is on the host's network")
		}
		_, subnet, _ := net.ParseCIDR("10.222.0.0/24")
		if ip := net.ParseIP(pod.Status.PodIP); ip == nil || !subnet.Contains(ip) {
			t.Errorf("pod IP %q is not from the Pod subnet %s", pod.Status.PodIP, subnet)
		}
		// Facts of the bridge: its own namespace with eth0 and a default
		// route through the node, which reaches the node's own services.
		// Not enough for organic jobs, which must have no network at all.
		for _, want := range []string{"interface: eth0", "default-route: true", "dial " + hostAddr + ": connected"} {
			if !strings.Contains(log, want) {
				t.Errorf("probe did not say %q", want)
			}
		}
	})

	t.Run("init-container-removes-eth0", func(t *testing.T) {
		pod := jobPod(probeImage, "net", hostAddr)
		no := false
		pod.Spec.InitContainers = []corev1.Container{{
			Name: "unnet", Image: probeImage, Args: []string{"unnet"}, ImagePullPolicy: corev1.PullNever,
			SecurityContext: &corev1.SecurityContext{
				AllowPrivilegeEscalation: &no,
				Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_ADMIN"}},
			},
		}}
		pod, log := runPod(t, t.Context(), c.Client(), pod)
		if pod.Status.Phase != corev1.PodSucceeded {
			t.Fatalf("phase %s: %s", pod.Status.Phase, log)
		}
		t.Logf("pod IP %s:\n%s", pod.Status.PodIP, log)
		for _, want := range []string{"interface: lo", "default-route: false", "dial " + hostAddr + ": failed"} {
			if !strings.Contains(log, want) {
				t.Errorf("probe did not say %q", want)
			}
		}
		if strings.Contains(log, "interface: eth0") {
			t.Errorf("the job container still has eth0")
		}
	})
}

// Stop leaves the machine as Start found it, a crashed run's leftovers are
// cleaned up by the next Start, and a second Start works.
func TestMachineRestored(t *testing.T) {
	gate(t)
	if err := stopShared(); err != nil {
		t.Fatal(err)
	}
	shared.mu.Lock() // no shared cluster until this test ends
	defer shared.mu.Unlock()
	before := machineState(t)
	log := testLog(t)

	// A run that crashes with a Pod running: its components die (as they
	// do with the test binary, by Pdeathsig), its Pods and shims live on.
	c1 := startOrFail(t, Options{Log: log})
	dumpOnFailure(t, c1)
	if err := importTestImages(t, c1); err != nil {
		t.Fatal(err)
	}
	pods := c1.Client().CoreV1().Pods("default")
	p, err := pods.Create(t.Context(), jobPod(images.JobImage, "sleep", "3600"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := waitPod(t.Context(), c1.Client(), p, func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning }); err != nil {
		t.Fatal(err)
	}
	crash(t, c1)
	if left := clusterProcesses(c1.dir, nil); len(left) == 0 {
		t.Fatal("the crash left no process behind: the test proves nothing")
	}

	c2 := startOrFail(t, Options{Log: log})
	dumpOnFailure(t, c2)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := importTestImages(t, c2); err != nil {
		t.Fatal(err)
	}
	if pod, out := runPod(t, ctx, c2.Client(), jobPod(images.JobImage, "echo", "again")); pod.Status.Phase != corev1.PodSucceeded || out != "again\n" {
		t.Fatalf("second cluster: phase %s, log %q", pod.Status.Phase, out)
	}
	start := time.Now()
	if err := c2.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped in %s", time.Since(start).Round(time.Millisecond))
	if diff := cmp.Diff(before, machineState(t)); diff != "" {
		t.Errorf("the machine after Stop differs from before Start (-before +after):\n%s", diff)
	}
}

// crash ends a cluster's components the way the test binary's death does,
// without Stop.
func crash(t *testing.T, c *Cluster) {
	t.Helper()
	for _, p := range c.procs {
		p.cmd.Process.Signal(syscall.SIGKILL)
	}
	c.wg.Wait()
	c.lock.Close()
}

// machineState is what Start changes and Stop must put back.
type state struct {
	NftTables []string
	Mounts    []string
	Chains    map[string][]string
	Links     []string
	Cgroups   []string
	Sysctls   map[string]string
	Dirs      map[string]bool
	Processes []int
}

func machineState(t *testing.T) state {
	t.Helper()
	s := state{Chains: map[string][]string{}, Sysctls: map[string]string{}, Dirs: map[string]bool{}}
	for _, m := range mounts() {
		// Docker's own namespaces and the isolate tests' come and go with
		// the packages CI runs beside this one: not the cluster's.
		if strings.HasPrefix(m.point, "/run/docker/") || strings.HasPrefix(m.point, "/run/netns/hi-") ||
			strings.HasPrefix(m.point, "/var/run/docker/") || strings.HasPrefix(m.point, "/var/run/netns/hi-") {
			continue
		}
		if strings.HasPrefix(m.point, DefaultDir) || strings.Contains(m.point, "kubelet") || strings.Contains(m.point, "netns") {
			s.Mounts = append(s.Mounts, m.point)
		}
	}
	for _, tool := range iptablesTools {
		for _, table := range iptablesTables {
			chains, err := listChains(t.Context(), tool, table)
			if err != nil {
				continue
			}
			s.Chains[tool+"/"+table] = ours(chains)
		}
	}
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		if strings.HasPrefix(i.Name, "hordekube") || strings.HasPrefix(i.Name, "cni") {
			s.Links = append(s.Links, i.Name)
		}
	}
	for _, c := range kubepodsCgroups() {
		if _, err := os.Stat(c); err == nil {
			s.Cgroups = append(s.Cgroups, c)
		}
	}
	for _, k := range sysctls {
		if b, err := os.ReadFile("/proc/sys/" + k); err == nil {
			s.Sysctls[k] = strings.TrimSpace(string(b))
		}
	}
	for _, d := range append(append(slices.Clone(globalDirs), sharedDirs...), DefaultDir) {
		_, err := os.Lstat(d)
		s.Dirs[d] = err == nil
	}
	s.Processes = clusterProcesses(DefaultDir, nil)
	s.NftTables, _ = nftTables(t.Context())
	sort.Strings(s.Mounts)
	return s
}

// BenchmarkPodSucceeded measures a job-like Pod from its creation (accepted
// by the API server) to Succeeded as a watch sees it, and reports the median,
// the slowest, and the memory of the cluster's processes.
func BenchmarkPodSucceeded(b *testing.B) {
	c := cluster(b)
	ctx := b.Context()
	pods := c.Client().CoreV1().Pods("default")
	var took []time.Duration
	for b.Loop() {
		start := time.Now()
		p, err := pods.Create(ctx, jobPod(images.JobImage, "echo", "bench"), metav1.CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		p, err = waitPod(ctx, c.Client(), p, func(p *corev1.Pod) bool {
			return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
		})
		if err != nil {
			b.Fatal(err)
		}
		took = append(took, time.Since(start))
		if p.Status.Phase != corev1.PodSucceeded {
			b.Fatalf("phase %s", p.Status.Phase)
		}
		pods.Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))})
	}
	slices.Sort(took)
	b.ReportMetric(took[len(took)/2].Seconds(), "p50-s")
	b.ReportMetric(took[len(took)-1].Seconds(), "max-s")
	var components int64
	for _, v := range c.RSS() {
		components += v
	}
	b.ReportMetric(float64(components>>20), "components-MiB")
	b.ReportMetric(float64(rss(clusterProcesses(c.dir, kubepodsCgroups()))>>20), "all-MiB")
	b.Logf("per component: %v", c.RSS())
}

// rss sums the resident memory of pids.
func rss(pids []int) int64 {
	var sum int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				var kb int64
				fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
				sum += kb << 10
			}
		}
	}
	return sum
}
