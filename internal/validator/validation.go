package validator

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/validation"
	"github.com/horde-compute/horde/protocol"
	sr "github.com/horde-compute/horde/streamreceipt"
)

// ValidationConfig configures the validation of streaming jobs on the
// validator's own trusted miner.
type ValidationConfig struct {
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

func (c *ValidationConfig) defaults() {
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

func (v *Validator) canaryLoop(ctx context.Context) {
	every(ctx, v.cfg.Validation.CanaryEvery, func() {
		for image, c := range v.cfg.Validation.Canaries {
			if n, err := v.Canary(ctx, image, c.Requests, c.Path); err != nil {
				v.log.Warn("canary", "image", image, "err", err)
			} else {
				v.log.Info("canary requests sent", "image", image, "pairs", n)
			}
		}
	})
}

func (v *Validator) validationLoop(ctx context.Context) {
	every(ctx, v.cfg.Validation.Every, func() {
		for image := range v.cfg.StreamingWhitelist {
			last, err := v.cfg.Store.LastPair(ctx, image)
			if err != nil {
				continue
			}
			pending, _, err := v.cfg.Store.PairsForImage(ctx, image, last, v.cfg.Validation.Threshold)
			if err != nil || len(pending) == 0 {
				continue
			}
			if len(pending) < v.cfg.Validation.Threshold && time.Since(pending[0].At) < v.cfg.Validation.MaxAge {
				continue
			}
			if _, err := v.Validate(ctx, image); err != nil {
				v.log.Warn("validation window failed; the pairs wait for the next", "image", image, "err", err)
			}
		}
	})
}

// PairsWaiting returns how many pairs of image wait for a validation window.
func (v *Validator) PairsWaiting(ctx context.Context, image string) (int, error) {
	last, err := v.cfg.Store.LastPair(ctx, image)
	if err != nil {
		return 0, err
	}
	_, ids, err := v.cfg.Store.PairsForImage(ctx, image, last, 100000)
	return len(ids), err
}

// ErrNoPairs is returned when an image has no pairs waiting.
var ErrNoPairs = errors.New("no pairs waiting for validation")

// Validate opens a validation window for image: it starts the image on the
// trusted miner, replays a random sample of the pairs gathered since the last
// window, judges each with the image's comparator, stops the instance and
// records the verdicts. A failed pair whose receipt the miner vouched for is
// proof of cheating, kept as evidence. If the trusted miner cannot serve,
// nothing is recorded and the pairs wait for the next window.
func (v *Validator) Validate(ctx context.Context, image string) (*WindowReport, error) {
	v.validateMu.Lock() // one window at a time: two would take the same pairs
	defer v.validateMu.Unlock()
	vc := v.cfg.Validation
	if vc.TrustedMiner == nil {
		return nil, errors.New("validation: no trusted miner configured")
	}
	last, err := v.cfg.Store.LastPair(ctx, image)
	if err != nil {
		return nil, err
	}
	pairs, ids, err := v.cfg.Store.PairsForImage(ctx, image, last, 100000)
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
	rep.CoveredSeconds = v.coveredSeconds(ctx, pairs)

	st, stop, err := v.startTrusted(ctx, image, rep)
	if err != nil {
		return nil, fmt.Errorf("validation: trusted miner: %w", err)
	}
	hc, err := st.HTTPClient()
	if err != nil {
		stop()
		return nil, err
	}
	ref := streamRef{st: st, hc: hc}
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
				v.log.Warn("cheat proved", "miner", p.MinerHotkey, "job", p.JobUUID, "request", p.RequestID, "detail", verdict.Detail)
			}
		}
		rep.Verdicts = append(rep.Verdicts, pv)
	}
	rep.TrustedSeconds = stop().Seconds()
	if rep.Checked == 0 {
		// The reference could answer nothing: keep the pairs for the next window.
		return nil, fmt.Errorf("validation: no pair could be replayed (first error: %s)", rep.Verdicts[0].Error)
	}
	body, _ := json.Marshal(rep)
	rep.ID, err = v.cfg.Store.PutWindow(context.WithoutCancel(ctx), store.Window{Image: image, LastPair: ids[len(ids)-1], Body: body, At: time.Now().UTC()}, cheats)
	if err != nil {
		return nil, err
	}
	v.log.Info("validation window done", "image", image, "pairs", rep.Pairs, "checked", rep.Checked, "failed", rep.Failed)
	return rep, nil
}

// startTrusted runs image as a streaming job on the trusted miner with the
// validator as its client, and returns the stream and how to stop it (stop
// returns how long the trusted executor served).
func (v *Validator) startTrusted(ctx context.Context, image string, rep *WindowReport) (*client.Stream, func() time.Duration, error) {
	vc := v.cfg.Validation
	v.mu.Lock()
	if v.trusted == nil {
		v.trusted = newMinerClient(*vc.TrustedMiner, v.log)
	}
	mc := v.trusted
	v.mu.Unlock()
	if err := mc.connect(ctx, v.cfg.Hotkey, &v.wg, v.life); err != nil {
		return nil, nil, err
	}
	id := uuid.NewString()
	rep.TrustedJob = id
	return v.startStream(ctx, mc, id, image, false)
}

// startStream runs image as a streaming job on mc with the validator as its
// client, and returns the stream and how to stop it (stop returns how long
// the job served). Organic jobs look to the miner like any client's.
func (v *Validator) startStream(ctx context.Context, mc *minerClient, id, image string, organic bool) (*client.Stream, func() time.Duration, error) {
	vc := v.cfg.Validation
	key, certPEM, err := sr.NewKeyPair("horde-client", 7*24*time.Hour)
	if err != nil {
		return nil, nil, err
	}
	spec := &protocol.JobSpec{ExecutorClass: vc.Class, DockerImage: image, Args: []string{}, DownloadTimeLimit: 60,
		ExecutionTimeLimit: 3600, UploadTimeLimit: 60, StreamingStartTimeLimit: 120,
		StreamingDetails: &protocol.StreamingDetails{PublicKey: string(certPEM)}}
	ready := make(chan *protocol.StatusMetadata, 1)
	done := make(chan outcome, 1)
	start := time.Now()
	jctx, cancel := context.WithCancel(v.life)
	v.wg.Go(func() {
		done <- v.attempt(jctx, mc, id, spec, organic, func(s protocol.JobStatus, m *protocol.StatusMetadata) {
			if s == protocol.StatusStreaming {
				ready <- m
			}
		})
	})
	stop := func() time.Duration {
		v.toMiner(id, &protocol.V0StopJobRequest{JobUUID: id})
		select {
		case <-done:
		case <-time.After(time.Minute):
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
		return nil, nil, fmt.Errorf("did not serve: %s", o.reason(""))
	case <-ctx.Done():
		stop()
		return nil, nil, ctx.Err()
	}
	d := m.StreamingDetails
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	st := &client.Stream{JobUUID: id, URL: "https://" + net.JoinHostPort(d.StreamingServerAddress, strconv.Itoa(d.StreamingServerPort)),
		JobCert: d.StreamingServerCert, MinerHotkey: mc.neuron.Hotkey, MinerSignature: d.MinerSignature,
		ClientKey: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), ClientCert: string(certPEM)}
	return st, stop, nil
}

// streamRef replays requests on the trusted instance, through its proxy.
type streamRef struct {
	st *client.Stream
	hc *http.Client
}

// Do implements validation.Reference.
func (r streamRef) Do(ctx context.Context, method, path string, body []byte) ([]byte, error) {
	var out bytes.Buffer
	if _, err := r.st.Call(ctx, r.hc, method, path, body, &out); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// coveredSeconds sums the serving time of the jobs whose pairs a window
// covers: from streaming_ready to the job's end (or now), by this validator's history.
func (v *Validator) coveredSeconds(ctx context.Context, pairs []store.PairRecord) float64 {
	seen := map[string]bool{}
	var total float64
	for _, p := range pairs {
		if seen[p.JobUUID] {
			continue
		}
		seen[p.JobUUID] = true
		hist, err := v.cfg.Store.History(ctx, p.JobUUID)
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

// Canary runs the validator's own requests against a streaming job of image
// on a miner picked like any client's job would be, and keeps the pairs for
// validation windows: the miner cannot tell them from a client's.
func (v *Validator) Canary(ctx context.Context, image string, requests [][]byte, path string) (int, error) {
	class := v.cfg.Validation.Class
	v.refresh(ctx)
	mc, _ := v.pick(ctx, class, nil)
	if mc == nil {
		return 0, fmt.Errorf("canary: no miner with a free %s executor", class)
	}
	id := uuid.NewString()
	st, stop, err := v.startStream(ctx, mc, id, image, true)
	if err != nil {
		return 0, fmt.Errorf("canary: %w", err)
	}
	defer stop()
	hc, err := st.HTTPClient()
	if err != nil {
		return 0, err
	}
	kept := 0
	for _, req := range requests {
		var out bytes.Buffer
		res, err := st.Call(ctx, hc, http.MethodPost, path, req, &out)
		if err != nil {
			v.log.Warn("canary request failed", "miner", mc.neuron.Hotkey, "err", err)
			continue
		}
		p := client.Pair(http.MethodPost, path, req, out.Bytes(), res)
		proof := protocol.StreamingServerDetails{StreamingServerCert: st.JobCert, MinerSignature: st.MinerSignature}
		host, port, _ := net.SplitHostPort(strings.TrimPrefix(st.URL, "https://"))
		proof.StreamingServerAddress = host
		proof.StreamingServerPort, _ = strconv.Atoi(port)
		err = v.cfg.Store.PutPair(ctx, store.PairRecord{JobUUID: id, RequestID: res.Receipt.RequestID, Image: image,
			MinerHotkey: mc.neuron.Hotkey, ValidatorHotkey: v.cfg.Hotkey.SS58(), ReportedBy: "canary", Pair: *p, Proof: proof, At: time.Now().UTC()})
		if err == nil {
			kept++
		}
	}
	return kept, nil
}
