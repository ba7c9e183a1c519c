package miner

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/horde-compute/horde/internal/executor/fakert"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
)

// An upstream validator, scripted frame by frame as upstream's
// miner_client/organic.py and its receipts code send them (JSON as pydantic
// writes it: nulls, the volume in the initial request only, the preset and
// a docker_run_cmd list, no horde field), runs an organic job on a horde
// miner. Every frame the miner sends validates against upstream's
// MinerToValidatorMessage union; the job finishes; the three receipts are
// on the miner's page in upstream's Receipt shape.
func TestScriptedUpstreamValidator(t *testing.T) {
	mk, v := hotkey(t, 40), hotkey(t, 41)
	rt := fakert.New()
	images.RegisterFake(rt)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rt.Close(ctx)
	})
	log := slog.New(slog.DiscardHandler)
	st := openStore(t)
	addr := testMiner(t, Config{Hotkey: mk, Manifest: map[string]int{protocol.ClassTest: 1}, TrustedValidator: v.SS58(), Store: st,
		Backend: &Local{Runtime: rt, DataDir: t.TempDir(), Owner: mk.SS58(), Log: log}, ImagePull: protocol.PullAlways})
	s := dialRaw(t, addr, v.SS58())
	write := func(doc string) {
		t.Helper()
		if err := s.ws.Write(t.Context(), websocket.MessageText, []byte(doc)); err != nil {
			t.Fatal(err)
		}
	}
	auth := wsconn.NewValidatorAuth(v, mk.SS58(), time.Now())
	write(fmt.Sprintf(`{"message_type": "ValidatorAuthForMiner", "validator_hotkey": %q, "miner_hotkey": %q, "timestamp": %d, "signature": %q}`,
		auth.ValidatorHotkey, auth.MinerHotkey, auth.Timestamp, auth.Signature))
	if m, b := s.recv(); m.MessageType() != "V0ExecutorManifestRequest" {
		t.Fatalf("want the manifest, got %s", b)
	}

	const uuid = "7b1c5e2a-0000-4000-8000-0000000000aa"
	now := time.Now()
	started := &receipt.StartedPayload{Base: receipt.Base{JobUUID: uuid, MinerHotkey: mk.SS58(), ValidatorHotkey: v.SS58(), Timestamp: receipt.At(now)},
		ExecutorClass: protocol.ClassTest, IsOrganic: true, TTL: 300}
	startedSig, _ := receipt.Sign(v, started)
	startedJSON, _ := json.Marshal(started)
	var zb bytes.Buffer
	zw := zip.NewWriter(&zb)
	w, _ := zw.Create("a.txt")
	w.Write([]byte("from an upstream validator"))
	zw.Close()
	write(fmt.Sprintf(`{"message_type": "V0InitialJobRequest", "job_uuid": %q, "executor_class": "always_on.test", "docker_image": %q, "timeout_seconds": null,`+
		` "volume": {"volume_type": "inline", "contents": %q, "relative_path": null}, "job_started_receipt_payload": %s, "job_started_receipt_signature": %q,`+
		` "streaming_details": null, "executor_timing": {"allowed_leeway": 5, "download_time_limit": 30, "execution_time_limit": 30, "upload_time_limit": 30, "streaming_start_time_limit": 0}}`,
		uuid, images.JobImage, base64.StdEncoding.EncodeToString(zb.Bytes()), startedJSON, startedSig))

	var seen []string
	var finished *protocol.V0JobFinishedRequest
	for finished == nil {
		m, b := s.recv()
		seen = append(seen, m.MessageType())
		switch m := m.(type) {
		case *protocol.V0AcceptJobRequest:
			accepted := &receipt.AcceptedPayload{Base: receipt.Base{JobUUID: uuid, MinerHotkey: mk.SS58(), ValidatorHotkey: v.SS58(), Timestamp: receipt.At(time.Now())},
				TimeAccepted: receipt.At(time.Now()), TTL: 300}
			sg, _ := receipt.Sign(v, accepted)
			pj, _ := json.Marshal(accepted)
			write(fmt.Sprintf(`{"message_type": "V0JobAcceptedReceiptRequest", "payload": %s, "signature": %q}`, pj, sg))
		case *protocol.V0ExecutorReadyRequest:
			write(fmt.Sprintf(`{"message_type": "V0JobRequest", "job_uuid": %q, "executor_class": "always_on.test", "docker_image": %q, "raw_script": null,`+
				` "docker_run_options_preset": "none", "docker_run_cmd": ["demo"], "env": {}, "volume": null, "output_upload": null, "artifacts_dir": null}`,
				uuid, images.JobImage))
		case *protocol.V0JobFinishedRequest:
			finished = m
		case *protocol.V0VolumesReadyRequest, *protocol.V0ExecutionDoneRequest, *protocol.V0MachineSpecsRequest, *protocol.V0MainHotkeyMessage:
		default:
			t.Fatalf("unexpected %s (after %v)", b, seen)
		}
	}
	if !strings.Contains(finished.DockerProcessStdout, "processed 1 input files") {
		t.Errorf("stdout = %q", finished.DockerProcessStdout)
	}
	fin := &receipt.FinishedPayload{Base: receipt.Base{JobUUID: uuid, MinerHotkey: mk.SS58(), ValidatorHotkey: v.SS58(), Timestamp: receipt.At(time.Now())},
		TimeStarted: receipt.At(now), TimeTookUS: time.Since(now).Microseconds(), ScoreStr: "1.0"}
	sg, _ := receipt.Sign(v, fin)
	pj, _ := json.Marshal(fin)
	write(fmt.Sprintf(`{"message_type": "V0JobFinishedReceiptRequest", "payload": %s, "signature": %q}`, pj, sg))
	// The miner handles a session's messages in order: its answer to the
	// main hotkey request means the receipt before it is stored.
	write(`{"message_type": "V0MainHotkeyMessage", "main_hotkey": null}`)
	for {
		m, b := s.recv()
		if m.MessageType() == "V0MainHotkeyMessage" {
			break
		}
		if m.MessageType() == "GenericError" {
			t.Fatalf("miner refused: %s", b)
		}
	}

	got := map[string]bool{}
	for page := receipt.PageAt(now); page <= receipt.PageAt(time.Now()); page++ {
		resp, body := get(t, "http://"+addr+receipt.PagePrefix+strconv.FormatInt(page, 10)+".jsonl")
		if resp.StatusCode == http.StatusNotFound {
			continue
		}
		for _, line := range strings.SplitAfter(string(body), "\n") {
			if line == "" {
				continue
			}
			checkLine(t, line)
			r, _ := receipt.ParseLine([]byte(line))
			got[string(r.Type)] = true
		}
	}
	if len(got) != 3 {
		t.Errorf("receipts on the pages: %v", got)
	}
}
