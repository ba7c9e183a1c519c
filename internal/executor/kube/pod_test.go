package kube_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/kube"
	"github.com/horde-compute/horde/internal/miner"
	"github.com/horde-compute/horde/protocol"
)

var opts = kube.PodOptions{Namespace: "jobs", IsolateImage: "horde/isolate:dev"}

// jobPod is the Pod of a job request on class, as an executor asks for it.
func jobPod(t *testing.T, req *protocol.V0JobRequest, class string, o kube.PodOptions) *corev1.Pod {
	t.Helper()
	spec, ok := miner.DefaultClasses()[class]
	if !ok {
		t.Fatalf("no class %s", class)
	}
	cfg := executor.ContainerConfig(req, spec, executor.Paths{Volume: "/data/job-1/volume", Output: "/data/job-1/output", Artifacts: "/data/job-1/artifacts"}, "owner-hotkey")
	pod, err := kube.PodFor("horde-job-"+req.JobUUID, cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

func request(uuid string) *protocol.V0JobRequest {
	return &protocol.V0JobRequest{JobUUID: uuid, DockerImage: "horde/job:dev", DockerRunCmd: []string{"demo"}, Env: map[string]string{"A": "1"}}
}

func TestPodIsolation(t *testing.T) {
	pod := jobPod(t, request("0a1b"), protocol.ClassTest, opts)
	s := pod.Spec
	if len(s.Containers) != 1 || s.Containers[0].Name != kube.JobContainer {
		t.Fatalf("containers %+v", s.Containers)
	}
	job := s.Containers[0]
	sc := job.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("root file system not read-only")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("privilege escalation allowed")
	}
	if sc.Privileged == nil || *sc.Privileged {
		t.Error("privileged not refused")
	}
	if sc.Capabilities == nil || !cmp.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("capabilities %+v", sc.Capabilities)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("seccomp %+v", sc.SeccompProfile)
	}
	if s.HostNetwork || s.HostPID || s.HostIPC {
		t.Error("host namespaces shared")
	}
	if s.AutomountServiceAccountToken == nil || *s.AutomountServiceAccountToken {
		t.Error("service account token mounted")
	}
	if s.EnableServiceLinks == nil || *s.EnableServiceLinks {
		t.Error("service links in the environment")
	}
	if s.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("restart policy %s", s.RestartPolicy)
	}
	if job.ImagePullPolicy != corev1.PullNever {
		t.Errorf("pull policy %s", job.ImagePullPolicy)
	}
	if !cmp.Equal(job.Args, []string{"demo"}) || len(job.Command) != 0 {
		t.Errorf("command %v args %v", job.Command, job.Args)
	}
	if !cmp.Equal(job.Env, []corev1.EnvVar{{Name: "A", Value: "1"}}) {
		t.Errorf("env %v", job.Env)
	}

	// No network: an init container with NET_ADMIN and nothing else removes
	// the interfaces before the job container starts.
	if len(s.InitContainers) != 1 {
		t.Fatalf("init containers %+v", s.InitContainers)
	}
	ic := s.InitContainers[0]
	if ic.Name != kube.IsolateContainer || ic.Image != opts.IsolateImage || !cmp.Equal(ic.Args, []string{"unnet"}) {
		t.Errorf("isolate container %+v", ic)
	}
	isc := ic.SecurityContext
	if !cmp.Equal(isc.Capabilities, &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_ADMIN"}}) {
		t.Errorf("isolate capabilities %+v", isc.Capabilities)
	}
	if *isc.AllowPrivilegeEscalation || *isc.Privileged || !*isc.ReadOnlyRootFilesystem {
		t.Errorf("isolate security context %+v", isc)
	}

	// The job's directories: hostPath volumes of existing directories
	// (bounded by jobdisk), /tmp a memory-backed emptyDir of bounded size.
	mounts := map[string]corev1.Volume{}
	for _, m := range job.VolumeMounts {
		for _, v := range s.Volumes {
			if v.Name == m.Name {
				mounts[m.MountPath] = v
			}
		}
	}
	for target, src := range map[string]string{"/volume": "/data/job-1/volume", "/output": "/data/job-1/output"} {
		hp := mounts[target].HostPath
		if hp == nil || hp.Path != src || hp.Type == nil || *hp.Type != corev1.HostPathDirectory {
			t.Errorf("%s: %+v", target, mounts[target])
		}
	}
	ed := mounts["/tmp"].EmptyDir
	if ed == nil || ed.Medium != corev1.StorageMediumMemory || ed.SizeLimit == nil || ed.SizeLimit.Value() != 512<<20 {
		t.Errorf("/tmp: %+v", mounts["/tmp"])
	}
	if len(mounts) != 3 {
		t.Errorf("mounts %v", job.VolumeMounts)
	}
}

func TestPodLimits(t *testing.T) {
	pod := jobPod(t, request("c0ffee"), protocol.ClassCPU8c16gb, opts)
	r := pod.Spec.Containers[0].Resources
	want := corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse("8"),
		corev1.ResourceMemory:           resource.MustParse("16Gi"),
		corev1.ResourceEphemeralStorage: resource.MustParse("1Gi"),
	}
	for _, l := range []corev1.ResourceList{r.Limits, r.Requests} {
		if len(l) != len(want) {
			t.Errorf("resources %v, want %v", l, want)
		}
		for k, v := range want {
			if q, ok := l[k]; !ok || q.Cmp(v) != 0 {
				t.Errorf("%s = %v, want %v", k, l[k], v)
			}
		}
	}
	if _, gpu := r.Limits[kube.GPUResource]; gpu {
		t.Error("a CPU class asks for a GPU")
	}
}

func TestPodGPU(t *testing.T) {
	pod := jobPod(t, request("9a"), protocol.ClassGPU24, opts)
	r := pod.Spec.Containers[0].Resources
	if q := r.Limits[kube.GPUResource]; q.Value() != 1 {
		t.Errorf("limits %v", r.Limits)
	}
	if q := r.Requests[kube.GPUResource]; q.Value() != 1 {
		t.Errorf("requests %v", r.Requests)
	}
	tolerated := false
	for _, tol := range pod.Spec.Tolerations {
		tolerated = tolerated || tol.Key == string(kube.GPUResource)
	}
	if !tolerated {
		t.Errorf("GPU nodes' taint not tolerated: %+v", pod.Spec.Tolerations)
	}

	// nvidia_all: every GPU, as many as the runtime is told.
	req := request("9b")
	req.DockerRunOptionsPreset = "nvidia_all"
	o := opts
	o.AllGPUs = 8
	pod = jobPod(t, req, protocol.ClassGPU24, o)
	if q := pod.Spec.Containers[0].Resources.Limits[kube.GPUResource]; q.Value() != 8 {
		t.Errorf("nvidia_all: %v", pod.Spec.Containers[0].Resources.Limits)
	}
	spec := miner.DefaultClasses()[protocol.ClassGPU24]
	cfg := executor.ContainerConfig(req, spec, executor.Paths{Volume: "/v", Output: "/o"}, "o")
	if _, err := kube.PodFor("x", cfg, opts); err == nil || !strings.Contains(err.Error(), "AllGPUs") {
		t.Errorf("nvidia_all without AllGPUs: %v", err)
	}
}

func TestPodLabels(t *testing.T) {
	pod := jobPod(t, request("5eed"), protocol.ClassTest, opts)
	want := map[string]string{executor.LabelJob: "5eed", executor.LabelOwner: "owner-hotkey", "app.kubernetes.io/managed-by": kube.ManagedBy}
	if diff := cmp.Diff(want, pod.Labels); diff != "" {
		t.Errorf("labels (-want +got):\n%s", diff)
	}
	if pod.Name != "horde-job-5eed" || pod.Namespace != "jobs" {
		t.Errorf("name %s/%s", pod.Namespace, pod.Name)
	}
	// A value Kubernetes would refuse is refused here, naming it.
	spec := miner.DefaultClasses()[protocol.ClassTest]
	cfg := executor.ContainerConfig(request("x"), spec, executor.Paths{Volume: "/v", Output: "/o"}, "not a label value!")
	if _, err := kube.PodFor("x", cfg, opts); err == nil || !strings.Contains(err.Error(), executor.LabelOwner) {
		t.Errorf("bad owner label: %v", err)
	}
}

func TestPodRefusals(t *testing.T) {
	spec := miner.DefaultClasses()[protocol.ClassTest]
	cfg := executor.ContainerConfig(request("x"), spec, executor.Paths{Volume: "/v", Output: "/o"}, "o")
	if _, err := kube.PodFor("x", cfg, kube.PodOptions{}); err == nil || !strings.Contains(err.Error(), "isolate") {
		t.Errorf("no isolate image: %v", err)
	}
	cfg.HostConfig.Tmpfs = map[string]string{"/tmp": "rw"}
	if _, err := kube.PodFor("x", cfg, opts); err == nil || !strings.Contains(err.Error(), "size") {
		t.Errorf("unbounded tmpfs: %v", err)
	}
	if _, err := kube.PodFor("Not_A_Name", executor.ContainerConfig(request("x"), spec, executor.Paths{Volume: "/v", Output: "/o"}, "o"), opts); err == nil {
		t.Error("a name Kubernetes refuses was accepted")
	}
}

func TestNormalizeRef(t *testing.T) {
	for in, want := range map[string]string{
		"horde/job:dev":           "docker.io/horde/job:dev",
		"busybox":                 "docker.io/library/busybox:latest",
		"docker.io/horde/job:dev": "docker.io/horde/job:dev",
		"registry:5000/a/b":       "registry:5000/a/b:latest",
		"ghcr.io/x/y@sha256:ab":   "ghcr.io/x/y@sha256:ab",
	} {
		if got := kube.NormalizeRef(in); got != want {
			t.Errorf("NormalizeRef(%q) = %q, want %q", in, got, want)
		}
	}
}

// A streaming job's service keeps its address for the proxy, loses its
// routes out and talks to the proxy's address alone.
func TestPodStreamingService(t *testing.T) {
	spec := miner.DefaultClasses()[protocol.ClassTest]
	cfg := executor.ContainerConfig(request("s1"), spec, executor.Paths{Volume: "/v", Output: "/o"}, "o")
	cfg.NetworkDisabled = false
	cfg.HostConfig.NetworkMode = "horde-job-s1"
	pod, err := kube.PodFor("horde-job-s1", cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if ic := pod.Spec.InitContainers; len(ic) != 1 || !cmp.Equal(ic[0].Args, []string{"service", "gateway"}) {
		t.Errorf("init containers %+v", ic)
	}
	o := opts
	o.ProxyFrom = []string{"10.1.2.3", "gateway"}
	if pod, err := kube.PodFor("horde-job-s1", cfg, o); err != nil || !cmp.Equal(pod.Spec.InitContainers[0].Args, []string{"service", "10.1.2.3", "gateway"}) {
		t.Errorf("with the proxy's address: %v %+v", err, pod)
	}
	o.ProxyFrom = []string{"proxy.example"}
	if _, err := kube.PodFor("horde-job-s1", cfg, o); err == nil {
		t.Error("a proxy named, not addressed, was accepted")
	}
	sc := pod.Spec.Containers[0].SecurityContext
	if *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem || !cmp.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("security context %+v", sc)
	}
}
