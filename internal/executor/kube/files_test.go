package kube_test

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"

	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/kube"
	"github.com/horde-compute/horde/internal/miner"
	"github.com/horde-compute/horde/protocol"
)

// With copied binds (the default) a job's Pod names no node and mounts
// nothing of any host: its directories are emptyDirs of bounded size,
// filled by the files init container after the isolate one took the
// network away, and read by the keeper; the job container keeps every
// isolation, and the helpers have no capability beyond what they need.
func TestPodCopiedBinds(t *testing.T) {
	o := opts
	o.CopyBinds, o.PushBinds, o.MaxBindBytes = true, true, 1<<30
	req := request("c0f1")
	req.ArtifactsDir = "/artifacts"
	pod := jobPod(t, req, protocol.ClassTest, o)
	s := pod.Spec
	if s.NodeName != "" {
		t.Errorf("pinned to %s", s.NodeName)
	}
	for _, v := range s.Volumes {
		if v.HostPath != nil {
			t.Errorf("volume %s is a host path %s", v.Name, v.HostPath.Path)
		}
		if strings.HasPrefix(v.Name, "bind-") && (v.EmptyDir == nil || v.EmptyDir.SizeLimit == nil || v.EmptyDir.SizeLimit.Value() != 1<<30) {
			t.Errorf("volume %s: %+v, want an emptyDir of 1 GiB", v.Name, v.VolumeSource)
		}
	}
	var names []string
	for _, c := range s.InitContainers {
		names = append(names, c.Name)
	}
	if !slices.Equal(names, []string{kube.IsolateContainer, kube.FilesContainer}) {
		t.Fatalf("init containers %v: isolate must run before anything of the job is in the Pod", names)
	}
	if len(s.Containers) != 2 || s.Containers[0].Name != kube.JobContainer || s.Containers[1].Name != kube.KeeperContainer {
		t.Fatalf("containers %+v", s.Containers)
	}
	job, files, keeper := s.Containers[0], s.InitContainers[1], s.Containers[1]
	if js := job.SecurityContext; !*js.ReadOnlyRootFilesystem || *js.AllowPrivilegeEscalation || len(js.Capabilities.Add) != 0 {
		t.Errorf("job container's security %+v", js)
	}
	mounts := map[string]string{}
	for _, m := range job.VolumeMounts {
		mounts[m.MountPath] = m.Name
	}
	if mounts["/volume"] == "" || mounts["/output"] == "" || mounts["/artifacts"] == "" {
		t.Errorf("job mounts %v", mounts)
	}
	if !files.Stdin || !files.StdinOnce || files.Args[0] != "receive" || len(files.VolumeMounts) != 3 {
		t.Errorf("files container %+v", files)
	}
	if keeper.Args[0] != "keep" || len(keeper.VolumeMounts) != 3 {
		t.Errorf("keeper %+v", keeper)
	}
	for _, c := range []corev1.Container{files, keeper} {
		sc := c.SecurityContext
		if !*sc.ReadOnlyRootFilesystem || *sc.AllowPrivilegeEscalation || *sc.Privileged || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("%s's security %+v", c.Name, sc)
		}
		for _, cp := range sc.Capabilities.Add {
			if cp != "DAC_OVERRIDE" { // DAC_READ_SEARCH would open any file of the node by handle
				t.Errorf("%s has %s", c.Name, cp)
			}
		}
		if c.Resources.Limits.Cpu().IsZero() || !c.Resources.Limits.Cpu().Equal(*c.Resources.Requests.Cpu()) {
			t.Errorf("%s's resources %+v: want requests equal to limits", c.Name, c.Resources)
		}
	}
	if got := keeper.Resources.Limits.StorageEphemeral().Value(); got != 3<<30 {
		t.Errorf("keeper's disk %d, want three binds' worth", got)
	}

	// Nothing to copy in: no files init container, the job starts at once.
	o.PushBinds = false
	pod = jobPod(t, request("c0f2"), protocol.ClassTest, o)
	if len(pod.Spec.InitContainers) != 1 || pod.Spec.InitContainers[0].Name != kube.IsolateContainer {
		t.Errorf("init containers %+v", pod.Spec.InitContainers)
	}
}

// The classes Fit places hold the keeper, so that a manifest counts it.
func TestPodClassesHoldTheKeeper(t *testing.T) {
	classes := miner.DefaultClasses()
	for _, files := range []string{kube.FilesCopy, kube.FilesHostPath} {
		got := podClasses(t, files)
		for name, c := range classes {
			g := got[name]
			if files == kube.FilesHostPath && g != c {
				t.Errorf("%s %s: %+v, want %+v", files, name, g, c)
			}
			if files == kube.FilesCopy && (g.NanoCPUs <= c.NanoCPUs || g.MemoryBytes <= c.MemoryBytes) {
				t.Errorf("%s %s: %+v, want more than %+v", files, name, g, c)
			}
		}
	}
}

func podClasses(t *testing.T, files string) map[string]executor.ClassSpec {
	t.Helper()
	rt, err := kube.New(kube.Config{Client: fake.NewClientset(), REST: &rest.Config{}, Namespace: "jobs", IsolateImage: "horde/isolate:dev", Files: files})
	if err != nil {
		t.Fatal(err)
	}
	return rt.PodClasses(miner.DefaultClasses())
}
