package kube_test

import (
	"archive/zip"
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/horde-compute/horde/internal/blob"
	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/executortest"
	"github.com/horde-compute/horde/internal/executor/kube"
	"github.com/horde-compute/horde/internal/kubecluster"
	"github.com/horde-compute/horde/protocol"
)

// ioJob is a job that reads a volume and writes result.json, uploaded.
func ioJob(h *executortest.Harness, id string) (*protocol.V0InitialJobRequest, *protocol.V0JobRequest) {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create("a.txt")
	w.Write([]byte("hello horde world"))
	zw.Close()
	req := h.Request(id, "demo")
	req.Volume = &protocol.Volume{VolumeType: protocol.VolumeInline, Contents: base64.StdEncoding.EncodeToString(buf.Bytes())}
	req.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadSinglePut, URL: h.Objects.URL + "/" + id + "/result.json", RelativePath: "result.json"}
	return h.Initial(id, executortest.Timing), req
}

// checkIOJob checks ioJob's end: finished, its volume read and its output uploaded.
func checkIOJob(t *testing.T, h *executortest.Harness, id string, last protocol.Message) {
	t.Helper()
	f, ok := last.(*protocol.V0JobFinishedRequest)
	if !ok {
		t.Fatalf("got %#v", last)
	}
	if !strings.Contains(f.DockerProcessStdout, "processed 1 input files") {
		t.Errorf("stdout %q", f.DockerProcessStdout)
	}
	if b, ok := h.Objects.Get(id + "/result.json"); !ok || !strings.Contains(string(b), `"a.txt"`) {
		t.Errorf("result.json = %s", b)
	}
}

// A job's Pod with copied binds names no node and mounts nothing of the
// host; the scheduler places it; its volume arrives and its output leaves
// through the API server.
func TestPodOnAnyNode(t *testing.T) {
	c, image := testCluster(t)
	pods := make(chan *corev1.Pod, 1)
	trace := func(pod, step string) {
		if step == "pushed" {
			p, err := c.Client().CoreV1().Pods("default").Get(t.Context(), pod, metav1.GetOptions{})
			if err != nil {
				t.Error(err)
				return
			}
			pods <- p
		}
	}
	h := executortest.NewHarness(t, executortest.Target{Runtime: runtime(t, c, trace), Image: image, Owner: owner(t, c), DataDir: t.TempDir()})
	in, req := ioJob(h, "anynode")
	last, _ := h.Run(t, in, req)
	checkIOJob(t, h, "anynode", last)
	h.AssertClean(t)
	var p *corev1.Pod
	select {
	case p = <-pods:
	default:
		t.Fatal("the job's directories were not pushed into its Pod")
	}
	for _, v := range p.Spec.Volumes {
		if v.HostPath != nil {
			t.Errorf("volume %s mounts %s of the node", v.Name, v.HostPath.Path)
		}
	}
	scheduled := false
	for _, cond := range p.Status.Conditions {
		scheduled = scheduled || (cond.Type == corev1.PodScheduled && cond.Status == corev1.ConditionTrue)
	}
	if !scheduled || p.Spec.NodeName != kubecluster.NodeName {
		t.Errorf("the pod was not placed by the scheduler: node %q, conditions %+v", p.Spec.NodeName, p.Status.Conditions)
	}
}

// Outputs a job made hostile, through the copy out of its Pod: a link to
// a secret of the executor's host, a FIFO and a file past the output
// bound. Neither the link nor the FIFO crosses (the upload fails on the
// missing file; nothing of the secret leaves), the big file ends the job
// with output_too_large.
func TestCopiedOutputsHostile(t *testing.T) {
	c, image := testCluster(t)
	secretDir := t.TempDir()
	secret := filepath.Join(secretDir, "secret")
	const content = "host-secret-7f3a"
	if err := os.WriteFile(secret, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	const limit = 8 << 20
	h := executortest.NewHarness(t, executortest.Target{Runtime: runtime(t, c, nil), Image: image, Owner: owner(t, c), DataDir: t.TempDir(),
		Edit: func(cfg *executor.Config) { cfg.Limits = blob.DefaultLimits(); cfg.Limits.MaxOutputBytes = limit }})
	for _, tt := range []struct {
		name string
		args []string
	}{
		{"leak", []string{"symlink", "leak", secret}},
		{"pipe", []string{"fifo", "pipe"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			id := "hostile-" + tt.name
			req := h.Request(id, tt.args...)
			req.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadSinglePut, URL: h.Objects.URL + "/" + id, RelativePath: tt.name}
			last, _ := h.Run(t, h.Initial(id, executortest.Timing), req)
			f, ok := last.(*protocol.V0JobFailedRequest)
			if !ok || f.Stage != protocol.StageResultUpload {
				t.Fatalf("got %#v, want an upload failure", last)
			}
			if _, ok := h.Objects.Get(id); ok {
				t.Error("something was uploaded")
			}
			if strings.Contains(fmt.Sprintf("%#v", last), content) {
				t.Error("the host file's content left the host")
			}
			h.AssertClean(t)
		})
	}
	t.Run("huge", func(t *testing.T) {
		id := "hostile-huge"
		req := h.Request(id, "write", "big", fmt.Sprint(3*limit))
		req.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: h.Objects.URL + "/" + id + ".zip"}
		last, _ := h.Run(t, h.Initial(id, executortest.Timing), req)
		f, ok := last.(*protocol.V0JobFailedRequest)
		if !ok || f.Context["horde_reason"] != "output_too_large" || !strings.Contains(f.Message, fmt.Sprintf("/output than its limit of %d bytes", limit)) {
			t.Fatalf("got %#v, want output_too_large", last)
		}
		if _, ok := h.Objects.Get(id + ".zip"); ok {
			t.Error("something was uploaded")
		}
		h.AssertClean(t)
	})
}

// FilesHostPath, kept for a miner on one node (no copies): the job's
// directories are mounted from the node the Pod is pinned to.
func TestHostPathMode(t *testing.T) {
	c, image := testCluster(t)
	rt, err := kube.New(kube.Config{Client: c.Client(), Namespace: "default", IsolateImage: isolateImage, Files: kube.FilesHostPath,
		NodeName: kubecluster.NodeName, ImageID: dockerImageID})
	if err != nil {
		t.Fatal(err)
	}
	h := executortest.NewHarness(t, executortest.Target{Runtime: rt, Image: image, Owner: owner(t, c), DataDir: t.TempDir()})
	in, req := ioJob(h, "hostpath")
	last, _ := h.Run(t, in, req)
	checkIOJob(t, h, "hostpath", last)
	h.AssertClean(t)
}
