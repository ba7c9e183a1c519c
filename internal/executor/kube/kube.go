// Package kube runs executors' job containers as Kubernetes Pods through
// client-go: *Runtime implements executor.Runtime, so an executor (and a
// miner's reaper) uses a cluster as it uses the Docker Engine. Each job
// container is one Pod (PodFor says how it keeps the job isolated); the
// executor itself stays in the miner's process: it downloads volumes,
// uploads outputs and serves a streaming job's proxy there, as on Docker.
//
// The job's directories (/volume, /output, the artifacts directory) reach
// the Pod in one of two ways (Config.Files):
//
//   - FilesCopy, the default: the Pod runs on any node the scheduler picks.
//     Each directory is an emptyDir of the Pod; its content travels through
//     the API server and the node's kubelet (attach and exec streams, the
//     path kubectl cp takes), never through the Pod's network, which an
//     organic job's Pod does not have: an init container of the isolate
//     image receives the volume as a tar stream on its stdin after the
//     isolate init container took the network away, and exits so that the
//     job starts; a keeper container outlives the job container and sends
//     the outputs as a tar stream by exec, which the executor unpacks as
//     hostile (package blob: links, devices and escaping paths refused,
//     each directory bounded). See files.go. Copies cost a stream each way
//     per job; nothing needs to be shared between the miner and the nodes.
//   - FilesHostPath: the directories are hostPath volumes of the
//     executor's own directories, so the Pods must run where those are:
//     pinned to the miner's node (Config.NodeName), or on nodes that mount
//     one shared file system at the same path. No copies: for a miner
//     whose cluster is its own machine.
//
// Images are not pulled by the runtime: a job's image must be on a node
// (imported into its containerd, or pulled there by the kubelet when the
// job allows pulling). Kubernetes interleaves a container's stdout and
// stderr: ContainerLogs writes both to stdout.
package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/docker"
)

// Config configures a Runtime.
type Config struct {
	Client kubernetes.Interface
	// REST is the client's configuration: copies of job directories
	// (FilesCopy) stream through it (exec and attach).
	REST      *rest.Config
	Namespace string
	// Files says how job directories reach Pods: FilesCopy (the default:
	// Pods on any node) or FilesHostPath (Pods where the directories are).
	Files string
	// MaxBindBytes bounds each job directory in a Pod (FilesCopy; default
	// DefaultMaxBindBytes): the kubelet evicts a Pod past it.
	MaxBindBytes int64
	// IsolateImage is the image of command ./isolate, present on every node.
	IsolateImage string
	// IsolateEntrypoint is that image's entry point, which exec runs to copy
	// a job's files (default DefaultIsolateEntrypoint: horde's own image).
	IsolateEntrypoint []string
	// NodeName pins job Pods to one node; empty: wherever the scheduler puts them.
	NodeName string
	// AllGPUs is how many GPUs "every GPU" (the nvidia_all preset) means.
	AllGPUs int
	// EphemeralStorage bounds a job container's writable layer and logs (see PodOptions).
	EphemeralStorage int64
	// ProxyFrom is whom a streaming job's Pod talks to (see PodOptions).
	ProxyFrom []string
	// StartTimeout bounds the wait for a job's Pod to be scheduled and its
	// container to start (default 5 minutes).
	StartTimeout time.Duration
	// ImageID, if set, tells an image's id (its config digest), which
	// nodes do not report: a streaming job's image pinned by id (as horde
	// dev and Docker miners pin) is checked against it. Without it, only
	// repo digests the nodes report can match a pin.
	ImageID func(ctx context.Context, ref string) (string, error)
	// Trace, if set, is told when a job's Pod passes each step of its
	// start as this process sees it: "create" (asked), "created",
	// "scheduled", "initialized" (the isolate init container done) and
	// "running" (the job container runs or has ended). Benchmarks use it.
	Trace func(pod, step string)
	Log   *slog.Logger
}

// Validate names the first bad field.
func (c *Config) Validate() error {
	switch {
	case c.Client == nil:
		return errors.New("kube config: Client is required")
	case c.Namespace == "":
		return errors.New("kube config: Namespace is required")
	case c.IsolateImage == "":
		return errors.New("kube config: IsolateImage is required (jobs without network need it)")
	case c.Files != "" && c.Files != FilesCopy && c.Files != FilesHostPath:
		return fmt.Errorf("kube config: Files %q: want %s or %s", c.Files, FilesCopy, FilesHostPath)
	case c.Files != FilesHostPath && c.REST == nil:
		return errors.New("kube config: REST is required to copy job directories into Pods (or Files: hostpath)")
	}
	return nil
}

// Runtime runs job containers as Pods of one namespace.
type Runtime struct {
	cfg Config
	mu  sync.Mutex
	// created are Pods asked for by ContainerCreate and not yet started, by name.
	created map[string]*corev1.Pod
	// pullable are images the executor may pull: the kubelet pulls them.
	pullable map[string]bool
	// started are Pods this runtime created and has not removed, by name:
	// one of them gone is a Pod taken away.
	started map[string]*corev1.Pod
	// binds are the host directories of Pods' binds (FilesCopy).
	binds binds
}

var _ executor.Runtime = (*Runtime)(nil)

// New returns a Runtime.
func New(cfg Config) (*Runtime, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 5 * time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Runtime{cfg: cfg, created: map[string]*corev1.Pod{}, pullable: map[string]bool{}, started: map[string]*corev1.Pod{}}, nil
}

func (r *Runtime) pods() corev1client.PodInterface {
	return r.cfg.Client.CoreV1().Pods(r.cfg.Namespace)
}

// ImageInspect finds ref among the images the nodes report (a node lists
// what its container runtime holds, some seconds late).
func (r *Runtime) ImageInspect(ctx context.Context, ref string) (*docker.Image, error) {
	want := NormalizeRef(ref)
	nodes, err := r.nodes(ctx)
	if err != nil {
		return nil, err
	}
	for _, n := range nodes {
		for _, img := range n.Status.Images {
			for _, name := range img.Names {
				if NormalizeRef(name) != want {
					continue
				}
				out := &docker.Image{}
				if r.cfg.ImageID != nil {
					id, err := r.cfg.ImageID(ctx, ref)
					if err != nil {
						return nil, fmt.Errorf("image id of %s: %w", ref, err)
					}
					out.ID = id
				}
				for _, name := range img.Names {
					if strings.Contains(name, "@") {
						out.RepoDigests = append(out.RepoDigests, name)
					} else {
						out.RepoTags = append(out.RepoTags, name)
					}
				}
				return out, nil
			}
		}
	}
	if r.pullableRef(ref) {
		return &docker.Image{RepoTags: []string{ref}}, nil
	}
	return nil, fmt.Errorf("%w: image %s is on no node", docker.ErrNotFound, ref)
}

// nodes lists the nodes job Pods may run on.
func (r *Runtime) nodes(ctx context.Context) ([]corev1.Node, error) {
	if r.cfg.NodeName != "" {
		n, err := r.cfg.Client.CoreV1().Nodes().Get(ctx, r.cfg.NodeName, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", r.cfg.NodeName, err)
		}
		return []corev1.Node{*n}, nil
	}
	l, err := r.cfg.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	return l.Items, nil
}

func (r *Runtime) pullableRef(ref string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pullable[NormalizeRef(ref)]
}

// ImagePull lets the kubelet pull ref when a job's Pod needs it: pulling
// happens on the node the Pod lands on, when it starts.
func (r *Runtime) ImagePull(ctx context.Context, ref string, progress func(string)) error {
	r.mu.Lock()
	r.pullable[NormalizeRef(ref)] = true
	r.mu.Unlock()
	if progress != nil {
		progress("the kubelet pulls " + ref + " when the job's Pod starts")
	}
	return nil
}

// ContainerCreate makes the Pod's spec; ContainerStart creates it.
func (r *Runtime) ContainerCreate(ctx context.Context, name string, cfg *docker.ContainerConfig) (string, error) {
	if name == "" {
		name = "horde-" + rand.String(10)
	}
	opts := PodOptions{Namespace: r.cfg.Namespace, IsolateImage: r.cfg.IsolateImage,
		PullIfNotPresent: r.pullableRef(cfg.Image), NodeName: r.cfg.NodeName, AllGPUs: r.cfg.AllGPUs, EphemeralStorage: r.cfg.EphemeralStorage,
		ProxyFrom: r.cfg.ProxyFrom, CopyBinds: r.copying(), MaxBindBytes: r.cfg.MaxBindBytes}
	var dirs []string
	if opts.CopyBinds {
		var err error
		if dirs, opts.PushBinds, err = hostDirs(cfg); err != nil {
			return "", fmt.Errorf("create container: %w", err)
		}
	}
	pod, err := PodFor(name, cfg, opts)
	if err != nil {
		return "", fmt.Errorf("create container: %w", err)
	}
	if strings.Contains(cfg.Image, "@") && !r.pullableRef(cfg.Image) {
		// Named by digest (PinImage): only nodes that hold it may run it.
		if err := r.pinToNodes(ctx, pod, cfg.Image); err != nil {
			return "", fmt.Errorf("create container: %w", err)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.created[name]; dup {
		return "", fmt.Errorf("create container: %s exists", name)
	}
	r.created[name] = pod
	r.binds.set(name, dirs)
	return name, nil
}

// ContainerStart creates the Pod and waits until its job container runs
// (or has already ended), or the Pod cannot start: ErrNotStarted says why.
func (r *Runtime) ContainerStart(ctx context.Context, id string) error {
	r.mu.Lock()
	pod := r.created[id]
	delete(r.created, id)
	r.mu.Unlock()
	if pod == nil {
		return fmt.Errorf("start container %s: %w: not created", id, docker.ErrNotFound)
	}
	trace := r.cfg.Trace
	if trace == nil {
		trace = func(string, string) {}
	}
	trace(id, "create")
	created, err := r.pods().Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("start container: create pod %s: %w", id, err)
	}
	trace(id, "created")
	r.mu.Lock()
	r.started[id] = created
	r.mu.Unlock()
	sctx, cancel := context.WithTimeout(ctx, r.cfg.StartTimeout)
	defer cancel()
	if err := r.pushBinds(sctx, created, trace); err != nil {
		return err
	}
	var why string
	seen := map[corev1.PodConditionType]bool{}
	_, err = r.watch(sctx, created, func(p *corev1.Pod) (bool, error) {
		for _, c := range p.Status.Conditions {
			if c.Status == corev1.ConditionTrue && !seen[c.Type] && (c.Type == corev1.PodScheduled || c.Type == corev1.PodInitialized) {
				seen[c.Type] = true
				trace(id, strings.ToLower(strings.TrimPrefix(string(c.Type), "Pod")))
			}
		}
		if st := jobStatus(p); st != nil && (st.State.Running != nil || st.State.Terminated != nil) {
			trace(id, "running")
			return true, nil
		}
		if gone := lost(p); gone != nil {
			return false, gone
		}
		if err := cannotStart(p); err != nil {
			return false, err
		}
		why = pendingWhy(p)
		return false, nil
	})
	if err != nil && sctx.Err() != nil && ctx.Err() == nil {
		return fmt.Errorf("%w: pod %s did not start within %s: %s", ErrNotStarted, id, r.cfg.StartTimeout, why)
	}
	return err
}

// ErrNotStarted says a job's Pod could not start: its image, its isolation
// or its volumes failed, or no node could take it in time.
var ErrNotStarted = errors.New("pod not started")

// jobStatus is the job container's status in p, if the kubelet reported one.
func jobStatus(p *corev1.Pod) *corev1.ContainerStatus {
	for i := range p.Status.ContainerStatuses {
		if p.Status.ContainerStatuses[i].Name == JobContainer {
			return &p.Status.ContainerStatuses[i]
		}
	}
	return nil
}

// cannotStart says why p can never start its job container, if so.
func cannotStart(p *corev1.Pod) error {
	for _, st := range p.Status.InitContainerStatuses {
		if t := st.State.Terminated; t != nil && t.ExitCode != 0 {
			return fmt.Errorf("%w: the %s init container failed (exit %d, %s): %s", ErrNotStarted, st.Name, t.ExitCode, t.Reason, strings.TrimSpace(t.Message))
		}
		if w := st.State.Waiting; w != nil && fatalWaiting[w.Reason] {
			return fmt.Errorf("%w: the %s init container: %s: %s", ErrNotStarted, st.Name, w.Reason, w.Message)
		}
	}
	if st := jobStatus(p); st != nil {
		if w := st.State.Waiting; w != nil && fatalWaiting[w.Reason] {
			return fmt.Errorf("%w: %s: %s", ErrNotStarted, w.Reason, w.Message)
		}
	}
	if p.Status.Phase == corev1.PodFailed {
		return fmt.Errorf("%w: pod failed before its job container ran: %s: %s", ErrNotStarted, p.Status.Reason, p.Status.Message)
	}
	return nil
}

// fatalWaiting are the reasons a container waits that no wait will cure.
var fatalWaiting = map[string]bool{
	"ErrImageNeverPull": true, "InvalidImageName": true, "ImagePullBackOff": true, "ErrImagePull": true,
	"CreateContainerConfigError": true, "CreateContainerError": true, "RunContainerError": true,
}

// pendingWhy says what a Pod that has not started waits for.
func pendingWhy(p *corev1.Pod) string {
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Reason != "" {
			return fmt.Sprintf("%s: %s: %s", c.Type, c.Reason, c.Message)
		}
	}
	if st := jobStatus(p); st != nil && st.State.Waiting != nil {
		return st.State.Waiting.Reason + ": " + st.State.Waiting.Message
	}
	return "phase " + string(p.Status.Phase)
}

// LostError ends a job whose Pod Kubernetes took away: evicted (by the
// kubelet under node pressure, or through the eviction API), preempted,
// or deleted with a node that stopped answering. Code is the failure's
// horde_reason: "pod_evicted" or "node_lost".
type LostError struct {
	Code, Message string
}

func (e *LostError) Error() string { return e.Code + ": " + e.Message }

// Reason implements executor.LostContainer: a lost node is no job's fault.
func (e *LostError) Reason() (string, bool) { return e.Code, e.Code == "node_lost" }

var _ executor.LostContainer = (*LostError)(nil)

// lost says whether Kubernetes took p away mid-job.
func lost(p *corev1.Pod) *LostError {
	if p.Status.Phase == corev1.PodFailed && p.Status.Reason == "Evicted" {
		return &LostError{Code: "pod_evicted", Message: fmt.Sprintf("the kubelet on %s evicted the pod: %s", p.Spec.NodeName, p.Status.Message)}
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.DisruptionTarget && c.Status == corev1.ConditionTrue {
			code := "pod_evicted"
			if c.Reason == "DeletionByTaintManager" {
				code = "node_lost"
			}
			return &LostError{Code: code, Message: fmt.Sprintf("pod on %s: %s: %s", p.Spec.NodeName, c.Reason, c.Message)}
		}
	}
	if p.Status.Phase == corev1.PodUnknown {
		return &LostError{Code: "node_lost", Message: fmt.Sprintf("node %s stopped reporting the pod", p.Spec.NodeName)}
	}
	if p.Status.Phase == corev1.PodFailed && p.Status.Reason == "NodeLost" {
		return &LostError{Code: "node_lost", Message: fmt.Sprintf("node %s was lost: %s", p.Spec.NodeName, p.Status.Message)}
	}
	return nil
}

// watch watches pod until cond holds (or errs), and returns it then. A
// Pod deleted under the watch (not by us) is a lost node's or an eviction's.
func (r *Runtime) watch(ctx context.Context, pod *corev1.Pod, cond func(*corev1.Pod) (bool, error)) (*corev1.Pod, error) {
	rv := pod.ResourceVersion
	sel := fields.OneTermEqualSelector("metadata.name", pod.Name).String()
	for {
		if ok, err := cond(pod); ok || err != nil {
			return pod, err
		}
		w, err := r.pods().Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: rv, AllowWatchBookmarks: true})
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			// Too old a version, or a broken connection: start again from now.
			p, gerr := r.pods().Get(ctx, pod.Name, metav1.GetOptions{})
			if gerr != nil {
				return nil, r.gone(pod, gerr)
			}
			pod, rv = p, p.ResourceVersion
			continue
		}
		// What changed between the version we have and the watch's start
		// (a real API server replays it from rv; not every fake does).
		if p, gerr := r.pods().Get(ctx, pod.Name, metav1.GetOptions{}); gerr == nil && p.ResourceVersion != rv {
			if ok, err := cond(p); ok || err != nil {
				w.Stop()
				return p, err
			}
		}
		next, deleted, err := r.nextEvent(ctx, w, cond)
		w.Stop()
		if err != nil {
			return next, err
		}
		if deleted {
			return nil, r.gone(pod, apierrors.NewNotFound(corev1.Resource("pods"), pod.Name))
		}
		if next != nil {
			if ok, err := cond(next); ok || err != nil {
				return next, err
			}
			pod, rv = next, next.ResourceVersion
		} else if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
}

// nextEvent reads w until cond holds or the watch ends; it returns the
// last Pod seen, and whether the Pod was deleted.
func (r *Runtime) nextEvent(ctx context.Context, w watch.Interface, cond func(*corev1.Pod) (bool, error)) (*corev1.Pod, bool, error) {
	var last *corev1.Pod
	for {
		select {
		case <-ctx.Done():
			return last, false, ctx.Err()
		case ev, ok := <-w.ResultChan():
			if !ok {
				return last, false, nil
			}
			p, isPod := ev.Object.(*corev1.Pod)
			switch {
			case ev.Type == watch.Deleted:
				if isPod {
					if l := lost(p); l != nil {
						return p, false, l
					}
				}
				return last, true, nil
			case ev.Type == watch.Error:
				return last, false, nil
			case !isPod:
				continue
			}
			last = p
			if ok, err := cond(p); ok || err != nil {
				return p, false, err
			}
		}
	}
}

// gone explains a Pod that disappeared while a job still needed it.
func (r *Runtime) gone(pod *corev1.Pod, err error) error {
	if apierrors.IsNotFound(err) {
		node := pod.Spec.NodeName
		if node == "" {
			node = "its node"
		}
		return &LostError{Code: "node_lost", Message: fmt.Sprintf("the pod %s on %s was deleted mid-job (its node lost, or removed by someone else)", pod.Name, node)}
	}
	return fmt.Errorf("pod %s: %w", pod.Name, err)
}

// ContainerWait blocks until the job container ends and returns its exit
// code, or a *LostError when Kubernetes took the Pod away.
func (r *Runtime) ContainerWait(ctx context.Context, id string) (int, error) {
	p, err := r.pods().Get(ctx, id, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			r.mu.Lock()
			mine := r.started[id]
			r.mu.Unlock()
			if mine != nil {
				return -1, r.gone(mine, err)
			}
			return -1, fmt.Errorf("wait container %s: %w", id, docker.ErrNotFound)
		}
		return -1, fmt.Errorf("wait container %s: %w", id, err)
	}
	p, err = r.watch(ctx, p, func(p *corev1.Pod) (bool, error) {
		if st := jobStatus(p); st != nil && st.State.Terminated != nil {
			return true, nil
		}
		if l := lost(p); l != nil {
			return false, l
		}
		if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
			return false, fmt.Errorf("pod %s ended (%s: %s) without its job container's exit code", p.Name, p.Status.Reason, p.Status.Message)
		}
		return false, nil
	})
	if err != nil {
		return -1, err
	}
	return int(jobStatus(p).State.Terminated.ExitCode), nil
}

// ContainerKill kills the job container now: the Pod's active deadline is
// cut to one second, the kubelet kills what runs past it (the Pod and its
// logs stay until ContainerRemove).
func (r *Runtime) ContainerKill(ctx context.Context, id string) error {
	patch := []byte(`{"spec":{"activeDeadlineSeconds":1}}`)
	_, err := r.pods().Patch(ctx, id, types.StrategicMergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		r.mu.Lock()
		_, pending := r.created[id]
		r.mu.Unlock()
		if pending {
			return nil
		}
		return fmt.Errorf("kill container %s: %w", id, docker.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("kill container %s: %w", id, err)
	}
	return nil
}

// ContainerRemove deletes the Pod and waits until it is gone. The
// deletion is graceful (one second), so that the kubelet has stopped the
// Pod's containers, which write into the job's directories, before the
// executor removes those; a Pod its kubelet never confirms (a lost node)
// is deleted by force after removeGrace.
func (r *Runtime) ContainerRemove(ctx context.Context, id string) error {
	r.mu.Lock()
	delete(r.created, id)
	delete(r.started, id)
	r.mu.Unlock()
	r.binds.forget(id)
	one, zero := int64(1), int64(0)
	if err := r.deleteAndWait(ctx, id, &one, removeGrace); err == nil || ctx.Err() != nil {
		return err
	}
	r.cfg.Log.Warn("the pod's node did not confirm its deletion: deleting it by force", "pod", id)
	return r.deleteAndWait(ctx, id, &zero, 0)
}

// removeGrace bounds the wait for a kubelet to confirm a Pod's deletion.
const removeGrace = 20 * time.Second

// deleteAndWait deletes Pod id with grace and waits (at most limit when
// it is not zero) until it is gone.
func (r *Runtime) deleteAndWait(ctx context.Context, id string, grace *int64, limit time.Duration) error {
	err := r.pods().Delete(ctx, id, metav1.DeleteOptions{GracePeriodSeconds: grace})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove container %s: %w", id, err)
	}
	if limit > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, limit)
		defer cancel()
	}
	sel := fields.OneTermEqualSelector("metadata.name", id).String()
	for {
		l, err := r.pods().List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			return fmt.Errorf("remove container %s: %w", id, err)
		}
		if len(l.Items) == 0 {
			return nil
		}
		w, err := r.pods().Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: l.ResourceVersion})
		if err != nil {
			return fmt.Errorf("remove container %s: %w", id, err)
		}
		deleted := false
		for ev := range w.ResultChan() {
			if ev.Type == watch.Deleted {
				deleted = true
				break
			}
		}
		w.Stop()
		if deleted {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("remove container %s: %w", id, ctx.Err())
		}
	}
}

// ContainerInspect reports the job container's state.
func (r *Runtime) ContainerInspect(ctx context.Context, id string) (*docker.ContainerState, error) {
	p, err := r.pods().Get(ctx, id, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("inspect container %s: %w", id, docker.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("inspect container %s: %w", id, err)
	}
	st := &docker.ContainerState{}
	if s := jobStatus(p); s != nil {
		st.Running = s.State.Running != nil
		if t := s.State.Terminated; t != nil {
			st.ExitCode = int(t.ExitCode)
			st.OOMKilled = t.Reason == "OOMKilled"
		}
	}
	return st, nil
}

// ContainerLogs copies the job container's log (stdout and stderr
// interleaved, as Kubernetes keeps them) to stdout.
func (r *Runtime) ContainerLogs(ctx context.Context, id string, stdout, stderr io.Writer) error {
	rc, err := r.pods().GetLogs(id, &corev1.PodLogOptions{Container: JobContainer}).Stream(ctx)
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("container logs %s: %w", id, docker.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("container logs %s: %w", id, err)
	}
	defer rc.Close()
	if _, err := io.Copy(stdout, rc); err != nil {
		return fmt.Errorf("container logs %s: %w", id, err)
	}
	return nil
}

// ContainerList lists the namespace's Pods with label ("k" or "k=v").
func (r *Runtime) ContainerList(ctx context.Context, label string) ([]docker.Container, error) {
	l, err := r.pods().List(ctx, metav1.ListOptions{LabelSelector: label})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	out := make([]docker.Container, 0, len(l.Items))
	for _, p := range l.Items {
		out = append(out, docker.Container{ID: p.Name, Labels: p.Labels, Created: p.CreationTimestamp.Unix(), State: strings.ToLower(string(p.Status.Phase))})
	}
	return out, nil
}

// NetworkCreate makes nothing: a Pod's network is the cluster's. (A
// streaming job's service is reached on its Pod's address.)
func (r *Runtime) NetworkCreate(ctx context.Context, name string, internal bool, labels map[string]string) (string, error) {
	return name, nil
}

// NetworkRemove removes nothing (see NetworkCreate).
func (r *Runtime) NetworkRemove(ctx context.Context, id string) error { return nil }

// NetworkList lists nothing (see NetworkCreate).
func (r *Runtime) NetworkList(ctx context.Context, label string) ([]docker.Network, error) {
	return nil, nil
}

// ServiceAddr is the Pod's address and port.
func (r *Runtime) ServiceAddr(ctx context.Context, id, network string, port int) (string, error) {
	p, err := r.pods().Get(ctx, id, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("service address of %s: %w", id, err)
	}
	if p.Status.PodIP == "" {
		return "", fmt.Errorf("pod %s has no address yet", id)
	}
	return net.JoinHostPort(p.Status.PodIP, strconv.Itoa(port)), nil
}

// NormalizeRef is ref as a container runtime names it
// (docker.io/library/name:latest for name).
func NormalizeRef(ref string) string {
	if i := strings.Index(ref, "@"); i < 0 {
		last := ref[strings.LastIndex(ref, "/")+1:]
		if !strings.Contains(last, ":") {
			ref += ":latest"
		}
	}
	first, _, hasSlash := strings.Cut(ref, "/")
	if !hasSlash {
		return "docker.io/library/" + ref
	}
	if !strings.ContainsAny(first, ".:") && first != "localhost" {
		return "docker.io/" + ref
	}
	return ref
}

// DefaultIsolateImage is the isolate image's usual tag ('horde deploy
// isolate-image' writes it, images.IsolateImage).
const DefaultIsolateImage = "horde/isolate:dev"

// LoadConfig reads a kubeconfig file: path, or $KUBECONFIG, or
// ~/.kube/config; with none of them, the in-cluster configuration.
func LoadConfig(path string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if path != "" {
		rules.ExplicitPath = path
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	return cfg, nil
}

// Check says whether the runtime can do its work: the namespace exists,
// its Pods can be listed and created (asked of the API server), and the
// isolate image is on every node job Pods may run on.
func (r *Runtime) Check(ctx context.Context) error {
	if _, err := r.cfg.Client.CoreV1().Namespaces().Get(ctx, r.cfg.Namespace, metav1.GetOptions{}); err != nil {
		return fmt.Errorf("kubernetes namespace %s: %w", r.cfg.Namespace, err)
	}
	if _, err := r.pods().List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
		return fmt.Errorf("kubernetes: list pods in %s: %w", r.cfg.Namespace, err)
	}
	for _, verb := range []string{"create", "delete", "patch", "watch"} {
		review := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: r.cfg.Namespace, Verb: verb, Resource: "pods"}}}
		got, err := r.cfg.Client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("kubernetes: may I %s pods in %s: %w", verb, r.cfg.Namespace, err)
		}
		if !got.Status.Allowed {
			return fmt.Errorf("kubernetes: this identity may not %s pods in %s", verb, r.cfg.Namespace)
		}
	}
	if err := r.isolateEverywhere(ctx); err != nil {
		return err
	}
	if err := r.checkCopy(ctx); err != nil {
		return err
	}
	return nil
}
