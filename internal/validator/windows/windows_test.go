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
	"github.com/horde-compute/horde/internal/validator/jobrun"
	"github.com/horde-compute/horde/internal/validator/minertest"
	"github.com/horde-compute/horde/internal/validator/route"
	"github.com/horde-compute/horde/internal/validator/windows"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
	sr "github.com/horde-compute/horde/streamreceipt"
)

const image = "horde/llm:dev"

// caller answers requests by body; bodies it does not know fail.
type caller struct {
	mu      sync.Mutex
	answers map[string]string
	calls   []string
}

func (c *caller) Call(_ context.Context, method, path string, body []byte) ([]byte, *client.Result, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, method+" "+path+" "+string(body))
	a, ok := c.answers[string(body)]
	if !ok {
		return nil, nil, errors.New("connection reset by the job")
	}
	return []byte(a), &client.Result{Status: 200, Receipt: &sr.Receipt{RequestID: "rid-" + string(body)}, ReceiptB64: "blob", SignatureB64: "sig"}, nil
}

type fixture struct {
	w       *windows.Windows
	st      *sqlite.DB
	pool    *route.Pool
	trusted *minertest.Miner
	miner   *minertest.Miner
	caller  *caller
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
		caller: &caller{answers: answers}}
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
			return f.caller, nil
		}})
	return f
}

func (f *fixture) close() {
	f.pool.Close()
	f.st.Close()
}

func (f *fixture) pair(t *testing.T, job, img, miner, request, response string, at time.Time) {
	t.Helper()
	err := f.st.PutPair(t.Context(), store.PairRecord{JobUUID: job, RequestID: "r-" + request, Image: img, MinerHotkey: miner, ValidatorHotkey: "v",
		ReportedBy: "facilitator", At: at, Pair: protocol.StreamPair{Method: "POST", Path: "/v1/completions",
			RequestB64: base64.StdEncoding.EncodeToString([]byte(request)), ResponseB64: base64.StdEncoding.EncodeToString([]byte(response))}})
	if err != nil {
		t.Fatal(err)
	}
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
		now := time.Now()
		f.job(t, "j1", now.Add(-90*time.Second), 90*time.Second)
		f.job(t, "j2", now.Add(-30*time.Second), 0) // still serving
		f.pair(t, "j1", image, "honest", "a", "A", now)
		f.pair(t, "j2", image, "cheat", "b", "not B", now)
		f.pair(t, "j1", image, "honest", "c", "C", now) // the reference cannot answer it
		f.pair(t, "x", "other:1", "m", "a", "A", now)
		if n, err := f.w.PairsWaiting(t.Context(), image); n != 3 || err != nil {
			t.Fatalf("waiting %d %v", n, err)
		}
		rep, err := f.w.Open(t.Context(), image)
		if err != nil {
			t.Fatal(err)
		}
		if rep.ID == 0 || rep.Comparator != "exact" || rep.Pairs != 3 || rep.Checked != 2 || rep.Failed != 1 || len(rep.Verdicts) != 3 || rep.CoveredSeconds != 120 || rep.TrustedJob == "" {
			t.Errorf("report %+v", rep)
		}
		for _, v := range rep.Verdicts {
			switch v.Miner {
			case "honest":
				if v.RequestID == "r-a" && !v.Verdict.Pass || v.RequestID == "r-c" && v.Error == "" {
					t.Errorf("verdict %+v", v)
				}
			case "cheat":
				if v.Verdict.Pass {
					t.Errorf("cheat passed: %+v", v)
				}
			}
		}
		cheats, err := f.st.Cheats(t.Context(), now.Add(-time.Hour))
		if err != nil || len(cheats) != 1 || cheats[0].Miner != "cheat" || cheats[0].JobUUID != "j2" || cheats[0].Window != rep.ID {
			t.Errorf("cheats %+v %v", cheats, err)
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
		if st.MinerHotkey != f.trusted.Hotkey.SS58() || st.URL != "https://192.0.2.1:8443" || st.JobCert != "job-cert-"+rep.TrustedJob || !strings.Contains(st.ClientKey, "PRIVATE KEY") {
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

func TestOpenRecordsNothingWhenNothingReplays(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, windows.Config{Sample: 1}, nil)
		defer f.close()
		f.pair(t, "j", image, "m", "a", "A", time.Now())
		if _, err := f.w.Open(t.Context(), image); err == nil || !strings.Contains(err.Error(), "no pair could be replayed (first error: connection reset by the job)") {
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
		f.pair(t, "j", image, "m", "a", "A", time.Now())
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
		now := time.Now()
		f.pair(t, "j1", image, "m", "a", "A", now)
		f.pair(t, "j1", image, "m", "a2", "A", now)
		f.pair(t, "j2", "other:1", "m", "a", "A", now)                 // one fresh pair: waits
		f.pair(t, "j3", "old:1", "m", "a", "A", now.Add(-2*time.Hour)) // one old pair: due
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
				p.Proof.StreamingServerCert != "job-cert-"+p.JobUUID || p.Proof.MinerSignature == "" || p.Pair.Path != "/v1/completions" {
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

// A reported pair is kept only if the miner vouched for the job's key and
// that key signed a receipt of exactly these bodies.
func TestTakePair(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, windows.Config{}, nil)
		defer f.close()
		f.job(t, "j", time.Now(), 0)
		key, cert, err := sr.NewKeyPair("job", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		req, resp := []byte(`{"prompt":"hi"}`), []byte(`{"text":"hello"}`)
		hin, hout := sha256.Sum256(req), sha256.Sum256(resp)
		blob, sig := sr.Sign(key, &sr.Receipt{JobUUID: "j", RequestID: "r1", TimestampFrom: time.Now(), TimestampTo: time.Now(),
			InputSHA256: hex.EncodeToString(hin[:]), OutputSHA256: hex.EncodeToString(hout[:])})
		proof := protocol.StreamingServerDetails{StreamingServerCert: string(cert), StreamingServerAddress: "192.0.2.1", StreamingServerPort: 8443}
		proof.MinerSignature = f.miner.Hotkey.SignHex(protocol.StreamingReadyMessage("j", proof.StreamingServerAddress, proof.StreamingServerPort, proof.StreamingServerCert))
		report := func() *protocol.V0StreamPairReport {
			return &protocol.V0StreamPairReport{UUID: "j", Image: image, MinerHotkey: f.miner.Hotkey.SS58(), Proof: proof,
				Pair: protocol.StreamPair{Method: "POST", Path: "/v1/completions", RequestB64: base64.StdEncoding.EncodeToString(req),
					ResponseB64: base64.StdEncoding.EncodeToString(resp), ReceiptB64: blob, SignatureB64: sig}}
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
		bad := report()
		bad.Pair.ResponseB64 = base64.StdEncoding.EncodeToString([]byte("other"))
		if err := f.w.TakePair(t.Context(), bad); err == nil || !strings.Contains(err.Error(), "pair refused") {
			t.Errorf("altered response: %v", err)
		}
		bad = report()
		bad.MinerHotkey = f.trusted.Hotkey.SS58()
		if err := f.w.TakePair(t.Context(), bad); err == nil {
			t.Error("pair blamed on a miner that did not vouch for the key")
		}
		bad = report()
		bad.UUID = "unknown"
		if err := f.w.TakePair(t.Context(), bad); err == nil || !strings.Contains(err.Error(), "does not know") {
			t.Errorf("unknown job: %v", err)
		}
	})
}
