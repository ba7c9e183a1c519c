package kube

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/isolate"
)

// Names of the Pod's containers.
const (
	JobContainer     = "job"
	IsolateContainer = "isolate"
)

// GPUResource is the extended resource NVIDIA's device plugin advertises.
const GPUResource corev1.ResourceName = "nvidia.com/gpu"

// ManagedBy labels every Pod a Runtime makes (app.kubernetes.io/managed-by).
const ManagedBy = "horde"

// PodOptions is what a Pod gets beyond the container config.
type PodOptions struct {
	Namespace string
	// IsolateImage runs the init container that leaves a Pod without
	// network only loopback (command ./isolate); required for jobs without network.
	IsolateImage string
	// PullIfNotPresent lets the kubelet pull the job's image; otherwise
	// it must be on the node already (imagePullPolicy: Never).
	PullIfNotPresent bool
	// NodeName pins the Pod to a node (where the job's directories are); empty: any.
	NodeName string
	// AllGPUs is how many GPUs a job asking for all of them gets.
	AllGPUs int
	// EphemeralStorage bounds the job container's writable layer and logs
	// (the kubelet evicts a Pod past it); zero: DefaultEphemeralStorage.
	EphemeralStorage int64
	// ProxyFrom are the addresses a streaming job's Pod accepts traffic
	// from (and sends to): where the executor's signing proxy connects
	// from, as the Pod sees it, or isolate.Gateway (the Pod's gateway:
	// a proxy on the Pod's node). Empty: DefaultProxyFrom.
	ProxyFrom []string
	// CopyBinds makes binds emptyDirs of at most MaxBindBytes each (zero:
	// DefaultMaxBindBytes) that the Pod's files and keeper containers
	// fill and read (FilesCopy); PushBinds adds the files init container,
	// which holds the job back until the binds' content arrived.
	CopyBinds, PushBinds bool
	MaxBindBytes         int64
}

// DefaultProxyFrom is whom a streaming job's Pod accepts by default: its
// gateway, which is what a proxy on the Pod's own node connects from.
var DefaultProxyFrom = []string{isolate.Gateway}

// DefaultEphemeralStorage is the job container's ephemeral-storage limit by default.
const DefaultEphemeralStorage = 1 << 30

// UnreachableToleration is how long a job's Pod stays bound to a node that
// stopped answering before Kubernetes deletes it (then the job ends with
// node_lost).
const UnreachableToleration = 30

// PodFor returns the Pod that runs cfg as the container named name, with
// every isolation horde asks of the Docker Engine in Kubernetes terms:
//
//   - no network (NetworkMode "none" or NetworkDisabled): an init container
//     with CAP_NET_ADMIN alone deletes every interface of the Pod's network
//     namespace but lo before the job container starts; the job container
//     shares that namespace, so it has loopback only. A NetworkPolicy
//     would need a policy engine in the cluster; this needs nothing.
//     A job on a named network (a streaming job's service, which the
//     executor's signing proxy must reach) keeps its Pod address; the init
//     container deletes its default routes instead and installs netfilter
//     rules in the Pod's namespace that drop every packet in or out but
//     loopback's and the proxy's (ProxyFrom), checked before the job
//     container starts: no other Pod, on the subnet or not, reaches the
//     service, and the service reaches nothing else.
//   - read-only root, allowPrivilegeEscalation false, every capability
//     dropped, the runtime's default seccomp profile, no service account
//     token, no service links, not privileged, no host namespaces;
//   - requests equal to limits (Guaranteed QoS) for memory and CPU, and
//     nvidia.com/gpu for GPU classes;
//   - binds become hostPath volumes of type Directory (the job's
//     directories, each bounded by package jobdisk as on Docker) or, with
//     CopyBinds, emptyDirs that the files and keeper containers fill and
//     read (see FilesCopy), tmpfs
//     mounts memory-backed emptyDirs whose sizeLimit sets the tmpfs's size.
//
// What Docker bounds and a Pod cannot say: the pids limit (the kubelet's
// podPidsLimit, node-wide) and the size of the engine's log files (the
// kubelet's containerLogMaxSize); CpusetCpus is left to the kubelet's CPU
// manager.
func PodFor(name string, cfg *docker.ContainerConfig, o PodOptions) (*corev1.Pod, error) {
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return nil, fmt.Errorf("pod name %q: %s", name, strings.Join(errs, "; "))
	}
	labels := map[string]string{"app.kubernetes.io/managed-by": ManagedBy}
	for k, v := range cfg.Labels {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			return nil, fmt.Errorf("label %q: %s", k, strings.Join(errs, "; "))
		}
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			return nil, fmt.Errorf("label %s=%q: %s", k, v, strings.Join(errs, "; "))
		}
		labels[k] = v
	}
	hc := cfg.HostConfig
	no, yes := false, true
	pull := corev1.PullNever
	if o.PullIfNotPresent {
		pull = corev1.PullIfNotPresent
	}
	job := corev1.Container{
		Name:            JobContainer,
		Image:           cfg.Image,
		Command:         cfg.Entrypoint,
		Args:            cfg.Cmd,
		WorkingDir:      cfg.WorkingDir,
		ImagePullPolicy: pull,
		SecurityContext: &corev1.SecurityContext{
			Privileged:               &no,
			AllowPrivilegeEscalation: &no,
			ReadOnlyRootFilesystem:   &hc.ReadonlyRootfs,
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TerminationMessagePolicy: corev1.TerminationMessageReadFile,
	}
	if cfg.User != "" {
		uid, err := strconv.ParseInt(cfg.User, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("user %q: a Pod takes a numeric uid", cfg.User)
		}
		job.SecurityContext.RunAsUser = &uid
	}
	for _, kv := range cfg.Env {
		k, v, _ := strings.Cut(kv, "=")
		job.Env = append(job.Env, corev1.EnvVar{Name: k, Value: v})
	}
	res, err := resources(hc, o)
	if err != nil {
		return nil, err
	}
	job.Resources = res

	var volumes []corev1.Volume
	dir := corev1.HostPathDirectory
	for i, b := range hc.Binds {
		parts := strings.Split(b, ":")
		if len(parts) < 2 || len(parts) > 3 || !strings.HasPrefix(parts[0], "/") || !strings.HasPrefix(parts[1], "/") {
			return nil, fmt.Errorf("bind %q: want /host/path:/container/path[:ro]", b)
		}
		vn := "bind-" + strconv.Itoa(i)
		volumes = append(volumes, corev1.Volume{Name: vn, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: parts[0], Type: &dir}}})
		job.VolumeMounts = append(job.VolumeMounts, corev1.VolumeMount{Name: vn, MountPath: parts[1], ReadOnly: len(parts) == 3 && parts[2] == "ro"})
	}
	i := 0
	for _, target := range slices.Sorted(maps.Keys(hc.Tmpfs)) {
		size, err := tmpfsSize(hc.Tmpfs[target])
		if err != nil {
			return nil, fmt.Errorf("tmpfs %s: %w", target, err)
		}
		vn := "tmpfs-" + strconv.Itoa(i)
		i++
		volumes = append(volumes, corev1.Volume{Name: vn, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: size}}})
		job.VolumeMounts = append(job.VolumeMounts, corev1.VolumeMount{Name: vn, MountPath: target})
	}

	grace := int64(1)
	tol := int64(UnreachableToleration)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: o.Namespace, Labels: labels},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			AutomountServiceAccountToken:  &no,
			EnableServiceLinks:            &no,
			TerminationGracePeriodSeconds: &grace,
			NodeName:                      o.NodeName,
			Containers:                    []corev1.Container{job},
			Volumes:                       volumes,
			Tolerations: []corev1.Toleration{
				{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &tol},
				{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &tol},
			},
		},
	}
	if _, ok := res.Limits[GPUResource]; ok {
		pod.Spec.Tolerations = append(pod.Spec.Tolerations, corev1.Toleration{Key: string(GPUResource), Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule})
	}
	if o.IsolateImage == "" {
		return nil, errors.New("a job's Pod needs the isolate image (PodOptions.IsolateImage)")
	}
	args := []string{"unnet"}
	if !cfg.NetworkDisabled && hc.NetworkMode != "none" {
		// A named network (a streaming job's internal one): the Pod keeps
		// its address, which the executor's proxy reaches, loses its
		// default routes, and talks to the proxy's address alone.
		from := o.ProxyFrom
		if len(from) == 0 {
			from = DefaultProxyFrom
		}
		for _, f := range from {
			if f != isolate.Gateway {
				if _, err := netip.ParseAddr(f); err != nil {
					return nil, fmt.Errorf("proxy address %q: want an IP address or %s", f, isolate.Gateway)
				}
			}
		}
		args = append([]string{"service"}, from...)
	}
	{
		small := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("16Mi")}
		root := int64(0)
		pod.Spec.InitContainers = []corev1.Container{{
			Name:            IsolateContainer,
			Image:           o.IsolateImage,
			Args:            args,
			ImagePullPolicy: corev1.PullIfNotPresent,
			Resources:       corev1.ResourceRequirements{Requests: small, Limits: small},
			SecurityContext: &corev1.SecurityContext{
				Privileged:               &no,
				AllowPrivilegeEscalation: &no,
				ReadOnlyRootFilesystem:   &yes,
				RunAsUser:                &root,
				Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_ADMIN"}},
				SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
		}}
	}
	if o.CopyBinds {
		copyBinds(pod, o)
	}
	return pod, nil
}

// resources turns the class's limits into requests equal to limits.
func resources(hc docker.HostConfig, o PodOptions) (corev1.ResourceRequirements, error) {
	l := corev1.ResourceList{}
	if hc.Memory > 0 {
		l[corev1.ResourceMemory] = *resource.NewQuantity(hc.Memory, resource.BinarySI)
	}
	if hc.NanoCPUs > 0 {
		l[corev1.ResourceCPU] = *resource.NewMilliQuantity(hc.NanoCPUs/1e6, resource.DecimalSI)
	}
	l[corev1.ResourceEphemeralStorage] = *resource.NewQuantity(cmp.Or(o.EphemeralStorage, int64(DefaultEphemeralStorage)), resource.BinarySI)
	for _, d := range hc.DeviceRequests {
		n := d.Count
		if n < 0 {
			if o.AllGPUs <= 0 {
				return corev1.ResourceRequirements{}, errors.New("the job asks for every GPU, and PodOptions.AllGPUs says how many that is: none set")
			}
			n = o.AllGPUs
		}
		if n > 0 {
			l[GPUResource] = *resource.NewQuantity(int64(n), resource.DecimalSI)
		}
	}
	return corev1.ResourceRequirements{Requests: l.DeepCopy(), Limits: l}, nil
}

// tmpfsSize reads size= of Docker's tmpfs options ("rw,nosuid,size=512m").
func tmpfsSize(opts string) (*resource.Quantity, error) {
	for _, o := range strings.Split(opts, ",") {
		v, ok := strings.CutPrefix(o, "size=")
		if !ok {
			continue
		}
		mult := int64(1)
		switch strings.ToLower(v[len(v)-1:]) {
		case "k":
			mult = 1 << 10
		case "m":
			mult = 1 << 20
		case "g":
			mult = 1 << 30
		}
		if mult != 1 {
			v = v[:len(v)-1]
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("size %q", o)
		}
		return resource.NewQuantity(n*mult, resource.BinarySI), nil
	}
	return nil, errors.New("no size= (an unbounded tmpfs is refused)")
}
