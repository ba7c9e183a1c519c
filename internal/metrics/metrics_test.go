package metrics_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/internal/hordetest"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/internal/metrics"
	"github.com/horde-compute/horde/internal/metrics/promtooltest"
	"github.com/horde-compute/horde/protocol"
)

// scrape GETs url and returns the body, failing the test unless it is 200.
func scrape(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v\n%s", url, resp.StatusCode, err, b)
	}
	return b
}

// A whole horde (fake runtime) runs a batch job that completes, one that
// fails and a streaming job; then each role's /metrics passes promtool's
// checks and tells what happened.
func TestRolesServeMetrics(t *testing.T) {
	promtooltest.Path(t) // the gate first: no horde started for nothing
	h := hordetest.StartFake(t, devstack.Config{StreamingWhitelist: map[string]string{images.LLMImage: hordetest.OnFake.LLMDigest(t)}})
	if j := h.Run(t, hordetest.Spec("echo", "hello")); j.Status != protocol.StatusCompleted {
		t.Fatalf("job: %s %+v", j.Status, hordetest.Last(j).Metadata)
	}
	if j := h.Run(t, hordetest.Spec("exit", "3")); j.Status != protocol.StatusFailed {
		t.Fatalf("failing job: %s %+v", j.Status, hordetest.Last(j).Metadata)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	st, err := h.Client.StartStreaming(ctx, &protocol.JobSpec{ExecutorClass: protocol.ClassTest, DockerImage: images.LLMImage, Args: []string{},
		DownloadTimeLimit: 30, ExecutionTimeLimit: 120, UploadTimeLimit: 30, StreamingStartTimeLimit: 30}, nil)
	if err != nil {
		t.Fatal(err)
	}
	hc, err := st.HTTPClient()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Call(ctx, hc, "POST", "/v1/completions", []byte(`{"prompt": "metrics", "max_tokens": 4, "temperature": 0}`), io.Discard); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Client.Stop(ctx, st.JobUUID); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Client.Watch(ctx, st.JobUUID, func(protocol.StatusEntry) {}); err != nil {
		t.Fatal(err)
	}

	vsrv := httptest.NewServer(h.ValidatorHandler())
	defer vsrv.Close()
	for _, role := range []struct {
		name, url string
		want      []string
	}{
		{"facilitator", h.FacilitatorURL + "/metrics", []string{
			`horde_facilitator_job_statuses_total{reason="none",status="completed"} 2`,
			`horde_facilitator_job_statuses_total{reason="nonzero_return_code",status="failed"} 1`,
			`horde_facilitator_jobs_created_total{kind="streaming"} 1`,
			`horde_facilitator_dispatch_attempts_total{result="sent"} 3`,
			`horde_facilitator_validators_connected 1`,
			`horde_facilitator_job_stage_seconds_count{stage="execute"} 2`,
			`horde_facilitator_job_stage_seconds_count{stage="total"} 3`,
			`go_goroutines `,
		}},
		{"validator", vsrv.URL + "/metrics", []string{
			`horde_validator_jobs_total{reason="none",status="completed"} 2`,
			`horde_validator_jobs_total{reason="nonzero_return_code",status="failed"} 1`,
			`horde_validator_job_attempts_total{outcome="final"} 3`,
			`horde_validator_job_stage_seconds_count{stage="reserve"} 3`,
			`horde_validator_miners_connected 1`,
			`horde_validator_executors{class="always_on.test",state="free"} `,
			`horde_validator_facilitator_connected 1`,
			`horde_validator_outbox_depth `,
		}},
		{"miner", "http://" + h.MinerAddrs[0] + "/metrics", []string{
			`horde_miner_jobs_total{event="accepted",reason="none"} 3`,
			`horde_miner_validators_connected 1`,
			`horde_miner_executors{class="always_on.test",state="busy"} `,
			`horde_streaming_requests_total{code="200"} 1`,
			`horde_streaming_signing_seconds_count 1`,
			`process_start_time_seconds `,
		}},
	} {
		t.Run(role.name, func(t *testing.T) {
			body := scrape(t, role.url)
			promtooltest.CheckMetrics(t, role.name, body)
			for _, w := range role.want {
				if !strings.Contains(string(body), w) {
					t.Errorf("%s /metrics lacks %q", role.name, w)
				}
			}
			if t.Failed() {
				t.Logf("%s", body)
			}
		})
	}
}

// Every set registers on the registry it is given and nowhere else: two
// sets of one role live side by side on two registries (one process running
// two roles, as horde dev does), and a nil registerer registers nothing.
func TestSetsOnInjectedRegistries(t *testing.T) {
	a, b := prometheus.NewRegistry(), prometheus.NewRegistry()
	fa, fb := metrics.NewFacilitator(a), metrics.NewFacilitator(b)
	metrics.NewValidator(a).Watch(metrics.ValidatorGauges{Miners: func() int { return 2 }})
	metrics.NewMiner(nil).Job("accepted", "")
	fa.Status("completed", "")
	fb.Status("failed", "timeout")
	fb.Status("failed", "Arbitrary text a peer sent!")
	if n := testutil.CollectAndCount(a, "horde_facilitator_job_statuses_total"); n != 1 {
		t.Errorf("registry a has %d status series, want 1", n)
	}
	if n := testutil.CollectAndCount(b, "horde_facilitator_job_statuses_total"); n != 2 {
		t.Errorf("registry b has %d status series, want 2 (the arbitrary reason becomes other)", n)
	}
	if n := testutil.CollectAndCount(a, "horde_validator_miners_connected"); n != 1 {
		t.Errorf("registry a has %d miners_connected series, want 1", n)
	}
	// A nil set ignores everything.
	var none *metrics.Facilitator
	none.Status("completed", "")
	none.Stage("total", time.Second)
}

// The deployment's scrape configuration is one Prometheus accepts.
func TestDeployScrapeConfig(t *testing.T) {
	out, err := exec.Command(promtooltest.Path(t), "check", "config", filepath.Join("..", "..", "deploy", "prometheus.yml")).CombinedOutput()
	if err != nil {
		t.Errorf("promtool check config deploy/prometheus.yml: %v\n%s", err, out)
	}
}
