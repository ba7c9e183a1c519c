package cli

import (
	"archive/zip"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/internal/dashboard"
	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/executor/jobdisk"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/synthetic"
	"github.com/horde-compute/horde/internal/validation"
	"github.com/horde-compute/horde/internal/validator"
	"github.com/horde-compute/horde/protocol"
	sr "github.com/horde-compute/horde/streamreceipt"
)

type devFlags struct {
	dataDir, listen, manifest string
	miners, cheater           int
	cycle, jobTime            time.Duration
	sample                    float64
}

func (d *devFlags) register(e *env, name, dataDir, listen string, miners, cheater int, cycle time.Duration) *flag.FlagSet {
	fs := e.flags(name)
	fs.StringVar(&d.dataDir, "data-dir", dataDir, "directory for wallets, SQLite stores, job files and logs")
	fs.StringVar(&d.listen, "listen", listen, "facilitator address")
	fs.StringVar(&d.manifest, "manifest", "always_on.test=2", "each miner's executors: CLASS=COUNT,…")
	fs.IntVar(&d.miners, "miners", miners, "number of miners")
	fs.IntVar(&d.cheater, "cheater", cheater, "index of a miner that cheats: its executors share one CPU (-1: none)")
	fs.DurationVar(&d.cycle, "cycle", cycle, "synthetic round cycle (0: rounds only on demand)")
	fs.DurationVar(&d.jobTime, "synthetic-job-time", time.Second, "how long a synthetic job takes on one core of this machine")
	d.sample = 0.25
	if cycle == 0 { // the demo replays every pair it reports
		d.sample = 1
	}
	fs.Float64Var(&d.sample, "validation-sample", d.sample, "fraction of reported streaming pairs a validation window replays")
	return fs
}

// start builds the job image and starts the stack, logging to <data-dir>/horde.log.
func (e *env) startDev(d *devFlags) (*devstack.Stack, *devstack.Objects, func(), error) {
	man, err := parseManifest(d.manifest)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := stopWithParent(); err != nil {
		fmt.Fprintf(e.stderr, "warning: %v; if the process that started horde is killed, stop horde yourself\n", err)
	}
	if err := os.MkdirAll(d.dataDir, 0o755); err != nil {
		return nil, nil, nil, err
	}
	logPath := filepath.Join(d.dataDir, "horde.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, nil, nil, err
	}
	dock, err := docker.New("")
	if err != nil {
		return nil, nil, nil, err
	}
	if err := dock.Ping(e.ctx); err != nil {
		return nil, nil, nil, fmt.Errorf("the Docker Engine does not answer (is it running, and may you use it?): %w", err)
	}
	t := time.Now()
	fmt.Fprintf(e.stderr, "making the images %s, %s and %s from this binary… ", images.HordeImage, images.JobImage, images.LLMImage)
	made, err := images.FromSelf(e.ctx, dock)
	if err != nil {
		fmt.Fprintln(e.stderr)
		return nil, nil, nil, err
	}
	digest := made.LLMDigest
	what := "up to date"
	if len(made.Built) > 0 {
		what = "built " + strings.Join(made.Built, ", ")
	}
	fmt.Fprintf(e.stderr, "%s in %.1fs; %s is whitelisted for streaming as %.19s\n", what, time.Since(t).Seconds(), images.LLMImage, digest)
	params, err := devstack.Calibrate(e.ctx, dock, d.jobTime)
	if errors.Is(err, devstack.ErrNoSeparation) {
		// Usable parameters: the synthetic check just cannot tell cheaters here.
		fmt.Fprintf(e.stderr, "warning: %v; synthetic rounds may not catch miners sharing one core on this machine\n", err)
	} else if err != nil {
		return nil, nil, nil, fmt.Errorf("calibrate synthetic jobs: %w", err)
	}
	cfg := devstack.Config{DataDir: d.dataDir, Miners: d.miners, Manifest: man, FacilitatorAddr: d.listen,
		StreamingWhitelist: map[string]string{images.LLMImage: digest},
		Log:                slog.New(slog.NewTextHandler(logFile, nil)),
		// Every miner here shares this machine: test them one after another.
		Synthetic: validator.SyntheticConfig{Every: d.cycle, Sequential: true,
			Params: map[string]synthetic.Params{protocol.ClassTest: params}}}
	cfg.TrustedMiner = true
	cfg.Validation = validator.ValidationConfig{Comparators: map[string]validation.Comparator{images.LLMImage: validation.LLM{}},
		Sample: d.sample, Threshold: 20, Every: d.cycle, CanaryEvery: d.cycle,
		Canaries: map[string]validator.CanarySpec{images.LLMImage: {Path: "/v1/completions", Requests: [][]byte{
			[]byte(`{"prompt": "a validator that gathers receipts", "max_tokens": 12, "temperature": 0}`),
			[]byte(`{"prompt": "every answer carries a receipt", "max_tokens": 12, "temperature": 0}`)}}}}
	if d.cheater >= 0 && d.cheater < d.miners {
		cfg.Cheaters = map[int]bool{d.cheater: true}
		cfg.StreamCheaters = map[int]float64{d.cheater: 0.5}
	}
	objects, err := devstack.ServeObjects(filepath.Join(d.dataDir, "objects"))
	if err != nil {
		logFile.Close()
		return nil, nil, nil, err
	}
	// Executors may reach the object server started here, and nothing else
	// that is not public; job disks are bounded where this user can.
	cfg.AllowPrivate = []string{strings.TrimPrefix(objects.URL, "http://")}
	if err := jobdisk.Check(); err != nil {
		fmt.Fprintf(e.stderr, "note: %v: a job can fill this disk\n", err)
	} else {
		cfg.BoundDisks = true
	}
	s, err := devstack.Start(e.ctx, cfg)
	if err != nil {
		objects.Close()
		logFile.Close()
		return nil, nil, nil, err
	}
	fmt.Fprintf(e.stderr, "local horde up: facilitator %s, validator %s, %d miner(s) %v (logs: %s)\n",
		s.FacilitatorURL, short(s.Validator.SS58()), len(s.Miners), man, logPath)
	fmt.Fprintf(e.stderr, "dashboard: %s%s (served to this machine only)\n", strings.TrimSuffix(s.FacilitatorURL, "/"), dashboard.Path)
	stop := func() {
		objects.Close()
		if err := s.Stop(); err != nil {
			fmt.Fprintf(e.stderr, "stop: %v\n", err)
		}
		logFile.Close()
	}
	return s, objects, stop, nil
}

func short(ss58 string) string {
	if len(ss58) < 12 {
		return ss58
	}
	return ss58[:6] + "…" + ss58[len(ss58)-4:]
}

func (e *env) dev(args []string) error {
	var d devFlags
	p := d.register(e, "dev", filepath.Join(".horde", "dev"), "127.0.0.1:9000", 1, -1, time.Minute)
	if err := e.parseFlags(p, args); err != nil {
		return err
	}
	s, objects, stop, err := e.startDev(&d)
	if err != nil {
		return err
	}
	defer stop()
	wallets, _ := filepath.Abs(filepath.Join(d.dataDir, "wallets"))
	fmt.Fprint(e.stdout, devHelp(progName(), s.FacilitatorURL, wallets, objects.URL, objects.Dir))
	select {
	case <-e.ctx.Done():
		return nil
	case err := <-s.Errors():
		return err
	}
}

// devHelp is what 'horde dev' prints once the stack is up: how to use it
// from another shell. README shows it as printed by 'go run ./cmd/horde dev'.
func devHelp(prog, facilitatorURL, wallets, objectsURL, objectsDir string) string {
	return fmt.Sprintf(`
horde is running. In another shell, in this directory:

  export HORDE_FACILITATOR=%[2]s HORDE_WALLET_PATH=%[3]s HORDE_WALLET=client
  %[1]s job run --image %[4]s -- echo hello
  %[1]s job run --image %[4]s --volume inline:README.md --output-upload zip_put:%[6]s/out.zip -- demo
  %[1]s job run --image %[4]s --artifacts-dir /artifacts --save-artifacts artifacts -- matmul 7 64
  %[1]s job list
  %[1]s job status JOB_ID --json

  %[1]s stream start --image %[5]s --timeout 10m
  %[1]s stream call JOB_ID /v1/completions --data '{"prompt": "a validator", "max_tokens": 16, "temperature": 0}'
  %[1]s stream stop JOB_ID

Objects PUT to %[6]s land in %[7]s.
Press Ctrl-C to stop.
`, prog, facilitatorURL, wallets, images.JobImage, images.LLMImage, objectsURL, objectsDir)
}

// progName is how the user started horde: "go run ./cmd/horde" when the
// binary is one the go command built to run, else "horde".
func progName() string {
	exe, err := os.Executable()
	if err == nil && strings.Contains(filepath.ToSlash(exe), "/go-build") {
		return "go run ./cmd/horde"
	}
	return "horde"
}

func (e *env) devDemo(args []string) error {
	var d devFlags
	p := d.register(e, "dev demo", "", "127.0.0.1:0", 2, 1, 0)
	p.Lookup("data-dir").Usage = "directory for wallets, SQLite stores, job files and logs (default: a temporary one, removed at the end)"
	if err := e.parseFlags(p, args); err != nil {
		return err
	}
	if d.dataDir == "" { // leave nothing behind in the working directory
		dir, err := os.MkdirTemp("", "horde-demo-")
		if err != nil {
			return err
		}
		defer func() {
			if err := os.RemoveAll(dir); err != nil {
				fmt.Fprintf(e.stderr, "warning: remove the demo's data: %v\n", err)
				return
			}
			fmt.Fprintf(e.stderr, "(the demo's stores, logs and outputs were in %s, now removed; --data-dir DIR keeps them)\n", dir)
		}()
		d.dataDir = dir
	}
	s, objects, stop, err := e.startDev(&d)
	if err != nil {
		return err
	}
	defer stop()

	// Inputs: one file inline in the request, an archive fetched by URL.
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create("poem.txt")
	w.Write([]byte("Untrusted miners rent GPUs;\nvalidators check their work;\nclients get trusted compute.\n"))
	zw.Close()
	var remote bytes.Buffer
	zw = zip.NewWriter(&remote)
	w, _ = zw.Create("data/numbers.csv")
	w.Write([]byte("n,square\n1,1\n2,4\n3,9\n"))
	zw.Close()
	if err := objects.Put("inputs/data.zip", remote.Bytes()); err != nil {
		return err
	}
	run := time.Now().Format("20060102-150405")
	spec := &protocol.JobSpec{ExecutorClass: protocol.ClassTest, DockerImage: images.JobImage, Args: []string{"demo"},
		DownloadTimeLimit: 60, ExecutionTimeLimit: 60, UploadTimeLimit: 60,
		Volume: &protocol.Volume{VolumeType: protocol.VolumeMulti, Volumes: []protocol.Volume{
			{VolumeType: protocol.VolumeInline, Contents: base64.StdEncoding.EncodeToString(buf.Bytes())},
			{VolumeType: protocol.VolumeZipURL, Contents: objects.URL + "/inputs/data.zip"},
		}},
		OutputUpload: &protocol.OutputUpload{OutputUploadType: protocol.UploadMulti,
			Uploads:      []protocol.OutputUpload{{OutputUploadType: protocol.UploadSinglePut, URL: objects.URL + "/outputs/" + run + "/result.json", RelativePath: "result.json"}},
			SystemOutput: &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: objects.URL + "/outputs/" + run + "/system.zip"}}}
	fmt.Fprintf(e.stderr, "running the demo organic job as client %s\n", short(s.Client.SS58()))
	if err := e.runJob(e.ctx, client.New(s.FacilitatorURL, s.Client), spec, runOptions{}); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "outputs in %s:\n", filepath.Join(objects.Dir, "outputs", run))
	for _, name := range []string{"result.json", "system.zip"} {
		if b, ok := objects.Get("outputs/" + run + "/" + name); ok {
			fmt.Fprintf(e.stdout, "  %s (%d bytes)\n", name, len(b))
		}
	}
	if b, ok := objects.Get("outputs/" + run + "/result.json"); ok {
		fmt.Fprintf(e.stdout, "── result.json ──\n%s\n", b)
	}

	if err := e.demoStreaming(s, d.cheater); err != nil {
		return err
	}

	// A synthetic round: every claimed executor gets a job whose answer the
	// validator can check; one miner claims two executors but has one CPU.
	fmt.Fprintf(e.stderr, "running a synthetic round against %d miners", len(s.Miners))
	if d.cheater >= 0 && d.cheater < len(s.Miners) {
		fmt.Fprintf(e.stderr, " (miner %s cheats: its executors share one CPU)", short(s.Miners[d.cheater].SS58()))
	}
	fmt.Fprintln(e.stderr, "…")
	rep, err := s.Round(e.ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "\nsynthetic round: %d jobs in %.1fs", len(rep.Results), rep.Took.Seconds())
	printScores(e.stdout, rep.Scores, map[int64][]store.ExcuseVerdict{rep.Cycle: rep.Excuses})
	if d.cheater >= 0 && d.cheater < len(s.Miners) {
		for _, sc := range rep.Scores {
			if sc.Miner == s.Miners[d.cheater].SS58() {
				if sc.Score != 0 {
					return fmt.Errorf("the cheating miner scored %.3f; it should score zero", sc.Score)
				}
				fmt.Fprintf(e.stdout, "\nthe cheating miner %s scored zero.\n", short(sc.Miner))
			}
		}
	}
	return nil
}

// demoStreaming starts a streaming job of the demo language model on each
// miner, asks one question over mutual TLS and shows the answer as it streams
// with its verified receipt, reports a few exchanges per job for validation,
// runs a validation window on the validator's trusted miner, and stops the jobs.
func (e *env) demoStreaming(s *devstack.Stack, cheater int) error {
	cl := client.New(s.FacilitatorURL, s.Client)
	spec := func() *protocol.JobSpec {
		return &protocol.JobSpec{ExecutorClass: protocol.ClassTest, DockerImage: images.LLMImage, Args: []string{},
			DownloadTimeLimit: 60, ExecutionTimeLimit: 300, UploadTimeLimit: 60, StreamingStartTimeLimit: 60}
	}
	var streams []*client.Stream
	defer func() {
		for _, st := range streams {
			cl.Stop(e.ctx, st.JobUUID)
			if j, err := cl.Watch(e.ctx, st.JobUUID, func(protocol.StatusEntry) {}); err == nil {
				fmt.Fprintf(e.stdout, "streaming job %s stopped: %s\n", st.JobUUID[:8], j.Status)
			}
		}
	}()
	for i := range s.Miners {
		fmt.Fprintf(e.stderr, "\nstarting streaming job %d of %s\n", i+1, images.LLMImage)
		start := time.Now()
		st, err := cl.StartStreaming(e.ctx, spec(), func(x protocol.StatusEntry) {
			fmt.Fprintf(e.stderr, "  [%6.2fs] %s\n", time.Since(start).Seconds(), describe(x))
		})
		if err != nil {
			return err
		}
		streams = append(streams, st)
		fmt.Fprintf(e.stdout, "\nstreaming job %s serves at %s on miner %s; the miner's signature of its key verified\n", st.JobUUID[:8], st.URL, short(st.MinerHotkey))
	}
	hc, err := streams[0].HTTPClient()
	if err != nil {
		return err
	}
	body := []byte(`{"messages": [{"role": "user", "content": "What does a validator do?"}], "max_tokens": 24, "temperature": 0, "stream": true}`)
	fmt.Fprintf(e.stdout, "Q: What does a validator do?\nA:")
	res, err := streams[0].Call(e.ctx, hc, "POST", "/v1/chat/completions", body, &sseText{w: e.stdout})
	fmt.Fprintln(e.stdout)
	if err != nil {
		return err
	}
	r := res.Receipt
	fmt.Fprintf(e.stdout, "receipt (%s): request %s, %s %s (%s) → HTTP %d (%s), from %s to %s\n  input sha256  %s\n  output sha256 %s\n  signed by the job's key: verified against what was sent and received\n",
		sr.ReceiptVersion, r.RequestID, r.Method, r.Target, r.RequestContentType, r.Status, r.ResponseContentType,
		r.TimestampFrom.Format("15:04:05.000000"), r.TimestampTo.Format("15:04:05.000000"), r.InputSHA256, r.OutputSHA256)

	// The client hands its exchanges to validators, who replay them on their own trusted miner.
	prompts := []string{"a client that keeps its receipts", "every answer carries a receipt", "good systems are boring",
		"the market grows when", "if the trusted machine disagrees", "when a machine fails", "miners compete on", "clients come back when"}
	reported := 0
	for _, st := range streams {
		hc, err := st.HTTPClient()
		if err != nil {
			return err
		}
		for _, p := range prompts {
			req := []byte(fmt.Sprintf(`{"prompt": %q, "max_tokens": 12, "temperature": 0}`, p))
			var out bytes.Buffer
			res, err := st.Call(e.ctx, hc, "POST", "/v1/completions", req, &out)
			if err != nil {
				return err
			}
			if err := cl.ReportPair(e.ctx, st.JobUUID, client.Pair("POST", "/v1/completions", req, out.Bytes(), res)); err != nil {
				return err
			}
			reported++
		}
	}
	fmt.Fprintf(e.stderr, "\nreported %d exchanges with their receipts; opening a validation window on the validator's trusted miner…\n", reported)
	// The facilitator verifies each pair and passes it on; the validator verifies it again.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if n, err := s.PairsWaiting(e.ctx, images.LLMImage); err == nil && n >= reported {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the reported pairs did not reach the validator")
		}
	}
	rep, err := s.Validate(e.ctx, images.LLMImage)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "\nvalidation window (%s comparator): %d pairs, %d replayed on the trusted miner, %d failed\n", rep.Comparator, rep.Pairs, rep.Checked, rep.Failed)
	fmt.Fprintf(e.stdout, "  trusted executor-seconds %.1f for %.1f streaming seconds covered\n", rep.TrustedSeconds, rep.CoveredSeconds)
	failed := map[string]int{}
	for _, v := range rep.Verdicts {
		if !v.Verdict.Pass {
			failed[v.Miner]++
		}
	}
	for _, st := range streams {
		fmt.Fprintf(e.stdout, "  miner %s: %d of its answers failed\n", short(st.MinerHotkey), failed[st.MinerHotkey])
	}
	if cheater >= 0 && cheater < len(s.Miners) {
		for i, k := range s.Miners {
			if i != cheater && failed[k.SS58()] > 0 {
				return fmt.Errorf("the honest miner %s was flagged", short(k.SS58()))
			}
		}
		if failed[s.Miners[cheater].SS58()] > 0 {
			fmt.Fprintf(e.stdout, "the miner serving a cheaper model on half its requests (%s) is caught; evidence kept ('horde validator validations --evidence').\n", short(s.Miners[cheater].SS58()))
		}
	}
	return nil
}

// sseText prints the content of OpenAI chat completion chunks as they arrive.
type sseText struct {
	w   io.Writer
	buf []byte
}

func (s *sseText) Write(p []byte) (int, error) {
	s.buf = append(s.buf, p...)
	for {
		i := bytes.Index(s.buf, []byte("\n\n"))
		if i < 0 {
			return len(p), nil
		}
		ev := string(s.buf[:i])
		s.buf = s.buf[i+2:]
		data, ok := strings.CutPrefix(ev, "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var chunk struct {
			Choices []struct {
				Delta struct{ Content string } `json:"delta"`
			} `json:"choices"`
		}
		if json.Unmarshal([]byte(data), &chunk) == nil && len(chunk.Choices) > 0 {
			fmt.Fprint(s.w, " "+strings.TrimSpace(chunk.Choices[0].Delta.Content))
		}
	}
}
