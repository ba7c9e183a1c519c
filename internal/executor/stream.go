package executor

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/horde-compute/horde/internal/blob"
	"github.com/horde-compute/horde/internal/streaming"
	"github.com/horde-compute/horde/protocol"
	sr "github.com/horde-compute/horde/streamreceipt"
)

// ServicePort is where a streaming job's service listens (upstream's convention).
const ServicePort = 8000

// checkDigest refuses a streaming image whose id or repo digests differ from the pinned digest.
func (j *job) checkDigest(ctx context.Context, image, digest string) error {
	if digest == "" {
		return errors.New("streaming jobs need a whitelisted image digest; the validator sent none")
	}
	if p, ok := j.cfg.Runtime.(ImagePinner); ok {
		ref, err := p.PinImage(ctx, image, digest)
		if err != nil {
			return err
		}
		j.pinned = ref
		return nil
	}
	img, err := j.cfg.Runtime.ImageInspect(ctx, image)
	if err != nil {
		return err
	}
	if img.ID == digest {
		return nil
	}
	for _, rd := range img.RepoDigests {
		if _, d, ok := strings.Cut(rd, "@"); ok && d == digest {
			return nil
		}
	}
	return fmt.Errorf("image %s is %s, not the whitelisted %s", image, img.ID, digest)
}

// stream runs a streaming job: the service on an internal network only the
// proxy reaches, health first, then the signing proxy until the job is
// stopped, its time runs out or the service exits.
func (j *job) stream(ctx context.Context, initial *protocol.V0InitialJobRequest, req *protocol.V0JobRequest, timing *protocol.ExecutorTiming) error {
	d := j.cfg.Runtime
	netStart := time.Now()
	netMode, err := j.streamNetwork(ctx)
	if err != nil {
		return j.hordeFail(ctx, protocol.HordeStreamingFailed, err.Error())
	}
	j.stage("streaming_network", netStart)
	p := Paths{Volume: filepath.Join(j.dir, "volume"), Output: filepath.Join(j.dir, "output"), Artifacts: filepath.Join(j.dir, "artifacts")}
	cfg := ContainerConfig(req, j.cfg.Class, p, j.cfg.Owner)
	if j.pinned != "" {
		cfg.Image = j.pinned // the content checked, not whatever the name means by now
	}
	cfg.NetworkDisabled = false
	cfg.HostConfig.NetworkMode = netMode
	start := time.Now()
	id, err := j.createContainer(ctx, cfg)
	if err != nil {
		return j.hordeFail(ctx, protocol.HordeStreamingFailed, "container: "+err.Error())
	}
	j.stage("streaming_create", start)
	if err := d.ContainerStart(ctx, id); err != nil {
		return j.hordeFail(ctx, protocol.HordeStreamingFailed, "container: "+err.Error())
	}
	j.stage("streaming_container", start)
	exited := make(chan int, 1)
	go func() { // owned: ContainerWait returns when the container is removed in cleanup
		code, _ := d.ContainerWait(context.WithoutCancel(ctx), id)
		exited <- code
	}()
	addr := ""
	if j.sandbox != nil {
		addr = j.sandbox.Addr // known ahead: no inspection
	} else if addr, err = d.ServiceAddr(ctx, id, j.network, ServicePort); err != nil {
		return j.hordeFail(ctx, protocol.HordeStreamingFailed, err.Error())
	}
	service := &url.URL{Scheme: "http", Host: addr}
	healthStart := time.Now()
	limit := seconds(timing.StreamingStartTimeLimit)
	if timing.StreamingStartTimeLimit == 0 {
		limit = time.Minute
	}
	if err := waitHealthy(ctx, service, limit, exited); err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return j.fail(ctx, protocol.StageStreaming, protocol.FailureTimeout, "streaming_not_ready", err.Error(), j.logs)
	}
	j.stage("streaming_health", healthStart)
	j.stage("streaming_start", start)
	proxyStart := time.Now()

	// The certificate names the advertised host, so clients that check the
	// host they dial against it (upstream's Python clients) accept it.
	key, certPEM, err := sr.NewKeyPair("horde-job-"+j.uuid, seconds(timing.ExecutionTimeLimit)+time.Hour, j.cfg.StreamingHost, "localhost")
	if err != nil {
		return j.hordeFail(ctx, protocol.HordeStreamingFailed, err.Error())
	}
	tlsCfg, err := sr.ServerTLS(key, certPEM, []byte(initial.StreamingDetails.PublicKey))
	if err != nil {
		return j.fail(ctx, protocol.StageStreaming, protocol.FailureUnknown, "bad_client_certificate", err.Error(), nil)
	}
	ln, err := net.Listen("tcp", j.cfg.StreamingListen)
	if err != nil {
		return j.hordeFail(ctx, protocol.HordeStreamingFailed, err.Error())
	}
	// Receipts are kept on disk in the job's directory (outside the
	// container's mounts), for as long as the job lives.
	proxy := &streaming.Proxy{JobUUID: j.uuid, Key: key, Upstream: service, Skew: j.cfg.StreamingSkew, Dir: filepath.Join(j.dir, "receipts"),
		Metrics: j.cfg.StreamingMetrics}
	pctx, stopProxy := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- proxy.Serve(pctx, ln, tlsCfg) }() // owned: stopped and waited for below
	defer func() {
		stopProxy() // requests under way get a grace period
		<-served
		proxy.Close()
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	if err := j.send(ctx, &protocol.V0StreamingJobReadyRequest{JobUUID: j.uuid, PublicKey: string(certPEM), IP: j.cfg.StreamingHost, Port: port}); err != nil {
		return err
	}
	j.stage("streaming_proxy", proxyStart)
	j.cfg.Log.Info("streaming job serving", "job", j.uuid, "addr", net.JoinHostPort(j.cfg.StreamingHost, fmt.Sprint(port)))

	// Serve until stopped, out of time, or the service exits.
	start = time.Now()
	deadline := time.NewTimer(seconds(timing.ExecutionTimeLimit))
	defer deadline.Stop()
	code, why := 0, ""
	func() {
		for {
			select {
			case m, ok := <-j.msgs:
				if !ok {
					return
				}
				switch m := m.(type) {
				case *protocol.V0StopJobRequest:
					why = "stopped by the client"
					return
				case *protocol.V0VolumeRequest:
					j.send(ctx, j.volumeMessage(ctx, m, timing))
				}
			case code = <-exited:
				why = "the service exited"
				return
			case <-deadline.C:
				why = "time limit reached"
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	j.stage("serve", start)
	// Copies of its directories are read before the kill, which takes
	// the Pod's keeper too (a BindCopier's).
	outCode, outMsg, outErr := "", "", error(nil)
	if req.OutputUpload != nil || req.ArtifactsDir != "" {
		outCode, outMsg, outErr = j.copyOut(ctx, req, timing)
	}
	kctx, kcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	d.ContainerKill(kctx, id)
	kcancel()
	res := &result{exit: code}
	if err := j.collectLogs(res); err != nil {
		return j.hordeFail(ctx, protocol.HordeStreamingFailed, err.Error())
	}
	j.cfg.Log.Info("streaming job ended", "job", j.uuid, "why", why, "receipts", proxy.Receipts())
	if outErr != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return j.hordeFail(ctx, protocol.HordeStreamingFailed, "container: "+outErr.Error())
	}
	if outCode == "timeout:upload" {
		return j.fail(ctx, protocol.StageResultUpload, protocol.FailureTimeout, outCode, outMsg, res.attach)
	}
	if outCode != "" {
		return j.fail(ctx, protocol.StageExecution, protocol.FailureUnknown, outCode, outMsg, res.attach)
	}
	if code, msg := j.overBound(); code != "" {
		return j.fail(ctx, protocol.StageExecution, protocol.FailureUnknown, code, msg, res.attach)
	}
	if why == "the service exited" && code != 0 {
		return j.fail(ctx, protocol.StageExecution, protocol.FailureNonzeroReturn, "nonzero_exit",
			fmt.Sprintf("the service exited with code %d", code), func(m *protocol.V0JobFailedRequest) {
				c := code
				m.DockerProcessExitStatus, m.DockerProcessStdout, m.DockerProcessStderr = &c, res.stdout, res.stderr
			})
	}
	return j.finish(ctx, req, res, timing)
}

// streamNetwork gives the job's service its network and returns the
// container's network mode: a sandbox made ahead if one is ready (its
// holder's namespace), else an internal network made now, which the
// proxy's own container joins if it runs in one.
func (j *job) streamNetwork(ctx context.Context) (string, error) {
	if j.cfg.Sandboxes != nil {
		if sb := j.cfg.Sandboxes.Take(); sb != nil {
			j.sandbox = sb
			return "container:" + sb.Holder, nil
		}
	}
	d := j.cfg.Runtime
	netName := "horde-job-" + j.uuid
	j.network = netName // removed by name in cleanup, even if creating it failed midway
	nctx, cancel := Uncancelled(ctx)
	_, err := d.NetworkCreate(nctx, netName, true, map[string]string{LabelJob: j.uuid, LabelOwner: j.cfg.Owner})
	cancel()
	if err != nil {
		return "", err
	}
	if j.cfg.SelfContainer != "" { // the proxy's container joins the service's network
		nj, ok := d.(NetworkJoiner)
		if !ok {
			return "", errors.New("this runtime cannot join its own container to the job's network")
		}
		if err := nj.NetworkConnect(ctx, netName, j.cfg.SelfContainer); err != nil {
			return "", err
		}
	}
	return netName, nil
}

// waitHealthy polls GET /health until it answers 200, the limit passes or
// the container exits: 2 ms after the start at first (a service that is
// up at once is served at once; a refused connection costs next to
// nothing), then half as long again each time, up to every 50 ms.
func waitHealthy(ctx context.Context, service *url.URL, limit time.Duration, exited <-chan int) error {
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(limit)
	wait := 2 * time.Millisecond
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, service.String()+"/health", nil)
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case code := <-exited:
			return fmt.Errorf("the service exited (code %d) before answering GET /health", code)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(wait*3/2, 50*time.Millisecond)
		if time.Now().After(deadline) {
			return fmt.Errorf("the service did not answer GET /health on port %d within %s", ServicePort, limit)
		}
	}
}

// volumeMessage downloads one more volume into /volume, where the service
// sees it, or uploads /output as the message asks, and says how it went.
func (j *job) volumeMessage(ctx context.Context, m *protocol.V0VolumeRequest, timing *protocol.ExecutorTiming) *protocol.V0VolumeResult {
	res := &protocol.V0VolumeResult{JobUUID: j.uuid, MessageID: m.MessageID}
	var err error
	bc, copies := j.cfg.Runtime.(BindCopier)
	if m.Volume != nil {
		dctx, cancel := context.WithTimeout(ctx, seconds(timing.DownloadTimeLimit))
		err = j.fetcher().Download(dctx, m.Volume, filepath.Join(j.dir, "volume"))
		if err == nil && copies {
			err = bc.CopyIn(dctx, j.container, filepath.Join(j.dir, "volume"))
		}
		cancel()
	} else {
		uctx, cancel := context.WithTimeout(ctx, seconds(timing.UploadTimeLimit))
		output := filepath.Join(j.dir, "output")
		if copies {
			err = bc.CopyOut(uctx, j.container, map[string]int64{output: cmp.Or(j.cfg.Limits.MaxOutputBytes, blob.DefaultLimits().MaxOutputBytes)})
		}
		if err == nil {
			res.UploadResults, err = j.uploader().Upload(uctx, m.OutputUpload, output)
		}
		cancel()
	}
	if err != nil {
		res.Error = j.hostPaths(err.Error())
	} else {
		res.Success = true
	}
	j.cfg.Log.Info("volume message", "job", j.uuid, "message", m.MessageID, "success", res.Success, "err", res.Error)
	return res
}
