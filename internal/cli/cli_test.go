package cli

import (
	"archive/zip"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/internal/hordetest"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/store/sqlite"
	"github.com/horde-compute/horde/internal/synthetic"
	"github.com/horde-compute/horde/internal/validation"
	"github.com/horde-compute/horde/internal/validator"
	"github.com/horde-compute/horde/protocol"
)

func run(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	var out, errb bytes.Buffer
	err := Run(t.Context(), args, &out, &errb)
	code = 0
	if err != nil {
		code = 1
		var ee *ExitError
		if errors.As(err, &ee) {
			code = ee.Code
		}
		errb.WriteString("horde: " + err.Error() + "\n")
	}
	return out.String(), errb.String(), code
}

func TestJobCommands(t *testing.T) {
	h := hordetest.Start(t, devstack.Config{})
	env := map[string]string{"HORDE_FACILITATOR": h.FacilitatorURL, "HORDE_WALLET_PATH": filepath.Join(h.DataDir, "wallets"), "HORDE_WALLET": "client"}
	input := filepath.Join(t.TempDir(), "in.txt")
	os.WriteFile(input, []byte("one two three"), 0o644)

	out, errs, code := run(t, env, "job", "run", "--image", "horde/job:dev", "--volume", "inline:"+input,
		"--output-upload", "put:result.json="+h.Objects.URL+"/cli/result.json", "--timeout", "30s", "--", "demo")
	if code != 0 {
		t.Fatalf("job run exit %d\n%s%s", code, out, errs)
	}
	for _, want := range []string{"completed", "in.txt: 13 bytes, 3 words", "result.json → " + h.Objects.URL + "/cli/result.json (HTTP 200)", "JobFinishedReceipt", "validator signature verified"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	for _, want := range []string{"accepted by miner", "volumes_ready", "completed"} {
		if !strings.Contains(errs, want) {
			t.Errorf("progress lacks %q:\n%s", want, errs)
		}
	}
	if _, ok := h.Objects.Get("cli/result.json"); !ok {
		t.Error("output not uploaded")
	}

	out, errs, code = run(t, env, "job", "run", "--image", "horde/job:dev", "--", "exit", "4")
	if code != 1 || !strings.Contains(errs, "failed at stage execution") || !strings.Contains(errs, "code 4") {
		t.Errorf("failing job: exit %d\n%s%s", code, out, errs)
	}

	out, _, code = run(t, env, "job", "run", "--json", "--image", "horde/job:dev", "--", "echo", "json")
	var job protocol.Job
	if err := json.Unmarshal([]byte(out), &job); code != 0 || err != nil || job.Status != protocol.StatusCompleted {
		t.Errorf("--json: exit %d, %v\n%s", code, err, out)
	}
	var top struct{ Stdout, Stderr *string }
	if err := json.Unmarshal([]byte(out), &top); err != nil || top.Stdout == nil || *top.Stdout != "json\n" || top.Stderr == nil {
		t.Errorf("--json: stdout and stderr not at the top level: %v\n%s", err, out)
	}

	// Artifacts: asked for, collected by the executor, returned and saved.
	saved := filepath.Join(t.TempDir(), "artifacts")
	out, errs, code = run(t, env, "job", "run", "--image", "horde/job:dev", "--json", "--artifacts-dir", "/artifacts", "--save-artifacts", saved, "--", "matmul", "3", "4")
	var arts struct {
		Artifacts map[string]string `json:"artifacts"`
		Saved     []string          `json:"saved_artifacts"`
	}
	if err := json.Unmarshal([]byte(out), &arts); code != 0 || err != nil || len(arts.Artifacts) != 1 || len(arts.Saved) != 1 {
		t.Fatalf("artifacts: exit %d %v\n%s%s", code, err, out, errs)
	}
	got, err := os.ReadFile(filepath.Join(saved, "c-000.bin"))
	want := synthetic.Multiply(synthetic.Inputs(3, 4)).Encode()
	if err != nil || !bytes.Equal(got, want) || base64.StdEncoding.EncodeToString(got) != arts.Artifacts["/artifacts/c-000.bin"] {
		t.Errorf("saved artifact: %x %v, want the product %x; reported %v", got, err, want, arts.Artifacts)
	}

	out, _, code = run(t, env, "job", "list")
	if code != 0 || !strings.Contains(out, "4 of 4") {
		t.Errorf("list: exit %d\n%s", code, out)
	}
	out, _, code = run(t, env, "job", "status", job.UUID, "--wallet", "client")
	if code != 0 || !strings.Contains(out, "execution_done") || !strings.Contains(out, "json") {
		t.Errorf("status: exit %d\n%s", code, out)
	}
	_, errs, code = run(t, env, "job", "cancel", job.UUID)
	if code != 1 || !strings.Contains(errs, "already ended") {
		t.Errorf("cancel ended job: exit %d %s", code, errs)
	}
}

func TestUsageErrors(t *testing.T) {
	cases := [][]string{
		{"nope"},
		{"job"},
		{"job", "run"},
		{"job", "run", "--image", "x", "--volume", "ftp:/x"},
		{"job", "run", "--image", "x", "--env", "NOEQUALS"},
		{"job", "run", "--image", "x", "--timeout", "0s"},
		{"miner", "--manifest", "gpu=1"},
		{"miner", "--trusted"},
		{"miner", "--backend", "nomad"},
		{"miner", "--backend", "kubernetes", "--namespace", ""},
		{"executor", "--miner-url", "ws://x/", "--backend", "nomad"},
		{"miner", "--validator", "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"},
		{"miner", "--trusted", "--validator", "not-an-address"},
		{"validator", "--streaming-whitelist", "img"},
		{"validator", "--comparators", "img=fuzzy"},
		{"validator", "--trusted-miner", "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"},
		{"facilitator", "--validators", "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY", "--clients", "not-an-address"},
		{"facilitator", "--validators", "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY", "--token-key-file", shortKey(t)},
	}
	for _, args := range cases {
		_, errs, code := run(t, map[string]string{"HORDE_WALLET_PATH": t.TempDir()}, args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2\n%s", args, code, errs)
		}
	}
}

// shortKey is a token key file too short to sign with.
func shortKey(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(p, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestKeys(t *testing.T) {
	dir := t.TempDir()
	out, _, code := run(t, nil, "keys", "new", "--wallet-path", dir, "--wallet", "w")
	if code != 0 || !strings.Contains(out, "created hotkey default") {
		t.Fatalf("keys new: %d %s", code, out)
	}
	_, _, code = run(t, nil, "keys", "new", "--wallet-path", dir, "--wallet", "w")
	if code == 0 {
		t.Error("keys new overwrote a key")
	}
	out, _, code = run(t, nil, "keys", "show", "--json", "--wallet-path", dir, "--wallet", "w")
	var got map[string]string
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || !strings.HasPrefix(got["ss58Address"], "5") {
		t.Errorf("keys show: %d %s", code, out)
	}
	// A real Bittensor wallet from the test vectors loads too.
	out, _, code = run(t, nil, "keys", "show", "--wallet-path", "../../sig/testdata/wallets", "--wallet", "miner")
	if code != 0 || !strings.Contains(out, "5FYwNgYu5Wj7Vv49KtC3gXa1W1dn2BnMBGNKGrLy8pX9i4T7") {
		t.Errorf("vector wallet: %d %s", code, out)
	}
	_, errs, code := run(t, nil, "keys", "show", "--wallet-path", dir, "--wallet", "missing")
	if code != 1 || !strings.Contains(errs, "horde keys new") {
		t.Errorf("missing wallet: %d %s", code, errs)
	}
}

func TestValidatorScores(t *testing.T) {
	h := hordetest.Start(t, devstack.Config{Synthetic: validator.SyntheticConfig{
		Params:     map[string]synthetic.Params{protocol.ClassTest: {SearchSpace: 1000, MatrixN: 24, Expected: 10 * time.Second, Weight: 1}},
		Generators: []synthetic.Generator{synthetic.Search{}}}})
	if _, err := h.Round(t.Context()); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(h.DataDir, "validator.db")
	out, errs, code := run(t, nil, "validator", "scores", "--db", db)
	if code != 0 || !strings.Contains(out, h.Miners[0].SS58()) || !strings.Contains(out, "always_on.test") || !strings.Contains(out, "1.000") {
		t.Errorf("scores: exit %d\n%s%s", code, out, errs)
	}
	out, _, code = run(t, nil, "validator", "scores", "--db", db, "--json")
	var scores []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &scores) != nil || len(scores) != 1 {
		t.Errorf("--json: exit %d %s", code, out)
	}
}

func TestStreamCommands(t *testing.T) {
	digest := hordetest.LLMImage(t, hordetest.Docker(t))
	h := hordetest.Start(t, devstack.Config{StreamingWhitelist: map[string]string{"horde/llm:dev": digest}})
	env := map[string]string{"HORDE_FACILITATOR": h.FacilitatorURL, "HORDE_WALLET_PATH": filepath.Join(h.DataDir, "wallets"),
		"HORDE_WALLET": "client", "HORDE_STATE_DIR": t.TempDir()}
	out, errs, code := run(t, env, "stream", "start", "--image", "horde/llm:dev", "--timeout", "2m")
	if code != 0 || !strings.Contains(out, "serving at https://") || !strings.Contains(errs, "streaming_ready") {
		t.Fatalf("start: exit %d\n%s%s", code, out, errs)
	}
	job := strings.Fields(out)[1]
	if kept := filepath.Join(env["HORDE_STATE_DIR"], job+".json"); !strings.Contains(out, "client key and job certificate kept in "+kept) {
		t.Errorf("start does not say where the key is kept:\n%s", out)
	}
	out, errs, code = run(t, env, "stream", "call", job, "/v1/completions", "--report", "--data", `{"prompt": "the miner", "max_tokens": 4, "temperature": 0}`)
	if code != 0 || !strings.Contains(out, `"text_completion"`) || !strings.Contains(errs, "signature OK") || !strings.Contains(errs, "reported") ||
		!strings.Contains(errs, "horde-streaming-receipt/v2, client-stamped") || !strings.Contains(errs, "POST /v1/completions (application/json) → HTTP 200 (application/json)") {
		t.Fatalf("call: exit %d\n%s%s", code, out, errs)
	}
	_, errs, code = run(t, env, "stream", "call", job, "/v1/completions?n=1", "--data", `{"prompt": "every answer", "max_tokens": 4, "temperature": 0}`)
	if code != 0 {
		t.Fatalf("second call: exit %d %s", code, errs)
	}
	out, errs, code = run(t, env, "stream", "report", job)
	if code != 0 || !strings.Contains(out, "reported 1 pairs (1 skipped") {
		t.Errorf("report: exit %d\n%s%s", code, out, errs)
	}
	out, _, code = run(t, env, "stream", "receipts", job)
	if code != 0 || !strings.Contains(out, "/v1/completions") || !strings.Contains(out, "yes") {
		t.Errorf("receipts: exit %d\n%s", code, out)
	}
	h.Objects.Put("v.zip", func() []byte {
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		w, _ := zw.Create("note.txt")
		w.Write([]byte("mid-job input"))
		zw.Close()
		return buf.Bytes()
	}())
	out, errs, code = run(t, env, "stream", "volume", job, "--volume", "zip_url:"+h.Objects.URL+"/v.zip")
	if code != 0 || !strings.Contains(out, "acknowledged") {
		t.Errorf("volume: exit %d\n%s%s", code, out, errs)
	}
	out, errs, code = run(t, env, "stream", "stop", job)
	if code != 0 || !strings.Contains(out, "completed") {
		t.Errorf("stop: exit %d\n%s%s", code, out, errs)
	}
	_, errs, code = run(t, env, "stream", "call", job, "/v1/completions", "--data", `{"prompt": "the end", "max_tokens": 2}`)
	if code != 1 || !strings.Contains(errs, "has ended (completed)") {
		t.Errorf("call after stop: exit %d %s", code, errs)
	}
	_, errs, code = run(t, env, "stream", "call", "nope", "/x")
	if code != 1 || !strings.Contains(errs, "horde stream start") {
		t.Errorf("unknown stream: exit %d %s", code, errs)
	}
}

func TestValidatorValidations(t *testing.T) {
	db := filepath.Join(t.TempDir(), "validator.db")
	st, err := sqlite.Open(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(validator.WindowReport{Image: "horde/llm:dev", Comparator: "llm", Pairs: 3, Checked: 2, Failed: 1,
		Verdicts: []validator.PairVerdict{{JobUUID: "0123456789", RequestID: "r1", Miner: "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY",
			Verdict: validation.Verdict{Detail: "4 of 12 tokens agree"}}}})
	st.PutWindow(t.Context(), store.Window{Image: "horde/llm:dev", LastPair: 3, Body: body, At: time.Now()},
		[]store.Cheat{{Miner: "5Grw", JobUUID: "0123456789", Evidence: []byte(`{"verdict": "x"}`), At: time.Now()}})
	st.Close()
	out, errs, code := run(t, nil, "validator", "validations", "--db", db)
	if code != 0 || !strings.Contains(out, "checked 2, failed 1") || !strings.Contains(out, "✗ CHEAT") {
		t.Errorf("validations: exit %d\n%s%s", code, out, errs)
	}
	out, _, code = run(t, nil, "validator", "validations", "--db", db, "--evidence")
	// Evidence of the old kind (no replayed request recorded) does not re-check.
	if code != 0 || !strings.Contains(out, `"evidence":{"verdict":"x"}`) || !strings.Contains(out, `"recheck":"evidence format \"\" is not horde-cheat-evidence/v2`) {
		t.Errorf("evidence: exit %d\n%s", code, out)
	}
}
