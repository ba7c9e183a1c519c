package kubecluster

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
)

// Fixed ports: one cluster per machine. All but the kubelet's bind 127.0.0.1;
// the kubelet's API binds the node IP (the API server reaches it there).
const (
	APIServerPort         = 6443
	etcdClientPort        = 2379
	etcdPeerPort          = 2380
	kubeletHealthzPort    = 10248
	kubeletPort           = 10250
	controllerManagerPort = 10257
	schedulerPort         = 10259
)

// NodeName is the name of the cluster's one node.
const NodeName = "horde-kube"

// serviceCIDR is the range of Service IPs (no kube-proxy runs: Services do
// not route, but the API server needs a range).
const serviceCIDR = "10.96.0.0/24"

// paths of everything under the cluster's directory.
type paths struct{ dir string }

func (p paths) j(elem ...string) string { return filepath.Join(append([]string{p.dir}, elem...)...) }
func (p paths) pki(name string) string  { return p.j("pki", name) }
func (p paths) containerdSock() string  { return p.j("containerd", "containerd.sock") }

func (c *Cluster) etcdArgs() []string {
	peer := "http://127.0.0.1:" + strconv.Itoa(etcdPeerPort)
	client := "http://127.0.0.1:" + strconv.Itoa(etcdClientPort)
	return []string{
		"--name=" + NodeName,
		"--data-dir=" + c.p.j("etcd"),
		"--listen-client-urls=" + client, "--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer, "--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=" + NodeName + "=" + peer,
		"--initial-cluster-state=new",
		"--log-level=warn",
	}
}

func (c *Cluster) apiserverArgs() []string {
	p := c.p
	return []string{
		"--etcd-servers=http://127.0.0.1:" + strconv.Itoa(etcdClientPort),
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(APIServerPort),
		"--advertise-address=" + c.nodeIP.String(),
		"--cert-dir=" + p.j("apiserver"),
		"--tls-cert-file=" + p.pki("apiserver.crt"), "--tls-private-key-file=" + p.pki("apiserver.key"),
		"--client-ca-file=" + p.pki("ca.crt"),
		"--kubelet-client-certificate=" + p.pki("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + p.pki("apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority=" + p.pki("ca.crt"),
		// Otherwise logs and exec resolve the node's name through DNS.
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--service-cluster-ip-range=" + serviceCIDR,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.pki("sa.pub"),
		"--service-account-signing-key-file=" + p.pki("sa.key"),
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--anonymous-auth=false",
		"--profiling=false",
	}
}

func (c *Cluster) controllerManagerArgs() []string {
	p := c.p
	kc := p.pki("controller-manager.kubeconfig")
	return []string{
		"--kubeconfig=" + kc, "--authentication-kubeconfig=" + kc, "--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(controllerManagerPort),
		"--tls-cert-file=" + p.pki("controller-manager.crt"), "--tls-private-key-file=" + p.pki("controller-manager.key"),
		"--client-ca-file=" + p.pki("ca.crt"),
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + p.pki("sa.key"),
		"--root-ca-file=" + p.pki("ca.crt"),
		"--service-cluster-ip-range=" + serviceCIDR,
		// Else it creates /usr/libexec/kubernetes/kubelet-plugins/volume/exec.
		"--flex-volume-plugin-dir=" + p.j("kubelet-plugins"),
		"--profiling=false",
	}
}

func (c *Cluster) schedulerArgs() []string {
	p := c.p
	kc := p.pki("scheduler.kubeconfig")
	return []string{
		"--kubeconfig=" + kc, "--authentication-kubeconfig=" + kc, "--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(schedulerPort),
		"--tls-cert-file=" + p.pki("scheduler.crt"), "--tls-private-key-file=" + p.pki("scheduler.key"),
		"--client-ca-file=" + p.pki("ca.crt"),
		"--leader-elect=false",
		"--profiling=false",
	}
}

func (c *Cluster) kubeletArgs() []string {
	p := c.p
	return []string{
		"--config=" + p.j("kubelet.yaml"),
		"--kubeconfig=" + p.pki("kubelet.kubeconfig"),
		"--root-dir=" + p.j("kubelet"),
		"--hostname-override=" + NodeName,
		"--node-ip=" + c.nodeIP.String(),
		"--v=1",
	}
}

// kubeletConfig is the kubelet's configuration file.
func (c *Cluster) kubeletConfig() string {
	p := c.p
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
tlsCertFile: %s
tlsPrivateKeyFile: %s
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %s
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://%s
cgroupDriver: cgroupfs
# kubelet >= 1.35 refuses cgroup v1 unless told.
failCgroupV1: false
failSwapOn: false
clusterDomain: cluster.local
podLogsDir: %s
volumePluginDir: %s
rotateCertificates: false
serializeImagePulls: false
# Images are imported, never pulled: never collect them, and do not evict
# Pods for a disk that is fuller than a real node's would be.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%%
  nodefs.inodesFree: 1%%
  imagefs.available: 1%%
`, c.nodeIP, kubeletPort, kubeletHealthzPort, p.pki("kubelet.crt"), p.pki("kubelet.key"), p.pki("ca.crt"),
		p.containerdSock(), p.j("pod-logs"), p.j("kubelet-plugins"))
}

// containerdConfig is the separate containerd's configuration: its own
// root, state, socket and runc root, the CRI plugin with the local pause
// image.
func (c *Cluster) containerdConfig() string {
	p := c.p
	return fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # Root here may not lower oom_score_adj: without this every sandbox fails
  # with "runc create failed: ... can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = %q
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
    max_conf_num = 1
`, p.j("containerd", "root"), p.j("containerd", "state"), p.containerdSock(), p.j("containerd", "opt"),
		normalizeRef(PauseImage), p.j("runc"), cniBinDir, p.j("cni"))
}

// cniBinDir holds Debian's containernetworking-plugins.
const cniBinDir = "/usr/lib/cni"

// cniConfig is the Pod network: a bridge on the node with host-local
// addresses from subnet, the bridge as the Pods' gateway and default
// route, and no masquerading (nothing NATs a Pod's traffic to the outside).
func (c *Cluster) cniConfig() string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "horde-kube",
  "plugins": [
    {
      "type": "bridge",
      "bridge": %q,
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": %q
      }
    }
  ]
}
`, c.opts.Bridge, c.opts.PodSubnet, c.p.j("cni-ipam"))
}

// normalizeRef is an image reference as containerd names it: with a
// registry host and a tag.
func normalizeRef(ref string) string {
	name, tag := ref, ""
	if i := strings.LastIndexAny(ref, ":@"); i > strings.LastIndex(ref, "/") {
		name, tag = ref[:i], ref[i:]
	}
	if tag == "" {
		tag = ":latest"
	}
	first, _, found := strings.Cut(name, "/")
	if !found {
		name = "docker.io/library/" + name
	} else if !strings.ContainsAny(first, ".:") && first != "localhost" {
		name = "docker.io/" + name
	}
	return name + tag
}

// nodeAddress is the machine's address on its default route.
func nodeAddress() (net.IP, error) {
	// A UDP "connection" only picks a route; nothing is sent.
	conn, err := net.Dial("udp4", "192.0.2.1:9")
	if err != nil {
		return nil, fmt.Errorf("find the node's address (no default route?): %w; set Options.NodeIP", err)
	}
	defer conn.Close()
	return conn.LocalAddr().(*net.UDPAddr).IP, nil
}
