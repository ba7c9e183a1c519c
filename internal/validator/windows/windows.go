// Package windows validates streaming jobs. Pairs of requests and responses
// reach it from clients (through the facilitator, verified here) and from
// the validator's own canary requests, which miners cannot tell from a
// client's. When enough pairs of an image wait, or the oldest waits too
// long, a validation window starts the image on the validator's trusted
// miner, replays a random sample there, judges each answer with the image's
// comparator (package validation), and keeps a failed pair whose receipt the
// miner vouched for as evidence of cheating.
package windows

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/validation"
	"github.com/horde-compute/horde/internal/validator/jobrun"
	"github.com/horde-compute/horde/protocol"
	sr "github.com/horde-compute/horde/streamreceipt"
)

// Config configures the validation of streaming jobs on the validator's
// own trusted miner.
type Config struct {
	// TrustedMiner is the validator's unregistered miner (horde miner --trusted).
	TrustedMiner *chain.Neuron
	// Class is the executor class asked of it (default always_on.test).
	Class string
	// Comparators judge each image's answers (default: exact).
	Comparators map[string]validation.Comparator
	// Sample is the fraction of gathered pairs replayed (default 0.1).
	Sample float64
	// Threshold is how many pairs of an image open a window (default 100);
	// MaxAge opens one for fewer pairs once the oldest waits that long (default 1h).
	Threshold int
	MaxAge    time.Duration
	// Every is how often waiting pairs are looked at (0: windows only on demand).
	Every time.Duration
	// Canaries are the validator's own requests, by image, sent every
	// CanaryEvery to a streaming job of that image on a miner picked like a
	// client's (0: none).
	Canaries    map[string]CanarySpec
	CanaryEvery time.Duration
}

// Defaults fills in the defaults of unset fields.
func (c *Config) Defaults() {
	if c.Class == "" {
		c.Class = protocol.ClassTest
	}
	if c.Sample == 0 {
		c.Sample = 0.1
	}
	if c.Threshold == 0 {
		c.Threshold = 100
	}
	if c.MaxAge == 0 {
		c.MaxAge = time.Hour
	}
}

// CanarySpec is what a canary sends to an image's service.
type CanarySpec struct {
	Path     string
	Requests [][]byte
}

// PairVerdict is the judgement of one replayed pair.
type PairVerdict struct {
	JobUUID   string             `json:"job_uuid"`
	RequestID string             `json:"request_id"`
	Miner     string             `json:"miner"`
	Verdict   validation.Verdict `json:"verdict"`
	Error     string             `json:"error,omitempty"`
}

// WindowReport is what one validation window did and found.
type WindowReport struct {
	ID         int64         `json:"id"`
	Image      string        `json:"image"`
	Comparator string        `json:"comparator"`
	Started    time.Time     `json:"started"`
	TrustedJob string        `json:"trusted_job"`
	Pairs      int           `json:"pairs"`
	Checked    int           `json:"checked"`
	Failed     int           `json:"failed"`
	Verdicts   []PairVerdict `json:"verdicts"`
	// TrustedSeconds is what the trusted executor was used for; CoveredSeconds
	// is the serving time of the streaming jobs whose pairs were gathered.
	TrustedSeconds float64 `json:"trusted_executor_seconds"`
	CoveredSeconds float64 `json:"covered_seconds"`
	// Detection is the chance this sampling rate catches a miner cheating on
	// 10% of requests within the pairs gathered.
	Detection float64 `json:"detection_probability_f10"`
}

// ErrNoPairs is returned when an image has no pairs waiting.
var ErrNoPairs = errors.New("no pairs waiting for validation")

// Store is what windows keep and read.
type Store interface {
	Job(ctx context.Context, uuid string) (store.JobRecord, error)
	History(ctx context.Context, uuid string) ([]protocol.StatusEntry, error)
	PutPair(ctx context.Context, p store.PairRecord) error
	PairsForImage(ctx context.Context, image string, after int64, limit int) ([]store.PairRecord, []int64, error)
	PutWindow(ctx context.Context, w store.Window, cheats []store.Cheat) (int64, error)
	LastPair(ctx context.Context, image string) (int64, error)
}

// Miners is the validator's pool as windows use it.
type Miners interface {
	// Refresh reloads the metagraph and syncs the pool with it.
	Refresh(ctx context.Context) ([]chain.Neuron, error)
	Acquire(ctx context.Context, w jobrun.Want) (jobrun.Lease, error)
	LeasePinned(ctx context.Context, hotkey, job, class string) (jobrun.Lease, error)
}

// Caller calls a serving streaming job as its client, returning the body
// and the call's result with its verified receipt.
type Caller interface {
	Call(ctx context.Context, method, path string, body []byte) ([]byte, *client.Result, error)
}

// Deps are what windows work with.
type Deps struct {
	Config Config
	// Self is the validator's hotkey (SS58).
	Self string
	// Whitelist is the images streaming jobs may use (windows look at these).
	Whitelist map[string]string
	Run       jobrun.Params // how the validator's own streaming jobs run
	Miners    Miners
	Store     Store
	// Connect makes the caller of a served job (default: HTTPS with the
	// client's key, pinned to the job's certificate).
	Connect func(st *client.Stream) (Caller, error)
	Log     *slog.Logger
}

// Windows runs validation windows and canaries.
type Windows struct {
	d   Deps
	log *slog.Logger
	mu  sync.Mutex // one window at a time: two would take the same pairs
}

// New returns windows working with d; d.Config gets its defaults.
func New(d Deps) *Windows {
	d.Config.Defaults()
	if d.Connect == nil {
		d.Connect = connectHTTPS
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	return &Windows{d: d, log: d.Log}
}

// Due opens a window for each whitelisted image whose pairs are due: as
// many as the threshold, or fewer of which the oldest waited MaxAge.
func (w *Windows) Due(ctx context.Context) {
	vc := w.d.Config
	for image := range w.d.Whitelist {
		last, err := w.d.Store.LastPair(ctx, image)
		if err != nil {
			continue
		}
		pending, _, err := w.d.Store.PairsForImage(ctx, image, last, vc.Threshold)
		if err != nil || len(pending) == 0 {
			continue
		}
		if len(pending) < vc.Threshold && time.Since(pending[0].At) < vc.MaxAge {
			continue
		}
		if _, err := w.Open(ctx, image); err != nil {
			w.log.Warn("validation window failed; the pairs wait for the next", "image", image, "err", err)
		}
	}
}

// PairsWaiting returns how many pairs of image wait for a validation window.
func (w *Windows) PairsWaiting(ctx context.Context, image string) (int, error) {
	last, err := w.d.Store.LastPair(ctx, image)
	if err != nil {
		return 0, err
	}
	_, ids, err := w.d.Store.PairsForImage(ctx, image, last, 100000)
	return len(ids), err
}

// TakePair keeps a streaming pair the facilitator reports, after verifying
// it: the facilitator is not trusted with evidence.
func (w *Windows) TakePair(ctx context.Context, m *protocol.V0StreamPairReport) error {
	job, err := w.d.Store.Job(ctx, m.UUID)
	if err != nil {
		return fmt.Errorf("pair for job %s, which this validator does not know: %w", m.UUID, err)
	}
	rc, err := validation.VerifyPair(m.UUID, m.MinerHotkey, m.Proof, m.Pair)
	if err != nil {
		return fmt.Errorf("pair refused: %w", err)
	}
	rec := store.PairRecord{JobUUID: m.UUID, RequestID: rc.RequestID, Image: job.Spec.DockerImage, MinerHotkey: m.MinerHotkey,
		ValidatorHotkey: w.d.Self, ReportedBy: "facilitator", Pair: m.Pair, Proof: m.Proof, At: time.Now().UTC()}
	if err := w.d.Store.PutPair(ctx, rec); err != nil && !errors.Is(err, store.ErrDuplicate) {
		return fmt.Errorf("store pair: %w", err)
	}
	return nil
}

// Open opens a validation window for image: it starts the image on the
// trusted miner, replays a random sample of the pairs gathered since the last
// window, judges each with the image's comparator, stops the instance and
// records the verdicts. A failed pair whose receipt the miner vouched for is
// proof of cheating, kept as evidence. If the trusted miner cannot serve, or
// no pair could be replayed, nothing is recorded and the pairs wait for the
// next window.
func (w *Windows) Open(ctx context.Context, image string) (*WindowReport, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	vc := w.d.Config
	if vc.TrustedMiner == nil {
		return nil, errors.New("validation: no trusted miner configured")
	}
	last, err := w.d.Store.LastPair(ctx, image)
	if err != nil {
		return nil, err
	}
	pairs, ids, err := w.d.Store.PairsForImage(ctx, image, last, 100000)
	if err != nil {
		return nil, err
	}
	if len(pairs) == 0 {
		return nil, ErrNoPairs
	}
	cmp := vc.Comparators[image]
	if cmp == nil {
		cmp = validation.Exact{}
	}
	rep := &WindowReport{Image: image, Comparator: cmp.Name(), Started: time.Now().UTC(), Pairs: len(pairs)}
	var sample []store.PairRecord
	for _, p := range pairs {
		if rand.Float64() < vc.Sample {
			sample = append(sample, p)
		}
	}
	if len(sample) == 0 {
		sample = append(sample, pairs[rand.IntN(len(pairs))])
	}
	rep.Detection = validation.DetectionProbability(0.1, vc.Sample, len(pairs))
	rep.CoveredSeconds = w.coveredSeconds(ctx, pairs)

	rep.TrustedJob = uuid.NewString()
	lease, err := w.d.Miners.LeasePinned(ctx, vc.TrustedMiner.Hotkey, rep.TrustedJob, vc.Class)
	if err != nil {
		return nil, fmt.Errorf("validation: trusted miner: %w", err)
	}
	st, stop, err := w.start(ctx, lease, rep.TrustedJob, image, false)
	if err != nil {
		return nil, fmt.Errorf("validation: trusted miner: %w", err)
	}
	caller, err := w.d.Connect(st)
	if err != nil {
		stop()
		return nil, err
	}
	ref := reference{caller}
	var cheats []store.Cheat
	for _, p := range sample {
		req, _ := base64.StdEncoding.DecodeString(p.Pair.RequestB64)
		resp, _ := base64.StdEncoding.DecodeString(p.Pair.ResponseB64)
		pv := PairVerdict{JobUUID: p.JobUUID, RequestID: p.RequestID, Miner: p.MinerHotkey}
		verdict, err := cmp.Compare(ctx, ref, validation.Pair{Method: p.Pair.Method, Path: p.Pair.Path, Request: req, Response: resp})
		if err != nil {
			pv.Error = err.Error()
		} else {
			pv.Verdict = verdict
			rep.Checked++
			if !verdict.Pass {
				rep.Failed++
				ev, _ := json.Marshal(map[string]any{"image": image, "job_uuid": p.JobUUID, "request_id": p.RequestID, "miner_hotkey": p.MinerHotkey,
					"pair": p.Pair, "job_ready": p.Proof, "comparator": cmp.Name(), "verdict": verdict, "trusted_job": rep.TrustedJob})
				cheats = append(cheats, store.Cheat{Miner: p.MinerHotkey, JobUUID: p.JobUUID, Evidence: ev, At: time.Now().UTC()})
				w.log.Warn("cheat proved", "miner", p.MinerHotkey, "job", p.JobUUID, "request", p.RequestID, "detail", verdict.Detail)
			}
		}
		rep.Verdicts = append(rep.Verdicts, pv)
	}
	rep.TrustedSeconds = stop().Seconds()
	if rep.Checked == 0 {
		return nil, fmt.Errorf("validation: no pair could be replayed (first error: %s)", rep.Verdicts[0].Error)
	}
	body, _ := json.Marshal(rep)
	rep.ID, err = w.d.Store.PutWindow(context.WithoutCancel(ctx), store.Window{Image: image, LastPair: ids[len(ids)-1], Body: body, At: time.Now().UTC()}, cheats)
	if err != nil {
		return nil, err
	}
	w.log.Info("validation window done", "image", image, "pairs", rep.Pairs, "checked", rep.Checked, "failed", rep.Failed)
	return rep, nil
}

// Canaries sends every configured canary once.
func (w *Windows) Canaries(ctx context.Context) {
	for image, c := range w.d.Config.Canaries {
		if n, err := w.Canary(ctx, image, c.Requests, c.Path); err != nil {
			w.log.Warn("canary", "image", image, "err", err)
		} else {
			w.log.Info("canary requests sent", "image", image, "pairs", n)
		}
	}
}

// Canary runs the validator's own requests against a streaming job of image
// on a miner picked like any client's job would be, and keeps the pairs for
// validation windows: the miner cannot tell them from a client's. It
// returns how many pairs it kept.
func (w *Windows) Canary(ctx context.Context, image string, requests [][]byte, path string) (int, error) {
	class := w.d.Config.Class
	if _, err := w.d.Miners.Refresh(ctx); err != nil {
		w.log.Warn("canary: metagraph refresh failed", "err", err)
	}
	id := uuid.NewString()
	lease, err := w.d.Miners.Acquire(ctx, jobrun.Want{Job: id, Class: class})
	if err != nil {
		return 0, fmt.Errorf("canary: no miner with a free %s executor", class)
	}
	st, stop, err := w.start(ctx, lease, id, image, true)
	if err != nil {
		return 0, fmt.Errorf("canary: %w", err)
	}
	defer stop()
	caller, err := w.d.Connect(st)
	if err != nil {
		return 0, err
	}
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(st.URL, "https://"))
	proof := protocol.StreamingServerDetails{StreamingServerCert: st.JobCert, StreamingServerAddress: host, MinerSignature: st.MinerSignature}
	proof.StreamingServerPort, _ = strconv.Atoi(port)
	kept := 0
	for _, req := range requests {
		out, res, err := caller.Call(ctx, http.MethodPost, path, req)
		if err != nil {
			w.log.Warn("canary request failed", "miner", st.MinerHotkey, "err", err)
			continue
		}
		p := client.Pair(http.MethodPost, path, req, out, res)
		err = w.d.Store.PutPair(ctx, store.PairRecord{JobUUID: id, RequestID: res.Receipt.RequestID, Image: image,
			MinerHotkey: st.MinerHotkey, ValidatorHotkey: w.d.Self, ReportedBy: "canary", Pair: *p, Proof: proof, At: time.Now().UTC()})
		if err == nil {
			kept++
		}
	}
	return kept, nil
}

// start runs image as a streaming job on lease with the validator as its
// client, and returns the stream and how to stop it (stop returns how long
// the job served and must be called). Organic jobs look to the miner like
// any client's. The job ends with ctx at the latest.
func (w *Windows) start(ctx context.Context, lease jobrun.Lease, id, image string, organic bool) (*client.Stream, func() time.Duration, error) {
	key, certPEM, err := sr.NewKeyPair("horde-client", 7*24*time.Hour)
	if err != nil {
		lease.Release(false)
		return nil, nil, err
	}
	spec := &protocol.JobSpec{ExecutorClass: w.d.Config.Class, DockerImage: image, Args: []string{}, DownloadTimeLimit: 60,
		ExecutionTimeLimit: 3600, UploadTimeLimit: 60, StreamingStartTimeLimit: 120,
		StreamingDetails: &protocol.StreamingDetails{PublicKey: string(certPEM)}}
	ready := make(chan *protocol.StatusMetadata, 1)
	done := make(chan jobrun.Outcome, 1)
	start := time.Now()
	jctx, cancel := context.WithCancel(ctx)
	run := jobrun.New(w.d.Run, jobrun.Job{UUID: id, Spec: spec, Organic: organic}, lease.Miner(), lease, lease, serving(ready))
	go func() { // waited for through done, by stop or below
		o := run.Execute(jctx)
		lease.Release(false)
		done <- o
	}()
	stop := func() time.Duration {
		run.Relay(ctx, &protocol.V0StopJobRequest{JobUUID: id})
		t := time.NewTimer(time.Minute)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			cancel()
			<-done
		}
		cancel()
		return time.Since(start)
	}
	var m *protocol.StatusMetadata
	select {
	case m = <-ready:
	case o := <-done:
		cancel()
		return nil, nil, fmt.Errorf("did not serve: %s", o.Reason(""))
	case <-ctx.Done():
		stop()
		return nil, nil, ctx.Err()
	}
	d := m.StreamingDetails
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		stop()
		return nil, nil, err
	}
	st := &client.Stream{JobUUID: id, URL: "https://" + net.JoinHostPort(d.StreamingServerAddress, strconv.Itoa(d.StreamingServerPort)),
		JobCert: d.StreamingServerCert, MinerHotkey: lease.Miner(), MinerSignature: d.MinerSignature,
		ClientKey: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), ClientCert: string(certPEM)}
	return st, stop, nil
}

// serving passes on the streaming details once the job serves.
type serving chan *protocol.StatusMetadata

func (s serving) Status(st protocol.JobStatus, m *protocol.StatusMetadata) {
	if st == protocol.StatusStreaming {
		select {
		case s <- m:
		default:
		}
	}
}

func (serving) VolumeResult(*protocol.V0VolumeResult) {}

// coveredSeconds sums the serving time of the jobs whose pairs a window
// covers: from streaming_ready to the job's end (or now), by this validator's history.
func (w *Windows) coveredSeconds(ctx context.Context, pairs []store.PairRecord) float64 {
	seen := map[string]bool{}
	var total float64
	for _, p := range pairs {
		if seen[p.JobUUID] {
			continue
		}
		seen[p.JobUUID] = true
		hist, err := w.d.Store.History(ctx, p.JobUUID)
		if err != nil {
			continue
		}
		var from, to time.Time
		for _, e := range hist {
			if e.Status == protocol.StatusStreaming && from.IsZero() {
				from = e.CreatedAt
			}
			if e.Status.Terminal() {
				to = e.CreatedAt
			}
		}
		if from.IsZero() {
			continue
		}
		if to.IsZero() {
			to = time.Now()
		}
		total += to.Sub(from).Seconds()
	}
	return total
}

// reference replays requests on the trusted instance.
type reference struct{ c Caller }

// Do implements validation.Reference.
func (r reference) Do(ctx context.Context, method, path string, body []byte) ([]byte, error) {
	out, _, err := r.c.Call(ctx, method, path, body)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// httpsCaller calls a served job through its signing proxy.
type httpsCaller struct {
	st *client.Stream
	hc *http.Client
}

func connectHTTPS(st *client.Stream) (Caller, error) {
	hc, err := st.HTTPClient()
	if err != nil {
		return nil, err
	}
	return httpsCaller{st, hc}, nil
}

func (c httpsCaller) Call(ctx context.Context, method, path string, body []byte) ([]byte, *client.Result, error) {
	var out bytes.Buffer
	res, err := c.st.Call(ctx, c.hc, method, path, body, &out)
	return out.Bytes(), res, err
}
