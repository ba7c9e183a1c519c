// Package windows validates streaming jobs. Pairs of requests and responses
// reach it from clients (through the facilitator, verified here) and from
// the validator's own canary requests, which miners cannot tell from a
// client's. When enough pairs of an image wait, or the oldest waits too
// long, a validation window starts the image on the validator's trusted
// miner, replays there a random sample of the pairs whose (v2) receipts bind
// their request — exactly the signed method, target, content type and body —
// judges each answer with the image's comparator (package validation), and
// keeps a failed pair as evidence of cheating only when that evidence
// re-verifies (validation.CheckEvidence). Pairs with v1 receipts, which bind
// no request, are counted and never replayed.
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
	"github.com/horde-compute/horde/internal/metrics"
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
	JobUUID   string `json:"job_uuid"`
	RequestID string `json:"request_id"`
	Miner     string `json:"miner"`
	// Replay is the digest of the request replayed (streamreceipt.RequestDigest).
	Replay  string             `json:"replay_sha256,omitempty"`
	Verdict validation.Verdict `json:"verdict"`
	Error   string             `json:"error,omitempty"`
}

// WindowReport is what one validation window did and found.
type WindowReport struct {
	ID         int64     `json:"id"`
	Image      string    `json:"image"`
	Comparator string    `json:"comparator"`
	Started    time.Time `json:"started"`
	TrustedJob string    `json:"trusted_job"`
	Pairs      int       `json:"pairs"`
	// V1Pairs of Pairs have v1 receipts, which bind no request: covered by
	// the window, never replayed.
	V1Pairs  int           `json:"v1_pairs,omitempty"`
	Checked  int           `json:"checked"`
	Failed   int           `json:"failed"`
	Verdicts []PairVerdict `json:"verdicts"`
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
// and the call's result with its receipt verified against the request.
type Caller interface {
	Call(ctx context.Context, req client.Request) ([]byte, *client.Result, error)
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
	// Metrics counts windows, verdicts and the trusted miner's time (nil: not counted).
	Metrics *metrics.Validator
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

// ErrNotKept marks a pair TakePair could not keep for now (its store
// failed): unacknowledged, it is delivered again.
var ErrNotKept = errors.New("pair not kept for now")

// TakePair keeps a streaming pair the facilitator reports, after verifying
// it: the facilitator is not trusted with evidence. A pair kept before is
// kept once. Errors other than ErrNotKept refuse the pair for good.
func (w *Windows) TakePair(ctx context.Context, m *protocol.V0StreamPairReport) error {
	job, err := w.d.Store.Job(ctx, m.UUID)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("pair for job %s, which this validator does not know: %w", m.UUID, err)
	}
	if err != nil {
		return fmt.Errorf("%w: read job %s: %w", ErrNotKept, m.UUID, err)
	}
	rc, err := validation.VerifyPair(m.UUID, m.MinerHotkey, m.Proof, m.Pair)
	if err != nil {
		return fmt.Errorf("pair refused: %w", err)
	}
	rec := store.PairRecord{JobUUID: m.UUID, RequestID: rc.RequestID, Image: job.Spec.DockerImage, MinerHotkey: m.MinerHotkey,
		ValidatorHotkey: w.d.Self, ReportedBy: "facilitator", Pair: m.Pair, Proof: m.Proof, At: time.Now().UTC()}
	if err := w.d.Store.PutPair(ctx, rec); err != nil && !errors.Is(err, store.ErrDuplicate) {
		return fmt.Errorf("%w: store pair: %w", ErrNotKept, err)
	}
	return nil
}

// Open opens a validation window for image: it starts the image on the
// trusted miner, replays a random sample of the pairs gathered since the last
// window, judges each with the image's comparator, stops the instance and
// records the verdicts. A failed pair is proof of cheating only when its
// evidence re-verifies. If the trusted miner cannot serve, or no pair could
// be replayed, nothing is recorded and the pairs wait for the next window;
// a window with no pair that can be evidence (v1 receipts, refused pairs)
// is recorded without a replay.
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
	evidential := rep.evidential(pairs)
	sample := w.sample(evidential)
	rep.Detection = validation.DetectionProbability(0.1, vc.Sample, len(evidential))
	rep.CoveredSeconds = w.coveredSeconds(ctx, pairs)
	var cheats []store.Cheat
	if len(sample) > 0 {
		rep.TrustedJob = uuid.NewString()
		lease, err := w.d.Miners.LeasePinned(ctx, vc.TrustedMiner.Hotkey, rep.TrustedJob, vc.Class)
		if err != nil {
			w.d.Metrics.Window(false, 0, 0, 0)
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
		tr := trusted{st: st, proof: proofOf(st), c: caller}
		firstErr := ""
		for _, p := range sample {
			pv, cheat := w.judge(ctx, tr, cmp, image, p)
			if firstErr == "" {
				firstErr = pv.Error
			}
			if pv.Error == "" {
				rep.Checked++
				if !pv.Verdict.Pass {
					rep.Failed++
				}
			}
			if cheat != nil {
				cheats = append(cheats, *cheat)
			}
			rep.Verdicts = append(rep.Verdicts, pv)
		}
		rep.TrustedSeconds = stop().Seconds()
		if rep.Checked == 0 {
			w.d.Metrics.Window(false, 0, 0, time.Duration(rep.TrustedSeconds*float64(time.Second)))
			return nil, fmt.Errorf("validation: no pair could be replayed (first error: %s)", firstErr)
		}
	}
	body, _ := json.Marshal(rep)
	rep.ID, err = w.d.Store.PutWindow(context.WithoutCancel(ctx), store.Window{Image: image, LastPair: ids[len(ids)-1], Body: body, At: time.Now().UTC()}, cheats)
	if err != nil {
		return nil, err
	}
	w.d.Metrics.Window(true, rep.Checked-rep.Failed, rep.Failed, time.Duration(rep.TrustedSeconds*float64(time.Second)))
	w.log.Info("validation window done", "image", image, "pairs", rep.Pairs, "v1_pairs", rep.V1Pairs, "checked", rep.Checked, "failed", rep.Failed)
	return rep, nil
}

// candidate is a pair that may be evidence, with its verified receipt.
type candidate struct {
	p  store.PairRecord
	rc *sr.Receipt
}

// evidential returns the pairs that can be evidence: verified again (the
// receipt, the miner's vouching, the reported request is the signed one),
// with a v2 receipt of a successful answer. v1 pairs are counted; other
// pairs get a verdict that says why they are not judged.
func (rep *WindowReport) evidential(pairs []store.PairRecord) []candidate {
	var out []candidate
	for _, p := range pairs {
		rc, err := validation.VerifyPair(p.JobUUID, p.MinerHotkey, p.Proof, p.Pair)
		switch {
		case err == nil && rc.Version != 2:
			rep.V1Pairs++
			continue
		case err == nil && (rc.Status < 200 || rc.Status > 299):
			err = fmt.Errorf("the miner's answer was HTTP %d: only successful answers are judged", rc.Status)
		}
		if err != nil {
			rep.Verdicts = append(rep.Verdicts, PairVerdict{JobUUID: p.JobUUID, RequestID: p.RequestID, Miner: p.MinerHotkey, Error: "not evidence: " + err.Error()})
			continue
		}
		out = append(out, candidate{p, rc})
	}
	return out
}

// sample picks the pairs a window replays: each with probability Sample,
// and at least one when there are any.
func (w *Windows) sample(pairs []candidate) []candidate {
	var out []candidate
	for _, p := range pairs {
		if rand.Float64() < w.d.Config.Sample {
			out = append(out, p)
		}
	}
	if len(out) == 0 && len(pairs) > 0 {
		out = append(out, pairs[rand.IntN(len(pairs))])
	}
	return out
}

// trusted is the window's instance on the trusted miner.
type trusted struct {
	st    *client.Stream
	proof protocol.StreamingServerDetails
	c     Caller
}

// judge replays one pair's signed request on the trusted instance — the
// method, target, content type and body its receipt binds, nothing the
// report says — and has the comparator judge the miner's answer. A failed
// verdict convicts only with evidence that re-verifies; anything short of
// that is an error on the verdict, never a cheat.
func (w *Windows) judge(ctx context.Context, tr trusted, cmp validation.Comparator, image string, c candidate) (PairVerdict, *store.Cheat) {
	p, rc := c.p, c.rc
	pv := PairVerdict{JobUUID: p.JobUUID, RequestID: p.RequestID, Miner: p.MinerHotkey}
	req, _ := base64.StdEncoding.DecodeString(p.Pair.RequestB64)
	resp, _ := base64.StdEncoding.DecodeString(p.Pair.ResponseB64)
	signed := client.Request{Method: rc.Method, Target: rc.Target, ContentType: rc.RequestContentType, Body: req}
	answer, res, err := tr.c.Call(ctx, signed)
	switch {
	case err != nil:
		pv.Error = "replay: " + err.Error()
		return pv, nil
	case res.Receipt == nil || res.Receipt.RequestDigest() != rc.RequestDigest():
		pv.Error = "replay: the trusted job's receipt does not bind the signed request"
		return pv, nil
	case res.Status < 200 || res.Status > 299:
		pv.Error = fmt.Sprintf("replay: the trusted instance answered HTTP %d", res.Status)
		return pv, nil
	}
	pv.Replay = rc.RequestDigest()
	ref := &reference{c: tr.c, replayed: signed, answer: answer}
	verdict, err := cmp.Compare(ctx, ref, validation.Pair{Method: rc.Method, Path: rc.Target, ContentType: rc.RequestContentType, Request: req, Response: resp})
	if err != nil {
		pv.Error = err.Error()
		return pv, nil
	}
	pv.Verdict = verdict
	if verdict.Pass {
		return pv, nil
	}
	ev := &validation.Evidence{Format: validation.EvidenceFormat, Image: image, JobUUID: p.JobUUID, RequestID: rc.RequestID, MinerHotkey: p.MinerHotkey,
		Pair: p.Pair, JobReady: p.Proof, Comparator: cmp.Name(), Verdict: verdict,
		Replay: validation.Replay{RequestSHA256: pv.Replay, TrustedJob: tr.st.JobUUID, TrustedMiner: tr.st.MinerHotkey, JobReady: tr.proof,
			Status: res.Status, ResponseB64: base64.StdEncoding.EncodeToString(answer), ReceiptB64: res.ReceiptB64, SignatureB64: res.SignatureB64}}
	if _, err := validation.CheckEvidence(ev); err != nil {
		pv.Error = "failed, but the evidence does not re-verify: " + err.Error()
		w.log.Warn("no conviction: the evidence does not re-verify", "miner", p.MinerHotkey, "job", p.JobUUID, "request", p.RequestID, "err", err)
		return pv, nil
	}
	b, _ := json.Marshal(ev)
	w.log.Warn("cheat proved", "miner", p.MinerHotkey, "job", p.JobUUID, "request", p.RequestID, "replay_sha256", pv.Replay, "detail", verdict.Detail)
	return pv, &store.Cheat{Miner: p.MinerHotkey, JobUUID: p.JobUUID, RequestID: rc.RequestID, ReplaySHA256: pv.Replay, Evidence: b, At: time.Now().UTC()}
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
	proof := proofOf(st)
	kept := 0
	for _, req := range requests {
		out, res, err := caller.Call(ctx, client.Request{Method: http.MethodPost, Target: path, ContentType: "application/json", Body: req})
		if err != nil {
			w.log.Warn("canary request failed", "miner", st.MinerHotkey, "err", err)
			continue
		}
		p := client.Pair(res.Method, res.Target, req, out, res)
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

// proofOf is the miner's signature vouching for a stream's job key, as
// pairs keep it.
func proofOf(st *client.Stream) protocol.StreamingServerDetails {
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(st.URL, "https://"))
	proof := protocol.StreamingServerDetails{StreamingServerCert: st.JobCert, StreamingServerAddress: host, MinerSignature: st.MinerSignature}
	proof.StreamingServerPort, _ = strconv.Atoi(port)
	return proof
}

// reference is the trusted instance as a comparator sees it: the signed
// request was replayed once before the comparator runs, and asking for it
// again gets that answer; anything else (a comparator's own probes) goes to
// the instance.
type reference struct {
	c        Caller
	replayed client.Request
	answer   []byte
}

// Do implements validation.Reference.
func (r *reference) Do(ctx context.Context, method, path, contentType string, body []byte) ([]byte, error) {
	q := client.Request{Method: method, Target: path, ContentType: contentType, Body: body}
	if q.Method == r.replayed.Method && q.Target == r.replayed.Target && q.ContentType == r.replayed.ContentType && bytes.Equal(q.Body, r.replayed.Body) {
		return r.answer, nil
	}
	out, res, err := r.c.Call(ctx, q)
	if err != nil {
		return nil, err
	}
	if res.Status >= 300 {
		return nil, fmt.Errorf("reference: HTTP %d: %.200s", res.Status, out)
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

func (c httpsCaller) Call(ctx context.Context, req client.Request) ([]byte, *client.Result, error) {
	var out bytes.Buffer
	res, err := c.st.Do(ctx, c.hc, req, &out)
	return out.Bytes(), res, err
}
