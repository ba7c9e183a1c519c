// Package kubecluster runs a real single-node Kubernetes cluster on this
// machine for tests: etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler and a kubelet (built by package kubebin), with a separate
// containerd (Debian's /usr/bin/containerd, its own root, state and socket;
// Docker's is never touched) running Pods with runc on a CNI bridge.
//
// Nothing is pulled: the sandbox ("pause") image is built here FROM scratch
// and imported, and so are the images the tests run (ImportImage). The
// cluster's certificates and kubeconfigs are made in Go at every Start.
//
// One cluster runs per machine (fixed ports): Start waits for the machine's
// lock, cleans up whatever a previous run that crashed left behind, and
// Stop puts the machine back as Start found it (processes, mounts, cgroups,
// iptables chains, the bridge, sysctls the kubelet sets, directories).
//
// It needs root, cgroups, Docker Engine (to build images) and Debian's
// containerd, runc, iptables and containernetworking-plugins: .ci/kube
// installs those and builds the binaries.
package kubecluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/internal/kubecluster/kubebin"
)

// DefaultDir is where a cluster keeps everything it makes (and the journal
// of what it changed elsewhere). Stop removes it.
const DefaultDir = "/var/tmp/horde-kube"

// PauseImage is the sandbox image, built from ./pause.
const PauseImage = "horde/pause:dev"

// Options configure a cluster; the zero value is ready to use.
type Options struct {
	// Dir holds the cluster's data, certificates and logs; DefaultDir when
	// empty. A run that crashed is cleaned up by the next Start with the
	// same Dir.
	Dir string
	// BinDir holds the binaries; when empty, kubebin finds them from the
	// repository that holds the working directory.
	BinDir string
	// NodeIP is the node's InternalIP, where the kubelet listens; when
	// empty, the machine's address on its default route.
	NodeIP string
	// PodSubnet is the Pods' addresses (host-local IPAM on the bridge);
	// 10.222.0.0/24 when empty.
	PodSubnet string
	// Bridge is the name of the Pods' bridge on the node; hordekube0 when empty.
	Bridge string
	// DockerHost is the Docker Engine that builds and exports images: ""
	// for $DOCKER_HOST or the default socket.
	DockerHost string
	// Log receives progress; discarded when nil.
	Log *slog.Logger
}

func (o *Options) setDefaults() {
	if o.Dir == "" {
		o.Dir = DefaultDir
	}
	if o.PodSubnet == "" {
		o.PodSubnet = "10.222.0.0/24"
	}
	if o.Bridge == "" {
		o.Bridge = "hordekube0"
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}

// Validate names the first bad field.
func (o *Options) Validate() error {
	if !filepath.IsAbs(o.Dir) || filepath.Clean(o.Dir) == "/" {
		return fmt.Errorf("kubecluster: Dir %q: must be an absolute path other than /", o.Dir)
	}
	if o.NodeIP != "" {
		ip := net.ParseIP(o.NodeIP)
		if ip == nil || ip.To4() == nil || ip.IsLoopback() || ip.IsUnspecified() {
			return fmt.Errorf("kubecluster: NodeIP %q: want an IPv4 address of this machine, not loopback", o.NodeIP)
		}
	}
	if _, n, err := net.ParseCIDR(o.PodSubnet); err != nil || n.IP.To4() == nil {
		return fmt.Errorf("kubecluster: PodSubnet %q: want an IPv4 CIDR", o.PodSubnet)
	}
	if len(o.Bridge) > 15 || strings.ContainsAny(o.Bridge, "/ \t\n:") {
		return fmt.Errorf("kubecluster: Bridge %q: not an interface name", o.Bridge)
	}
	return nil
}

// A Cluster is a running cluster. Stop it.
type Cluster struct {
	opts    Options
	dir     string
	p       paths
	bin     string
	log     *slog.Logger
	nodeIP  net.IP
	lock    net.Listener
	journal *journal
	docker  *docker.Client

	procs    []*proc
	wg       sync.WaitGroup
	exitOnce sync.Once
	anyExit  chan struct{} // closed when a component first exits
	exited   *proc         // that component

	rest   *rest.Config
	client *kubernetes.Clientset

	stopOnce sync.Once
	stopErr  error
}

// Prerequisites on the machine, and the Debian package of each.
var prerequisites = []struct{ path, pkg string }{
	{"/usr/bin/containerd", "containerd"},
	{"/usr/bin/ctr", "containerd"},
	{"/usr/sbin/runc", "runc"},
	{"/usr/sbin/iptables", "iptables"},
	{"/usr/sbin/ip", "iproute2"},
	{filepath.Join(cniBinDir, "bridge"), "containernetworking-plugins"},
	{filepath.Join(cniBinDir, "host-local"), "containernetworking-plugins"},
	{filepath.Join(cniBinDir, "loopback"), "containernetworking-plugins"},
}

// ErrPrerequisite wraps what Start misses on the machine.
var ErrPrerequisite = errors.New("kubecluster prerequisite missing")

// Start brings up a cluster and returns when its node is Ready, the default
// service account and root CA config map exist and the scheduler is ready.
// ctx bounds the start only; the cluster runs until Stop. On error nothing
// is left running and the error holds the components' last log lines.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	opts.setDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: a Kubernetes node needs root", ErrPrerequisite)
	}
	for _, p := range prerequisites {
		if _, err := os.Stat(p.path); err != nil {
			return nil, fmt.Errorf("%w: %s (Debian package %s): run %s", ErrPrerequisite, p.path, p.pkg, kubebin.BuildCommand)
		}
	}
	bin := opts.BinDir
	if bin == "" {
		wd, err := os.Getwd()
		if err != nil {
			return nil, err
		}
		root, err := kubebin.RepoRoot(wd)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrPrerequisite, err)
		}
		if bin, err = kubebin.Find(ctx, root); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrPrerequisite, err)
		}
	}
	nodeIP := net.ParseIP(opts.NodeIP)
	if nodeIP == nil {
		var err error
		if nodeIP, err = nodeAddress(); err != nil {
			return nil, err
		}
	}
	dc, err := docker.New(opts.DockerHost)
	if err != nil {
		return nil, err
	}
	if err := dc.Ping(ctx); err != nil {
		return nil, fmt.Errorf("%w: Docker Engine (builds the pause and job images): %w", ErrPrerequisite, err)
	}
	if err := images.Build(ctx, dc, "github.com/horde-compute/horde/internal/kubecluster/pause", PauseImage); err != nil {
		return nil, fmt.Errorf("build the pause image: %w", err)
	}

	lock, err := acquire(ctx, opts.Log)
	if err != nil {
		return nil, err
	}
	dir := filepath.Clean(opts.Dir)
	c := &Cluster{opts: opts, dir: dir, p: paths{dir}, bin: bin, log: opts.Log, nodeIP: nodeIP, lock: lock,
		docker: dc, anyExit: make(chan struct{})}
	if err := c.start(ctx); err != nil {
		var tails strings.Builder
		c.DumpLogs(&tails, 25)
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if serr := c.Stop(stopCtx); serr != nil {
			err = errors.Join(err, fmt.Errorf("and stopping: %w", serr))
		}
		return nil, fmt.Errorf("start kubernetes: %w\n%s", err, tails.String())
	}
	return c, nil
}

// acquire takes the machine's cluster lock, waiting while another process
// holds it.
func acquire(ctx context.Context, log *slog.Logger) (net.Listener, error) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for said := false; ; {
		l, err := net.Listen("unix", lockName)
		if err == nil {
			return l, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("take the cluster lock %s: %w", lockName, err)
		}
		if !said {
			log.Info("waiting for another process's Kubernetes cluster to stop", "lock", lockName)
			said = true
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("take the cluster lock %s (held by another process: ss -xlp | grep horde-kube): %w", lockName, ctx.Err())
		case <-tick.C:
		}
	}
}

func (c *Cluster) start(ctx context.Context) error {
	log := c.log
	// A run that crashed: its journal says how the machine was.
	if j, err := readJournal(c.dir); err == nil {
		log.Warn("cleaning up after a cluster that did not stop", "dir", c.dir)
		if err := restore(ctx, c.dir, j, log); err != nil {
			return fmt.Errorf("clean up the previous run: %w", err)
		}
	} else if _, serr := os.Stat(c.dir); serr == nil {
		log.Warn("cleaning up a cluster directory without a journal", "dir", c.dir, "journal", err)
		if err := restore(ctx, c.dir, nil, log); err != nil {
			return fmt.Errorf("clean up the previous run: %w", err)
		}
	}
	if err := c.checkPorts(); err != nil {
		return err
	}
	for _, d := range []string{"", "logs", "pki", "etcd", "containerd", "kubelet", "pod-logs", "kubelet-plugins", "cni", "cni-ipam", "runc", "apiserver"} {
		if err := os.MkdirAll(c.p.j(d), 0o700); err != nil {
			return err
		}
	}
	j, err := record(ctx, c.dir, c.opts.Bridge)
	if err != nil {
		return err
	}
	c.journal = j
	if err := c.writeFiles(); err != nil {
		return err
	}

	// The control plane, each waited for before the next needs it.
	if _, err := c.spawn("etcd", filepath.Join(c.bin, kubebin.Etcd), c.etcdArgs()...); err != nil {
		return err
	}
	if err := c.waitUntil(ctx, "etcd", 100*time.Millisecond, c.httpOK(nil, "http://127.0.0.1:"+strconv.Itoa(etcdClientPort)+"/health")); err != nil {
		return err
	}
	if _, err := c.spawn("containerd", "/usr/bin/containerd", "--config", c.p.j("containerd.toml")); err != nil {
		return err
	}
	if err := c.waitUntil(ctx, "containerd", 100*time.Millisecond, func(ctx context.Context) (bool, error) {
		return c.ctr(ctx, nil, "version") == nil, nil
	}); err != nil {
		return err
	}
	if err := c.ImportImage(ctx, PauseImage); err != nil {
		return err
	}
	if _, err := c.spawn("kube-apiserver", filepath.Join(c.bin, kubebin.APIServer), c.apiserverArgs()...); err != nil {
		return err
	}
	tlsClient, err := c.tlsClient()
	if err != nil {
		return err
	}
	if err := c.waitUntil(ctx, "kube-apiserver", 100*time.Millisecond, c.httpOK(tlsClient, c.rest.Host+"/readyz")); err != nil {
		return err
	}
	if _, err := c.spawn("kube-controller-manager", filepath.Join(c.bin, kubebin.ControllerManager), c.controllerManagerArgs()...); err != nil {
		return err
	}
	if _, err := c.spawn("kube-scheduler", filepath.Join(c.bin, kubebin.Scheduler), c.schedulerArgs()...); err != nil {
		return err
	}
	if _, err := c.spawn("kubelet", filepath.Join(c.bin, kubebin.Kubelet), c.kubeletArgs()...); err != nil {
		return err
	}

	// Ready for Pods.
	if err := c.waitUntil(ctx, "kube-scheduler", 100*time.Millisecond, c.httpOK(tlsClient, "https://127.0.0.1:"+strconv.Itoa(schedulerPort)+"/readyz")); err != nil {
		return err
	}
	if err := c.waitUntil(ctx, "kube-controller-manager", 100*time.Millisecond, c.httpOK(tlsClient, "https://127.0.0.1:"+strconv.Itoa(controllerManagerPort)+"/healthz")); err != nil {
		return err
	}
	if err := c.waitUntil(ctx, "node "+NodeName+" Ready", 200*time.Millisecond, c.nodeReady); err != nil {
		return err
	}
	if err := c.waitUntil(ctx, "the default service account and root CA", 200*time.Millisecond, func(ctx context.Context) (bool, error) {
		if _, err := c.client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return false, err
		}
		_, err := c.client.CoreV1().ConfigMaps("default").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		return err == nil, err
	}); err != nil {
		return err
	}
	log.Info("kubernetes cluster ready", "dir", c.dir, "node", NodeName, "nodeIP", c.nodeIP)
	return nil
}

func (c *Cluster) nodeReady(ctx context.Context) (bool, error) {
	n, err := c.client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			if cond.Status == corev1.ConditionTrue {
				return true, nil
			}
			return false, fmt.Errorf("node %s: %s: %s", NodeName, cond.Reason, cond.Message)
		}
	}
	return false, nil
}

// checkPorts fails clearly when another program holds one of the fixed ports.
func (c *Cluster) checkPorts() error {
	type port struct {
		host string
		n    int
	}
	for _, p := range []port{
		{"127.0.0.1", APIServerPort}, {"127.0.0.1", etcdClientPort}, {"127.0.0.1", etcdPeerPort},
		{"127.0.0.1", kubeletHealthzPort}, {"127.0.0.1", controllerManagerPort}, {"127.0.0.1", schedulerPort},
		{c.nodeIP.String(), kubeletPort},
	} {
		addr := net.JoinHostPort(p.host, strconv.Itoa(p.n))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("the cluster's fixed port %s is taken (ss -ltnp 'sport = :%d' says by whom): %w", addr, p.n, err)
		}
		l.Close()
	}
	return nil
}

// writeFiles makes the certificates, kubeconfigs and configuration files.
func (c *Cluster) writeFiles() error {
	p := c.p
	ca, err := newCA("horde-kube-ca")
	if err != nil {
		return err
	}
	if err := os.WriteFile(p.pki("ca.crt"), ca.certPEM, 0o644); err != nil {
		return err
	}
	if err := writeServiceAccountKeys(p.j("pki")); err != nil {
		return err
	}
	_, svcNet, _ := net.ParseCIDR(serviceCIDR)
	svcIP := svcNet.IP.To4()
	svcIP = net.IPv4(svcIP[0], svcIP[1], svcIP[2], svcIP[3]+1)
	loopback := net.IPv4(127, 0, 0, 1)
	server := "https://127.0.0.1:" + strconv.Itoa(APIServerPort)
	type issued struct {
		file       string
		cn         string
		orgs       []string
		use        usage
		names      []string
		ips        []net.IP
		kubeconfig bool
	}
	for _, i := range []issued{
		{file: "apiserver", cn: "kube-apiserver", use: serverAuth,
			names: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			ips:   []net.IP{loopback, svcIP, c.nodeIP}},
		{file: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}, use: clientAuth},
		{file: "admin", cn: "horde-kube-admin", orgs: []string{"system:masters"}, use: clientAuth, kubeconfig: true},
		{file: "controller-manager", cn: "system:kube-controller-manager", use: clientAuth | serverAuth,
			names: []string{"localhost"}, ips: []net.IP{loopback}, kubeconfig: true},
		{file: "scheduler", cn: "system:kube-scheduler", use: clientAuth | serverAuth,
			names: []string{"localhost"}, ips: []net.IP{loopback}, kubeconfig: true},
		{file: "kubelet", cn: "system:node:" + NodeName, orgs: []string{"system:nodes"}, use: clientAuth | serverAuth,
			names: []string{NodeName}, ips: []net.IP{c.nodeIP}, kubeconfig: true},
	} {
		crt, err := ca.issue(i.cn, i.orgs, i.use, i.names, i.ips)
		if err != nil {
			return fmt.Errorf("issue %s certificate: %w", i.file, err)
		}
		if err := crt.write(p.pki(i.file)); err != nil {
			return err
		}
		if i.kubeconfig {
			if err := os.WriteFile(p.pki(i.file+".kubeconfig"), kubeconfig(server, ca, crt), 0o600); err != nil {
				return err
			}
		}
		if i.file == "admin" {
			c.rest = &rest.Config{Host: server, TLSClientConfig: rest.TLSClientConfig{
				CAData: ca.certPEM, CertData: crt.certPEM, KeyData: crt.keyPEM}}
		}
	}
	cs, err := kubernetes.NewForConfig(c.rest)
	if err != nil {
		return err
	}
	c.client = cs
	for name, content := range map[string]string{
		"kubelet.yaml":               c.kubeletConfig(),
		"containerd.toml":            c.containerdConfig(),
		"cni/10-horde-kube.conflist": c.cniConfig(),
	} {
		if err := os.WriteFile(p.j(name), []byte(content), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// tlsClient is an HTTP client that trusts the cluster's CA and presents the
// admin certificate.
func (c *Cluster) tlsClient() (*http.Client, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(c.rest.CAData) {
		return nil, errors.New("cluster CA: no certificate")
	}
	crt, err := tls.X509KeyPair(c.rest.CertData, c.rest.KeyData)
	if err != nil {
		return nil, err
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{crt}},
	}}, nil
}

// httpOK is a readiness check: GET url answers 200.
func (c *Cluster) httpOK(client *http.Client, url string) func(context.Context) (bool, error) {
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	return func(ctx context.Context) (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, fmt.Errorf("%w: %w", errPermanent, err)
		}
		resp, err := client.Do(req)
		if err != nil {
			return false, err
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
		}
		return true, nil
	}
}

// ctr runs ctr against the cluster's containerd in the k8s.io namespace
// (the CRI plugin's).
func (c *Cluster) ctr(ctx context.Context, stdin io.Reader, args ...string) error {
	cmd := exec.CommandContext(ctx, "/usr/bin/ctr", append([]string{"--address", c.p.containerdSock(), "--namespace", "k8s.io"}, args...)...)
	cmd.Stdin = stdin
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ImportImage copies an image from the Docker Engine into the cluster's
// containerd (docker save | ctr import), so that Pods run it with
// imagePullPolicy Never. Its name in the cluster is ref as Docker names it
// (horde/job:dev is docker.io/horde/job:dev).
func (c *Cluster) ImportImage(ctx context.Context, ref string) error {
	if ref == "" || strings.ContainsAny(ref, " \t\n") {
		return fmt.Errorf("import image %q: not an image reference", ref)
	}
	body, err := c.dockerSave(ctx, ref)
	if err != nil {
		return fmt.Errorf("import image %s: %w", ref, err)
	}
	defer body.Close()
	if err := c.ctr(ctx, body, "images", "import", "-"); err != nil {
		return fmt.Errorf("import image %s: %w", ref, err)
	}
	want := normalizeRef(ref)
	cmd := exec.CommandContext(ctx, "/usr/bin/ctr", "--address", c.p.containerdSock(), "--namespace", "k8s.io", "images", "ls", "-q")
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("import image %s: ctr images ls: %w", ref, err)
	}
	for _, name := range strings.Fields(string(out)) {
		if name == want {
			return nil
		}
	}
	return fmt.Errorf("import image %s: %s is not in containerd after the import", ref, want)
}

// dockerSave streams `docker save ref` from the Engine API.
func (c *Cluster) dockerSave(ctx context.Context, ref string) (io.ReadCloser, error) {
	host := c.opts.DockerHost
	if host == "" {
		host = os.Getenv("DOCKER_HOST")
	}
	if host == "" {
		host = "unix:///var/run/docker.sock"
	}
	u, err := url.Parse(host)
	if err != nil {
		return nil, fmt.Errorf("docker host %q: %w", host, err)
	}
	client, base := http.DefaultClient, "http://"+u.Host
	if u.Scheme == "unix" {
		sock := u.Path
		client = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
		base = "http://docker"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/"+docker.APIVersion+"/images/get?names="+url.QueryEscape(ref), nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("docker save: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		return nil, fmt.Errorf("docker save: %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	return resp.Body, nil
}

// RESTConfig is a client configuration for the cluster's admin (group
// system:masters).
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.rest) }

// Client is a clientset for the cluster's admin.
func (c *Cluster) Client() *kubernetes.Clientset { return c.client }

// Kubeconfig is the path of the admin's kubeconfig file (for kubectl).
func (c *Cluster) Kubeconfig() string { return c.p.pki("admin.kubeconfig") }

// NodeIP is the node's InternalIP.
func (c *Cluster) NodeIP() net.IP { return c.nodeIP }

// Stop ends every component and every Pod's containers, and puts the machine
// back as Start found it. It is safe to call more than once.
func (c *Cluster) Stop(ctx context.Context) error {
	c.stopOnce.Do(func() { c.stopErr = c.stop(ctx) })
	return c.stopErr
}

func (c *Cluster) stop(ctx context.Context) error {
	var errs []error
	// The kubelet first, so that it restarts nothing; etcd last.
	for i := len(c.procs) - 1; i >= 0; i-- {
		if err := c.procs[i].stop(ctx, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	c.wg.Wait()
	if c.journal != nil || dirExists(c.dir) {
		if err := restore(ctx, c.dir, c.journal, c.log); err != nil {
			errs = append(errs, fmt.Errorf("restore the machine: %w", err))
		}
	}
	c.lock.Close()
	return errors.Join(errs...)
}

func dirExists(d string) bool {
	st, err := os.Stat(d)
	return err == nil && st.IsDir()
}
