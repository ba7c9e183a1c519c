package windows_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/store/sqlite"
	"github.com/horde-compute/horde/internal/validation"
	"github.com/horde-compute/horde/internal/validator/jobrun"
	"github.com/horde-compute/horde/internal/validator/minertest"
	"github.com/horde-compute/horde/internal/validator/route"
	"github.com/horde-compute/horde/internal/validator/windows"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
	"github.com/horde-compute/horde/sig"
	sr "github.com/horde-compute/horde/streamreceipt"
)

const image = "horde/llm:dev"

// caller answers requests by body as a served job would, with receipts its
// job key signs; bodies it does not know fail.
type caller struct {
	mu      sync.Mutex
	key     *minertest.JobKey
	job     string
	answers map[string]string
	calls   *[]client.Request
}

func (c *caller) Call(_ context.Context, q client.Request) ([]byte, *client.Result, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	*c.calls = append(*c.calls, q)
	a, ok := c.answers[string(q.Body)]
	if !ok {
		return nil, nil, errors.New("connection reset by the job")
	}
	return []byte(a), c.key.Answer(c.job, q, []byte(a)), nil
}

type fixture struct {
	w       *windows.Windows
	st      *sqlite.DB
	pool    *route.Pool
	trusted *minertest.Miner
	miner   *minertest.Miner
	key     *minertest.JobKey // every streaming job's key
	calls   []client.Request  // what the jobs were asked
	streams []*client.Stream
}

type miners struct {
	pool *route.Pool
	ns   []chain.Neuron
}

func (m miners) Refresh(ctx context.Context) ([]chain.Neuron, error) {
	m.pool.Sync(ctx, m.ns)
	return m.ns, nil
}
func (m miners) Acquire(ctx context.Context, w jobrun.Want) (jobrun.Lease, error) {
	return m.pool.Acquire(ctx, w)
}
func (m miners) LeasePinned(ctx context.Context, hk, job, class string) (jobrun.Lease, error) {
	return m.pool.LeasePinned(ctx, hk, job, class)
}

// newFixture must run in a bubble.
func newFixture(t *testing.T, cfg windows.Config, answers map[string]string) *fixture {
	net := &minertest.Net{}
	v := minertest.Hotkey(t)
	f := &fixture{trusted: minertest.New(t, map[string]int{protocol.ClassTest: 1}), miner: minertest.New(t, map[string]int{protocol.ClassTest: 1}),
		key: minertest.NewJobKey(t)}
	f.trusted.JobCert, f.miner.JobCert = f.key.Cert, f.key.Cert
	tn := net.Add(f.trusted)
	if cfg.TrustedMiner == nil {
		cfg.TrustedMiner = &tn
	}
	ns := []chain.Neuron{net.Add(f.miner)}
	var err error
	f.st, err = sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "v.db"))
	if err != nil {
		t.Fatal(err)
	}
	f.pool = route.NewPool(net, v.SS58(), nil)
	f.pool.Pin(tn)
	f.pool.Sync(t.Context(), ns)
	whitelist := map[string]string{image: "sha256:1", "other:1": "sha256:2", "old:1": "sha256:3"}
	f.w = windows.New(windows.Deps{Config: cfg, Self: v.SS58(), Whitelist: whitelist,
		Run: jobrun.Params{Hotkey: v, Timing: jobrun.DefaultTiming(), Receipts: f.st, Digests: whitelist}, Miners: miners{f.pool, ns}, Store: f.st,
		Connect: func(st *client.Stream) (windows.Caller, error) {
			f.streams = append(f.streams, st)
			return &caller{key: f.key, job: st.JobUUID, answers: answers, calls: &f.calls}, nil
		}})
	return f
}

func (f *fixture) close() {
	f.pool.Close()
	f.st.Close()
}

// pair keeps a pair of job on miner, its receipt signed by the job's key
// (binding POST /v1/completions) and the job's key vouched for by miner;
// edit, when given, changes the pair as reported after signing.
func (f *fixture) pair(t *testing.T, job, img string, miner *sig.Hotkey, request, response string, at time.Time, edit ...func(*protocol.StreamPair)) {
	t.Helper()
	q := client.Request{Method: "POST", Target: "/v1/completions", ContentType: "application/json", Body: []byte(request)}
	p := client.Pair(q.Method, q.Target, q.Body, []byte(response), f.key.Answer(job, q, []byte(response)))
	for _, e := range edit {
		e(p)
	}
	rc, _ := base64.StdEncoding.DecodeString(p.ReceiptB64)
	r, _ := sr.ParseBlob(rc)
	err := f.st.PutPair(t.Context(), store.PairRecord{JobUUID: job, RequestID: r.RequestID, Image: img, MinerHotkey: miner.SS58(), ValidatorHotkey: "v",
		ReportedBy: "facilitator", At: at, Pair: *p, Proof: f.proof(job, miner)})
	if err != nil {
		t.Fatal(err)
	}
}

// proof is miner vouching for job's key.
func (f *fixture) proof(job string, miner *sig.Hotkey) protocol.StreamingServerDetails {
	d := protocol.StreamingServerDetails{StreamingServerCert: f.key.Cert(job), StreamingServerAddress: "192.0.2.1", StreamingServerPort: 8443}
	d.MinerSignature = miner.SignHex(protocol.StreamingReadyMessage(job, d.StreamingServerAddress, d.StreamingServerPort, d.StreamingServerCert))
	return d
}

// job records a streaming job that served from `from` for d.
func (f *fixture) job(t *testing.T, uuid string, from time.Time, d time.Duration) {
	t.Helper()
	rec := store.JobRecord{UUID: uuid, Spec: protocol.JobSpec{DockerImage: image, ExecutorClass: protocol.ClassTest},
		Signature: protocol.Signature{Signature: "sig-" + uuid, Signatory: "c"}, Status: protocol.StatusReceived, CreatedAt: from}
	if err := f.st.CreateJob(t.Context(), rec); err != nil {
		t.Fatal(err)
	}
	for _, e := range []protocol.StatusEntry{{Status: protocol.StatusStreaming, CreatedAt: from}, {Status: protocol.StatusCompleted, CreatedAt: from.Add(d)}} {
		if d == 0 && e.Status == protocol.StatusCompleted {
			continue
		}
		if err := f.st.AddStatus(t.Context(), uuid, e); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOpen(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, windows.Config{Sample: 1}, map[string]string{"a": "A", "b": "B"})
		defer f.close()
		honest, cheat, other := minertest.Hotkey(t), minertest.Hotkey(t), minertest.Hotkey(t)
		now := time.Now()
		f.job(t, "j1", now.Add(-90*time.Second), 90*time.Second)
		f.job(t, "j2", now.Add(-30*time.Second), 0) // still serving
		f.pair(t, "j1", image, honest, "a", "A", now)
		f.pair(t, "j2", image, cheat, "b", "not B", now)
		f.pair(t, "j1", image, honest, "c", "C", now) // the reference cannot answer it
		f.pair(t, "x", "other:1", other, "a", "A", now)
		if n, err := f.w.PairsWaiting(t.Context(), image); n != 3 || err != nil {
			t.Fatalf("waiting %d %v", n, err)
		}
		rep, err := f.w.Open(t.Context(), image)
		if err != nil {
			t.Fatal(err)
		}
		if rep.ID == 0 || rep.Comparator != "exact" || rep.Pairs != 3 || rep.V1Pairs != 0 || rep.Checked != 2 || rep.Failed != 1 || len(rep.Verdicts) != 3 ||
			rep.CoveredSeconds != 120 || rep.TrustedJob == "" {
			t.Errorf("report %+v", rep)
		}
		for _, v := range rep.Verdicts {
			switch v.Miner {
			case honest.SS58():
				if v.Error == "" && !v.Verdict.Pass || v.Error != "" && !strings.Contains(v.Error, "replay: connection reset") {
					t.Errorf("verdict %+v", v)
				}
			case cheat.SS58():
				if v.Verdict.Pass || v.Replay == "" {
					t.Errorf("cheat passed: %+v", v)
				}
			}
		}
		// The trusted instance was asked exactly the signed requests.
		for _, q := range f.calls {
			if q.Method != "POST" || q.Target != "/v1/completions" || q.ContentType != "application/json" {
				t.Errorf("replayed %+v", q)
			}
		}
		cheats, err := f.st.Cheats(t.Context(), now.Add(-time.Hour))
		if err != nil || len(cheats) != 1 || cheats[0].Miner != cheat.SS58() || cheats[0].JobUUID != "j2" || cheats[0].Window != rep.ID {
			t.Fatalf("cheats %+v %v", cheats, err)
		}
		// The evidence re-verifies: the replayed request is the signed one.
		var ev validation.Evidence
		if err := json.Unmarshal(cheats[0].Evidence, &ev); err != nil {
			t.Fatal(err)
		}
		rc, err := validation.CheckEvidence(&ev)
		if err != nil {
			t.Fatalf("evidence does not re-verify: %v", err)
		}
		want := sr.RequestDigest("POST", "/v1/completions", "application/json", hexsum("b"))
		if cheats[0].ReplaySHA256 != want || ev.Replay.RequestSHA256 != want || rc.RequestDigest() != want || cheats[0].RequestID != rc.RequestID {
			t.Errorf("replay digest %s / %s, want %s", cheats[0].ReplaySHA256, ev.Replay.RequestSHA256, want)
		}
		// The trusted miner ran the image as the validator's own job and was stopped.
		offers := f.trusted.Offers()
		if len(offers) != 1 || offers[0].DockerImage != image || offers[0].StreamingDetails == nil || offers[0].JobUUID != rep.TrustedJob {
			t.Fatalf("trusted offers %+v", offers)
		}
		if !contains(frames(f.trusted), "V0StopJobRequest") {
			t.Error("trusted job not stopped")
		}
		st := f.streams[0]
		if st.MinerHotkey != f.trusted.Hotkey.SS58() || st.URL != "https://192.0.2.1:8443" || st.JobCert != f.key.Cert("") || !strings.Contains(st.ClientKey, "PRIVATE KEY") {
			t.Errorf("stream %+v", st)
		}
		// The pairs are used up; the other image's wait.
		if n, _ := f.w.PairsWaiting(t.Context(), image); n != 0 {
			t.Errorf("%d pairs still waiting", n)
		}
		if _, err := f.w.Open(t.Context(), image); !errors.Is(err, windows.ErrNoPairs) {
			t.Errorf("again: %v", err)
		}
		if n, _ := f.w.PairsWaiting(t.Context(), "other:1"); n != 1 {
			t.Errorf("other image: %d waiting", n)
		}
	})
}

func hexsum(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }

// A pair whose report differs from what its receipt binds (it cannot pass
// intake, but the window does not rely on that) and a pair with a v1
// receipt are never replayed and never convict; a window of only such pairs
// is recorded without starting the trusted miner.
func TestOpenNeverConvictsOnUnboundPairs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, windows.Config{Sample: 1}, map[string]string{`{"prompt": "hi"}`: "chat answer"})
		defer f.close()
		honest := minertest.Hotkey(t)
		now := time.Now()
		forgeries := map[string]func(*protocol.StreamPair){
			"path":         func(p *protocol.StreamPair) { p.Path = "/v1/chat/completions" },
			"method":       func(p *protocol.StreamPair) { p.Method = "PUT" },
			"query":        func(p *protocol.StreamPair) { p.Path = "/v1/completions?stream=true" },
			"content type": func(p *protocol.StreamPair) { p.ContentType = "text/plain" },
		}
		for name, edit := range forgeries {
			f.pair(t, "j-"+strings.ReplaceAll(name, " ", "-"), image, honest, `{"prompt": "hi"}`, "completion answer", now, edit)
		}
		// A v1 receipt of the same exchange.
		q := []byte(`{"prompt": "hi"}`)
		key, cert, _ := sr.NewKeyPair("old-job", time.Hour)
		blob, sig := sr.Sign(key, &sr.Receipt{JobUUID: "j-v1", RequestID: "old", TimestampFrom: now, TimestampTo: now, InputSHA256: hexsum(string(q)),
			OutputSHA256: hexsum("completion answer")})
		proof := protocol.StreamingServerDetails{StreamingServerCert: string(cert), StreamingServerAddress: "192.0.2.1", StreamingServerPort: 8443}
		proof.MinerSignature = honest.SignHex(protocol.StreamingReadyMessage("j-v1", proof.StreamingServerAddress, proof.StreamingServerPort, proof.StreamingServerCert))
		if err := f.st.PutPair(t.Context(), store.PairRecord{JobUUID: "j-v1", RequestID: "old", Image: image, MinerHotkey: honest.SS58(), At: now, Proof: proof,
			Pair: protocol.StreamPair{Method: "POST", Path: "/v1/chat/completions", RequestB64: base64.StdEncoding.EncodeToString(q),
				ResponseB64: base64.StdEncoding.EncodeToString([]byte("completion answer")), ReceiptB64: blob, SignatureB64: sig}}); err != nil {
			t.Fatal(err)
		}
		rep, err := f.w.Open(t.Context(), image)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Pairs != 5 || rep.V1Pairs != 1 || rep.Checked != 0 || rep.Failed != 0 || len(rep.Verdicts) != 4 || rep.TrustedJob != "" {
			t.Errorf("report %+v", rep)
		}
		for _, v := range rep.Verdicts {
			if !strings.HasPrefix(v.Error, "not evidence: ") || !strings.Contains(v.Error, "is not the signed") {
				t.Errorf("verdict %+v", v)
			}
		}
		if len(f.trusted.Offers()) != 0 || len(f.calls) != 0 {
			t.Errorf("the trusted miner was asked to replay unbound pairs: %d offers, %d calls", len(f.trusted.Offers()), len(f.calls))
		}
		if cheats, _ := f.st.Cheats(t.Context(), time.Time{}); len(cheats) != 0 {
			t.Errorf("convicted on unbound pairs: %+v", cheats)
		}
		if n, _ := f.w.PairsWaiting(t.Context(), image); n != 0 {
			t.Errorf("%d pairs still waiting: they would open a window on every tick", n)
		}
	})
}

// A failed comparison whose evidence does not re-verify convicts nobody: the
// trusted job's receipt must bind the very request replayed.
func TestOpenNoConvictionWithoutTrustedReceipt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, windows.Config{Sample: 1}, map[string]string{"b": "B"})
		defer f.close()
		cheat := minertest.Hotkey(t)
		f.pair(t, "j", image, cheat, "b", "not B", time.Now())
		// The trusted miner vouches for another key than the one that signs.
		f.trusted.JobCert = minertest.NewJobKey(t).Cert
		rep, err := f.w.Open(t.Context(), image)
		if err == nil || !strings.Contains(err.Error(), "does not re-verify") {
			t.Fatalf("window: %+v %v", rep, err)
		}
		if cheats, _ := f.st.Cheats(t.Context(), time.Time{}); len(cheats) != 0 {
			t.Errorf("convicted without re-verifiable evidence: %+v", cheats)
		}
	})
}

func TestOpenRecordsNothingWhenNothingReplays(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, windows.Config{Sample: 1}, nil)
		defer f.close()
		f.pair(t, "j", image, minertest.Hotkey(t), "a", "A", time.Now())
		if _, err := f.w.Open(t.Context(), image); err == nil || !strings.Contains(err.Error(), "no pair could be replayed (first error: replay: connection reset by the job)") {
			t.Fatalf("got %v", err)
		}
		if n, _ := f.w.PairsWaiting(t.Context(), image); n != 1 {
			t.Errorf("%d waiting: the pairs must wait for the next window", n)
		}
	})
}

func TestOpenTrustedMinerFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, windows.Config{Sample: 1}, nil)
		defer f.close()
		f.pair(t, "j", image, minertest.Hotkey(t), "a", "A", time.Now())
		f.trusted.Reply = func(p minertest.Peer, m protocol.Message) {
			if in, ok := m.(*protocol.V0InitialJobRequest); ok {
				p.Send(&protocol.V0DeclineJobRequest{JobUUID: in.JobUUID, Reason: protocol.RejectUnknown, Message: "image missing"})
			}
		}
		if _, err := f.w.Open(t.Context(), image); err == nil || !strings.Contains(err.Error(), "trusted miner: did not serve: declined (unknown): image missing") {
			t.Errorf("got %v", err)
		}
		none := windows.New(windows.Deps{Store: f.st})
		if _, err := none.Open(t.Context(), image); err == nil || !strings.Contains(err.Error(), "no trusted miner") {
			t.Errorf("without a trusted miner: %v", err)
		}
	})
}

// Windows open for images with enough pairs, or whose oldest pair waited MaxAge.
func TestDue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, windows.Config{Sample: 1, Threshold: 2, MaxAge: time.Hour}, map[string]string{"a": "A"})
		defer f.close()
		now, m := time.Now(), minertest.Hotkey(t)
		f.pair(t, "j1", image, m, "a", "A", now)
		f.pair(t, "j1", image, m, "a2", "A", now)
		f.pair(t, "j2", "other:1", m, "a", "A", now)                 // one fresh pair: waits
		f.pair(t, "j3", "old:1", m, "a", "A", now.Add(-2*time.Hour)) // one old pair: due
		f.w.Due(t.Context())
		var opened []string
		for _, o := range f.trusted.Offers() {
			opened = append(opened, o.DockerImage)
		}
		if len(opened) != 2 || !contains(opened, image) || !contains(opened, "old:1") {
			t.Errorf("windows opened for %v", opened)
		}
	})
}

func frames(m *minertest.Miner) []string {
	var out []string
	for _, f := range m.Got() {
		out = append(out, f.MessageType())
	}
	return out
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestCanary(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := windows.Config{Canaries: map[string]windows.CanarySpec{image: {Path: "/v1/completions", Requests: [][]byte{[]byte("a"), []byte("b"), []byte("lost")}}}}
		f := newFixture(t, cfg, map[string]string{"a": "A", "b": "B"})
		defer f.close()
		f.w.Canaries(t.Context())
		if n, err := f.w.PairsWaiting(t.Context(), image); n != 2 || err != nil {
			t.Fatalf("%d pairs kept: %v", n, err)
		}
		pairs, _, _ := f.st.PairsForImage(t.Context(), image, 0, 10)
		offers := f.miner.Offers()
		if len(offers) != 1 || offers[0].ImageDigest != "sha256:1" {
			t.Fatalf("offers %+v", offers)
		}
		var sp receipt.StartedPayload
		if err := json.Unmarshal(offers[0].JobStartedReceiptPayload, &sp); err != nil || !sp.IsOrganic {
			t.Errorf("the canary's job does not look like a client's: %+v %v", sp, err)
		}
		for _, p := range pairs {
			if p.ReportedBy != "canary" || p.MinerHotkey != f.miner.Hotkey.SS58() || p.JobUUID != offers[0].JobUUID || p.Proof.StreamingServerPort != 8443 ||
				p.Proof.StreamingServerCert != f.key.Cert("") || p.Proof.MinerSignature == "" || p.Pair.Path != "/v1/completions" ||
				p.Pair.ContentType != "application/json" || p.Pair.Status != 200 {
				t.Errorf("pair %+v", p)
			}
		}
		if got := frames(f.miner); !contains(got, "V0StopJobRequest") {
			t.Errorf("canary job not stopped: %v", got)
		}
		// No free executor: the canary says so.
		held, _ := f.pool.Acquire(t.Context(), jobrun.Want{Job: "x", Class: protocol.ClassTest})
		defer held.Release(false)
		if _, err := f.w.Canary(t.Context(), image, [][]byte{[]byte("a")}, "/"); err == nil || !strings.Contains(err.Error(), "no miner with a free") {
			t.Errorf("got %v", err)
		}
	})
}

// A reported pair is kept only if the miner vouched for the job's key, that
// key signed a receipt of exactly these bodies, and the reported request and
// response are the ones the receipt binds.
func TestTakePair(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, windows.Config{}, nil)
		defer f.close()
		f.job(t, "j", time.Now(), 0)
		req, resp := []byte(`{"prompt":"hi"}`), []byte(`{"text":"hello"}`)
		q := client.Request{Method: "POST", Target: "/v1/completions?n=1", ContentType: "application/json", Body: req}
		res := f.key.Answer("j", q, resp)
		report := func() *protocol.V0StreamPairReport {
			return &protocol.V0StreamPairReport{UUID: "j", Image: image, MinerHotkey: f.miner.Hotkey.SS58(), Proof: f.proof("j", f.miner.Hotkey),
				Pair: *client.Pair(q.Method, q.Target, req, resp, res)}
		}
		if err := f.w.TakePair(t.Context(), report()); err != nil {
			t.Fatal(err)
		}
		if err := f.w.TakePair(t.Context(), report()); err != nil {
			t.Errorf("reported twice: %v", err)
		}
		if n, _ := f.w.PairsWaiting(t.Context(), image); n != 1 {
			t.Errorf("%d kept", n)
		}
		for name, tc := range map[string]struct {
			edit func(*protocol.V0StreamPairReport)
			want string
		}{
			"altered response": {func(m *protocol.V0StreamPairReport) {
				m.Pair.ResponseB64 = base64.StdEncoding.EncodeToString([]byte("other"))
			}, "output_sha256"},
			"forged path":       {func(m *protocol.V0StreamPairReport) { m.Pair.Path = "/v1/chat/completions?n=1" }, `request target "/v1/chat/completions?n=1" is not the signed "/v1/completions?n=1"`},
			"forged query":      {func(m *protocol.V0StreamPairReport) { m.Pair.Path = "/v1/completions?n=2" }, `request target "/v1/completions?n=2" is not the signed "/v1/completions?n=1"`},
			"forged method":     {func(m *protocol.V0StreamPairReport) { m.Pair.Method = "PUT" }, `request method "PUT" is not the signed "POST"`},
			"forged type":       {func(m *protocol.V0StreamPairReport) { m.Pair.ContentType = "text/plain" }, `request content type "text/plain" is not the signed "application/json"`},
			"forged status":     {func(m *protocol.V0StreamPairReport) { m.Pair.Status = 500 }, "response status 500 is not the signed 200"},
			"forged reply type": {func(m *protocol.V0StreamPairReport) { m.Pair.ResponseContentType = "text/html" }, `response content type "text/html" is not the signed "application/json"`},
			"other miner":       {func(m *protocol.V0StreamPairReport) { m.MinerHotkey = f.trusted.Hotkey.SS58() }, "the miner's signature of the job's key does not verify"},
			"unknown job":       {func(m *protocol.V0StreamPairReport) { m.UUID = "unknown" }, "does not know"},
		} {
			bad := report()
			tc.edit(bad)
			if err := f.w.TakePair(t.Context(), bad); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: %v, want %q", name, err, tc.want)
			}
		}
	})
}
