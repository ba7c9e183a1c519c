package cli

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/horde-compute/horde/internal/blob"
	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/executor/jobdisk"
	"github.com/horde-compute/horde/internal/executor/kube"
	"github.com/horde-compute/horde/internal/executor/sandbox"
	"github.com/horde-compute/horde/internal/facilitator"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/internal/isolate"
	"github.com/horde-compute/horde/internal/metrics"
	"github.com/horde-compute/horde/internal/miner"
	"github.com/horde-compute/horde/internal/store/backend"
	"github.com/horde-compute/horde/internal/validation"
	"github.com/horde-compute/horde/internal/validator"
	"github.com/horde-compute/horde/internal/validator/excuse"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
	"k8s.io/client-go/kubernetes"
)

func (e *env) facilitator(args []string) error {
	fs := e.flags("facilitator")
	listen := fs.String("listen", "127.0.0.1:9000", "address to serve the client API and validator link on")
	db := fs.String("db", "facilitator.db", "SQLite database file, or PostgreSQL URL (postgres://…)")
	validators := fs.String("validators", "", "comma-separated validator hotkeys allowed to connect")
	metagraph := fs.String("metagraph", "", "metagraph file: validators with a permit may connect")
	upstreamAuth := fs.Bool("allow-upstream-auth", false, "let unmodified upstream validators authenticate with upstream's auth, "+
		"which can be replayed (a replay never displaces a connected validator)")
	clients := fs.String("clients", "", "comma-separated client hotkeys allowed to log in and submit jobs (empty: any hotkey)")
	tokenKey := fs.String("token-key-file", "", "file of at least 32 secret bytes that signs login tokens "+
		"(empty: a new key each start, and clients log in again)")
	metricsAddr := metricsFlag(fs, "they are also served at /metrics on --listen")
	dashToken := fs.String("dashboard-token", "", "operator token of the dashboard at /dashboard/ on --listen (empty: the dashboard serves loopback only)")
	level := fs.String("log-level", "info", "log level")
	if err := e.parseFlags(fs, args); err != nil {
		return err
	}
	if *validators == "" && *metagraph == "" {
		return usageErr("give --validators or --metagraph: who may connect as a validator")
	}
	var key []byte
	if *tokenKey != "" {
		b, err := os.ReadFile(*tokenKey)
		if err != nil {
			return fmt.Errorf("--token-key-file: %w", err)
		}
		if len(b) < 32 {
			return usageErr("--token-key-file %s holds %d bytes, want at least 32", *tokenKey, len(b))
		}
		key = b
	}
	var allowClient func(string) bool
	if *clients != "" {
		set := map[string]bool{}
		for _, c := range strings.Split(*clients, ",") {
			if c = strings.TrimSpace(c); c != "" {
				if _, err := sig.ParseSS58(c); err != nil {
					return usageErr("--clients: %q: %v", c, err)
				}
				set[c] = true
			}
		}
		allowClient = func(hk string) bool { return set[hk] }
	}
	log, err := e.logger(*level)
	if err != nil {
		return err
	}
	allowed := map[string]bool{}
	for _, v := range strings.Split(*validators, ",") {
		if v = strings.TrimSpace(v); v != "" {
			allowed[v] = true
		}
	}
	allow := func(hk string) bool {
		if allowed[hk] {
			return true
		}
		if *metagraph == "" {
			return false
		}
		mg, err := chain.File{Path: *metagraph}.Metagraph(e.ctx)
		return err == nil && mg.IsValidator(hk)
	}
	st, err := backend.Open(e.ctx, *db)
	if err != nil {
		return err
	}
	defer st.Close()
	return e.withMetrics(*metricsAddr, nil, func(ctx context.Context, reg *prometheus.Registry) error {
		f, err := facilitator.New(facilitator.Config{Listen: *listen, Store: st, AllowValidator: allow, Log: log,
			AllowUpstreamAuth: *upstreamAuth, AllowClient: allowClient, TokenKey: key, Metrics: reg, DashboardToken: *dashToken})
		if err != nil {
			return err
		}
		return f.Run(ctx)
	})
}

func (e *env) validator(args []string) error {
	fs := e.flags("validator")
	var w walletFlags
	w.register(fs, "validator")
	fac := fs.String("facilitator", "ws://127.0.0.1:9000/ws/v0/", "facilitator WebSocket URL (empty: none)")
	upstream := fs.Bool("upstream-protocol", false, "speak upstream ComputeHorde's protocol only, to horde peers too (no horde field, message or capability; receipts from pages)")
	requireHordeFac := fs.Bool("require-horde-facilitator", false, "refuse a facilitator without horde's replay-proof auth (an upstream facilitator) instead of sending it upstream's replayable one")
	metagraph := fs.String("metagraph", "metagraph.json", "metagraph file (Pylon neurons shape)")
	db := fs.String("db", "validator.db", "SQLite database file, or PostgreSQL URL (postgres://…)")
	allowPull := fs.Bool("allow-pull", false, "let executors pull images that are not present")
	attempts := fs.Int("max-attempts", 3, "miners one job is offered to at most")
	refresh := fs.Duration("refresh", time.Minute, "metagraph refresh interval")
	cycle := fs.Duration("cycle", 10*time.Minute, "synthetic round and weight-setting cycle (0: no rounds)")
	image := fs.String("synthetic-image", images.JobImage, "image of synthetic jobs (must be present on executors)")
	weightsFile := fs.String("weights-file", "weights.jsonl", "where weights are written when no Pylon is given")
	pylon := fs.String("pylon-url", "", "Pylon service for metagraph and weights (instead of the files)")
	pylonToken := fs.String("pylon-token", "", "Pylon bearer token")
	pylonIdentity := fs.String("pylon-identity", "", "Pylon identity name")
	netuid := fs.Int("netuid", 12, "subnet")
	whitelist := fs.String("streaming-whitelist", "", "images streaming jobs may use, pinned: IMAGE=DIGEST,…")
	comparators := fs.String("comparators", "", "comparator per whitelisted image: IMAGE=exact|llm,… (default exact)")
	trusted := fs.String("trusted-miner", "", "the validator's own miner for validation windows: HOTKEY@HOST:PORT")
	valEvery := fs.Duration("validation-every", 5*time.Minute, "how often waiting streaming pairs are looked at")
	sample := fs.Float64("validation-sample", 0.1, "fraction of gathered pairs replayed on the trusted miner")
	threshold := fs.Int("validation-threshold", 100, "pairs of an image that open a validation window")
	excuseStake := fs.Float64("excuse-min-stake", excuse.DefaultMinStake, "stake a validator needs for its receipts to excuse a busy miner (this validator's own always do)")
	metricsAddr := metricsFlag(fs, "with /healthz; empty: metrics are not served")
	level := fs.String("log-level", "info", "log level")
	if err := e.parseFlags(fs, args); err != nil {
		return err
	}
	if *excuseStake <= 0 {
		return usageErr("--excuse-min-stake must be positive")
	}
	wl, err := parsePairs("--streaming-whitelist", *whitelist)
	if err != nil {
		return err
	}
	cmps := map[string]validation.Comparator{}
	names, err := parsePairs("--comparators", *comparators)
	if err != nil {
		return err
	}
	for image, name := range names {
		switch name {
		case "exact":
			cmps[image] = validation.Exact{}
		case "llm":
			cmps[image] = validation.LLM{}
		default:
			return usageErr("--comparators: %q is not exact or llm", name)
		}
	}
	val := validator.ValidationConfig{Comparators: cmps, Sample: *sample, Threshold: *threshold, Every: *valEvery}
	if *trusted != "" {
		hk, addr, ok := strings.Cut(*trusted, "@")
		host, port, err := net.SplitHostPort(addr)
		p, perr := strconv.Atoi(port)
		if _, kerr := sig.ParseSS58(hk); !ok || err != nil || perr != nil || kerr != nil {
			return usageErr("--trusted-miner %q: want HOTKEY@HOST:PORT", *trusted)
		}
		val.TrustedMiner = &chain.Neuron{Hotkey: hk, AxonInfo: chain.AxonInfo{IP: host, Port: p}}
	}
	var meta chain.Source = chain.File{Path: *metagraph}
	var weights chain.WeightSetter = chain.WeightsFile{Path: *weightsFile}
	if *pylon != "" {
		p := &chain.Pylon{BaseURL: *pylon, Token: *pylonToken, Identity: *pylonIdentity, NetUID: *netuid}
		meta, weights = p, p
	}
	k, err := w.load()
	if err != nil {
		return err
	}
	log, err := e.logger(*level)
	if err != nil {
		return err
	}
	st, err := backend.Open(e.ctx, *db)
	if err != nil {
		return err
	}
	defer st.Close()
	cfg := validator.Config{Hotkey: k, FacilitatorURL: *fac, RequireHordeFacilitator: *requireHordeFac, Upstream: *upstream, Metagraph: meta,
		Refresh: *refresh, Store: st, MaxAttempts: *attempts, AllowPull: *allowPull, Log: log,
		Synthetic:          validator.SyntheticConfig{Every: *cycle, Image: *image, Weights: weights, MinExcuseStake: *excuseStake},
		StreamingWhitelist: wl, Validation: val}
	reg := metrics.NewRegistry()
	cfg.Metrics = reg
	v, err := validator.New(cfg)
	if err != nil {
		return err
	}
	return e.withMetricsOn(*metricsAddr, reg, v.Handler(), v.Run)
}

// parseManifest reads "class=count,class=count".
func parseManifest(s string) (map[string]int, error) {
	pairs, err := parsePairs("--manifest", s)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for class, n := range pairs {
		count, err := strconv.Atoi(n)
		if err != nil || count < 0 {
			return nil, usageErr("--manifest entry %s=%s: COUNT must be a whole number", class, n)
		}
		if _, known := miner.DefaultClasses()[class]; !known {
			return nil, usageErr("--manifest: unknown executor class %q", class)
		}
		out[class] = count
	}
	if len(out) == 0 {
		return nil, usageErr("--manifest is empty")
	}
	return out, nil
}

func (e *env) miner(args []string) error {
	fs := e.flags("miner")
	var w walletFlags
	w.register(fs, "miner")
	listen := fs.String("listen", "0.0.0.0:8000", "address validators and executors connect to")
	advertise := fs.String("executor-url", "", "how executors reach this miner (default ws://<listen>)")
	metagraph := fs.String("metagraph", "metagraph.json", "metagraph file: validators with a permit may connect")
	trusted := fs.Bool("trusted", false, "run as a trusted miner: outside the metagraph, serving only --validator")
	pinned := fs.String("validator", "", "with --trusted: the one validator (SS58 hotkey) this miner serves")
	manifest := fs.String("manifest", "always_on.test=1", "executors per class: CLASS=COUNT,…")
	db := fs.String("db", "miner.db", "SQLite database file, or PostgreSQL URL (postgres://…)")
	metricsAddr := metricsFlag(fs, "they are also served at /metrics on --listen")
	imagePull := fs.String("image-pull", string(protocol.PullIfValidatorAllows),
		"when executors may pull a job's missing image: validator (when a horde validator allows it), always (as upstream; needed for upstream validators' jobs), never")
	streamingImages := fs.String("streaming-images", "", "images streaming jobs may run when the validator pins no digest (upstream validators): names or sha256: digests, comma-separated")
	upstreamOnly := fs.Bool("upstream-only", false, "look exactly like upstream's miner: advertise no horde extension, serve receipts only as upstream's pages")
	sandboxes := fs.Int("streaming-sandboxes", 2, "with --backend docker: streaming jobs' networks kept ready ahead (each an internal network and a container of "+images.JobImage+" holding it; 0: none, each job makes its own when it starts)")
	var x executorFlags
	x.register(fs, "miner-jobs")
	level := fs.String("log-level", "info", "log level")
	if err := e.parseFlags(fs, args); err != nil {
		return err
	}
	man, err := parseManifest(*manifest)
	if err != nil {
		return err
	}
	if err := x.check(); err != nil {
		return err
	}
	if !protocol.ImagePullPolicy(*imagePull).Valid() {
		return usageErr("--image-pull %q: want validator, always or never", *imagePull)
	}
	var streaming []string
	for _, e := range strings.Split(*streamingImages, ",") {
		if e = strings.TrimSpace(e); e != "" {
			streaming = append(streaming, e)
		}
	}
	if *trusted != (*pinned != "") {
		return usageErr("--trusted and --validator go together: a trusted miner serves exactly one validator")
	}
	if *pinned != "" {
		if _, err := sig.ParseSS58(*pinned); err != nil {
			return usageErr("--validator: %v", err)
		}
	}
	k, err := w.load()
	if err != nil {
		return err
	}
	log, err := e.logger(*level)
	if err != nil {
		return err
	}
	rt, err := x.runtime(e, log)
	if err != nil {
		return err
	}
	if kr, ok := rt.(*kube.Runtime); ok {
		// Never promise more executors than the cluster can run at once.
		if man, err = x.fitManifest(e.ctx, kr, man, log); err != nil {
			return err
		}
	}
	guard, err := x.jobGuards()
	if err != nil {
		return err
	}
	st, err := backend.Open(e.ctx, *db)
	if err != nil {
		return err
	}
	defer st.Close()
	pool := x.sandboxPool(e.ctx, rt, k.SS58(), *sandboxes, log)
	cfg := miner.Config{Hotkey: k, Listen: *listen, ExecutorBaseURL: *advertise, Manifest: man, Classes: miner.DefaultClasses(),
		TrustedValidator: *pinned, Store: st, Log: log, ImagePull: protocol.ImagePullPolicy(*imagePull), StreamingImages: streaming, UpstreamOnly: *upstreamOnly,
		Backend: &miner.Local{Runtime: rt, DataDir: x.dataDir, Owner: k.SS58(), Limits: blob.DefaultLimits(), HuggingFaceEndpoint: x.hf, Log: log,
			Net: guard, BoundDisks: x.boundDisks,
			StreamingListen: x.streamListen, StreamingHost: x.streamHost, StreamingSkew: x.skew, SelfContainer: x.self()},
		Reaper: &miner.Reaper{Runtime: rt, Owner: k.SS58(), DataDir: x.dataDir, SelfContainer: x.self(), Log: log}}
	if pool != nil {
		cfg.Backend.(*miner.Local).Sandboxes, cfg.Reaper.Sandboxes = pool, pool
	}
	if !*trusted {
		cfg.Metagraph = chain.File{Path: *metagraph}
	}
	return e.withMetrics(*metricsAddr, nil, func(ctx context.Context, reg *prometheus.Registry) error {
		cfg.Metrics = reg
		cfg.Backend.(*miner.Local).StreamingMetrics = metrics.NewStreaming(reg)
		m, err := miner.New(cfg)
		if err != nil {
			return err
		}
		if pool == nil {
			return m.Run(ctx)
		}
		pctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); pool.Run(pctx) }() // owned: stopped and waited for below
		err = m.Run(ctx)
		stop()
		<-done
		return err
	})
}

func (e *env) executor(args []string) error {
	fs := e.flags("executor")
	minerURL := fs.String("miner-url", "", "the miner's executor URL with this executor's one-time token")
	class := fs.String("class", "always_on.test", "executor class (sets the container limits)")
	owner := fs.String("owner", "", "owner label of job containers (the miner's hotkey)")
	var x executorFlags
	x.register(fs, "executor-jobs")
	level := fs.String("log-level", "info", "log level")
	if err := e.parseFlags(fs, args); err != nil {
		return err
	}
	if *minerURL == "" {
		return usageErr("--miner-url is required")
	}
	spec, ok := miner.DefaultClasses()[*class]
	if !ok {
		return usageErr("unknown executor class %q", *class)
	}
	if err := x.check(); err != nil {
		return err
	}
	log, err := e.logger(*level)
	if err != nil {
		return err
	}
	rt, err := x.runtime(e, log)
	if err != nil {
		return err
	}
	guard, err := x.jobGuards()
	if err != nil {
		return err
	}
	return executor.Run(e.ctx, executor.Config{MinerURL: *minerURL, DataDir: x.dataDir, Runtime: rt, Class: spec,
		Limits: blob.DefaultLimits(), Owner: *owner, HuggingFaceEndpoint: x.hf, Log: log, Net: guard, BoundDisks: x.boundDisks,
		StreamingListen: x.streamListen, StreamingHost: x.streamHost, StreamingSkew: x.skew, SelfContainer: x.self()})
}

// sandboxPool is the miner's pool of size streaming sandboxes (package
// sandbox), or nil: for none asked, a back-end other than Docker, or a
// missing holder image (said in the log).
func (x *executorFlags) sandboxPool(ctx context.Context, rt executor.Runtime, owner string, size int, log *slog.Logger) *sandbox.Pool {
	d, ok := rt.(*docker.Client)
	if size <= 0 || !ok {
		return nil
	}
	if _, err := d.ImageInspect(ctx, images.JobImage); err != nil {
		log.Info("no streaming sandboxes: their holder image is missing ('horde dev' or deploy/ makes it); each streaming job makes its network when it starts", "image", images.JobImage, "err", err)
		return nil
	}
	return &sandbox.Pool{Runtime: rt, Owner: owner, Size: size, SelfContainer: x.self(), Log: log.With("part", "sandboxes")}
}

// executorFlags are the flags of whatever runs executors (miner, executor).
type executorFlags struct {
	dataDir, dockerHost, hf, streamListen, streamHost string
	// The Kubernetes back-end's (--backend kubernetes).
	backend, kubeconfig, namespace, kubeNode, isolateImage, kubeFiles string
	kubeProxyFrom                                                     string
	allGPUs                                                           int
	skew                                                              time.Duration
	allowPrivate                                                      string
	boundDisks                                                        bool
	selfContainer                                                     string
}

// self is the container this process runs in ("auto": its host name, which
// the engine sets to the container's short id unless told otherwise).
func (x *executorFlags) self() string {
	if x.selfContainer == "auto" {
		h, _ := os.Hostname()
		return h
	}
	return x.selfContainer
}

func (x *executorFlags) register(fs *flag.FlagSet, dataDir string) {
	fs.StringVar(&x.dataDir, "data-dir", dataDir, "directory for job files")
	fs.StringVar(&x.dockerHost, "docker-host", "", "Docker Engine (default $DOCKER_HOST or the local socket)")
	fs.StringVar(&x.backend, "backend", "docker", "where job containers run: docker (the local engine) or kubernetes (Pods of a cluster)")
	fs.StringVar(&x.kubeconfig, "kubeconfig", "", "with --backend kubernetes: kubeconfig file (default $KUBECONFIG, then ~/.kube/config, then in-cluster)")
	fs.StringVar(&x.namespace, "namespace", "default", "with --backend kubernetes: the namespace of job Pods")
	fs.StringVar(&x.kubeNode, "kube-node", "", "with --backend kubernetes: run job Pods on this node only (empty: any node)")
	fs.StringVar(&x.kubeFiles, "kube-files", kube.FilesCopy, "with --backend kubernetes: how job directories reach Pods: copy (through the API server, Pods on any node) or hostpath (--data-dir mounted: Pods on --kube-node, or --data-dir shared by all nodes at the same path)")
	fs.StringVar(&x.isolateImage, "isolate-image", kube.DefaultIsolateImage, "with --backend kubernetes: image of the init container that takes jobs' network away, on every node")
	fs.StringVar(&x.kubeProxyFrom, "kube-proxy-from", isolate.Gateway, "with --backend kubernetes: address(es), comma-separated, a streaming job's Pod sees this miner's signing proxy connect from; it accepts no one else ("+isolate.Gateway+": the Pod's gateway, right when the miner runs on the Pod's node)")
	fs.IntVar(&x.allGPUs, "all-gpus", 0, "with --backend kubernetes: how many GPUs a job asking for all of them gets (0: such jobs fail)")
	fs.StringVar(&x.hf, "huggingface-endpoint", "", "Hugging Face compatible hub for huggingface volumes")
	fs.StringVar(&x.streamListen, "streaming-listen", ":0", "where streaming jobs' signing proxies listen")
	fs.StringVar(&x.streamHost, "streaming-host", "127.0.0.1", "the address clients reach streaming jobs at")
	fs.DurationVar(&x.skew, "streaming-skew", 5*time.Second, "clock skew streaming requests may have")
	fs.StringVar(&x.allowPrivate, "allow-private", "", "non-public destinations job volumes and uploads may reach: CIDR, address or host:port,… (default: public addresses only; --huggingface-endpoint is added)")
	fs.StringVar(&x.selfContainer, "self-container", "", "when this process runs in a container on the same Docker Engine: its id or name (auto: the host name), so streaming jobs' proxies can join the jobs' networks")
	fs.BoolVar(&x.boundDisks, "bound-disks", true, "make each job's /volume, /output and artifacts directory a loop-mounted file system of bounded size (needs root and mkfs.ext4)")
}

// jobGuards builds the dial guard for client URLs and checks that job
// disks can be bounded, as the flags ask.
func (x *executorFlags) jobGuards() (*blob.DialGuard, error) {
	allow := strings.Split(x.allowPrivate, ",")
	if x.hf != "" {
		u, err := url.Parse(x.hf)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, usageErr("--huggingface-endpoint %q: want http(s)://host[:port]", x.hf)
		}
		host := u.Host
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), map[string]string{"http": "80", "https": "443"}[u.Scheme])
		}
		allow = append(allow, host)
	}
	guard, err := blob.NewDialGuard(allow...)
	if err != nil {
		return nil, usageErr("--allow-private: %v", err)
	}
	if x.boundDisks {
		if err := jobdisk.Check(); err != nil {
			return nil, fmt.Errorf("%w; run as root with e2fsprogs installed, or pass --bound-disks=false and accept that a job can fill %s's disk", err, x.dataDir)
		}
	}
	return guard, nil
}

// check names the first bad flag.
func (x *executorFlags) check() error {
	switch {
	case x.backend != "docker" && x.backend != "kubernetes":
		return usageErr("--backend %q: want docker or kubernetes", x.backend)
	case x.backend == "kubernetes" && x.namespace == "":
		return usageErr("--namespace: the namespace of job Pods is required with --backend kubernetes")
	case x.allGPUs < 0:
		return usageErr("--all-gpus %d: want a count", x.allGPUs)
	case x.kubeFiles != kube.FilesCopy && x.kubeFiles != kube.FilesHostPath:
		return usageErr("--kube-files %q: want %s or %s", x.kubeFiles, kube.FilesCopy, kube.FilesHostPath)
	}
	for _, f := range strings.Split(x.kubeProxyFrom, ",") {
		if _, err := netip.ParseAddr(f); err != nil && f != isolate.Gateway {
			return usageErr("--kube-proxy-from %q: want IP addresses or %s", x.kubeProxyFrom, isolate.Gateway)
		}
	}
	return nil
}

// runtime connects to the back-end --backend names.
func (x *executorFlags) runtime(e *env, log *slog.Logger) (executor.Runtime, error) {
	switch x.backend {
	case "docker":
		return x.docker(e)
	case "kubernetes":
	default:
		return nil, usageErr("--backend %q: want docker or kubernetes", x.backend)
	}
	rc, err := kube.LoadConfig(x.kubeconfig)
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	abs, err := filepath.Abs(x.dataDir)
	if err != nil {
		return nil, err
	}
	x.dataDir = abs
	rt, err := kube.New(kube.Config{Client: cs, REST: rc, Files: x.kubeFiles, Namespace: x.namespace, IsolateImage: x.isolateImage, NodeName: x.kubeNode,
		AllGPUs: x.allGPUs, ProxyFrom: strings.Split(x.kubeProxyFrom, ","), Log: log})
	if err != nil {
		return nil, usageErr("%v", err)
	}
	if err := rt.Check(e.ctx); err != nil {
		return nil, err
	}
	return rt, nil
}

// fitManifest caps the manifest to what the cluster can run at once.
func (x *executorFlags) fitManifest(ctx context.Context, rt *kube.Runtime, man map[string]int, log *slog.Logger) (map[string]int, error) {
	free, err := rt.Capacity(ctx)
	if err != nil {
		return nil, fmt.Errorf("the cluster's allocatable resources: %w", err)
	}
	fit := kube.Fit(free, rt.PodClasses(miner.DefaultClasses()), man)
	for class, n := range man {
		if fit[class] < n {
			log.Warn("the cluster cannot run all the executors the manifest asks for at once: fewer offered", "class", class, "asked", n, "offered", fit[class])
		}
	}
	total := 0
	for _, n := range fit {
		total += n
	}
	if total == 0 {
		return nil, fmt.Errorf("the cluster can run none of the manifest's executors (free per node: %+v)", free)
	}
	return fit, nil
}

// docker connects to the Docker Engine and checks that it answers.
func (x *executorFlags) docker(e *env) (*docker.Client, error) {
	dock, err := docker.New(x.dockerHost)
	if err != nil {
		return nil, err
	}
	if err := dock.Ping(e.ctx); err != nil {
		return nil, fmt.Errorf("the Docker Engine does not answer (is it running, and may you use it?): %w", err)
	}
	return dock, nil
}

// parsePairs reads "KEY=VALUE,…".
func parsePairs(flag, s string) (map[string]string, error) {
	out := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok || k == "" || v == "" {
			return nil, usageErr("%s entry %q: want KEY=VALUE", flag, part)
		}
		out[k] = v
	}
	return out, nil
}
