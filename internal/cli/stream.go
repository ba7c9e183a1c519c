package cli

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/protocol"
	sr "github.com/horde-compute/horde/streamreceipt"
)

func defaultStateDir() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(".horde", "streams")
	}
	return filepath.Join(home, ".horde", "streams")
}

// streamState is where a client keeps its streams (keys, pinned job certificates) and receipts.
type streamState struct{ dir string }

func (s streamState) path(job, ext string) string { return filepath.Join(s.dir, job+ext) }

func (s streamState) save(st *client.Stream) error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(st, "", "  ")
	return os.WriteFile(s.path(st.JobUUID, ".json"), b, 0o600)
}

func (s streamState) load(job string) (*client.Stream, error) {
	b, err := os.ReadFile(s.path(job, ".json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no stream %s in %s (start one with 'horde stream start')", job, s.dir)
	}
	if err != nil {
		return nil, err
	}
	var st client.Stream
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("stream %s: %w", job, err)
	}
	return &st, nil
}

// keptReceipt is one line of a stream's receipts file.
type keptReceipt struct {
	At     time.Time `json:"at"`
	Method string    `json:"method"`
	// Path is the request target (path and query) as sent.
	Path string `json:"path"`
	// ContentType and ResponseContentType are the request's and response's.
	ContentType         string      `json:"content_type,omitempty"`
	Status              int         `json:"status"`
	ResponseContentType string      `json:"response_content_type,omitempty"`
	Receipt             *sr.Receipt `json:"receipt,omitempty"`
	Blob                string      `json:"receipt_b64"`
	Signature           string      `json:"signature_b64"`
	Verified            bool        `json:"verified"`
	Error               string      `json:"error,omitempty"`
	// The bodies, kept (up to keepBodies each) so the pair can be reported later.
	RequestB64  string `json:"request_b64,omitempty"`
	ResponseB64 string `json:"response_b64,omitempty"`
	Reported    bool   `json:"reported,omitempty"`
}

// keepBodies bounds the bodies a receipts file keeps for later reports.
const keepBodies = 1 << 20

func (s streamState) keep(job string, k keptReceipt) error {
	f, err := os.OpenFile(s.path(job, ".receipts.jsonl"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	b, _ := json.Marshal(k)
	_, err = f.Write(append(b, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (e *env) stream(args []string) error {
	if len(args) == 0 {
		return usageErr("horde stream needs a subcommand: start, call, stop, receipts")
	}
	cmds := map[string]func([]string) error{"start": e.streamStart, "call": e.streamCall, "stop": e.streamStop,
		"receipts": e.streamReceipts, "volume": e.streamVolume, "report": e.streamReport}
	f, ok := cmds[args[0]]
	if !ok {
		return usageErr("unknown command 'horde stream %s'", args[0])
	}
	return f(args[1:])
}

func stateFlag(fs *flag.FlagSet) *string {
	var dir string
	fs.StringVar(&dir, "state-dir", defaultStateDir(), "where stream keys, pinned certificates and receipts are kept")
	return &dir
}

func (e *env) streamStart(args []string) error {
	fs := e.flags("stream start")
	var c clientFlags
	c.register(fs)
	state := stateFlag(fs)
	image := fs.String("image", "", "whitelisted service image (required)")
	class := fs.String("executor-class", protocol.ClassTest, "executor class")
	timeout := fs.Duration("timeout", 30*time.Minute, "how long the job may serve")
	startTimeout := fs.Duration("start-timeout", 2*time.Minute, "how long the service may take to become healthy")
	var volumes, uploads, envs listFlag
	fs.Var(&volumes, "volume", volumeHelp)
	fs.Var(&uploads, "output-upload", uploadHelp)
	fs.Var(&envs, "env", "environment variable KEY=VALUE, repeatable")
	cmd, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	spec, err := buildSpec(*image, *class, volumes, uploads, envs, *timeout, 5*time.Minute, 5*time.Minute, cmd)
	if err != nil {
		return err
	}
	spec.StreamingStartTimeLimit = int(startTimeout.Seconds())
	cl, err := c.client()
	if err != nil {
		return err
	}
	start := time.Now()
	st, err := cl.StartStreaming(e.ctx, spec, func(s protocol.StatusEntry) {
		fmt.Fprintf(e.stderr, "  [%6.2fs] %s\n", time.Since(start).Seconds(), describe(s))
	})
	if st != nil && st.JobUUID != "" && err == nil {
		err = streamState{*state}.save(st)
	}
	if err != nil {
		if errors.Is(err, client.ErrNotStreaming) {
			return &ExitError{Code: 1, Err: err}
		}
		return err
	}
	cert, _ := sr.ParseCert([]byte(st.JobCert))
	fp := sha256.Sum256(cert.Raw)
	fmt.Fprintf(e.stdout, "job %s serving at %s\n  certificate sha256 %s\n  vouched for by miner %s (signature verified)\n  client key and job certificate kept in %s\n",
		st.JobUUID, st.URL, hex.EncodeToString(fp[:]), st.MinerHotkey, streamState{*state}.path(st.JobUUID, ".json"))
	fmt.Fprintf(e.stdout, "call it with: %s stream call %s /v1/completions --data '{\"prompt\": \"hello\", \"max_tokens\": 16}'\n", progName(), st.JobUUID)
	return nil
}

func (e *env) streamCall(args []string) error {
	fs := e.flags("stream call")
	state := stateFlag(fs)
	data := fs.String("data", "", "request body, or @FILE to read it from a file")
	method := fs.String("method", "", "HTTP method (default POST with --data, else GET)")
	ctype := fs.String("content-type", "", "request Content-Type (default application/json with --data, else none)")
	report := fs.Bool("report", false, "hand the exchange and its receipt to the facilitator for validators to check")
	var c clientFlags
	c.register(fs)
	pos, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return usageErr("horde stream call JOB_ID PATH[?QUERY] [--data BODY|@FILE] [--method M] [--content-type T]")
	}
	job, path := pos[0], pos[1]
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	var body []byte
	if strings.HasPrefix(*data, "@") {
		b, err := os.ReadFile((*data)[1:])
		if err != nil {
			return usageErr("--data %s: %v", *data, err)
		}
		body = b
	} else {
		body = []byte(*data)
	}
	m := *method
	if m == "" {
		m = http.MethodGet
		if len(body) > 0 {
			m = http.MethodPost
		}
	}
	ct := *ctype
	if ct == "" && len(body) > 0 {
		ct = "application/json"
	}
	ss := streamState{*state}
	st, err := ss.load(job)
	if err != nil {
		return err
	}
	hc, err := st.HTTPClient()
	if err != nil {
		return err
	}
	w := bufio.NewWriter(e.stdout)
	var got bytes.Buffer
	res, err := st.Do(e.ctx, hc, client.Request{Method: m, Target: path, ContentType: ct, Body: body}, io.MultiWriter(flushWriter{w}, &got))
	w.Flush()
	k := keptReceipt{At: time.Now().UTC(), Method: m, Path: path, ContentType: ct}
	if res != nil {
		k.Path = res.Target
		k.Status, k.ResponseContentType, k.Receipt, k.Blob, k.Signature = res.Status, res.ResponseContentType, res.Receipt, res.ReceiptB64, res.SignatureB64
		if len(body) <= keepBodies && got.Len() <= keepBodies {
			k.RequestB64, k.ResponseB64 = base64.StdEncoding.EncodeToString(body), base64.StdEncoding.EncodeToString(got.Bytes())
		}
	}
	k.Verified = err == nil
	if err != nil {
		k.Error = err.Error()
	}
	var reportErr error
	if err == nil && *report {
		cl, cerr := c.client()
		if cerr == nil {
			cerr = cl.ReportPair(e.ctx, job, client.Pair(res.Method, res.Target, body, got.Bytes(), res))
		}
		reportErr, k.Reported = cerr, cerr == nil
	}
	if res != nil && res.ReceiptB64 != "" {
		if kerr := ss.keep(job, k); kerr != nil {
			fmt.Fprintf(e.stderr, "receipt not kept: %v\n", kerr)
		}
	}
	if err != nil {
		if res == nil {
			err = e.whyUnreachable(c, st, err)
		}
		return &ExitError{Code: 1, Err: err}
	}
	if reportErr != nil {
		return &ExitError{Code: 1, Err: fmt.Errorf("report the pair (kept; 'horde stream report' retries): %w", reportErr)}
	}
	if *report {
		fmt.Fprintln(e.stderr, "\nreported to the facilitator for validation")
	}
	printReceipt(e.stderr, res.Receipt, st.MinerHotkey)
	return nil
}

// printReceipt shows what a verified receipt binds.
func printReceipt(w io.Writer, r *sr.Receipt, miner string) {
	none := func(s string) string {
		if s == "" {
			return "no content type"
		}
		return s
	}
	fmt.Fprintf(w, "\nreceipt (%s, %s-stamped): request %s\n  %s %s (%s) → HTTP %d (%s)\n  from %s to %s\n  input sha256  %s\n  output sha256 %s\n  every field verified against what was sent and received; signature OK (job key vouched for by miner %s)\n",
		sr.ReceiptVersion, r.Stamp, r.RequestID, r.Method, r.Target, none(r.RequestContentType), r.Status, none(r.ResponseContentType),
		r.TimestampFrom.Format(sr.TimeFormat), r.TimestampTo.Format(sr.TimeFormat), r.InputSHA256, r.OutputSHA256, miner)
}

// whyUnreachable explains a call that reached no job: when the facilitator
// says the job has ended, that is the reason, with the job's final status.
func (e *env) whyUnreachable(c clientFlags, st *client.Stream, callErr error) error {
	cl, err := c.client()
	if err != nil {
		return callErr
	}
	j, err := cl.Job(e.ctx, st.JobUUID)
	if err != nil || !j.Status.Terminal() {
		return callErr
	}
	why := string(j.Status)
	if r := reason(lastEntry(j)); r != why {
		why += ": " + r
	}
	return fmt.Errorf("job %s has ended (%s): nothing serves at %s any more", st.JobUUID, why, st.URL)
}

// flushWriter flushes after every write, so a streamed reply shows as it comes.
type flushWriter struct{ w *bufio.Writer }

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = f.w.Flush()
	}
	return n, err
}

func (e *env) streamStop(args []string) error {
	fs := e.flags("stream stop")
	var c clientFlags
	c.register(fs)
	pos, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("horde stream stop JOB_ID")
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	if _, err := cl.Stop(e.ctx, pos[0]); err != nil {
		return err
	}
	j, err := cl.Watch(e.ctx, pos[0], func(s protocol.StatusEntry) {})
	if err != nil {
		return err
	}
	printResult(e.stdout, j, nil, nil)
	return jobErr(j)
}

func (e *env) streamReceipts(args []string) error {
	fs := e.flags("stream receipts")
	state := stateFlag(fs)
	asJSON := fs.Bool("json", false, "print the receipts as JSON lines")
	pos, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("horde stream receipts JOB_ID")
	}
	b, err := os.ReadFile(streamState{*state}.path(pos[0], ".receipts.jsonl"))
	if errors.Is(err, os.ErrNotExist) {
		fmt.Fprintln(e.stdout, "no receipts kept for this job")
		return nil
	}
	if err != nil {
		return err
	}
	if *asJSON {
		_, err := e.stdout.Write(b)
		return err
	}
	fmt.Fprintf(e.stdout, "%-26s  %-6s %-22s %4s  %-24s  %s\n", "REQUEST", "METHOD", "PATH", "HTTP", "FINISHED", "VERIFIED")
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var k keptReceipt
		if json.Unmarshal([]byte(line), &k) != nil {
			continue
		}
		id, at, ok := "-", "-", "yes"
		if k.Receipt != nil {
			id, at = k.Receipt.RequestID, k.Receipt.TimestampTo.Format(sr.TimeFormat)
		}
		if !k.Verified {
			ok = "NO: " + k.Error
		}
		fmt.Fprintf(e.stdout, "%-26s  %-6s %-22s %4d  %-24s  %s\n", id, k.Method, k.Path, k.Status, at, ok)
	}
	return nil
}

func (e *env) streamVolume(args []string) error {
	fs := e.flags("stream volume")
	var c clientFlags
	c.register(fs)
	volume := fs.String("volume", "", "one more input volume for the job ("+strings.ReplaceAll(volumeHelp, "\n", " ")+")")
	upload := fs.String("output-upload", "", "upload the job's outputs so far ("+strings.ReplaceAll(uploadHelp, "\n", " ")+")")
	pos, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || (*volume == "") == (*upload == "") {
		return usageErr("horde stream volume JOB_ID (--volume SPEC | --output-upload SPEC)")
	}
	var msg protocol.VolumeMessage
	if *volume != "" {
		v, err := parseVolume(*volume)
		if err != nil {
			return err
		}
		msg.Volume = &v
	} else {
		u, err := parseUpload(*upload)
		if err != nil {
			return err
		}
		msg.OutputUpload = &u
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	ack, err := cl.SendVolume(e.ctx, pos[0], &msg)
	if err != nil {
		return &ExitError{Code: 1, Err: err}
	}
	fmt.Fprintf(e.stdout, "message %s acknowledged\n", ack.MessageID)
	for k, v := range ack.UploadResults {
		fmt.Fprintf(e.stdout, "  %s → HTTP %s\n", k, v)
	}
	return nil
}

// streamReport hands the kept, verified exchanges of a job not yet reported
// to the facilitator, for validators to check.
func (e *env) streamReport(args []string) error {
	fs := e.flags("stream report")
	var c clientFlags
	c.register(fs)
	state := stateFlag(fs)
	pos, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("horde stream report JOB_ID")
	}
	job := pos[0]
	path := streamState{*state}.path(job, ".receipts.jsonl")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no receipts kept for job %s", job)
	}
	if err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	var lines []keptReceipt
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var k keptReceipt
		if json.Unmarshal([]byte(line), &k) == nil {
			lines = append(lines, k)
		}
	}
	sent, skipped := 0, 0
	var failed error
	for i, k := range lines {
		if k.Reported || !k.Verified || k.RequestB64 == "" && k.ResponseB64 == "" {
			skipped++
			continue
		}
		p := &protocol.StreamPair{Method: k.Method, Path: k.Path, ContentType: k.ContentType, RequestB64: k.RequestB64, Status: k.Status,
			ResponseContentType: k.ResponseContentType, ResponseB64: k.ResponseB64, ReceiptB64: k.Blob, SignatureB64: k.Signature}
		err := cl.ReportPair(e.ctx, job, p)
		var apiErr *client.APIError
		if errors.As(err, &apiErr) && apiErr.Status == http.StatusConflict {
			err = nil // taken before
		}
		if err != nil {
			failed = err
			continue
		}
		lines[i].Reported = true
		sent++
	}
	var buf bytes.Buffer
	for _, k := range lines {
		b, _ := json.Marshal(k)
		buf.Write(append(b, '\n'))
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "reported %d pairs (%d skipped: already reported, unverified or without bodies)\n", sent, skipped)
	if failed != nil {
		return &ExitError{Code: 1, Err: fmt.Errorf("some pairs were refused: %w", failed)}
	}
	return nil
}
