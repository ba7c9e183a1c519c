// Package fakert is an in-process container runtime for tests: an
// executor.Runtime whose "images" are Go functions registered by name and
// whose "containers" are goroutines running them.
//
// It isolates nothing. A container's program runs inside the test process:
// it can read and write any file, open any socket, and use all the memory and
// CPU it likes. Network modes, read-only roots, dropped capabilities,
// no-new-privileges, memory, CPU, PID and cpuset limits and GPU requests are
// kept in Container.Config, never enforced; nothing is ever killed for memory.
// Tests of isolation, limits, synthetic timing and real images need Docker.
//
// What it does reproduce is what an executor observes of the Docker Engine:
// an image is present, pullable or missing (pulling an unknown image fails
// like a registry that does not have it); a container is created with a
// unique name, its binds and labels, started, waited for and killed (its
// program's context ends, and its exit code is 137 like SIGKILL's); its
// stdout and stderr are kept for ContainerLogs; removal, listing by label and
// networks behave as Docker's do for those calls; errors for what does not
// exist wrap docker.ErrNotFound. A container on a network serves on loopback:
// ServiceAddr is a 127.0.0.1 port standing for the container's port, and
// Container.Listen hands the program that very listener.
//
// Every program must return soon after its context ends, as a killed process
// would; Remove and Close wait for it, so no goroutine outlives its
// container. A Runtime is safe for concurrent use.
package fakert

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/docker"
)

// Program is what an image runs. It returns the exit code; ctx ends when the
// container is killed or removed, and the program must then return.
type Program func(ctx context.Context, c *Container) int

// KilledExitCode is the exit code of a killed container (128 + SIGKILL).
const KilledExitCode = 137

// Runtime is an in-process container runtime. The zero value is not usable; call New.
type Runtime struct {
	// Now, if set, dates containers and networks (for tests of reaping).
	Now func() time.Time

	mu         sync.Mutex
	images     map[string]*image     // by normalized reference
	containers map[string]*Container // by id
	networks   map[string]*network   // by id
}

var _ executor.Runtime = (*Runtime)(nil)

type image struct {
	id, ref string
	prog    Program
	present bool
}

type network struct {
	docker.Network
	internal bool
	joined   map[string]bool // containers outside the runtime joined to it (NetworkConnect)
}

// New returns a runtime with no images.
func New() *Runtime {
	return &Runtime{images: map[string]*image{}, containers: map[string]*Container{}, networks: map[string]*network{}}
}

// Register makes image ref present, running p.
func (r *Runtime) Register(ref string, p Program) { r.add(ref, p, true) }

// RegisterPullable makes image ref absent until pulled; then it runs p.
func (r *Runtime) RegisterPullable(ref string, p Program) { r.add(ref, p, false) }

func (r *Runtime) add(ref string, p Program, present bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ref = normalize(ref)
	r.images[ref] = &image{id: ImageID(ref), ref: ref, prog: p, present: present}
}

// ImageID is the id the runtime gives image ref: a digest of its name.
func ImageID(ref string) string {
	sum := sha256.Sum256([]byte("fakert image " + normalize(ref)))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// normalize adds the tag "latest" to a reference without tag or digest, as Docker does.
func normalize(ref string) string {
	if strings.Contains(ref, "@") || strings.LastIndex(ref, ":") > strings.LastIndex(ref, "/") {
		return ref
	}
	return ref + ":latest"
}

func (r *Runtime) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// imageLocked finds an image by reference or id.
func (r *Runtime) imageLocked(ref string) *image {
	if img, ok := r.images[normalize(ref)]; ok {
		return img
	}
	for _, img := range r.images {
		if img.id == ref {
			return img
		}
	}
	return nil
}

// ImageInspect implements executor.Runtime.
func (r *Runtime) ImageInspect(ctx context.Context, ref string) (*docker.Image, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("inspect image %s: %w", ref, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	img := r.imageLocked(ref)
	if img == nil || !img.present {
		return nil, fmt.Errorf("%w: No such image: %s", docker.ErrNotFound, ref)
	}
	return &docker.Image{ID: img.id, RepoTags: []string{img.ref}}, nil
}

// ImagePull implements executor.Runtime: only images registered as pullable can be pulled.
func (r *Runtime) ImagePull(ctx context.Context, ref string, progress func(string)) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	r.mu.Lock()
	img := r.imageLocked(ref)
	if img != nil {
		img.present = true
	}
	r.mu.Unlock()
	if img == nil {
		return fmt.Errorf("pull %s: %w: pull access denied for %s, repository does not exist (no such image in the fake runtime)", ref, docker.ErrNotFound, ref)
	}
	if progress != nil {
		progress("Status: Downloaded newer image for " + img.ref)
	}
	return nil
}

// Container is a container of the fake runtime, as its program sees it.
// The exported fields are set at creation and never change.
type Container struct {
	ID, Name, Image string
	// Args are the container's command (Cmd), the arguments of the image's program.
	Args   []string
	Env    map[string]string
	Labels map[string]string
	// Binds maps directories of the container to the host directories bound
	// there; tmpfs mounts are temporary host directories.
	Binds map[string]string
	// Network is "none" or the name of the network the container is on.
	Network string
	// Config is the configuration the container was created with: what
	// Docker would enforce, and the fake does not.
	Config docker.ContainerConfig
	// Stdout and Stderr are kept for ContainerLogs; safe for concurrent use.
	Stdout, Stderr io.Writer

	rt      *Runtime
	prog    Program
	created time.Time
	tmp     string // host directory for the container's tmpfs mounts
	out     logBuffer
	errOut  logBuffer

	// Guarded by rt.mu.
	state     string // created, running, exited
	exit      int
	cancel    context.CancelFunc
	exited    chan struct{} // closed when the container stops
	done      chan struct{} // closed when the program has returned; nil until started
	listeners map[int]*portListener
}

// Path returns the host path of path p inside the container, through its
// binds (and tmpfs mounts, which live in a temporary host directory).
// Anything else is an error: the container's root is read-only and empty.
func (c *Container) Path(p string) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("%s: not an absolute path", p)
	}
	p = path.Clean(p)
	best := ""
	for dir := range c.Binds {
		if (p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")) && len(dir) > len(best) {
			best = dir
		}
	}
	if best == "" {
		return "", fmt.Errorf("%s: outside every mount of the container (its root file system is read-only)", p)
	}
	return filepath.Join(c.Binds[best], filepath.FromSlash(strings.TrimPrefix(p, best))), nil
}

// Hostname is the container's host name: its short id, as Docker makes it.
func (c *Container) Hostname() string { return c.ID[:12] }

// Listen listens on port of the container: a listener on 127.0.0.1 and a
// port of its own, which ServiceAddr reports for port. It is closed when the
// container stops.
func (c *Container) Listen(port int) (net.Listener, error) {
	r := c.rt
	r.mu.Lock()
	defer r.mu.Unlock()
	if c.state != "running" {
		return nil, fmt.Errorf("listen on port %d: the container is not running", port)
	}
	l, err := c.portLocked(port)
	if err != nil {
		return nil, err
	}
	if l.taken {
		return nil, fmt.Errorf("listen tcp :%d: bind: address already in use", port)
	}
	l.taken = true
	return l, nil
}

// Dial always fails: the fake gives programs no network, which is what the
// executor asks for (none, or an internal network for a streaming service).
// It is a pretence only: the program could open any socket itself.
func (c *Container) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("connect: network is unreachable (the fake runtime gives containers no network)")}
}

// portListener stands for a port of a container.
type portListener struct {
	net.Listener
	taken bool // handed to the program by Listen
}

func (c *Container) portLocked(port int) (*portListener, error) {
	if l, ok := c.listeners[port]; ok {
		return l, nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &portListener{Listener: ln}
	c.listeners[port] = l
	return l, nil
}

// stopLocked marks the container stopped with exit code code and closes its ports.
func (c *Container) stopLocked(code int) {
	if c.state == "exited" {
		return
	}
	c.state, c.exit = "exited", code
	close(c.exited)
	if c.cancel != nil { // nil if never started
		c.cancel()
	}
	for _, l := range c.listeners {
		l.Close()
	}
	c.listeners = map[int]*portListener{}
}

// lookupLocked finds a container by id, unique id prefix or name.
func (r *Runtime) lookupLocked(idOrName string) *Container {
	if c, ok := r.containers[idOrName]; ok {
		return c
	}
	name := strings.TrimPrefix(idOrName, "/")
	var found *Container
	for _, c := range r.containers {
		if name != "" && c.Name == name {
			return c
		}
		if len(idOrName) >= 12 && strings.HasPrefix(c.ID, idOrName) {
			found = c
		}
	}
	return found
}

func (r *Runtime) container(idOrName string) (*Container, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.lookupLocked(idOrName)
	if c == nil {
		return nil, fmt.Errorf("%w: No such container: %s", docker.ErrNotFound, idOrName)
	}
	return c, nil
}

// ContainerCreate implements executor.Runtime. The image must be present;
// NetworkMode must be "none" or a network of this runtime; Entrypoint must be
// unset (the image's program is the entry point).
func (r *Runtime) ContainerCreate(ctx context.Context, name string, cfg *docker.ContainerConfig) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("create container: %w", err)
	}
	if cfg == nil {
		return "", errors.New("create container: no config")
	}
	if len(cfg.Entrypoint) > 0 {
		return "", &docker.APIError{Status: 400, Message: "the fake runtime runs an image's program only; Entrypoint must be unset"}
	}
	binds := map[string]string{}
	for _, b := range cfg.HostConfig.Binds {
		parts := strings.Split(b, ":")
		if len(parts) < 2 || !filepath.IsAbs(parts[0]) || !path.IsAbs(parts[1]) {
			return "", &docker.APIError{Status: 400, Message: fmt.Sprintf("invalid bind %q: want /host/dir:/container/dir", b)}
		}
		if err := os.MkdirAll(parts[0], 0o755); err != nil { // as Docker does for a missing bind source
			return "", fmt.Errorf("create container: %w", err)
		}
		binds[path.Clean(parts[1])] = parts[0]
	}
	env := map[string]string{}
	for _, kv := range cfg.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	id := newID()
	c := &Container{ID: id, Name: strings.TrimPrefix(name, "/"), Image: cfg.Image, Args: slices.Clone(cfg.Cmd), Env: env,
		Labels: maps.Clone(cfg.Labels), Binds: binds, Config: *cfg, rt: r, state: "created",
		exited: make(chan struct{}), listeners: map[int]*portListener{}}
	c.Stdout, c.Stderr = &c.out, &c.errOut
	if c.Labels == nil {
		c.Labels = map[string]string{}
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	img := r.imageLocked(cfg.Image)
	if img == nil || !img.present {
		return "", fmt.Errorf("create container: %w: No such image: %s", docker.ErrNotFound, cfg.Image)
	}
	c.prog = img.prog
	if c.Name != "" && r.lookupLocked(c.Name) != nil {
		return "", fmt.Errorf("create container: %w", &docker.APIError{Status: 409,
			Message: fmt.Sprintf("Conflict. The container name %q is already in use", "/"+c.Name)})
	}
	switch mode := cfg.HostConfig.NetworkMode; mode {
	case "none":
		c.Network = "none"
	case "", "default", "bridge", "host":
		return "", &docker.APIError{Status: 400, Message: fmt.Sprintf("network mode %q: the fake runtime has only none and the networks it created", mode)}
	default:
		n := r.networkLocked(mode)
		if n == nil {
			return "", fmt.Errorf("create container: %w: network %s not found", docker.ErrNotFound, mode)
		}
		c.Network = n.Name
	}
	if len(cfg.HostConfig.Tmpfs) > 0 {
		tmp, err := os.MkdirTemp("", "fakert-tmpfs-")
		if err != nil {
			return "", fmt.Errorf("create container: %w", err)
		}
		c.tmp = tmp
		for dir := range cfg.HostConfig.Tmpfs {
			host := filepath.Join(tmp, filepath.FromSlash(path.Clean(dir)))
			if err := os.MkdirAll(host, 0o700); err != nil {
				os.RemoveAll(tmp)
				return "", fmt.Errorf("create container: %w", err)
			}
			c.Binds[path.Clean(dir)] = host
		}
	}
	c.created = r.now()
	r.containers[id] = c
	return id, nil
}

func newID() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// ContainerStart implements executor.Runtime: the program starts in a goroutine
// that Remove (or Close) waits for.
func (r *Runtime) ContainerStart(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("start container: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.lookupLocked(id)
	switch {
	case c == nil:
		return fmt.Errorf("start container: %w: No such container: %s", docker.ErrNotFound, id)
	case c.state == "running":
		return nil // Docker: 304, not modified
	case c.state == "exited":
		return fmt.Errorf("start container: %w", &docker.APIError{Status: 500, Message: "the fake runtime does not restart containers"})
	}
	pctx, cancel := context.WithCancel(context.Background()) // the container outlives the call
	c.state, c.cancel, c.done = "running", cancel, make(chan struct{})
	go c.run(pctx) // owned: done is closed when it returns; Remove and Close wait on it
	return nil
}

func (c *Container) run(ctx context.Context) {
	defer close(c.done)
	code := func() (code int) {
		defer func() {
			if p := recover(); p != nil {
				fmt.Fprintf(c.Stderr, "panic: %v\n\n%s", p, debug.Stack())
				code = 2 // as the Go runtime exits on a panic
			}
		}()
		return c.prog(ctx, c)
	}()
	c.rt.mu.Lock()
	c.stopLocked(code) // a no-op if killed first
	c.rt.mu.Unlock()
}

// ContainerWait implements executor.Runtime.
func (r *Runtime) ContainerWait(ctx context.Context, id string) (int, error) {
	c, err := r.container(id)
	if err != nil {
		return -1, fmt.Errorf("wait container: %w", err)
	}
	select {
	case <-c.exited:
	case <-ctx.Done():
		return -1, fmt.Errorf("wait container: %w", ctx.Err())
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return c.exit, nil
}

// ContainerKill implements executor.Runtime: the program's context ends and
// the container exits with KilledExitCode at once.
func (r *Runtime) ContainerKill(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("kill container: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.lookupLocked(id)
	if c == nil {
		return fmt.Errorf("%w: No such container: %s", docker.ErrNotFound, id)
	}
	if c.state != "running" {
		return &docker.APIError{Status: 409, Message: fmt.Sprintf("Container %s is not running", c.ID)}
	}
	c.stopLocked(KilledExitCode)
	return nil
}

// ContainerRemove implements executor.Runtime: it kills the container if it
// runs and waits (as long as ctx allows) for its program to return.
func (r *Runtime) ContainerRemove(ctx context.Context, id string) error {
	r.mu.Lock()
	c := r.lookupLocked(id)
	if c == nil {
		r.mu.Unlock()
		return nil
	}
	if c.state != "exited" {
		c.stopLocked(KilledExitCode) // releases waiters, whether it ran or not
	}
	done := c.done
	r.mu.Unlock()
	if done != nil {
		select {
		case <-done:
		case <-ctx.Done():
			return fmt.Errorf("remove container %.12s: its program has not returned since it was killed: %w", c.ID, ctx.Err())
		}
	}
	r.mu.Lock()
	delete(r.containers, c.ID)
	r.mu.Unlock()
	if c.tmp != "" {
		os.RemoveAll(c.tmp)
	}
	return nil
}

// ContainerInspect implements executor.Runtime. Nothing is ever OOM-killed.
func (r *Runtime) ContainerInspect(ctx context.Context, id string) (*docker.ContainerState, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.lookupLocked(id)
	if c == nil {
		return nil, fmt.Errorf("%w: No such container: %s", docker.ErrNotFound, id)
	}
	return &docker.ContainerState{Running: c.state == "running", ExitCode: c.exit}, nil
}

// ContainerLogs implements executor.Runtime.
func (r *Runtime) ContainerLogs(ctx context.Context, id string, stdout, stderr io.Writer) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("container logs: %w", err)
	}
	c, err := r.container(id)
	if err != nil {
		return fmt.Errorf("container logs: %w", err)
	}
	if _, err := stdout.Write(c.out.bytes()); err != nil {
		return fmt.Errorf("container logs: %w", err)
	}
	if _, err := stderr.Write(c.errOut.bytes()); err != nil {
		return fmt.Errorf("container logs: %w", err)
	}
	return nil
}

// ContainerList implements executor.Runtime.
func (r *Runtime) ContainerList(ctx context.Context, label string) ([]docker.Container, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []docker.Container
	for _, c := range r.containers {
		if hasLabel(c.Labels, label) {
			out = append(out, docker.Container{ID: c.ID, Labels: maps.Clone(c.Labels), Created: c.created.Unix(), State: c.state})
		}
	}
	return out, nil
}

// Containers lists every container of the runtime, whatever its labels.
func (r *Runtime) Containers() []docker.Container {
	out, _ := r.ContainerList(context.Background(), "")
	return out
}

// hasLabel matches a Docker label filter, "k" or "k=v"; "" matches everything.
func hasLabel(labels map[string]string, filter string) bool {
	if filter == "" {
		return true
	}
	k, v, withValue := strings.Cut(filter, "=")
	got, ok := labels[k]
	return ok && (!withValue || got == v)
}

func (r *Runtime) networkLocked(idOrName string) *network {
	if n, ok := r.networks[idOrName]; ok {
		return n
	}
	for _, n := range r.networks {
		if n.Name == idOrName {
			return n
		}
	}
	return nil
}

// NetworkCreate implements executor.Runtime. Names are unique.
func (r *Runtime) NetworkCreate(ctx context.Context, name string, internal bool, labels map[string]string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("create network: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if name == "" || name == "none" || r.networkLocked(name) != nil {
		return "", fmt.Errorf("create network: %w", &docker.APIError{Status: 409, Message: fmt.Sprintf("network with name %s already exists", name)})
	}
	n := &network{Network: docker.Network{ID: newID(), Name: name, Labels: maps.Clone(labels), Created: r.now()}, internal: internal}
	if n.Labels == nil {
		n.Labels = map[string]string{}
	}
	r.networks[n.ID] = n
	return n.ID, nil
}

// NetworkRemove implements executor.Runtime: a network with a running
// container on it cannot be removed.
func (r *Runtime) NetworkRemove(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.networkLocked(id)
	if n == nil {
		return nil
	}
	active := len(n.joined) > 0
	for _, c := range r.containers {
		active = active || c.Network == n.Name && c.state == "running"
	}
	if active {
		return &docker.APIError{Status: 403, Message: fmt.Sprintf("error while removing network: network %s id %s has active endpoints", n.Name, n.ID)}
	}
	delete(r.networks, n.ID)
	return nil
}

var _ executor.NetworkJoiner = (*Runtime)(nil)

// NetworkConnect implements executor.NetworkJoiner for a container outside
// the runtime (the process's own, running on the same engine): it holds an
// endpoint on the network until NetworkDisconnect.
func (r *Runtime) NetworkConnect(ctx context.Context, network, container string) error {
	return r.join(ctx, network, container, true)
}

// NetworkDisconnect implements executor.NetworkJoiner.
func (r *Runtime) NetworkDisconnect(ctx context.Context, network, container string) error {
	return r.join(ctx, network, container, false)
}

// join connects container to network (in) or disconnects it, answering as
// the Docker client does.
func (r *Runtime) join(ctx context.Context, network, container string, in bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.networkLocked(network)
	switch {
	case n == nil && in:
		return &docker.APIError{Status: 404, Message: "network " + network + " not found"}
	case n == nil: // leaving a network that is gone is no error
	case in:
		if n.joined == nil {
			n.joined = map[string]bool{}
		}
		n.joined[container] = true
	case !n.joined[container]:
		return &docker.APIError{Status: 403, Message: fmt.Sprintf("container %s is not connected to network %s", container, network)}
	default:
		delete(n.joined, container)
	}
	return nil
}

// NetworkList implements executor.Runtime.
func (r *Runtime) NetworkList(ctx context.Context, label string) ([]docker.Network, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []docker.Network
	for _, n := range r.networks {
		if hasLabel(n.Labels, label) {
			nn := n.Network
			nn.Labels = maps.Clone(n.Labels)
			out = append(out, nn)
		}
	}
	return out, nil
}

// ServiceAddr implements executor.Runtime: the loopback address standing
// for port of a running container on network. The program gets the same
// listener from Container.Listen; until it does, connections wait.
func (r *Runtime) ServiceAddr(ctx context.Context, id, network string, port int) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.lookupLocked(id)
	if c == nil {
		return "", fmt.Errorf("%w: No such container: %s", docker.ErrNotFound, id)
	}
	n := r.networkLocked(network)
	if n == nil || c.Network != n.Name || c.state != "running" {
		return "", fmt.Errorf("container %.12s has no address on network %s", c.ID, network)
	}
	l, err := c.portLocked(port)
	if err != nil {
		return "", err
	}
	return l.Addr().String(), nil
}

// Close kills and removes every container, waiting for their programs, and
// removes every network. It reports programs that did not return in time.
func (r *Runtime) Close(ctx context.Context) error {
	r.mu.Lock()
	ids := slices.Collect(maps.Keys(r.containers))
	r.mu.Unlock()
	var errs []error
	for _, id := range ids {
		errs = append(errs, r.ContainerRemove(ctx, id))
	}
	r.mu.Lock()
	clear(r.networks)
	r.mu.Unlock()
	return errors.Join(errs...)
}

// logBuffer keeps everything written to it; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}
