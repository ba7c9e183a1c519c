package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/horde-compute/horde/internal/blob"
	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/executor/kube/podfiles"
)

// How a job's directories (its container config's binds) reach its Pod.
//
// FilesCopy (the default) lets a Pod run on any node: each bind becomes an
// emptyDir of the Pod, and its content travels through the API server and
// the node's kubelet, never through the Pod's network (an organic job's
// Pod has none):
//
//   - in: the Pod's "files" init container (the isolate image's receive,
//     after the isolate init container took the network away) reads one
//     tar stream on its stdin, which ContainerStart attaches to and fills
//     with the binds' host directories, then exits, and the job starts;
//   - out: the Pod's "keeper" container (the isolate image's keep) outlives
//     the job container; CopyOut runs the isolate image's send in it by
//     exec, which writes the directories' regular files (no link followed,
//     no FIFO or device opened) to stdout as one tar stream; the executor
//     unpacks it as hostile (package blob: no link, device or path outside
//     taken, bytes per directory and files bounded) into the host
//     directories, which it then uploads as on Docker;
//   - a streaming job's later volume goes in by exec of receive in the keeper.
//
// FilesHostPath mounts the host directories themselves (hostPath volumes):
// no copies, but the Pod must run where the directories are (Config.NodeName,
// or a file system mounted at the same path on every node).
const (
	FilesCopy     = "copy"
	FilesHostPath = "hostpath"
)

// Names of the Pod's containers that move files (FilesCopy).
const (
	FilesContainer  = "files"
	KeeperContainer = "keeper"
)

// filesRoot is where the files and keeper containers mount bind i: filesRoot/i.
const filesRoot = "/files"

// DefaultIsolateEntrypoint is the isolate image's entry point as horde
// makes it from its own binary (images.IsolateEntrypoint); exec names it.
var DefaultIsolateEntrypoint = []string{"/horde", "program", "isolate"}

// isolateCmd is the isolate program with args, as exec runs it.
func (r *Runtime) isolateCmd(args ...string) []string {
	ep := r.cfg.IsolateEntrypoint
	if len(ep) == 0 {
		ep = DefaultIsolateEntrypoint
	}
	return append(append([]string{}, ep...), args...)
}

// DefaultMaxBindBytes bounds each bind's emptyDir by default (the kubelet
// evicts a Pod past it): blob's default volume and output limits.
const DefaultMaxBindBytes = 2 << 30

// copyBinds turns pod's hostPath binds into emptyDirs filled and read by
// the files and keeper containers (see FilesCopy). With push, the files init
// container waits for the binds' content before the job starts.
func copyBinds(pod *corev1.Pod, o PodOptions) {
	no, yes := false, true
	root := int64(0)
	maxBind := o.MaxBindBytes
	if maxBind <= 0 {
		maxBind = DefaultMaxBindBytes
	}
	var mounts []corev1.VolumeMount
	dirs := map[string]string{}
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		if v.HostPath == nil || !strings.HasPrefix(v.Name, "bind-") {
			continue
		}
		n := strings.TrimPrefix(v.Name, "bind-")
		v.HostPath = nil
		v.EmptyDir = &corev1.EmptyDirVolumeSource{SizeLimit: resource.NewQuantity(maxBind, resource.BinarySI)}
		mounts = append(mounts, corev1.VolumeMount{Name: v.Name, MountPath: filesRoot + "/" + n})
		dirs[n] = filesRoot + "/" + n
	}
	sec := func(caps ...corev1.Capability) *corev1.SecurityContext {
		return &corev1.SecurityContext{
			Privileged:               &no,
			AllowPrivilegeEscalation: &no,
			ReadOnlyRootFilesystem:   &yes,
			RunAsUser:                &root,
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: caps},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		}
	}
	if o.PushBinds {
		// The init container's resources count only if larger than the
		// job's: a fast copy in costs the Pod nothing more.
		l := corev1.ResourceList{corev1.ResourceCPU: filesCPU, corev1.ResourceMemory: filesMemory}
		pod.Spec.InitContainers = append(pod.Spec.InitContainers, corev1.Container{
			Name:                     FilesContainer,
			Image:                    o.IsolateImage,
			Args:                     podfiles.Args("receive", dirs),
			ImagePullPolicy:          corev1.PullIfNotPresent,
			Stdin:                    true,
			StdinOnce:                true,
			Resources:                corev1.ResourceRequirements{Requests: l, Limits: l.DeepCopy()},
			SecurityContext:          sec(),
			VolumeMounts:             mounts,
			TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		})
	}
	// The keeper reads what the job wrote whatever its modes (a job's user
	// may not be root), and writes a streaming job's later volumes beneath
	// directories the job made; its disk request holds the binds.
	l := KeeperResources()
	l[corev1.ResourceEphemeralStorage] = *resource.NewQuantity(maxBind*int64(len(dirs)), resource.BinarySI)
	pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{
		Name:                     KeeperContainer,
		Image:                    o.IsolateImage,
		Args:                     []string{"keep"},
		ImagePullPolicy:          corev1.PullIfNotPresent,
		Resources:                corev1.ResourceRequirements{Requests: l, Limits: l.DeepCopy()},
		SecurityContext:          sec("DAC_OVERRIDE"), // not DAC_READ_SEARCH: open_by_handle_at reaches the node's whole file system
		VolumeMounts:             mounts,
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	})
}

// KeeperResources are the CPU and memory each job Pod's keeper container
// takes beyond the job's (FilesCopy): what capacity counts per executor.
func KeeperResources() corev1.ResourceList {
	return corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("48Mi")}
}

// PodClasses are classes as their Pods ask a node (what Fit places): with
// FilesCopy, each also holds its keeper, and at least its files init
// container.
func (r *Runtime) PodClasses(classes map[string]executor.ClassSpec) map[string]executor.ClassSpec {
	if !r.copying() {
		return classes
	}
	k := KeeperResources()
	out := make(map[string]executor.ClassSpec, len(classes))
	for name, c := range classes {
		c.NanoCPUs = max(c.NanoCPUs+k.Cpu().MilliValue()*1e6, filesCPU.MilliValue()*1e6)
		c.MemoryBytes = max(c.MemoryBytes+k.Memory().Value(), filesMemory.Value())
		out[name] = c
	}
	return out
}

// The files init container's CPU and memory.
var filesCPU, filesMemory = resource.MustParse("250m"), resource.MustParse("64Mi")

// binds records, per Pod, the host directories of its binds (bind i is
// the Pod's volume bind-i), for copies in and out.
type binds struct {
	mu  sync.Mutex
	dir map[string][]string
}

func (b *binds) set(id string, dirs []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dir == nil {
		b.dir = map[string][]string{}
	}
	b.dir[id] = dirs
}

func (b *binds) get(id string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dir[id]
}

func (b *binds) forget(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.dir, id)
}

// hostDirs are the host directories of cfg's binds, in order, and whether
// any holds something to copy in.
func hostDirs(cfg *docker.ContainerConfig) ([]string, bool, error) {
	var dirs []string
	full := false
	for _, b := range cfg.HostConfig.Binds {
		src, _, _ := strings.Cut(b, ":")
		dirs = append(dirs, src)
		ents, err := os.ReadDir(src)
		if err != nil {
			return nil, false, fmt.Errorf("bind %s: %w", b, err)
		}
		full = full || len(ents) > 0
	}
	return dirs, full, nil
}

// checkCopy asks the API server whether this identity may attach to and
// exec in Pods, which copies of job directories need (FilesCopy).
func (r *Runtime) checkCopy(ctx context.Context) error {
	if !r.copying() {
		return nil
	}
	for _, sub := range []string{"attach", "exec"} {
		review := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: r.cfg.Namespace, Verb: "create", Resource: "pods", Subresource: sub}}}
		got, err := r.cfg.Client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("kubernetes: may I create pods/%s in %s: %w", sub, r.cfg.Namespace, err)
		}
		if !got.Status.Allowed {
			return fmt.Errorf("kubernetes: this identity may not create pods/%s in %s (job directories are copied through it; or --kube-files hostpath)", sub, r.cfg.Namespace)
		}
	}
	return nil
}

// copying says whether binds are copied (FilesCopy).
func (r *Runtime) copying() bool { return r.cfg.Files != FilesHostPath }

// pushBinds waits until pod's files init container runs, if it has one,
// and streams the binds' host directories into it.
func (r *Runtime) pushBinds(ctx context.Context, pod *corev1.Pod, trace func(pod, step string)) error {
	has := false
	for _, c := range pod.Spec.InitContainers {
		has = has || c.Name == FilesContainer
	}
	if !has {
		return nil
	}
	_, err := r.watch(ctx, pod, func(p *corev1.Pod) (bool, error) {
		for _, st := range p.Status.InitContainerStatuses {
			if st.Name == FilesContainer && (st.State.Running != nil || st.State.Terminated != nil) {
				return true, nil
			}
		}
		if gone := lost(p); gone != nil {
			return false, gone
		}
		return false, cannotStart(p)
	})
	if err != nil {
		if ctx.Err() != nil && !errors.Is(err, ErrNotStarted) {
			return fmt.Errorf("%w: pod %s: its files init container did not start: %w", ErrNotStarted, pod.Name, err)
		}
		return err
	}
	trace(pod.Name, "files")
	dirs := map[string]string{}
	for i, d := range r.binds.get(pod.Name) {
		dirs[strconv.Itoa(i)] = d
	}
	if err := r.stream(ctx, pod.Name, "attach", FilesContainer, nil, dirs, nil); err != nil {
		return fmt.Errorf("%w: copy the job's directories into pod %s: %w", ErrNotStarted, pod.Name, err)
	}
	trace(pod.Name, "pushed")
	return nil
}

var _ executor.BindCopier = (*Runtime)(nil)

// CopyIn copies hostDir, a bind's host directory, into the running Pod id
// again (a streaming job's later volume): by exec of receive in the keeper.
func (r *Runtime) CopyIn(ctx context.Context, id, hostDir string) error {
	if !r.copying() {
		return nil
	}
	n, err := r.bindIndex(id, hostDir)
	if err != nil {
		return err
	}
	cmd := r.isolateCmd(podfiles.Args("receive", map[string]string{n: filesRoot + "/" + n})...)
	if err := r.stream(ctx, id, "exec", KeeperContainer, cmd, map[string]string{n: hostDir}, nil); err != nil {
		return fmt.Errorf("copy %s into pod %s: %w", filepath.Base(hostDir), id, err)
	}
	return nil
}

// CopyOut replaces the content of each host directory of dirs (a bind's,
// with the bytes it may take) by what Pod id holds there: by exec of send
// in the keeper. A directory over its bound ends it with a
// *blob.DirFullError naming the host directory.
func (r *Runtime) CopyOut(ctx context.Context, id string, dirs map[string]int64) error {
	if !r.copying() {
		return nil
	}
	send := map[string]string{}
	take := map[string]blob.TarDir{}
	host := map[string]string{}
	for d, max := range dirs {
		n, err := r.bindIndex(id, d)
		if err != nil {
			return err
		}
		if err := emptyDir(d); err != nil {
			return fmt.Errorf("copy out of pod %s: %w", id, err)
		}
		send[n] = filesRoot + "/" + n
		take[n] = blob.TarDir{Path: d, MaxBytes: max}
		host[n] = d
	}
	cmd := r.isolateCmd(podfiles.Args("send", send)...)
	err := r.stream(ctx, id, "exec", KeeperContainer, cmd, nil, take)
	var full *blob.DirFullError
	if errors.As(err, &full) {
		return &blob.DirFullError{Dir: host[full.Dir], Limit: full.Limit}
	}
	if err != nil {
		return fmt.Errorf("copy out of pod %s: %w", id, err)
	}
	return nil
}

// bindIndex is the number of hostDir among Pod id's binds.
func (r *Runtime) bindIndex(id, hostDir string) (string, error) {
	for i, d := range r.binds.get(id) {
		if d == hostDir {
			return strconv.Itoa(i), nil
		}
	}
	return "", fmt.Errorf("pod %s has no bind of %s", id, hostDir)
}

// emptyDir removes what dir holds, not dir itself (it may be a mount).
func emptyDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// stream attaches to (how "attach") or runs cmd in (how "exec") container
// of Pod id through the API server: with in, it writes in's directories
// to the stream's stdin as one tar stream; with out, it unpacks its stdout
// into out's directories. What the program says on stderr (bounded) comes
// back with its failure.
func (r *Runtime) stream(ctx context.Context, id, how, container string, cmd []string, in map[string]string, out map[string]blob.TarDir) error {
	if r.cfg.REST == nil {
		return errors.New("kube config: REST is required to copy files (FilesCopy)")
	}
	req := r.cfg.Client.CoreV1().RESTClient().Post().Namespace(r.cfg.Namespace).Resource("pods").Name(id).SubResource(how)
	if how == "attach" {
		req = req.VersionedParams(&corev1.PodAttachOptions{Container: container, Stdin: in != nil, Stdout: out != nil, Stderr: true}, scheme.ParameterCodec)
	} else {
		req = req.VersionedParams(&corev1.PodExecOptions{Container: container, Command: cmd, Stdin: in != nil, Stdout: out != nil, Stderr: true}, scheme.ParameterCodec)
	}
	ws, err := remotecommand.NewWebSocketExecutor(r.cfg.REST, "GET", req.URL().String())
	if err != nil {
		return err
	}
	spdy, err := remotecommand.NewSPDYExecutor(r.cfg.REST, "POST", req.URL())
	if err != nil {
		return err
	}
	ex, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stderr := &limitedBuffer{max: 4096}
	opts := remotecommand.StreamOptions{Stderr: stderr}
	var wg sync.WaitGroup
	var sideErr error
	var stdin *io.PipeReader
	if in != nil {
		pr, pw := io.Pipe()
		opts.Stdin, stdin = pr, pr
		wg.Add(1)
		go func() { // owned: waited for below
			defer wg.Done()
			err := blob.WriteTar(ctx, pw, in, podfiles.MaxFiles, func(path, kind string) {
				r.cfg.Log.Warn("not copied into the pod: not a regular file", "pod", id, "path", path, "kind", kind)
			})
			pw.CloseWithError(err)
			if err != nil {
				sideErr = fmt.Errorf("write the stream: %w", err)
				cancel()
			}
		}()
	}
	if out != nil {
		pr, pw := io.Pipe()
		opts.Stdout = pw
		wg.Add(1)
		go func() { // owned: waited for below
			defer wg.Done()
			err := blob.ExtractTar(ctx, pr, out, podfiles.MaxFiles)
			if err == nil {
				// What follows the archive's end: tar's zero blocks and
				// padding, never more than a record; a keeper sending more
				// is not draining the miner's time.
				var n int64
				if n, err = io.Copy(io.Discard, io.LimitReader(pr, 1<<20+1)); err == nil && n > 1<<20 {
					err = fmt.Errorf("%w: more than 1 MiB after the archive's end", blob.ErrUnsafe)
				}
			}
			pr.CloseWithError(err)
			if err != nil {
				sideErr = err
				cancel()
			}
		}()
		err := ex.StreamWithContext(ctx, opts)
		if err != nil {
			pw.CloseWithError(err)
		} else {
			pw.Close()
		}
		wg.Wait()
		return r.streamErr(how, sideErr, err, stderr)
	}
	err = ex.StreamWithContext(ctx, opts)
	if stdin != nil {
		stdin.Close() // the writer stops if the other end stopped reading
	}
	wg.Wait()
	return r.streamErr(how, sideErr, err, stderr)
}

// streamErr says why a stream failed: our side first, then the program's
// own words.
func (r *Runtime) streamErr(how string, side, err error, stderr *limitedBuffer) error {
	if side != nil {
		return side
	}
	if err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return fmt.Errorf("%s: %w: %s", how, err, msg)
		}
		return fmt.Errorf("%s: %w", how, err)
	}
	return nil
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if left := b.max - b.buf.Len(); left > 0 {
		b.buf.Write(p[:min(len(p), left)])
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
