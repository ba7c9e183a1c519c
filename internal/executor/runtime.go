package executor

import (
	"context"
	"io"

	"github.com/horde-compute/horde/internal/executor/docker"
)

// Runtime is the container engine an executor runs jobs on, and a miner's
// reaper cleans up: exactly what horde asks of the Docker Engine, in its
// terms (package docker's types). *docker.Client is the real one; package
// fakert runs Go functions in-process for tests.
//
// Errors for a missing image, container or network wrap docker.ErrNotFound.
type Runtime interface {
	// ImageInspect returns the image's id and repo digests.
	ImageInspect(ctx context.Context, ref string) (*docker.Image, error)
	// ImagePull pulls ref; progress (may be nil) gets status lines.
	ImagePull(ctx context.Context, ref string, progress func(string)) error

	// ContainerCreate creates a container as cfg says, isolation included,
	// and returns its id. name (may be empty) must be unused.
	ContainerCreate(ctx context.Context, name string, cfg *docker.ContainerConfig) (string, error)
	ContainerStart(ctx context.Context, id string) error
	// ContainerWait blocks until the container exits and returns its exit code.
	ContainerWait(ctx context.Context, id string) (int, error)
	ContainerKill(ctx context.Context, id string) error
	// ContainerRemove removes a container, running or not, by id or name;
	// removing one that does not exist is not an error.
	ContainerRemove(ctx context.Context, id string) error
	ContainerInspect(ctx context.Context, id string) (*docker.ContainerState, error)
	// ContainerLogs copies everything the container wrote to its stdout and stderr.
	ContainerLogs(ctx context.Context, id string, stdout, stderr io.Writer) error
	// ContainerList lists containers, running or not, with label ("k" or "k=v").
	ContainerList(ctx context.Context, label string) ([]docker.Container, error)

	// NetworkCreate creates a network; an internal one has no route outside.
	NetworkCreate(ctx context.Context, name string, internal bool, labels map[string]string) (string, error)
	// NetworkRemove removes a network; removing one that does not exist is not an error.
	NetworkRemove(ctx context.Context, id string) error
	// NetworkList lists networks with label ("k" or "k=v").
	NetworkList(ctx context.Context, label string) ([]docker.Network, error)
	// ServiceAddr is the "host:port" at which this process reaches port of
	// container id on network.
	ServiceAddr(ctx context.Context, id, network string, port int) (string, error)
}

var _ Runtime = (*docker.Client)(nil)

// LostContainer is an error of ContainerWait for a container the platform
// took away mid-job (a Kubernetes Pod evicted, or deleted with a node that
// stopped answering): Reason is its horde_reason ("pod_evicted",
// "node_lost"); SystemFault says whether the job is blameless, so that it
// ends as a horde failure rather than the job's.
type LostContainer interface {
	error
	Reason() (reason string, systemFault bool)
}

// BindCopier is a Runtime whose containers see copies of their binds'
// host directories, not the directories themselves (package kube's Pods,
// which run on any node of a cluster): ContainerStart copies each bind's
// host directory in. The executor calls CopyIn after it changed a bind's
// host directory while the container runs (a streaming job's later
// volume), and CopyOut before it reads what the container wrote (outputs,
// artifacts): CopyOut replaces the content of each host directory of dirs
// (bind sources, each with the bytes it may take) by the container's, and
// fails with a *blob.DirFullError naming the host directory past its
// bound. CopyOut works while the container runs or after it exited, not
// after ContainerKill.
type BindCopier interface {
	CopyIn(ctx context.Context, id, hostDir string) error
	CopyOut(ctx context.Context, id string, dirs map[string]int64) error
}

// NetworkJoiner is a Runtime whose networks the process's own container can
// join (see Config.SelfContainer).
type NetworkJoiner interface {
	NetworkConnect(ctx context.Context, network, container string) error
	NetworkDisconnect(ctx context.Context, network, container string) error
}

var _ NetworkJoiner = (*docker.Client)(nil)

// ImagePinner is a Runtime that can hold a container to the exact content a
// digest names, where looking the image up by name could see another node's
// image than the one the container lands on (package kube). PinImage checks
// that ref is digest where the job may run and returns the reference to
// create the container with; its error says what was found instead.
type ImagePinner interface {
	PinImage(ctx context.Context, ref, digest string) (string, error)
}

// Sandbox is a network made ahead of a streaming job (see package sandbox):
// an internal network with a small container on it whose network namespace
// the job's service joins (NetworkMode "container:"+Holder) rather than
// getting one of its own. The service is then reached at Addr, the holder's
// address on Network and ServicePort, and nowhere else.
type Sandbox struct {
	Network, Holder, Addr string
}

// Sandboxes hands out sandboxes made ahead of time; each serves one job.
type Sandboxes interface {
	// Take returns a ready sandbox, or nil if none is ready (the job then
	// makes its own network).
	Take() *Sandbox
	// Release removes a taken sandbox once the job's container is gone.
	Release(ctx context.Context, s *Sandbox) error
}
