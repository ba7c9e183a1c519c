// Package executor runs one job: it connects to its miner with a one-time
// token, makes sure the image is present, downloads volumes, runs the
// container isolated (no network, limits, read-only root, no capabilities),
// uploads outputs and reports the result, then removes everything it made.
// Containers run on a Runtime: the Docker Engine (package docker), or in
// tests the in-process fake (package fakert), which isolates nothing.
//
// What a job wrote is hostile: the executor reads /output and the artifacts
// directory only through package blob's tree (regular files beneath the
// directory, no link followed, no FIFO or device opened), and with
// Config.BoundDisks each of /volume, /output and the artifacts directory is
// a file system of bounded size (package jobdisk). What a client named is
// hostile too: volume, upload and hub URLs go only where Config.Net lets
// them (public addresses, and the operator's allow-list).
package executor

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/horde-compute/horde/internal/blob"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/executor/jobdisk"
	"github.com/horde-compute/horde/internal/metrics"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
)

// LabelJob and LabelOwner mark every container an executor creates, so that
// a miner can find and reap leftovers after a crash.
const (
	LabelJob   = "horde.job"
	LabelOwner = "horde.owner"
	// LabelSandbox marks a sandbox's network and holder (see Sandbox) with
	// its name; they carry LabelOwner too, but no job.
	LabelSandbox = "horde.sandbox"
)

// MaxLogBytes bounds the stdout/stderr that travel in messages.
const MaxLogBytes = 1 << 20

// Artifacts travel base64 in the finished message: files under
// MaxArtifactFileBytes each, MaxArtifactsBytes in all (what does not fit is
// left out and logged) — 43 MiB once encoded, which with both logs (1 MiB
// each, JSON-escaped) stays under protocol.MaxMessageSize. With bounded
// disks the artifacts directory holds ArtifactsDiskBytes at most.
const (
	MaxArtifactFileBytes = 1_000_000
	MaxArtifactsBytes    = 32 << 20
	ArtifactsDiskBytes   = 64 << 20
)

// ClassSpec is the hardware an executor class gives a job container.
type ClassSpec struct {
	MemoryBytes int64
	NanoCPUs    int64
	Pids        int64
	GPUs        int // -1: all
	// CPUSet pins the class's containers to these CPUs ("0", "0-3"); empty: any.
	CPUSet string
}

// Config configures one executor run.
type Config struct {
	// MinerURL is the miner's executor route including the one-time token.
	MinerURL string
	// DataDir holds the job's working directories; they are removed at the end.
	DataDir string
	// Runtime runs the job's container: the Docker Engine, or a fake in tests.
	Runtime Runtime
	Class   ClassSpec
	Limits  blob.Limits
	// Net decides where volume, upload and Hugging Face URLs may lead:
	// public addresses and what its allow-list names (see blob.DialGuard),
	// checked at dial time, after DNS and on every redirect. Nil: public
	// addresses only.
	Net *blob.DialGuard
	// BoundDisks makes each job's /volume, /output and artifacts directory
	// a file system of bounded size (package jobdisk; needs root): the
	// job's volume limit, MaxOutputBytes and ArtifactsDiskBytes. Without
	// it a job can fill the disk DataDir is on.
	BoundDisks bool
	// Owner labels containers (the miner's hotkey) for reaping.
	Owner               string
	HuggingFaceEndpoint string
	// StartupTimeout bounds the wait for the job's first messages.
	StartupTimeout time.Duration
	// StreamingListen is where streaming jobs' proxies listen (default ":0");
	// StreamingHost is the address clients reach them at (default 127.0.0.1).
	StreamingListen, StreamingHost string
	// StreamingSkew bounds clock skew of streaming requests (default 5s).
	StreamingSkew time.Duration
	// StreamingMetrics counts what streaming jobs' signing proxies do (nil: not counted).
	StreamingMetrics *metrics.Streaming
	// SelfContainer is the container this process runs in, if it runs in
	// one (a miner of deploy/compose.yaml, on the host's engine): it joins
	// each streaming job's network to reach the service. The Runtime must
	// then implement NetworkJoiner.
	SelfContainer string
	// Sandboxes, if set, hands streaming jobs networks made ahead (a Docker
	// Runtime's; see package sandbox); a job finding none ready makes its own.
	Sandboxes Sandboxes
	// Rewrite, if set, changes each job before it runs. Dev stacks and tests
	// use it to make a miner that cheats; real executors leave it nil.
	Rewrite func(*protocol.V0JobRequest)
	Log     *slog.Logger
}

// Validate checks the config.
func (c *Config) Validate() error {
	switch {
	case c.MinerURL == "":
		return errors.New("executor config: MinerURL is required")
	case c.DataDir == "":
		return errors.New("executor config: DataDir is required")
	case c.Runtime == nil:
		return errors.New("executor config: Runtime is required")
	}
	if c.BoundDisks {
		if err := jobdisk.Check(); err != nil {
			return fmt.Errorf("executor config: BoundDisks: %w", err)
		}
	}
	return nil
}

// errCancelled ends a job the validator cancelled.
var errCancelled = errors.New("job cancelled")

// Run executes one job and returns when it is over and cleaned up.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.StartupTimeout == 0 {
		cfg.StartupTimeout = 60 * time.Second
	}
	if cfg.StreamingListen == "" {
		cfg.StreamingListen = ":0"
	}
	if cfg.StreamingHost == "" {
		cfg.StreamingHost = "127.0.0.1"
	}
	if cfg.Limits.Tries == 0 {
		cfg.Limits = blob.DefaultLimits()
	}
	if cfg.Net == nil {
		cfg.Net, _ = blob.NewDialGuard() // public addresses only
	}
	// Docker binds need absolute host paths.
	abs, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return fmt.Errorf("executor: data dir: %w", err)
	}
	cfg.DataDir = abs
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return fmt.Errorf("executor: data dir: %w", err)
	}
	conn, err := wsconn.Dial(ctx, cfg.MinerURL, cfg.Log)
	if err != nil {
		return fmt.Errorf("executor: connect to miner: %w", err)
	}
	defer conn.Close("executor done")

	jobCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	msgs := make(chan protocol.Message, 4)
	readDone := make(chan struct{})
	go func() { // owned: Run waits on readDone
		defer close(readDone)
		defer close(msgs)
		for {
			m, err := conn.Recv(jobCtx)
			if err != nil {
				cancel(fmt.Errorf("miner connection: %w", err))
				return
			}
			if _, ok := m.(*protocol.V0CancelJobRequest); ok {
				cancel(errCancelled)
				continue
			}
			select {
			case msgs <- m:
			case <-jobCtx.Done():
				return
			}
		}
	}()
	j := &job{cfg: cfg, conn: conn, msgs: msgs, timings: map[string]int64{}, budget: blob.NewBudget(cfg.Limits), disks: map[string]*jobdisk.Disk{}}
	err = j.run(jobCtx)
	j.cleanup()
	cancel(nil)
	<-readDone
	if errors.Is(context.Cause(jobCtx), errCancelled) {
		cfg.Log.Info("job cancelled", "job", j.uuid)
		return nil
	}
	return err
}

type job struct {
	cfg   Config
	conn  *wsconn.Conn
	msgs  <-chan protocol.Message
	uuid  string
	token string
	dir   string
	// container is the job container's id once created; containerName its
	// name from the moment creation was asked for.
	container, containerName string
	network                  string
	// pinned is the streaming image by the digest checked (ImagePinner).
	pinned string
	// sandbox is the streaming job's sandbox, if it took one.
	sandbox *Sandbox
	timings map[string]int64
	// budget is what is left of the job's volume limit, shared by its
	// first volume and every later one of a streaming job.
	budget *blob.Budget
	// disks are the bounded file systems of the job's directories, by
	// name ("volume", "output", "artifacts"), with BoundDisks.
	disks map[string]*jobdisk.Disk
}

func (j *job) send(ctx context.Context, m protocol.Message) error {
	return j.conn.Send(ctx, m)
}

func (j *job) next(ctx context.Context, d time.Duration) (protocol.Message, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case m, ok := <-j.msgs:
		if !ok {
			return nil, context.Cause(ctx)
		}
		return m, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	case <-t.C:
		return nil, fmt.Errorf("no message from miner within %s", d)
	}
}

func (j *job) stage(name string, start time.Time) { j.timings[name] = time.Since(start).Milliseconds() }

// hostPaths hides where the job lives on the miner's host from a message
// that leaves it (an engine's error may name a bind's source).
func (j *job) hostPaths(msg string) string {
	if j.dir != "" {
		msg = strings.ReplaceAll(msg, j.dir, "<job dir>")
	}
	return strings.ReplaceAll(msg, j.cfg.DataDir, "<data dir>")
}

func (j *job) fail(ctx context.Context, stage protocol.JobStage, reason protocol.JobFailureReason, code, msg string, extra func(*protocol.V0JobFailedRequest)) error {
	msg = j.hostPaths(msg)
	m := &protocol.V0JobFailedRequest{JobUUID: j.uuid, ExecutorToken: j.token, Stage: stage, Reason: reason,
		Message: code + ": " + msg, Context: protocol.WithReason(code)}
	if extra != nil {
		extra(m)
	}
	j.cfg.Log.Info("job failed", "job", j.uuid, "stage", stage, "reason", code, "msg", msg)
	if err := j.send(ctx, m); err != nil {
		return err
	}
	return nil
}

// hordeFail reports a failure that is the system's fault.
func (j *job) hordeFail(ctx context.Context, reason protocol.HordeFailureReason, msg string) error {
	msg = j.hostPaths(msg)
	j.cfg.Log.Warn("job failed (horde)", "job", j.uuid, "reason", reason, "msg", msg)
	return j.send(ctx, &protocol.V0HordeFailedRequest{JobUUID: j.uuid, ReportedBy: protocol.ByExecutor, Reason: reason, Message: msg})
}

func (j *job) run(ctx context.Context) error {
	m, err := j.next(ctx, j.cfg.StartupTimeout)
	if err != nil {
		return fmt.Errorf("executor: wait for initial job request: %w", err)
	}
	initial, ok := m.(*protocol.V0InitialJobRequest)
	if !ok {
		return fmt.Errorf("executor: expected V0InitialJobRequest, got %s", m.MessageType())
	}
	j.uuid = initial.JobUUID
	timing := initial.ExecutorTiming
	if timing == nil {
		timing = &protocol.ExecutorTiming{AllowedLeeway: 5, DownloadTimeLimit: 300, ExecutionTimeLimit: 3600, UploadTimeLimit: 300}
	}

	// Startup: the image must be present, or pullable if allowed.
	start := time.Now()
	if err := j.ensureImage(ctx, initial.DockerImage, initial.AllowPull); err != nil {
		return j.fail(ctx, protocol.StageExecutorStartup, protocol.FailureUnknown, "image_pull_failed", err.Error(), nil)
	}
	if initial.StreamingDetails != nil {
		if err := j.checkStreamingImage(ctx, initial); err != nil {
			return j.fail(ctx, protocol.StageExecutorStartup, protocol.FailureUnknown, "image_not_whitelisted", err.Error(), nil)
		}
	}
	j.stage("startup", start)
	if err := j.send(ctx, &protocol.V0ExecutorReadyRequest{JobUUID: j.uuid}); err != nil {
		return err
	}

	m, err = j.next(ctx, j.cfg.StartupTimeout)
	if err != nil {
		return fmt.Errorf("executor: wait for job request: %w", err)
	}
	req, ok := m.(*protocol.V0JobRequest)
	if !ok {
		return fmt.Errorf("executor: expected V0JobRequest, got %s", m.MessageType())
	}
	if req.DockerImage == "" {
		req.DockerImage = initial.DockerImage
	}
	if req.DockerImage != initial.DockerImage && initial.DockerImage != "" {
		return j.fail(ctx, protocol.StageExecutorStartup, protocol.FailureUnknown, "image_mismatch",
			fmt.Sprintf("job asks for %s but the executor prepared %s", req.DockerImage, initial.DockerImage), nil)
	}
	if req.Volume == nil {
		req.Volume = initial.Volume
	}
	if j.cfg.Rewrite != nil {
		j.cfg.Rewrite(req)
	}
	// The artifacts directory becomes a bind mount's target: no options,
	// nothing reserved (the validator checks it too; the miner's host must
	// not rely on that).
	if req.ArtifactsDir != "" {
		if err := protocol.CheckArtifactsDir(req.ArtifactsDir); err != nil {
			return j.fail(ctx, protocol.StageExecutorStartup, protocol.FailureUnknown, "artifacts_dir_invalid", err.Error(), nil)
		}
	}

	if err := j.makeDirs(ctx, req.ArtifactsDir != ""); err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return j.hordeFail(ctx, protocol.HordeGenericError, "job directories: "+err.Error())
	}

	// Download.
	start = time.Now()
	if req.Volume != nil {
		dctx, dcancel := context.WithTimeout(ctx, seconds(timing.DownloadTimeLimit))
		err := j.fetcher().Download(dctx, req.Volume, filepath.Join(j.dir, "volume"))
		timedOut := dctx.Err() == context.DeadlineExceeded
		dcancel()
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if timedOut {
			return j.fail(ctx, protocol.StageVolumeDownload, protocol.FailureTimeout, "timeout:download",
				fmt.Sprintf("volumes not downloaded within %ds", timing.DownloadTimeLimit), nil)
		}
		if err != nil {
			return j.fail(ctx, protocol.StageVolumeDownload, protocol.FailureDownload, "volume_invalid", err.Error(), nil)
		}
	}
	j.stage("download", start)
	if err := j.send(ctx, &protocol.V0VolumesReadyRequest{JobUUID: j.uuid}); err != nil {
		return err
	}
	if initial.StreamingDetails != nil {
		return j.stream(ctx, initial, req, timing)
	}

	// Execute.
	start = time.Now()
	res, err := j.execute(ctx, req, seconds(timing.ExecutionTimeLimit))
	j.stage("execute", start)
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	var lostc LostContainer
	if errors.As(err, &lostc) {
		// The platform took the container away: say precisely how.
		reason, system := lostc.Reason()
		if system {
			return j.hordeFail(ctx, protocol.HordeGenericError, "container: "+lostc.Error())
		}
		return j.fail(ctx, protocol.StageExecution, protocol.FailureUnknown, reason, lostc.Error(), j.logs)
	}
	if err != nil {
		// The engine refused or broke: the system's fault, not the job's.
		return j.hordeFail(ctx, protocol.HordeGenericError, "container: "+err.Error())
	}
	withLogs := res.attach
	if res.timedOut {
		return j.fail(ctx, protocol.StageExecution, protocol.FailureTimeout, "timeout:execute",
			fmt.Sprintf("job did not finish within %ds and was killed", timing.ExecutionTimeLimit), withLogs)
	}
	if res.oom {
		return j.fail(ctx, protocol.StageExecution, protocol.FailureNonzeroReturn, "out_of_memory",
			"the container was killed for exceeding its memory limit", withLogs)
	}
	if code, msg, err := j.copyOut(ctx, req, timing); err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return j.hordeFail(ctx, protocol.HordeGenericError, "container: "+err.Error())
	} else if code == "timeout:upload" {
		return j.fail(ctx, protocol.StageResultUpload, protocol.FailureTimeout, code, msg, withLogs)
	} else if code != "" {
		return j.fail(ctx, protocol.StageExecution, protocol.FailureUnknown, code, msg, withLogs)
	}
	if code, msg := j.overBound(); code != "" {
		return j.fail(ctx, protocol.StageExecution, protocol.FailureUnknown, code, msg, withLogs)
	}
	if res.exit != 0 {
		return j.fail(ctx, protocol.StageExecution, protocol.FailureNonzeroReturn, "nonzero_exit",
			fmt.Sprintf("job exited with code %d", res.exit), withLogs)
	}
	return j.finish(ctx, req, res, timing)
}

// makeDirs makes the job's directory and those its container sees, each a
// bounded file system with BoundDisks.
func (j *job) makeDirs(ctx context.Context, artifacts bool) error {
	var err error
	j.dir, err = os.MkdirTemp(j.cfg.DataDir, "job-"+j.uuid+"-")
	if err != nil {
		return err
	}
	for _, d := range []string{"volume", "output", "artifacts", "system"} {
		if err := os.Mkdir(filepath.Join(j.dir, d), 0o777); err != nil {
			return err
		}
		os.Chmod(filepath.Join(j.dir, d), 0o777) // whatever the umask: a job's user may not be root
	}
	if !j.cfg.BoundDisks {
		return nil
	}
	bounds := map[string]int64{
		"volume": cmp.Or(j.cfg.Limits.MaxJobVolumeBytes, j.cfg.Limits.MaxVolumeBytes, blob.DefaultLimits().MaxJobVolumeBytes),
		"output": cmp.Or(j.cfg.Limits.MaxOutputBytes, blob.DefaultLimits().MaxOutputBytes),
	}
	if artifacts {
		bounds["artifacts"] = ArtifactsDiskBytes
	}
	for name, limit := range bounds {
		d, err := jobdisk.Mount(ctx, filepath.Join(j.dir, name), limit)
		if err != nil {
			return err
		}
		j.disks[name] = d
	}
	return nil
}

// overBound says (a horde_reason and a message) whether the job wrote more
// than a bounded directory holds; the kernel stopped it there.
func (j *job) overBound() (string, string) {
	for _, name := range []string{"output", "volume", "artifacts"} {
		if d := j.disks[name]; d != nil && d.Over() {
			where := "/" + name
			if name == "artifacts" {
				where = "the artifacts directory"
			}
			return name + "_too_large", fmt.Sprintf("the job wrote more to %s than its limit of %d bytes; the write past it failed (no space left on device)", where, d.Limit())
		}
	}
	return "", ""
}

// copyOut brings what the container wrote to /output and the artifacts
// directory into the job's directories, when the Runtime runs containers
// on copies of them (a BindCopier), under the upload stage's limit. A
// directory over its bound gives its horde_reason and a message, as
// overBound does; running out of time gives "timeout:upload". A job that
// asked for no outputs nor artifacts has nothing copied.
func (j *job) copyOut(ctx context.Context, req *protocol.V0JobRequest, timing *protocol.ExecutorTiming) (string, string, error) {
	bc, ok := j.cfg.Runtime.(BindCopier)
	if !ok || j.container == "" || (req.OutputUpload == nil && req.ArtifactsDir == "") {
		return "", "", nil // nothing will read them
	}
	dirs := map[string]int64{filepath.Join(j.dir, "output"): cmp.Or(j.cfg.Limits.MaxOutputBytes, blob.DefaultLimits().MaxOutputBytes)}
	if req.ArtifactsDir != "" {
		dirs[filepath.Join(j.dir, "artifacts")] = ArtifactsDiskBytes
	}
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, seconds(timing.UploadTimeLimit))
	defer cancel()
	err := bc.CopyOut(cctx, j.container, dirs)
	j.stage("copy_out", start)
	var full *blob.DirFullError
	switch {
	case errors.As(err, &full):
		name := filepath.Base(full.Dir)
		where := "/" + name
		if name == "artifacts" {
			where = "the artifacts directory"
		}
		return name + "_too_large", fmt.Sprintf("the job wrote more to %s than its limit of %d bytes", where, full.Limit), nil
	case err != nil && cctx.Err() == context.DeadlineExceeded && ctx.Err() == nil:
		return "timeout:upload", fmt.Sprintf("outputs not copied out of the container within %ds", timing.UploadTimeLimit), nil
	}
	return "", "", err
}

// fetcher downloads the job's volumes: where Net allows, within the job's budget.
func (j *job) fetcher() *blob.Fetcher {
	return &blob.Fetcher{Limits: j.cfg.Limits, Net: j.cfg.Net, Budget: j.budget, TempDir: j.dir, HuggingFaceEndpoint: j.cfg.HuggingFaceEndpoint}
}

// uploader sends the job's outputs: where Net allows, streamed from disk.
func (j *job) uploader() *blob.Uploader {
	return &blob.Uploader{Limits: j.cfg.Limits, Net: j.cfg.Net, TempDir: j.dir, Log: j.cfg.Log.With("job", j.uuid)}
}

// finish reports the execution done, uploads outputs and reports the result.
func (j *job) finish(ctx context.Context, req *protocol.V0JobRequest, res *result, timing *protocol.ExecutorTiming) error {
	withLogs := res.attach
	if err := j.send(ctx, &protocol.V0ExecutionDoneRequest{JobUUID: j.uuid}); err != nil {
		return err
	}
	start := time.Now()
	finished := &protocol.V0JobFinishedRequest{JobUUID: j.uuid, DockerProcessStdout: res.stdout, DockerProcessStderr: res.stderr}
	// Artifacts and outputs are read under the upload stage's deadline.
	uctx, ucancel := context.WithTimeout(ctx, seconds(timing.UploadTimeLimit))
	defer ucancel()
	if req.ArtifactsDir != "" {
		finished.Artifacts = j.collectArtifacts(uctx, req.ArtifactsDir)
	}
	if req.OutputUpload != nil {
		results, err := j.upload(uctx, req.OutputUpload, res)
		timedOut := uctx.Err() == context.DeadlineExceeded
		ucancel()
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if timedOut {
			return j.fail(ctx, protocol.StageResultUpload, protocol.FailureTimeout, "timeout:upload",
				fmt.Sprintf("outputs not uploaded within %ds", timing.UploadTimeLimit), withLogs)
		}
		if err != nil {
			return j.fail(ctx, protocol.StageResultUpload, protocol.FailureUpload, "upload_failed", err.Error(), withLogs)
		}
		finished.UploadResults = results
	}
	j.stage("upload", start)
	finished.Timings = j.timings
	j.cfg.Log.Info("job finished", "job", j.uuid, "timings_ms", j.timings)
	return j.send(ctx, finished)
}

func seconds(s int) time.Duration {
	if s <= 0 {
		return 24 * time.Hour
	}
	return time.Duration(s) * time.Second
}

func (j *job) ensureImage(ctx context.Context, image string, allowPull bool) error {
	if image == "" {
		return errors.New("no docker_image given")
	}
	if _, err := j.cfg.Runtime.ImageInspect(ctx, image); err == nil {
		return nil
	} else if !errors.Is(err, docker.ErrNotFound) {
		return err
	}
	if !allowPull {
		return fmt.Errorf("image %s is not present on this executor and pulling is not allowed", image)
	}
	if err := j.cfg.Runtime.ImagePull(ctx, image, nil); err != nil {
		return err
	}
	return nil
}

// cleanup removes the container and the job directory, whatever happened.
func (j *job) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if c := cmp.Or(j.container, j.containerName); c != "" {
		if err := j.cfg.Runtime.ContainerRemove(ctx, c); err != nil {
			j.cfg.Log.Warn("remove container", "job", j.uuid, "err", err)
		}
	}
	if j.sandbox != nil {
		if err := j.cfg.Sandboxes.Release(ctx, j.sandbox); err != nil {
			j.cfg.Log.Warn("remove sandbox", "job", j.uuid, "err", err)
		}
	}
	if j.network != "" {
		if nj, ok := j.cfg.Runtime.(NetworkJoiner); ok && j.cfg.SelfContainer != "" {
			if err := nj.NetworkDisconnect(ctx, j.network, j.cfg.SelfContainer); err != nil {
				j.cfg.Log.Warn("leave the job's network", "job", j.uuid, "err", err)
			}
		}
		if err := j.cfg.Runtime.NetworkRemove(ctx, j.network); err != nil {
			j.cfg.Log.Warn("remove network", "job", j.uuid, "err", err)
		}
	}
	if j.dir != "" {
		// Bounded disks first: removing files through a mount is no removal.
		if err := jobdisk.UnmountBeneath(j.dir); err != nil {
			j.cfg.Log.Warn("unmount job disks", "job", j.uuid, "err", err)
		}
		if err := os.RemoveAll(j.dir); err != nil {
			j.cfg.Log.Warn("remove job directory", "job", j.uuid, "err", err)
		}
	}
}
