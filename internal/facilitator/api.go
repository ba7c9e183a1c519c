package facilitator

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/internal/validation"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// Errors of the client API, mapped to HTTP statuses in writeError.
var (
	ErrBadRequest   = errors.New("bad request")
	ErrUnauthorized = errors.New("unauthorized")
)

// MaxBody bounds a request body (inline volumes travel inside).
const MaxBody = 64 << 20

type authedRequest struct {
	signatory string
	body      []byte
	sig       protocol.Signature
}

// authed verifies the client's signature headers before calling h.
func (f *Facilitator) authed(h func(http.ResponseWriter, *http.Request, *authedRequest)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, MaxBody+1))
		if err != nil {
			writeError(w, fmt.Errorf("%w: read body: %v", ErrBadRequest, err))
			return
		}
		if len(body) > MaxBody {
			writeError(w, fmt.Errorf("%w: body over %d bytes", ErrBadRequest, MaxBody))
			return
		}
		ar, err := f.verifyRequest(r, body)
		if err != nil {
			writeError(w, err)
			return
		}
		h(w, r, ar)
	}
}

func (f *Facilitator) verifyRequest(r *http.Request, body []byte) (*authedRequest, error) {
	h := r.Header
	s := protocol.Signature{SignatureType: h.Get(protocol.HeaderSignatureType), Signatory: h.Get(protocol.HeaderSignatory),
		Signature: h.Get(protocol.HeaderSignature), SignatureScope: h.Get(protocol.HeaderSignatureScope)}
	if s.Signatory == "" || s.Signature == "" {
		return nil, fmt.Errorf("%w: sign the request with your hotkey (%s, %s, %s headers)", ErrUnauthorized,
			protocol.HeaderSignatory, protocol.HeaderTimestampNS, protocol.HeaderSignature)
	}
	if s.SignatureType != protocol.SignatureTypeBittensor {
		return nil, fmt.Errorf("%w: %s must be %q", ErrUnauthorized, protocol.HeaderSignatureType, protocol.SignatureTypeBittensor)
	}
	ts, err := strconv.ParseInt(h.Get(protocol.HeaderTimestampNS), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not an integer", ErrUnauthorized, protocol.HeaderTimestampNS)
	}
	s.TimestampNS = ts
	if age := time.Since(time.Unix(0, ts)); age > f.cfg.MaxSkew || age < -f.cfg.MaxSkew {
		return nil, fmt.Errorf("%w: request signed %s away from the facilitator's clock (limit %s)", ErrUnauthorized, age.Round(time.Second), f.cfg.MaxSkew)
	}
	pub, err := sig.ParseSS58(s.Signatory)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnauthorized, err)
	}
	raw, err := base64.StdEncoding.DecodeString(s.Signature)
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not base64", ErrUnauthorized, protocol.HeaderSignature)
	}
	payload := body
	if r.Method == http.MethodPost && r.URL.Path == protocol.RouteCreateJob {
		var spec protocol.JobSpec
		if err := decodeStrict(body, &spec); err != nil {
			return nil, err
		}
		if payload, err = spec.SignedBytes(); err != nil {
			return nil, err
		}
	} else if len(body) == 0 {
		payload = []byte(r.Method + " " + r.URL.RequestURI())
	}
	if err := sig.Verify(pub, protocol.SignedMessage(ts, payload), raw); err != nil {
		return nil, fmt.Errorf("%w: signature does not verify for %s: %v", ErrUnauthorized, s.Signatory, err)
	}
	return &authedRequest{signatory: s.Signatory, body: body, sig: s}, nil
}

func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: job JSON: %v", ErrBadRequest, err)
	}
	return nil
}

func (f *Facilitator) createJob(w http.ResponseWriter, r *http.Request, ar *authedRequest) {
	var spec protocol.JobSpec
	if err := decodeStrict(ar.body, &spec); err != nil {
		writeError(w, err)
		return
	}
	if err := spec.Validate(); err != nil {
		writeError(w, fmt.Errorf("%w: %v", ErrBadRequest, err))
		return
	}
	ar.sig.SignatureScope = protocol.ScopeSignedFields
	now := time.Now().UTC()
	rec := store.JobRecord{UUID: uuid.NewString(), Spec: spec, Signature: ar.sig, Status: protocol.StatusSent, CreatedAt: now}
	if err := f.cfg.Store.CreateJob(r.Context(), rec); err != nil {
		writeError(w, err)
		return
	}
	f.log.Info("job accepted", "job", rec.UUID, "client", ar.signatory, "image", spec.DockerImage, "class", spec.ExecutorClass)
	f.kick()
	job, err := f.job(r, rec.UUID, ar.signatory)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, job)
}

func (f *Facilitator) job(r *http.Request, id, signatory string) (*protocol.Job, error) {
	rec, err := f.cfg.Store.Job(r.Context(), id)
	if err != nil {
		return nil, err
	}
	if rec.Signature.Signatory != signatory {
		return nil, fmt.Errorf("job %s: %w", id, store.ErrNotFound) // do not reveal others' jobs
	}
	hist, err := f.cfg.Store.History(r.Context(), id)
	if err != nil {
		return nil, err
	}
	return toJob(rec, hist), nil
}

func toJob(rec store.JobRecord, hist []protocol.StatusEntry) *protocol.Job {
	args := rec.Spec.Args
	if args == nil {
		args = []string{}
	}
	if hist == nil {
		hist = []protocol.StatusEntry{}
	}
	return &protocol.Job{UUID: rec.UUID, Status: rec.Status, ExecutorClass: rec.Spec.ExecutorClass, DockerImage: rec.Spec.DockerImage,
		Args: args, Signatory: rec.Signature.Signatory, ValidatorHotkey: rec.ValidatorHotkey, CreatedAt: rec.CreatedAt,
		UpdatedAt: rec.UpdatedAt, StatusHistory: hist}
}

func (f *Facilitator) getJob(w http.ResponseWriter, r *http.Request, ar *authedRequest) {
	job, err := f.job(r, r.PathValue("uuid"), ar.signatory)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, job)
}

func (f *Facilitator) listJobs(w http.ResponseWriter, r *http.Request, ar *authedRequest) {
	offset, _ := strconv.Atoi(r.URL.Query().Get("offset"))
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	if limit <= 0 || limit > 100 {
		limit = 20
	}
	recs, total, err := f.cfg.Store.ListJobs(r.Context(), ar.signatory, max(0, offset), limit)
	if err != nil {
		writeError(w, err)
		return
	}
	out := protocol.JobList{Count: total, Results: []protocol.Job{}}
	for _, rec := range recs {
		out.Results = append(out.Results, *toJob(rec, nil))
	}
	if offset+len(recs) < total {
		out.Next = fmt.Sprintf("%s?offset=%d&limit=%d", protocol.RouteJobs, offset+len(recs), limit)
	}
	writeJSON(w, http.StatusOK, out)
}

func (f *Facilitator) cancelJob(w http.ResponseWriter, r *http.Request, ar *authedRequest) {
	id := r.PathValue("uuid")
	job, err := f.job(r, id, ar.signatory)
	if err != nil {
		writeError(w, err)
		return
	}
	if job.Status.Terminal() {
		writeError(w, fmt.Errorf("%w: job %s already ended (%s)", ErrBadRequest, id, job.Status))
		return
	}
	rec, _ := f.cfg.Store.Job(r.Context(), id)
	f.mu.Lock()
	vc := f.validators[rec.ValidatorHotkey]
	f.mu.Unlock()
	if rec.ValidatorHotkey == "" || vc == nil {
		// Not yet with a validator (or its validator is gone): cancel here.
		e := protocol.StatusEntry{Status: protocol.StatusCancelled, CreatedAt: time.Now().UTC(), Metadata: &protocol.StatusMetadata{Comment: "cancelled by the client"}}
		if err := f.cfg.Store.AddStatus(r.Context(), id, e); err != nil {
			writeError(w, err)
			return
		}
		f.publish(id, e)
	} else if err := vc.conn.Send(r.Context(), &protocol.V0CancelJobByFacilitator{UUID: id}); err != nil {
		writeError(w, fmt.Errorf("forward cancel to validator: %w", err))
		return
	}
	f.log.Info("job cancel requested", "job", id)
	job, _ = f.job(r, id, ar.signatory)
	writeJSON(w, http.StatusAccepted, job)
}

// jobEvents streams the job's status history and then live updates as
// server-sent events until the job ends.
func (f *Facilitator) jobEvents(w http.ResponseWriter, r *http.Request, ar *authedRequest) {
	id := r.PathValue("uuid")
	ch := f.subscribe(id)
	defer f.unsubscribe(id, ch)
	job, err := f.job(r, id, ar.signatory)
	if err != nil {
		writeError(w, err)
		return
	}
	fl, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	sent := 0
	emit := func(e protocol.StatusEntry) {
		b, _ := json.Marshal(e)
		fmt.Fprintf(w, "event: status\ndata: %s\n\n", b)
		sent++
	}
	for _, e := range job.StatusHistory {
		emit(e)
	}
	if fl != nil {
		fl.Flush()
	}
	if job.Status.Terminal() {
		return
	}
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-keepalive.C:
			fmt.Fprint(w, ": keepalive\n\n")
		case <-ch:
			// Re-read the history so a dropped event is never lost.
			hist, err := f.cfg.Store.History(r.Context(), id)
			if err != nil {
				return
			}
			for _, e := range hist[min(sent, len(hist)):] {
				emit(e)
			}
			rec, err := f.cfg.Store.Job(r.Context(), id)
			if err != nil || rec.Status.Terminal() {
				if fl != nil {
					fl.Flush()
				}
				return
			}
		}
		if fl != nil {
			fl.Flush()
		}
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// writeError maps errors to HTTP statuses and stable codes: the one place it happens.
func writeError(w http.ResponseWriter, err error) {
	status, code := http.StatusInternalServerError, "internal"
	switch {
	case errors.Is(err, ErrBadRequest):
		status, code = http.StatusBadRequest, "bad_request"
	case errors.Is(err, ErrUnauthorized):
		status, code = http.StatusUnauthorized, "unauthorized"
	case errors.Is(err, store.ErrNotFound):
		status, code = http.StatusNotFound, "not_found"
	case errors.Is(err, store.ErrDuplicate):
		status, code = http.StatusConflict, "duplicate"
	}
	writeJSON(w, status, protocol.APIError{Error: err.Error(), Code: code})
}

// scores lists the latest report of each validator: per-miner scores,
// weights and what they rest on.
func (f *Facilitator) scores(w http.ResponseWriter, r *http.Request, _ *authedRequest) {
	reps, err := f.cfg.Store.Reports(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	out := map[string]json.RawMessage{}
	for v, b := range reps {
		m, err := protocol.Decode(b)
		if rep, ok := m.(*protocol.V0ValidatorReport); err == nil && ok {
			body, _ := json.Marshal(protocol.ValidatorScores{Cycle: rep.Cycle, At: rep.At, Scores: rep.Scores})
			out[v] = body
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// serving returns a client's serving streaming job and its validator's session.
func (f *Facilitator) serving(r *http.Request, id, signatory string) (*protocol.Job, *validatorConn, error) {
	job, err := f.job(r, id, signatory)
	if err != nil {
		return nil, nil, err
	}
	if job.Status != protocol.StatusStreaming {
		return nil, nil, fmt.Errorf("%w: job %s is %s, not a serving streaming job", ErrBadRequest, id, job.Status)
	}
	f.mu.Lock()
	vc := f.validators[job.ValidatorHotkey]
	f.mu.Unlock()
	if vc == nil {
		return nil, nil, fmt.Errorf("job %s: its validator is not connected", id)
	}
	return job, vc, nil
}

// stopJob ends a streaming job normally (it uploads its outputs and completes).
func (f *Facilitator) stopJob(w http.ResponseWriter, r *http.Request, ar *authedRequest) {
	id := r.PathValue("uuid")
	job, vc, err := f.serving(r, id, ar.signatory)
	if err != nil {
		writeError(w, err)
		return
	}
	if err := vc.conn.Send(r.Context(), &protocol.V0StopJobByFacilitator{UUID: id}); err != nil {
		writeError(w, fmt.Errorf("forward stop to validator: %w", err))
		return
	}
	writeJSON(w, http.StatusAccepted, job)
}

// volumeMessage passes a client's volume message to its serving streaming job
// and answers with the job's acknowledgement.
func (f *Facilitator) volumeMessage(w http.ResponseWriter, r *http.Request, ar *authedRequest) {
	id := r.PathValue("uuid")
	var msg protocol.VolumeMessage
	if err := decodeStrict(ar.body, &msg); err != nil {
		writeError(w, err)
		return
	}
	vr := &protocol.V0VolumeRequest{JobUUID: id, MessageID: uuid.NewString(), Volume: msg.Volume, OutputUpload: msg.OutputUpload}
	if err := vr.Validate(); err != nil {
		writeError(w, fmt.Errorf("%w: %v", ErrBadRequest, err))
		return
	}
	_, vc, err := f.serving(r, id, ar.signatory)
	if err != nil {
		writeError(w, err)
		return
	}
	ch := make(chan *protocol.V0JobVolumeResult, 1)
	f.mu.Lock()
	f.pending[vr.MessageID] = ch
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.pending, vr.MessageID)
		f.mu.Unlock()
	}()
	if err := vc.conn.Send(r.Context(), &protocol.V0JobVolumeRequest{UUID: id, MessageID: vr.MessageID, Volume: msg.Volume, OutputUpload: msg.OutputUpload}); err != nil {
		writeError(w, fmt.Errorf("forward volume message: %w", err))
		return
	}
	select {
	case res := <-ch:
		writeJSON(w, http.StatusOK, protocol.VolumeAck{MessageID: res.MessageID, Success: res.Success, Error: res.Error, UploadResults: res.UploadResults})
	case <-r.Context().Done():
	case <-time.After(15 * time.Minute):
		writeError(w, fmt.Errorf("volume message %s: no acknowledgement from the job within 15 minutes", vr.MessageID))
	}
}

// reportPair takes a streaming pair a client kept, for validators to check.
// It is verified before it is accepted: the miner vouched for the job's key,
// the key signed the receipt, the receipt covers exactly these bodies and
// falls within the job's life. Tampered pairs are refused with the reason.
func (f *Facilitator) reportPair(w http.ResponseWriter, r *http.Request, ar *authedRequest) {
	id := r.PathValue("uuid")
	var p protocol.StreamPair
	if err := decodeStrict(ar.body, &p); err != nil {
		writeError(w, err)
		return
	}
	job, err := f.job(r, id, ar.signatory)
	if err != nil {
		writeError(w, err)
		return
	}
	var ready *protocol.StatusEntry
	for i := range job.StatusHistory {
		if e := job.StatusHistory[i]; e.Status == protocol.StatusStreaming && e.Metadata != nil && e.Metadata.StreamingDetails != nil {
			ready = &job.StatusHistory[i]
		}
	}
	if ready == nil {
		writeError(w, fmt.Errorf("%w: job %s never served as a streaming job", ErrBadRequest, id))
		return
	}
	d, miner := ready.Metadata.StreamingDetails, ready.Metadata.MinerHotkey
	bad := func(format string, a ...any) {
		writeError(w, fmt.Errorf("%w: pair refused: %s", ErrBadRequest, fmt.Sprintf(format, a...)))
	}
	rc, err := validation.VerifyPair(id, miner, *d, p)
	if err != nil {
		bad("%v", err)
		return
	}
	if rc.TimestampFrom.Before(ready.CreatedAt.Add(-time.Minute)) || rc.TimestampTo.After(time.Now().Add(time.Minute)) {
		bad("the receipt's time (%s to %s) is outside the job's life", rc.TimestampFrom.Format(time.RFC3339), rc.TimestampTo.Format(time.RFC3339))
		return
	}
	rec := store.PairRecord{JobUUID: id, RequestID: rc.RequestID, Image: job.DockerImage, MinerHotkey: miner,
		ValidatorHotkey: job.ValidatorHotkey, ReportedBy: ar.signatory, Pair: p, Proof: *d, At: time.Now().UTC()}
	if err := f.cfg.Store.PutPair(r.Context(), rec); err != nil {
		writeError(w, err)
		return
	}
	f.log.Info("streaming pair accepted", "job", id, "request", rc.RequestID)
	f.kick() // pass it on to the job's validator
	writeJSON(w, http.StatusCreated, map[string]string{"job_uuid": id, "request_id": rc.RequestID})
}
