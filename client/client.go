// Package client is the Go SDK for horde: it signs requests with the
// client's hotkey and submits, watches, lists and cancels jobs on a
// facilitator. Every request is signed: job creation over the job's
// SignedFields (the signature validators check), cheat reports over the
// report (scope FullRequest), everything else over its method, path, query
// and body (scope HordeRequest). It imports no server code.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// Client talks to one facilitator as one hotkey.
type Client struct {
	BaseURL string
	Hotkey  *sig.Hotkey
	HTTP    *http.Client
}

// New returns a client of the facilitator at baseURL.
func New(baseURL string, k *sig.Hotkey) *Client {
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), Hotkey: k, HTTP: &http.Client{}}
}

// APIError is an error answer of the facilitator.
type APIError struct {
	Status int
	Code   string
	Msg    string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("facilitator: %s (HTTP %d %s)", e.Msg, e.Status, e.Code)
}

// ErrNotFound is returned (wrapped in *APIError's chain) for unknown jobs.
var ErrNotFound = errors.New("not found")

func (e *APIError) Unwrap() error {
	if e.Status == http.StatusNotFound {
		return ErrNotFound
	}
	return nil
}

// sign sets the signature headers: the hotkey's signature over payload at
// the current time, of the given scope (see protocol/client.go).
func (c *Client) sign(req *http.Request, scope string, payload []byte) {
	ts := time.Now().UnixNano()
	s := c.Hotkey.Sign(protocol.SignedMessage(ts, payload))
	req.Header.Set(protocol.HeaderSignatureType, protocol.SignatureTypeBittensor)
	req.Header.Set(protocol.HeaderSignatory, c.Hotkey.SS58())
	req.Header.Set(protocol.HeaderTimestampNS, strconv.FormatInt(ts, 10))
	req.Header.Set(protocol.HeaderSignature, base64.StdEncoding.EncodeToString(s))
	req.Header.Set(protocol.HeaderSignatureScope, scope)
}

// request makes a request signed over its method, path, query and body
// (scope HordeRequest), or, with scope and payload given, over payload.
func (c *Client) request(ctx context.Context, method, path string, body []byte, scope string, payload []byte) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if scope == "" {
		scope, payload = protocol.ScopeHordeRequest, protocol.RequestPayload(method, req.URL.RequestURI(), body)
	}
	c.sign(req, scope, payload)
	if len(body) > 0 {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, nil
}

// do makes a signed request (see request) and decodes the answer into out.
func (c *Client) do(ctx context.Context, method, path string, body []byte, scope string, payload []byte, out any) error {
	req, err := c.request(ctx, method, path, body, scope, payload)
	if err != nil {
		return err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("facilitator: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return apiError(resp)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func apiError(resp *http.Response) error {
	var e protocol.APIError
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if json.Unmarshal(b, &e) != nil || e.Error == "" {
		e.Error = strings.TrimSpace(string(b))
	}
	return &APIError{Status: resp.StatusCode, Code: e.Code, Msg: e.Error}
}

// CreateJob submits a job: its body in upstream's SDK shape, signed over
// its SignedFields (the signature validators check, upstream's too).
func (c *Client) CreateJob(ctx context.Context, spec *protocol.JobSpec) (*protocol.Job, error) {
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("job: %w", err)
	}
	body, err := spec.RequestBody()
	if err != nil {
		return nil, fmt.Errorf("job: %w", err)
	}
	signed, err := spec.SignedBytes()
	if err != nil {
		return nil, fmt.Errorf("job: %w", err)
	}
	var job protocol.Job
	if err := c.do(ctx, http.MethodPost, protocol.RouteCreateJob, body, protocol.ScopeSignedFields, signed, &job); err != nil {
		return nil, err
	}
	return &job, nil
}

// ReportCheated tells the validator of job (through the facilitator) that
// its miner cheated: trustedJob, the same job run on the validator's
// trusted miner, gave another result. details is any JSON (nil: null).
// Both jobs must be the client's, trustedJob submitted with OnTrustedMiner.
func (c *Client) ReportCheated(ctx context.Context, job, trustedJob string, details json.RawMessage) error {
	if details == nil {
		details = json.RawMessage("null")
	}
	r := protocol.CheatReport{JobUUID: job, TrustedJobUUID: trustedJob, Details: details}
	body, err := json.Marshal(r)
	if err != nil {
		return err
	}
	payload, err := r.SignedPayload()
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodPost, protocol.RouteCheatedJob, body, protocol.ScopeFullRequest, payload, nil)
}

// Job returns a job with its status history.
func (c *Client) Job(ctx context.Context, uuid string) (*protocol.Job, error) {
	var job protocol.Job
	if err := c.do(ctx, http.MethodGet, protocol.RouteJobs+uuid+"/", nil, "", nil, &job); err != nil {
		return nil, err
	}
	return &job, nil
}

// Jobs lists the client's jobs, newest first.
func (c *Client) Jobs(ctx context.Context, offset, limit int) (*protocol.JobList, error) {
	var out protocol.JobList
	path := fmt.Sprintf("%s?offset=%d&limit=%d", protocol.RouteJobs, offset, limit)
	if err := c.do(ctx, http.MethodGet, path, nil, "", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Cancel asks for a job to be cancelled.
func (c *Client) Cancel(ctx context.Context, uuid string) (*protocol.Job, error) {
	var job protocol.Job
	if err := c.do(ctx, http.MethodPost, protocol.RouteJobs+uuid+"/cancel/", nil, "", nil, &job); err != nil {
		return nil, err
	}
	return &job, nil
}

// Watch calls fn for each status of the job, history first, and returns the
// job once it has ended. If the event stream breaks it reconnects, never
// repeating a status.
func (c *Client) Watch(ctx context.Context, uuid string, fn func(protocol.StatusEntry)) (*protocol.Job, error) {
	seen := 0
	for {
		n, job, err := c.watchOnce(ctx, uuid, seen, fn)
		seen = n
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if job == nil || !job.Status.Terminal() { // a facilitator that does not end the stream with the job
			var jerr error
			if job, jerr = c.Job(ctx, uuid); jerr != nil {
				return nil, jerr
			}
		}
		if job.Status.Terminal() {
			for _, e := range job.StatusHistory[min(seen, len(job.StatusHistory)):] {
				fn(e)
			}
			return job, nil
		}
		var ae *APIError
		if errors.As(err, &ae) && ae.Status < 500 {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// watchOnce reads one event stream of the job, calling fn for each status
// past the first seen, and returns how many it has seen and, when the
// facilitator ended the stream with it (event "job"), the job.
func (c *Client) watchOnce(ctx context.Context, uuid string, seen int, fn func(protocol.StatusEntry)) (int, *protocol.Job, error) {
	req, err := c.request(ctx, http.MethodGet, protocol.RouteJobs+uuid+"/events?job=1", nil, "", nil)
	if err != nil {
		return seen, nil, err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return seen, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return seen, nil, apiError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	i, event := 0, ""
	for sc.Scan() {
		line := sc.Text()
		if name, ok := strings.CutPrefix(line, "event: "); ok {
			event = name
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			continue
		}
		if event == "job" {
			var j protocol.Job
			if err := json.Unmarshal([]byte(data), &j); err != nil {
				return seen, nil, fmt.Errorf("event stream: %w", err)
			}
			return seen, &j, nil
		}
		var e protocol.StatusEntry
		if err := json.Unmarshal([]byte(data), &e); err != nil {
			return seen, nil, fmt.Errorf("event stream: %w", err)
		}
		i++
		if i > seen {
			fn(e)
			seen = i
		}
	}
	return seen, nil, sc.Err()
}

// Scores returns each validator's latest scores, weights and their grounds.
func (c *Client) Scores(ctx context.Context) (map[string]protocol.ValidatorScores, error) {
	out := map[string]protocol.ValidatorScores{}
	if err := c.do(ctx, http.MethodGet, protocol.RouteScores, nil, "", nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}
