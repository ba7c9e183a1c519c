package minertest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/schematest"
	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/validator/minertest"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
)

// The fake answers as a miner does, on the wire's encoding; it is only as
// good as this test says.
func TestMinerSession(t *testing.T) {
	ctx := t.Context()
	m := minertest.New(t, map[string]int{protocol.ClassTest: 1})
	var net minertest.Net
	n := net.Add(m)
	if _, _, err := net.Dial(ctx, n); err != nil {
		t.Fatal(err)
	}
	moved := n
	moved.AxonInfo.Port++
	if _, _, err := net.Dial(ctx, moved); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("dialled a wrong address: %v", err)
	}
	c, manifest, err := net.Dial(ctx, n)
	if err != nil || manifest[protocol.ClassTest] != 1 {
		t.Fatalf("dial: %v %v", manifest, err)
	}
	send := func(msg protocol.Message) {
		if err := c.Send(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(types ...string) {
		t.Helper()
		for _, want := range types {
			got, err := c.Recv(ctx)
			if err != nil || got.MessageType() != want {
				t.Fatalf("got %v %v, want %s", got, err, want)
			}
		}
	}
	send(&protocol.V0InitialJobRequest{JobUUID: "j", ExecutorClass: protocol.ClassTest, DockerImage: "img", StreamingDetails: &protocol.StreamingDetails{PublicKey: "k"}})
	expect("V0AcceptJobRequest", "V0ExecutorReadyRequest")
	send(&protocol.V0JobRequest{JobUUID: "j", DockerRunCmd: []string{"serve"}})
	expect("V0VolumesReadyRequest", "V0StreamingJobReadyRequest")
	send(&protocol.V0VolumeRequest{JobUUID: "j", MessageID: "1", OutputUpload: &protocol.OutputUpload{OutputUploadType: protocol.UploadSinglePut, URL: "http://x/y", RelativePath: "y"}})
	expect("V0VolumeResult")
	send(&protocol.V0StopJobRequest{JobUUID: "j"})
	expect("V0ExecutionDoneRequest", "V0JobFinishedRequest")
	if len(m.Offers()) != 1 || len(m.Got()) != 4 {
		t.Errorf("offers %d, frames %d", len(m.Offers()), len(m.Got()))
	}
	c.Close("")
	if err := c.Send(ctx, &protocol.V0StopJobRequest{JobUUID: "j"}); err == nil {
		t.Error("sent on a closed session")
	}
	if _, err := c.Recv(context.Background()); err == nil {
		t.Error("received on a closed session")
	}
}

func TestAnswers(t *testing.T) {
	if out, _ := minertest.Answer([]string{"echo", "a", "b"}); out != "a b\n" {
		t.Errorf("echo: %q", out)
	}
	if _, arts := minertest.Answer([]string{"matmul", "1", "4"}); len(arts) == 0 {
		t.Error("matmul: no artifacts")
	}
	if out, _ := minertest.Answer([]string{"search"}); out != "" {
		t.Errorf("short search: %q", out)
	}
}

// Receipts the miner was given are served countersigned, paged by id.
func TestReceiptsServed(t *testing.T) {
	m := minertest.New(t, map[string]int{protocol.ClassTest: 1})
	v := minertest.Hotkey(t)
	var net minertest.Net
	n := net.Add(m)
	lease := m.Lease()
	p := &receipt.StartedPayload{Base: receipt.Base{JobUUID: "j", MinerHotkey: m.Hotkey.SS58(), ValidatorHotkey: v.SS58()}, ExecutorClass: protocol.ClassTest, TTL: 1}
	s, _ := receipt.Sign(v, p)
	payload, _ := json.Marshal(p)
	for range 2 {
		if err := lease.Send(t.Context(), &protocol.V0InitialJobRequest{JobUUID: "j", ExecutorClass: protocol.ClassTest, DockerImage: "i",
			JobStartedReceiptPayload: payload, JobStartedReceiptSignature: s}); err != nil {
			t.Fatal(err)
		}
	}
	hc := &http.Client{Transport: &net}
	resp, err := hc.Get("http://" + n.AxonInfo.IP + ":8000/receipts?after=1&limit=5")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sr store.StoredReceipt
	if err := json.NewDecoder(resp.Body).Decode(&sr); err != nil || sr.ID != 2 || sr.Receipt.Verify() != nil || sr.Receipt.MinerSignature == "" {
		t.Errorf("served %+v %v", sr, err)
	}
	if resp, err := hc.Get("http://" + n.AxonInfo.IP + ":8000/other"); err != nil || resp.StatusCode != 404 {
		t.Errorf("other path: %v %v", resp, err)
	}
	net.SetDown(m, true)
	if _, err := hc.Get("http://" + n.AxonInfo.IP + ":8000/receipts"); err == nil {
		t.Error("a miner that is down answered")
	}
}

// An upstream miner serves its receipts as upstream's pages only: Range,
// 404 and 416 as nginx; its /receipts?after= is not there.
func TestUpstreamPagesServed(t *testing.T) {
	m := minertest.New(t, map[string]int{protocol.ClassTest: 1})
	m.Upstream = true
	v := minertest.Hotkey(t)
	var net minertest.Net
	n := net.Add(m)
	p := &receipt.StartedPayload{Base: receipt.Base{JobUUID: "j", MinerHotkey: m.Hotkey.SS58(), ValidatorHotkey: v.SS58(), Timestamp: receipt.At(time.Now())},
		ExecutorClass: protocol.ClassTest, TTL: 1}
	s, _ := receipt.Sign(v, p)
	payload, _ := json.Marshal(p)
	if err := m.Lease().Send(t.Context(), &protocol.V0InitialJobRequest{JobUUID: "j", ExecutorClass: protocol.ClassTest, DockerImage: "i",
		JobStartedReceiptPayload: payload, JobStartedReceiptSignature: s}); err != nil {
		t.Fatal(err)
	}
	if v := m.Violations(); len(v) > 0 {
		t.Fatal(v)
	}
	hc := &http.Client{Transport: &net}
	base := "http://" + n.AxonInfo.IP + ":8000"
	get := func(path, rng string) (int, []byte) {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	pages := m.Pages()
	if len(pages) != 1 {
		t.Fatalf("pages %v", pages)
	}
	code, page := get(receipt.PagePath(pages[0]), "")
	lines, used := receipt.SplitLines(page)
	if code != 200 || len(lines) != 1 || used != len(page) {
		t.Fatalf("page: %d %q", code, page)
	}
	r, err := receipt.ParseLine(lines[0])
	if err != nil || r.Verify() != nil || r.MinerSignature == "" {
		t.Errorf("line %+v %v", r, err)
	}
	schematest.Valid(t, "receipts.Receipt", lines[0])
	if code, b := get(receipt.PagePath(pages[0]), "bytes=10-"); code != 206 || string(b) != string(page[10:]) {
		t.Errorf("range: %d", code)
	}
	if code, _ := get(receipt.PagePath(pages[0]), fmt.Sprintf("bytes=%d-", len(page))); code != 416 {
		t.Errorf("past the end: %d", code)
	}
	if code, _ := get(receipt.PagePath(pages[0]+1), ""); code != 404 {
		t.Errorf("missing page: %d", code)
	}
	if code, _ := get("/receipts?after=0", ""); code != 404 {
		t.Errorf("horde's path on an upstream miner: %d", code)
	}
}
