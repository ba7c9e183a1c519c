package executor

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/horde-compute/horde/internal/blob"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/protocol"
)

// Paths are the host directories mounted into a job container.
type Paths struct {
	Volume, Output, Artifacts string
}

// JobLogs is where the engine keeps a job's stdout and stderr: in files of
// bounded size on the engine's disk (a job printing without end would fill
// it otherwise), still far more than the MaxLogBytes tail that travels.
func JobLogs() *docker.LogConfig {
	return &docker.LogConfig{Type: "json-file", Config: map[string]string{"max-size": "8m", "max-file": "2"}}
}

// ContainerConfig returns the isolated container a job runs in: no network,
// read-only root, no new privileges, every capability dropped, resource
// limits of the class, and GPUs requested for GPU classes.
func ContainerConfig(req *protocol.V0JobRequest, class ClassSpec, p Paths, owner string) *docker.ContainerConfig {
	env := make([]string, 0, len(req.Env))
	for k, v := range req.Env {
		env = append(env, k+"="+v)
	}
	cmd := req.DockerRunCmd
	if req.RawScript != "" {
		cmd = []string{"/bin/sh", "-c", req.RawScript}
	}
	binds := []string{p.Volume + ":/volume", p.Output + ":/output"}
	if req.ArtifactsDir != "" {
		binds = append(binds, p.Artifacts+":"+req.ArtifactsDir)
	}
	hc := docker.HostConfig{
		NetworkMode:    "none",
		Binds:          binds,
		Tmpfs:          map[string]string{"/tmp": "rw,nosuid,size=512m"},
		ReadonlyRootfs: true,
		SecurityOpt:    []string{"no-new-privileges"},
		CapDrop:        []string{"ALL"},
		LogConfig:      JobLogs(),
		Memory:         class.MemoryBytes,
		NanoCPUs:       class.NanoCPUs,
		CpusetCpus:     class.CPUSet,
	}
	if class.MemoryBytes > 0 {
		hc.MemorySwap = class.MemoryBytes // no swap beyond the limit
	}
	if class.Pids > 0 {
		pids := class.Pids
		hc.PidsLimit = &pids
	}
	if class.GPUs != 0 || req.DockerRunOptionsPreset == "nvidia_all" {
		n := class.GPUs
		if req.DockerRunOptionsPreset == "nvidia_all" {
			n = -1
		}
		hc.DeviceRequests = []docker.DeviceRequest{{Driver: "nvidia", Count: n, Capabilities: [][]string{{"gpu"}}}}
	}
	return &docker.ContainerConfig{
		Image:           req.DockerImage,
		Cmd:             cmd,
		Env:             env,
		Labels:          map[string]string{LabelJob: req.JobUUID, LabelOwner: owner},
		NetworkDisabled: true,
		HostConfig:      hc,
	}
}

// createTimeout bounds creating a container or network.
const createTimeout = time.Minute

// Uncancelled is ctx without its cancellation, bounded by createTimeout: a
// create call cut short may still make its container (or network) in the
// engine, after cleanup has looked for it. So creations run to their end
// whatever happens to the job, and cleanup removes what they made.
func Uncancelled(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), createTimeout)
}

// createContainer creates the job's container, named after the job; it
// fails if the job ended meanwhile (the container is then removed in
// cleanup, by id, or by name should the call have failed).
func (j *job) createContainer(ctx context.Context, cfg *docker.ContainerConfig) (string, error) {
	j.containerName = "horde-job-" + j.uuid
	cctx, cancel := Uncancelled(ctx)
	defer cancel()
	id, err := j.cfg.Runtime.ContainerCreate(cctx, j.containerName, cfg)
	if err != nil {
		return "", err
	}
	j.container = id
	if ctx.Err() != nil {
		return "", context.Cause(ctx)
	}
	return id, nil
}

type result struct {
	exit           int
	timedOut, oom  bool
	stdout, stderr string
}

func (j *job) execute(ctx context.Context, req *protocol.V0JobRequest, limit time.Duration) (*result, error) {
	p := Paths{Volume: filepath.Join(j.dir, "volume"), Output: filepath.Join(j.dir, "output"), Artifacts: filepath.Join(j.dir, "artifacts")}
	id, err := j.createContainer(ctx, ContainerConfig(req, j.cfg.Class, p, j.cfg.Owner))
	if err != nil {
		return nil, err
	}
	if err := j.cfg.Runtime.ContainerStart(ctx, id); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	code, werr := j.cfg.Runtime.ContainerWait(wctx, id)
	res := &result{exit: code}
	if wctx.Err() != nil {
		// Timed out or cancelled: kill now, the logs so far still count.
		kctx, kcancel := context.WithTimeout(context.Background(), 10*time.Second)
		j.cfg.Runtime.ContainerKill(kctx, id)
		kcancel()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		res.timedOut = true
	} else if werr != nil {
		return nil, werr
	}
	if err := j.collectLogs(res); err != nil {
		return nil, err
	}
	return res, nil
}

// collectLogs reads the container's state and its stdout/stderr (their tails) into res.
func (j *job) collectLogs(res *result) error {
	lctx, lcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer lcancel()
	if st, err := j.cfg.Runtime.ContainerInspect(lctx, j.container); err == nil && st.OOMKilled {
		res.oom = true
	}
	var out, errb tailBuffer
	out.max, errb.max = MaxLogBytes, MaxLogBytes
	if err := j.cfg.Runtime.ContainerLogs(lctx, j.container, &out, &errb); err != nil {
		return err
	}
	res.stdout, res.stderr = out.String(), errb.String()
	return nil
}

// attach puts the exit code and logs on a failure report.
func (res *result) attach(m *protocol.V0JobFailedRequest) {
	code := res.exit
	m.DockerProcessExitStatus = &code
	m.DockerProcessStdout, m.DockerProcessStderr = res.stdout, res.stderr
}

// logs attaches the container's logs so far, when there is a container.
func (j *job) logs(m *protocol.V0JobFailedRequest) {
	if j.container == "" {
		return
	}
	var res result
	if j.collectLogs(&res) == nil {
		m.DockerProcessStdout, m.DockerProcessStderr = res.stdout, res.stderr
	}
}

// upload sends outputs; stdout.txt and stderr.txt go with the system output.
func (j *job) upload(ctx context.Context, up *protocol.OutputUpload, res *result) (map[string]string, error) {
	sys := filepath.Join(j.dir, "system")
	os.WriteFile(filepath.Join(sys, "stdout.txt"), []byte(res.stdout), 0o644)
	os.WriteFile(filepath.Join(sys, "stderr.txt"), []byte(res.stderr), 0o644)
	u := j.uploader()
	main := *up
	var system *protocol.OutputUpload
	if up.OutputUploadType == protocol.UploadMulti && up.SystemOutput != nil {
		system = up.SystemOutput
		main.SystemOutput = nil
	}
	results, err := u.Upload(ctx, &main, filepath.Join(j.dir, "output"))
	if err != nil {
		return results, err
	}
	if system != nil {
		r2, err := u.Upload(ctx, system, sys)
		for k, v := range r2 {
			results["system/"+k] = v
		}
		if err != nil {
			return results, err
		}
	}
	return results, nil
}

// collectArtifacts returns the regular files of the artifacts directory
// under MaxArtifactFileBytes, base64, keyed by their path in the container
// (containerDir, checked), MaxArtifactsBytes in all, read as outputs are
// (package blob: no link followed, no FIFO or device opened); whatever is
// left out is logged.
func (j *job) collectArtifacts(ctx context.Context, containerDir string) map[string]string {
	out := map[string]string{}
	total := int64(0)
	log := j.cfg.Log.With("job", j.uuid)
	err := blob.WalkRegular(ctx, filepath.Join(j.dir, "artifacts"), blob.Limits{MaxFiles: j.cfg.Limits.MaxFiles},
		func(rel string, f *os.File, size int64) error {
			if size >= MaxArtifactFileBytes || total+size > MaxArtifactsBytes {
				log.Warn("artifact left out: too large", "path", rel, "bytes", size)
				return nil
			}
			b, err := io.ReadAll(io.LimitReader(f, min(MaxArtifactFileBytes, MaxArtifactsBytes-total+1)))
			if err != nil {
				return err
			}
			if len(b) >= MaxArtifactFileBytes || total+int64(len(b)) > MaxArtifactsBytes { // it grew meanwhile
				log.Warn("artifact left out: too large", "path", rel)
				return nil
			}
			total += int64(len(b))
			out[strings.TrimRight(containerDir, "/")+"/"+rel] = base64.StdEncoding.EncodeToString(b)
			return nil
		}, func(rel, kind string) {
			log.Warn("artifact left out: not a regular file", "path", rel, "kind", kind)
		})
	if err != nil {
		log.Warn("artifacts: collection stopped", "err", j.hostPaths(err.Error()), "collected", len(out))
	}
	return out
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	buf       bytes.Buffer
	max       int
	truncated bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	t.buf.Write(p)
	if over := t.buf.Len() - t.max; over > 0 {
		t.buf.Next(over)
		b := append([]byte(nil), t.buf.Bytes()...)
		t.buf.Reset()
		t.buf.Write(b)
		t.truncated = true
	}
	return n, nil
}

func (t *tailBuffer) String() string {
	if t.truncated {
		return fmt.Sprintf("[truncated to the last %d bytes]\n", t.max) + t.buf.String()
	}
	return t.buf.String()
}
