package minertest

import (
	"bytes"
	"encoding/json"
	"net/http"
	"sort"
	"time"

	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
)

// This file: a miner as upstream ComputeHorde's (Upstream set). It
// advertises no extension, refuses frames upstream's models refuse (with
// GenericError, noted in Violations), drops a job whose volume comes twice,
// answers with upstream's fields only and serves its receipts as upstream's
// pages, GET /receipts/{page}.jsonl.

// UpstreamHonest answers as an honest upstream miner: it accepts every job
// and runs it at once.
func (m *Miner) UpstreamHonest(p Peer, msg protocol.Message) {
	switch f := msg.(type) {
	case *protocol.V0InitialJobRequest:
		p.Send(&protocol.V0AcceptJobRequest{JobUUID: f.JobUUID})
		p.Send(&protocol.V0ExecutorReadyRequest{JobUUID: f.JobUUID})
	case *protocol.V0JobRequest:
		in := m.Initial(f.JobUUID)
		switch {
		case in == nil:
			p.Send(&protocol.GenericError{Details: "Received JobRequest for unknown job_uuid: " + f.JobUUID})
			return
		case in.Volume != nil && f.Volume != nil:
			p.Send(&protocol.GenericError{Details: "Received job volume twice job_uuid: " + f.JobUUID})
			return
		}
		p.Send(&protocol.V0VolumesReadyRequest{JobUUID: f.JobUUID})
		if in.StreamingDetails != nil {
			p.Send(m.StreamingReady(f.JobUUID))
			return
		}
		p.Send(&protocol.V0ExecutionDoneRequest{JobUUID: f.JobUUID})
		fin := Finished(f)
		fin.Timings = nil
		fin.UploadResults = uploadResults(f.OutputUpload)
		p.Send(fin)
	}
}

// uploadResults is what an upstream executor reports of the uploads: the
// response to each, by file.
func uploadResults(u *protocol.OutputUpload) map[string]string {
	if u == nil {
		return nil
	}
	out := map[string]string{}
	switch u.OutputUploadType {
	case protocol.UploadMulti:
		for _, x := range u.Uploads {
			out[x.RelativePath] = `{"status": 200}`
		}
	case protocol.UploadSinglePost, protocol.UploadSinglePut:
		out[u.RelativePath] = `{"status": 200}`
	default:
		out["output.zip"] = `{"status": 200}`
	}
	return out
}

// UpstreamDecline declines as a busy upstream miner, with excuses (receipts
// in upstream's shape, see UpstreamReceipt).
func UpstreamDecline(p Peer, uuid string, excuses ...json.RawMessage) {
	if excuses == nil {
		excuses = []json.RawMessage{}
	}
	p.Send(&protocol.V0DeclineJobRequest{JobUUID: uuid, Reason: protocol.RejectBusy, Receipts: excuses})
}

// UpstreamReceipt returns r as upstream's Receipt model writes it (a page
// line, or an excuse), without its newline.
func UpstreamReceipt(r receipt.Receipt) json.RawMessage {
	b, err := receipt.MarshalLine(r)
	if err != nil {
		panic(err)
	}
	return bytes.TrimSuffix(b, []byte("\n"))
}

// pageLine is one line of the miner's receipt pages.
type pageLine struct {
	page int64
	line []byte
}

// AddPageLine appends line (which should end in "\n", or not, to play a
// line being written) to the miner's page.
func (m *Miner) AddPageLine(page int64, line []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pageJunk = append(m.pageJunk, pageLine{page, line})
}

// Page returns the bytes of the miner's receipt page: the countersigned
// receipts it was given while the page was current, in order, then lines
// added with AddPageLine.
func (m *Miner) Page(page int64) []byte {
	var b bytes.Buffer
	m.mu.Lock()
	// Each receipt is countersigned once (signatures are randomised): a
	// page read again has the same bytes.
	for i := len(m.signedLines); i < len(m.receipts); i++ {
		r := m.receipts[i]
		var l []byte
		if p, err := r.Decode(); err == nil {
			r.MinerSignature, _ = receipt.Sign(m.Hotkey, p)
			l, _ = receipt.MarshalLine(r)
		}
		m.signedLines = append(m.signedLines, l)
	}
	lines := append([][]byte(nil), m.signedLines...)
	at := append([]time.Time(nil), m.receivedAt...)
	junk := append([]pageLine(nil), m.pageJunk...)
	m.mu.Unlock()
	for i, l := range lines {
		if i < len(at) && receipt.PageAt(at[i]) == page {
			b.Write(l)
		}
	}
	for _, j := range junk {
		if j.page == page {
			b.Write(j.line)
		}
	}
	return b.Bytes()
}

// Pages returns the pages the miner has, in order.
func (m *Miner) Pages() []int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := map[int64]bool{}
	for _, t := range m.receivedAt {
		seen[receipt.PageAt(t)] = true
	}
	for _, j := range m.pageJunk {
		seen[j.page] = true
	}
	var out []int64
	for p := range seen {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// servePage serves GET /receipts/{page}.jsonl as upstream's miner (nginx over
// the page files): 404 for a page it does not have, Range requests (206, or
// 416 when nothing was added since).
func (m *Miner) servePage(w http.ResponseWriter, r *http.Request, page int64) {
	have := false
	for _, p := range m.Pages() {
		have = have || p == page
	}
	if !have {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/jsonl")
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(m.Page(page)))
}
