package faulttest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/internal/cli"
	"github.com/horde-compute/horde/internal/executor/docker/dockertest"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// deployment is the suite's horde: deploy/compose.yaml's hosts, made with
// the Engine API under names of this run's own.
type deployment struct {
	t      *testing.T
	eng    *Engine
	run    string // this run's id, in every name and label
	dir    string // wallets, metagraph, job files: bound into the hosts
	layout cli.DeployLayout
	keys   map[string]*sig.Hotkey
	hosts  map[string]*Host // by role: facilitator, validator, trusted, miner1, miner2
	nets   map[string]string
	tags   images.Tags
	llm    string // digest of the LLM image
	url    string // the facilitator, from this (the clients') side
	client *client.Client
}

// label marks everything of this run for cleanup.
const label = "horde.faulttest"

func newRunID() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// up builds horde static, makes its images, and starts the deployment;
// everything is removed when the test ends.
func up(t *testing.T) *deployment {
	t.Helper()
	cli0 := dockertest.Engine(t)
	eng, err := NewEngine()
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	d := &deployment{t: t, eng: eng, run: newRunID(), hosts: map[string]*Host{}, nets: map[string]string{}}
	// The engine binds the job files of miners at the same path inside and
	// out, so the directory must be one the engine sees: this machine's.
	d.dir, err = os.MkdirTemp("", "horde-faulttest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d.dir) })
	bin, err := images.BuildStatic(ctx, d.dir)
	if err != nil {
		t.Fatal(err)
	}
	d.tags = images.Tags{Horde: "horde/horde:faulttest", Job: "horde/job:faulttest", LLM: "horde/llm:faulttest"}
	made, err := images.FromBinaryAs(ctx, cli0, bin, d.tags)
	if err != nil {
		t.Fatal(err)
	}
	d.llm = made.LLMDigest

	t.Cleanup(d.down)
	d.layout = d.networks(ctx)
	if d.keys, err = cli.DeployInit(d.dir, d.layout); err != nil {
		t.Fatal(err)
	}
	L := d.layout
	on := func(net, host string) Endpoint {
		return Endpoint{Network: d.nets[net], IP: cli.AddrOn(map[string]string{"public": L.Public, "validators": L.Validators, "miners": L.Miners}[net], host)}
	}
	common := []string{"HORDE_WALLET_PATH=/deploy/wallets", "HORDE_METAGRAPH=/deploy/metagraph.json", "HORDE_DB=/data/horde.db", "HORDE_LOG_LEVEL=debug"}
	data := func(role string) string {
		p := filepath.Join(d.dir, "data", role)
		os.MkdirAll(p, 0o755)
		return p + ":/data"
	}
	jobs := filepath.Join(d.dir, "jobs")
	d.host("facilitator", []string{"facilitator", "--listen", "0.0.0.0:9000"}, common,
		[]string{d.dir + ":/deploy:ro", data("facilitator")}, on("public", L.Facilitator), on("validators", L.Facilitator))
	d.host("validator", []string{"validator", "--wallet", "validator", "--facilitator", "ws://" + on("validators", L.Facilitator).IP + ":9000/ws/v0/",
		"--weights-file", "/data/weights.jsonl", "--cycle", "0", "--refresh", "2s", "--synthetic-image", d.tags.Job,
		"--trusted-miner", fmt.Sprintf("%s@%s:%d", d.keys["trusted"].SS58(), on("miners", L.Trusted).IP, L.MinerPort),
		"--streaming-whitelist", d.tags.LLM + "=" + d.llm, "--comparators", d.tags.LLM + "=llm"}, common,
		[]string{d.dir + ":/deploy:ro", data("validator")}, on("validators", L.Validator), on("miners", L.Validator))
	miner := func(role string, public bool, host string, extra ...string) {
		name := d.name(role)
		args := append([]string{"miner", "--wallet", role, "--listen", "0.0.0.0:8000", "--manifest", "always_on.test=2",
			"--data-dir", filepath.Join(jobs, role), "--bound-disks=false", "--self-container", name,
			// No sandboxes made ahead: a miner killed here is never restarted
			// to reap them, and each holds one of the engine's address pools.
			"--streaming-sandboxes=0"}, extra...)
		eps := []Endpoint{on("miners", host)}
		args = append(args, "--streaming-host", eps[0].IP)
		if public {
			eps = []Endpoint{on("public", host), on("miners", host)}
			args[len(args)-1] = eps[0].IP // clients reach its streaming jobs on the public network
		}
		d.host(role, args, common, []string{d.dir + ":/deploy:ro", "/var/run/docker.sock:/var/run/docker.sock", jobs + ":" + jobs, data(role)}, eps...)
	}
	miner("trusted", false, L.Trusted, "--trusted", "--validator", d.keys["validator"].SS58())
	miner("miner1", true, L.MinerAddrs[0])
	miner("miner2", true, L.MinerAddrs[1])
	for _, role := range []string{"facilitator", "trusted", "miner1", "miner2", "validator"} {
		if err := eng.Do(ctx, d.hosts[role].Name, "start"); err != nil {
			t.Fatalf("start %s: %v", role, err)
		}
	}
	d.url = "http://" + on("public", L.Facilitator).IP + ":9000"
	d.client = client.New(d.url, d.keys["client"])
	d.ready(ctx)
	return d
}

// networks creates the three networks on free /24 subnets and returns the layout.
func (d *deployment) networks(ctx context.Context) cli.DeployLayout {
	L := cli.Deployment
	for b := 101; b < 200; b++ {
		subnets := map[string]string{}
		ok := true
		for i, n := range []string{"public", "validators", "miners"} {
			subnets[n] = fmt.Sprintf("10.%d.%d.0/24", b, i+1)
			name := "hordeft-" + d.run + "-" + n
			if err := d.eng.CreateNetwork(ctx, name, subnets[n], map[string]string{label: d.run}); err != nil {
				if !strings.Contains(err.Error(), "overlap") {
					d.t.Fatalf("create network: %v", err)
				}
				ok = false
				break
			}
			d.nets[n] = name
		}
		if ok {
			L.Public, L.Validators, L.Miners = subnets["public"], subnets["validators"], subnets["miners"]
			return L
		}
		for n, name := range d.nets {
			d.eng.RemoveNetwork(ctx, name)
			delete(d.nets, n)
		}
	}
	d.t.Fatal("no free subnet for the deployment's networks")
	return L
}

func (d *deployment) name(role string) string { return "hordeft-" + d.run + "-" + role }

func (d *deployment) host(role string, cmd, env, binds []string, eps ...Endpoint) {
	d.t.Helper()
	h := &Host{Name: d.name(role), Image: d.tags.Horde, Cmd: cmd, Env: env, Binds: binds, Nets: eps, Labels: map[string]string{label: d.run}}
	if err := d.eng.Create(d.t.Context(), h); err != nil {
		d.t.Fatalf("create %s: %v", role, err)
	}
	d.hosts[role] = h
}

// down removes the hosts, their jobs' containers and networks, and the
// networks; a failed test shows the hosts' logs first.
func (d *deployment) down() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for role, h := range d.hosts {
		if d.t.Failed() {
			d.t.Logf("── %s ──\n%s", role, tail(d.eng.Logs(ctx, h.Name), 60))
		}
		d.eng.Remove(ctx, h.Name)
	}
	// What the miners made on the engine (job containers, streaming
	// networks): a miner killed here is never restarted to reap its own.
	for _, role := range []string{"trusted", "miner1", "miner2"} {
		if k := d.keys[role]; k != nil {
			if err := d.eng.RemoveLabelled(ctx, "horde.owner="+k.SS58()); err != nil {
				d.t.Logf("remove what %s left: %v", role, err)
			}
		}
	}
	for _, n := range d.nets {
		if err := d.eng.RemoveNetwork(ctx, n); err != nil {
			d.t.Logf("remove network %s: %v", n, err)
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ready waits until the deployment runs jobs: one completes.
func (d *deployment) ready(ctx context.Context) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	for {
		j, err := d.client.CreateJob(ctx, d.spec(10, "echo", "ready"))
		if err == nil {
			var w *protocol.Job
			if w, err = d.client.Watch(ctx, j.UUID, func(protocol.StatusEntry) {}); err == nil && w.Status == protocol.StatusCompleted {
				return
			}
		}
		if ctx.Err() != nil {
			d.t.Fatalf("the deployment never ran a job: %v", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// spec is a job of the job image with an execution limit.
func (d *deployment) spec(execLimit int, args ...string) *protocol.JobSpec {
	return &protocol.JobSpec{ExecutorClass: protocol.ClassTest, DockerImage: d.tags.Job, Args: args,
		DownloadTimeLimit: 5, ExecutionTimeLimit: execLimit, UploadTimeLimit: 5}
}

// roleOf returns the role of the miner with hotkey ss58.
func (d *deployment) roleOf(ss58 string) string {
	for role, k := range d.keys {
		if k.SS58() == ss58 {
			return role
		}
	}
	return ""
}

// watch follows one job from the client's side, across facilitator
// restarts, noting when each status arrived.
type watch struct {
	mu      sync.Mutex
	uuid    string
	history []protocol.StatusEntry
	at      []time.Time
	changed chan struct{}
	done    chan struct{}
	final   *protocol.Job
	err     error
}

func (d *deployment) submit(ctx context.Context, spec *protocol.JobSpec) *watch {
	d.t.Helper()
	var j *protocol.Job
	var err error
	for range 20 { // the facilitator may be restarting
		if j, err = d.client.CreateJob(ctx, spec); err == nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
	if err != nil {
		d.t.Fatalf("submit: %v", err)
	}
	return d.follow(ctx, j.UUID)
}

func (d *deployment) follow(ctx context.Context, uuid string) *watch {
	w := &watch{uuid: uuid, changed: make(chan struct{}, 1), done: make(chan struct{})}
	go func() { // owned: ends with ctx or the job; the test waits on done
		defer close(w.done)
		for ctx.Err() == nil {
			seen := 0
			j, err := d.client.Watch(ctx, uuid, func(e protocol.StatusEntry) {
				seen++
				w.mu.Lock()
				if seen > len(w.history) {
					w.history = append(w.history, e)
					w.at = append(w.at, time.Now())
				}
				w.mu.Unlock()
				select {
				case w.changed <- struct{}{}:
				default:
				}
			})
			if err == nil {
				w.mu.Lock()
				w.final = j
				w.mu.Unlock()
				return
			}
			var ae *client.APIError
			if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
				w.mu.Lock()
				w.err = err // lost
				w.mu.Unlock()
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(300 * time.Millisecond): // the facilitator is away
			}
		}
		w.mu.Lock()
		w.err = ctx.Err()
		w.mu.Unlock()
	}()
	return w
}

// until waits for a status of the job (or its end) and returns when it came.
func (w *watch) until(ctx context.Context, status protocol.JobStatus) (protocol.StatusEntry, time.Time, bool) {
	for {
		w.mu.Lock()
		for i, e := range w.history {
			if e.Status == status {
				at := w.at[i] // read under the lock: the watcher appends to it
				w.mu.Unlock()
				return e, at, true
			}
		}
		w.mu.Unlock()
		select {
		case <-w.changed:
		case <-w.done:
			w.mu.Lock()
			defer w.mu.Unlock()
			for i, e := range w.history {
				if e.Status == status {
					return e, w.at[i], true
				}
			}
			return protocol.StatusEntry{}, time.Time{}, false
		case <-ctx.Done():
			return protocol.StatusEntry{}, time.Time{}, false
		}
	}
}

// end waits for the job to end and returns it and when its last status came.
func (w *watch) end(ctx context.Context) (*protocol.Job, time.Time, error) {
	select {
	case <-w.done:
	case <-ctx.Done():
		return nil, time.Time{}, fmt.Errorf("job %s did not end: %w", w.uuid, ctx.Err())
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.final == nil {
		return nil, time.Time{}, fmt.Errorf("job %s lost: %v", w.uuid, w.err)
	}
	at := time.Now()
	if len(w.at) > 0 {
		at = w.at[len(w.at)-1]
	}
	return w.final, at, nil
}

// minerOf is the miner that accepted the job.
func (w *watch) minerOf(ctx context.Context) string {
	e, _, ok := w.until(ctx, protocol.StatusAccepted)
	if !ok || e.Metadata == nil {
		return ""
	}
	return e.Metadata.MinerHotkey
}

// reason is a one-line account of how a job ended.
func reason(j *protocol.Job) string {
	if j == nil || len(j.StatusHistory) == 0 {
		return "?"
	}
	e := j.StatusHistory[len(j.StatusHistory)-1]
	s := string(e.Status)
	if m := e.Metadata; m != nil {
		switch {
		case m.JobFailureDetails != nil:
			s += " " + string(m.JobFailureDetails.Stage) + ":" + string(m.JobFailureDetails.Reason)
		case m.HordeFailureDetails != nil:
			s += " " + string(m.HordeFailureDetails.Reason)
		case m.JobRejectionDetails != nil:
			s += " " + string(m.JobRejectionDetails.Reason)
		}
	}
	return s
}

// counts returns how often each status appears in the job's history.
func counts(j *protocol.Job) map[protocol.JobStatus]int {
	c := map[protocol.JobStatus]int{}
	for _, e := range j.StatusHistory {
		c[e.Status]++
	}
	return c
}

// clean waits until the engine holds no container or network of job.
func (d *deployment) clean(ctx context.Context, job string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		c, n, err := d.eng.Labelled(ctx, "horde.job="+job)
		if err == nil && c == 0 && n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("job %s left %d containers and %d networks (%v)", job, c, n, err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}
