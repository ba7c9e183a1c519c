// Package executor runs one job: it connects to its miner with a one-time
// token, makes sure the image is present, downloads volumes, runs the
// container isolated (no network, limits, read-only root, no capabilities),
// uploads outputs and reports the result, then removes everything it made.
// Containers run on a Runtime: the Docker Engine (package docker), or in
// tests the in-process fake (package fakert), which isolates nothing.
package executor

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/horde-compute/horde/internal/blob"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
)

// LabelJob and LabelOwner mark every container an executor creates, so that
// a miner can find and reap leftovers after a crash.
const (
	LabelJob   = "horde.job"
	LabelOwner = "horde.owner"
)

// MaxLogBytes bounds the stdout/stderr that travel in messages.
const MaxLogBytes = 1 << 20

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
	j := &job{cfg: cfg, conn: conn, msgs: msgs, timings: map[string]int64{}}
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
	timings                  map[string]int64
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

func (j *job) fail(ctx context.Context, stage protocol.JobStage, reason protocol.JobFailureReason, code, msg string, extra func(*protocol.V0JobFailedRequest)) error {
	m := &protocol.V0JobFailedRequest{JobUUID: j.uuid, ExecutorToken: j.token, Stage: stage, Reason: reason,
		Message: code + ": " + msg, Context: map[string]any{"horde_reason": code}}
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
		if err := j.checkDigest(ctx, initial.DockerImage, initial.ImageDigest); err != nil {
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

	j.dir, err = os.MkdirTemp(j.cfg.DataDir, "job-"+j.uuid+"-")
	if err != nil {
		return fmt.Errorf("executor: job dir: %w", err)
	}
	for _, d := range []string{"volume", "output", "artifacts", "system"} {
		if err := os.MkdirAll(filepath.Join(j.dir, d), 0o777); err != nil {
			return err
		}
	}

	// Download.
	start = time.Now()
	if req.Volume != nil {
		dctx, dcancel := context.WithTimeout(ctx, seconds(timing.DownloadTimeLimit))
		f := &blob.Fetcher{Limits: j.cfg.Limits, HuggingFaceEndpoint: j.cfg.HuggingFaceEndpoint}
		err := f.Download(dctx, req.Volume, filepath.Join(j.dir, "volume"))
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
	if res.exit != 0 {
		return j.fail(ctx, protocol.StageExecution, protocol.FailureNonzeroReturn, "nonzero_exit",
			fmt.Sprintf("job exited with code %d", res.exit), withLogs)
	}
	return j.finish(ctx, req, res, timing)
}

// finish reports the execution done, uploads outputs and reports the result.
func (j *job) finish(ctx context.Context, req *protocol.V0JobRequest, res *result, timing *protocol.ExecutorTiming) error {
	withLogs := res.attach
	if err := j.send(ctx, &protocol.V0ExecutionDoneRequest{JobUUID: j.uuid}); err != nil {
		return err
	}
	start := time.Now()
	finished := &protocol.V0JobFinishedRequest{JobUUID: j.uuid, DockerProcessStdout: res.stdout, DockerProcessStderr: res.stderr}
	if req.ArtifactsDir != "" {
		finished.Artifacts = collectArtifacts(filepath.Join(j.dir, "artifacts"), req.ArtifactsDir)
	}
	if req.OutputUpload != nil {
		uctx, ucancel := context.WithTimeout(ctx, seconds(timing.UploadTimeLimit))
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
	if j.network != "" {
		if err := j.cfg.Runtime.NetworkRemove(ctx, j.network); err != nil {
			j.cfg.Log.Warn("remove network", "job", j.uuid, "err", err)
		}
	}
	if j.dir != "" {
		os.RemoveAll(j.dir)
	}
}
