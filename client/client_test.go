package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/pyjson"
	"github.com/horde-compute/horde/sig"
)

// fakeFacilitator is a hand-written facilitator for the SDK's unit tests:
// it checks every request's signature as the real one does and answers
// from canned jobs. The SDK against the real facilitator is tested in
// internal/facilitator.
type fakeFacilitator struct {
	t   *testing.T
	key *sig.Hotkey
	mu  sync.Mutex
	job protocol.Job
	// breakAfter ends the first event stream after this many events.
	breakAfter int
	streams    int
}

func (f *fakeFacilitator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if err := f.verify(r, body); err != nil {
		w.WriteHeader(http.StatusUnauthorized)
		json.NewEncoder(w).Encode(protocol.APIError{Error: err.Error(), Code: "unauthorized"})
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	path := r.URL.Path
	switch {
	case r.Method == "POST" && path == protocol.RouteCreateJob:
		s, err := protocol.ParseJobRequest(body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(protocol.APIError{Error: err.Error(), Code: "bad_request"})
			return
		}
		f.job = protocol.Job{UUID: "j1", Status: protocol.StatusSent, DockerImage: s.DockerImage,
			StatusHistory: []protocol.StatusEntry{{Status: protocol.StatusSent}}}
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(f.job)
	case path == protocol.RouteJobs:
		q := r.URL.RawQuery
		json.NewEncoder(w).Encode(protocol.JobList{Count: 1, Results: []protocol.Job{f.job}, Next: &q})
	case path == protocol.RouteCheatedJob:
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(protocol.CheatReported{Message: string(body)})
	case path == protocol.RouteJobs+"j1/":
		json.NewEncoder(w).Encode(f.job)
	case path == protocol.RouteJobs+"j1/cancel/" || path == protocol.RouteJobs+"j1/stop/":
		w.WriteHeader(http.StatusAccepted)
		json.NewEncoder(w).Encode(f.job)
	case path == protocol.RouteJobs+"j1/volumes/":
		json.NewEncoder(w).Encode(protocol.VolumeAck{MessageID: "m", Success: false, Error: "disk full"})
	case path == protocol.RouteJobs+"j1/pairs/":
		w.WriteHeader(http.StatusConflict)
		json.NewEncoder(w).Encode(protocol.APIError{Error: "taken", Code: "duplicate"})
	case path == protocol.RouteJobs+"j1/events":
		f.streams++
		w.Header().Set("Content-Type", "text/event-stream")
		for i, e := range f.job.StatusHistory {
			if f.streams == 1 && i == f.breakAfter {
				return // the stream breaks
			}
			b, _ := json.Marshal(e)
			fmt.Fprintf(w, "event: status\ndata: %s\n\n", b)
		}
	case path == protocol.RouteScores:
		json.NewEncoder(w).Encode(map[string]protocol.ValidatorScores{"v": {Cycle: 3}})
	default:
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, "no such thing\n")
	}
}

// verify checks the X-CH-* headers over what each scope covers: the body's
// SignedFields (job creation), the sorted body (cheat reports), or the
// method, request target and body.
func (f *fakeFacilitator) verify(r *http.Request, body []byte) error {
	h := r.Header
	if h.Get(protocol.HeaderSignatory) != f.key.SS58() || h.Get(protocol.HeaderSignatureType) != protocol.SignatureTypeBittensor {
		return errors.New("wrong signatory or type")
	}
	ts, err := strconv.ParseInt(h.Get(protocol.HeaderTimestampNS), 10, 64)
	if err != nil || time.Since(time.Unix(0, ts)).Abs() > time.Minute {
		return errors.New("bad timestamp")
	}
	var payload []byte
	scope := h.Get(protocol.HeaderSignatureScope)
	switch r.URL.Path {
	case protocol.RouteCreateJob:
		if scope != protocol.ScopeSignedFields {
			return fmt.Errorf("scope %q", scope)
		}
		j, err := protocol.SignedFieldsOfRequest(body)
		if err != nil {
			return err
		}
		payload, _ = protocol.SignedPayload(j)
	case protocol.RouteCheatedJob:
		if scope != protocol.ScopeFullRequest {
			return fmt.Errorf("scope %q", scope)
		}
		payload, err = pyjson.Canonical(body)
		if err != nil {
			return err
		}
	default:
		if scope != protocol.ScopeHordeRequest {
			return fmt.Errorf("scope %q", scope)
		}
		payload = protocol.RequestPayload(r.Method, r.RequestURI, body)
	}
	raw, err := sig.ParseBase64(h.Get(protocol.HeaderSignature))
	if err != nil {
		return err
	}
	return raw.Verify(f.key.Public(), protocol.SignedMessage(ts, payload))
}

func newFake(t *testing.T) (*fakeFacilitator, *Client) {
	k, err := sig.FromSeed(sig.RandomSeed())
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeFacilitator{t: t, key: k}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, New(srv.URL+"/", k)
}

func TestClientCalls(t *testing.T) {
	_, c := newFake(t)
	ctx := t.Context()
	spec := &protocol.JobSpec{ExecutorClass: protocol.ClassTest, DockerImage: "img", ExecutionTimeLimit: 5}
	j, err := c.CreateJob(ctx, spec)
	if err != nil || j.UUID != "j1" {
		t.Fatalf("create: %+v %v", j, err)
	}
	multi := &protocol.JobSpec{ExecutorClass: protocol.ClassTest, DockerImage: "img", ExecutionTimeLimit: 5,
		OutputUpload: &protocol.OutputUpload{OutputUploadType: protocol.UploadMulti, SystemOutput: &protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: "http://h/z"}}}
	if _, err := c.CreateJob(ctx, multi); err != nil {
		t.Errorf("a job with a system output: %v", err)
	}
	if err := c.ReportCheated(ctx, "a", "b", nil); err != nil {
		t.Errorf("report cheated: %v", err)
	}
	if _, err := c.CreateJob(ctx, &protocol.JobSpec{DockerImage: "img"}); err == nil || !strings.Contains(err.Error(), "executor_class") {
		t.Errorf("an invalid spec was sent: %v", err)
	}
	if j, err := c.Job(ctx, "j1"); err != nil || j.DockerImage != "img" {
		t.Errorf("job: %+v %v", j, err)
	}
	if l, err := c.Jobs(ctx, 5, 7); err != nil || l.Count != 1 || *l.Next != "offset=5&limit=7" {
		t.Errorf("jobs: %+v %v", l, err)
	}
	if _, err := c.Cancel(ctx, "j1"); err != nil {
		t.Errorf("cancel: %v", err)
	}
	if _, err := c.Stop(ctx, "j1"); err != nil {
		t.Errorf("stop: %v", err)
	}
	if s, err := c.Scores(ctx); err != nil || s["v"].Cycle != 3 {
		t.Errorf("scores: %+v %v", s, err)
	}
	ack, err := c.SendVolume(ctx, "j1", &protocol.VolumeMessage{})
	if err == nil || ack == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("a volume the job refused: %+v %v", ack, err)
	}
	var ae *APIError
	if err := c.ReportPair(ctx, "j1", &protocol.StreamPair{}); !errors.As(err, &ae) || ae.Status != http.StatusConflict || ae.Code != "duplicate" || ae.Msg != "taken" {
		t.Errorf("report: %v", err)
	}
	if _, err := c.Job(ctx, "nope"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "no such thing") {
		t.Errorf("unknown job: %v", err)
	}
	// A client with another key is refused by the facilitator's check.
	other, _ := sig.FromSeed(sig.RandomSeed())
	stranger := New(c.BaseURL, other)
	if _, err := stranger.Job(ctx, "j1"); !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
		t.Errorf("stranger: %v", err)
	}
}

// TestWatchResumes: when the event stream breaks, Watch picks up where it
// was and never repeats a status.
func TestWatchResumes(t *testing.T) {
	f, c := newFake(t)
	f.job = protocol.Job{UUID: "j1", Status: protocol.StatusCompleted, StatusHistory: []protocol.StatusEntry{
		{Status: protocol.StatusSent}, {Status: protocol.StatusAccepted}, {Status: protocol.StatusCompleted}}}
	f.breakAfter = 2
	var seen []protocol.JobStatus
	j, err := c.Watch(t.Context(), "j1", func(e protocol.StatusEntry) { seen = append(seen, e.Status) })
	if err != nil || j.Status != protocol.StatusCompleted {
		t.Fatalf("watch: %+v %v", j, err)
	}
	if diff := cmp.Diff([]protocol.JobStatus{protocol.StatusSent, protocol.StatusAccepted, protocol.StatusCompleted}, seen); diff != "" {
		t.Errorf("statuses (-want +got):\n%s", diff)
	}
	if _, err := c.Watch(t.Context(), "nope", func(protocol.StatusEntry) {}); !errors.Is(err, ErrNotFound) {
		t.Errorf("watch an unknown job: %v", err)
	}
}
