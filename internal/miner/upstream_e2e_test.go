package miner_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/internal/executor/fakert"
	"github.com/horde-compute/horde/internal/hordetest"
	"github.com/horde-compute/horde/internal/schematest"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
)

// upstreamFetcher reads a miner's receipt pages as upstream's validator
// does (compute_horde.receipts.transfer): the first read of a page whole
// (gzip welcome), then "Range: bytes=<read so far>-" with the total from
// Content-Range as the next checkpoint; 404 and 416 mean nothing new.
type upstreamFetcher struct {
	base       string
	checkpoint map[int64]int
}

func (f *upstreamFetcher) fetch(ctx context.Context, page int64) ([]byte, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.base+"/receipts/"+strconv.FormatInt(page, 10)+".jsonl", nil)
	ranged := f.checkpoint[page] > 0
	if ranged {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", f.checkpoint[page]))
	}
	// Without a Range, Go's transport asks for gzip and inflates, as aiohttp does.
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusNotFound, http.StatusRequestedRangeNotSatisfiable:
		return nil, nil
	case http.StatusOK, http.StatusPartialContent:
	default:
		return nil, fmt.Errorf("page %d: %s", page, resp.Status)
	}
	if ranged {
		cr := resp.Header.Get("Content-Range")
		_, total, ok := strings.Cut(cr, "/")
		n, err := strconv.Atoi(total)
		if !strings.HasPrefix(strings.ToLower(cr), "bytes ") || !ok || err != nil {
			return nil, fmt.Errorf("page %d: Content-Range %q", page, cr)
		}
		f.checkpoint[page] = n
	} else {
		f.checkpoint[page] = len(b)
	}
	return b, nil
}

// A horde validator drives a horde miner with horde's extensions off on
// both ends: the validator speaks upstream's protocol only (to the miner and
// to the facilitator, which takes upstream's authentication), the miner plays upstream's (--upstream-only: no
// horde_capabilities in its manifest, no /receipts?after=), so the
// validator sends upstream's exact messages (no horde_allow_pull: the
// miner's own pull policy decides); the organic job completes on an image
// the miner pulled by that policy, and its three receipts are fetched by
// page as upstream's validator fetches them, each line an upstream Receipt
// with both signatures good.
func TestUpstreamModeEndToEnd(t *testing.T) {
	const image = "upstream/organic:1"
	h := hordetest.StartFake(t, devstack.Config{
		Manifest:          map[string]int{protocol.ClassTest: 1},
		AllowPull:         false,               // no horde_allow_pull from the validator
		MinerImagePull:    protocol.PullAlways, // the miner's own policy decides
		MinerUpstreamOnly: true,
		ValidatorUpstream: true, // upstream's protocol on the validator's links too
	})
	h.Fake.RegisterPullable(image, func(ctx context.Context, c *fakert.Container) int {
		fmt.Fprintln(c.Stdout, "ran as upstream")
		return 0
	})
	start := time.Now()
	spec := hordetest.Spec()
	spec.DockerImage = image
	job := h.Run(t, spec)
	if job.Status != protocol.StatusCompleted {
		t.Fatalf("job %s: %+v", job.Status, hordetest.Last(job).Metadata)
	}
	if out := hordetest.Last(job).Metadata.MinerResponse.DockerProcessStdout; !strings.Contains(out, "ran as upstream") {
		t.Errorf("stdout = %q", out)
	}

	// The validator hands the finished receipt over after the job's result:
	// read the pages again, as upstream's validator does every few seconds,
	// until the miner has all three (the test's deadline bounds the wait).
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	resp, err := http.Get("http://" + h.Stack.MinerAddrs[0] + "/receipts?after=0")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("an upstream-only miner serves /receipts?after=: %s", resp.Status)
	}
	f := &upstreamFetcher{base: "http://" + h.Stack.MinerAddrs[0], checkpoint: map[int64]int{}}
	first := start.Unix() / 300
	got := map[receipt.Type]bool{}
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	for len(got) < 3 {
		for page := first; page <= time.Now().Unix()/300; page++ {
			b, err := f.fetch(ctx, page)
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.SplitAfter(string(b), "\n") {
				if line == "" {
					continue
				}
				if !strings.HasSuffix(line, "\n") {
					t.Fatalf("page %d ends in a partial line: %q", page, line)
				}
				schematest.Valid(t, "receipts.Receipt", []byte(line))
				var u struct {
					Payload            json.RawMessage `json:"payload"`
					ValidatorSignature string          `json:"validator_signature"`
					MinerSignature     string          `json:"miner_signature"`
				}
				var typ struct {
					Type    receipt.Type `json:"receipt_type"`
					JobUUID string       `json:"job_uuid"`
				}
				if json.Unmarshal([]byte(line), &u) != nil || json.Unmarshal(u.Payload, &typ) != nil {
					t.Fatalf("line %s", line)
				}
				r := receipt.Receipt{Type: typ.Type, Payload: u.Payload, ValidatorSignature: u.ValidatorSignature, MinerSignature: u.MinerSignature}
				if err := r.Verify(); err != nil || r.MinerSignature == "" {
					t.Errorf("line %s: %v", line, err)
				}
				if typ.JobUUID != job.UUID {
					continue
				}
				if got[typ.Type] {
					t.Errorf("receipt %s read twice", typ.Type)
				}
				got[typ.Type] = true
			}
		}
		if len(got) == 3 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("receipts of job %s on the miner's pages: %v", job.UUID, got)
		case <-poll.C:
		}
	}
}

// Without the miner's say-so, an upstream validator's job (no
// horde_allow_pull) cannot pull its image: the default policy leaves
// pulling to horde validators.
func TestUpstreamModeDefaultPullPolicy(t *testing.T) {
	const image = "upstream/organic:1"
	h := hordetest.StartFake(t, devstack.Config{Manifest: map[string]int{protocol.ClassTest: 1}})
	h.Fake.RegisterPullable(image, func(context.Context, *fakert.Container) int { return 0 })
	spec := hordetest.Spec()
	spec.DockerImage = image
	job := h.Run(t, spec)
	if m := hordetest.Last(job).Metadata; job.Status != protocol.StatusFailed || m == nil || m.Comment != "image_pull_failed" {
		t.Errorf("job %s: %+v", job.Status, m)
	}
}
