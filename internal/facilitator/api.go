package facilitator

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/protocol"
)

// decodeStrict decodes JSON, refusing unknown fields.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: JSON body: %v", ErrBadRequest, err)
	}
	return nil
}

// This file: the client API's HTTP transport. Each handler decodes a
// verified request, calls the logic (jobs.go) and writes its answer.

// apiCapabilities is the HeaderCapabilities value of every API answer.
var apiCapabilities = protocol.FormatCapabilities(protocol.APICapabilities)

func (f *Facilitator) handleCapabilities(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string][]string{"api": protocol.APICapabilities, "validator_link": protocol.FacilitatorCapabilities})
}

// handleCreate takes a job in upstream's SDK shape, its signature already
// verified over the body's SignedFields (authed, scope SignedFields).
func (f *Facilitator) handleCreate(w http.ResponseWriter, r *http.Request, c *caller) {
	spec, err := protocol.ParseJobRequest(c.body)
	if err != nil {
		writeError(w, fmt.Errorf("%w: %v", ErrBadRequest, err))
		return
	}
	job, err := f.create(r.Context(), spec, *c.sig, c.sdk)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, job)
}

func (f *Facilitator) handleGet(w http.ResponseWriter, r *http.Request, c *caller) {
	job, err := f.job(r.Context(), r.PathValue("uuid"), c.hotkey, c.sdk)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, job)
}

// handleList pages through the caller's jobs: ?page=N&page_size=M as
// upstream (from 1; 10 by default, at most 256; a page past the end is not
// found), or ?offset=N&limit=M as horde.
func (f *Facilitator) handleList(w http.ResponseWriter, r *http.Request, c *caller) {
	q := r.URL.Query()
	num := func(name string) (int, bool, error) {
		s := q.Get(name)
		if s == "" {
			return 0, false, nil
		}
		n, err := strconv.Atoi(s)
		if err != nil {
			return 0, true, fmt.Errorf("%w: %s %q is not a whole number", ErrBadRequest, name, s)
		}
		return n, true, nil
	}
	var p page
	pg, hasPage, err := num("page")
	if err != nil {
		writeError(w, fmt.Errorf("%w: Invalid page", store.ErrNotFound))
		return
	}
	size, hasSize, sizeErr := num("page_size")
	if hasPage || hasSize {
		if !hasPage {
			pg = 1
		}
		if pg < 1 {
			writeError(w, fmt.Errorf("%w: Invalid page", store.ErrNotFound))
			return
		}
		if sizeErr != nil || size < 1 {
			size = defaultPageSize
		}
		size = min(size, maxPageSize)
		p = page{offset: (pg - 1) * size, limit: size, number: pg}
	} else {
		offset, _, err := num("offset")
		if err != nil {
			writeError(w, err)
			return
		}
		limit, _, err := num("limit")
		if err != nil {
			writeError(w, err)
			return
		}
		if limit <= 0 || limit > maxPage {
			limit = defaultPage
		}
		p = page{offset: max(0, offset), limit: limit}
	}
	out, err := f.list(r.Context(), c.hotkey, p, c.sdk)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (f *Facilitator) handleCancel(w http.ResponseWriter, r *http.Request, c *caller) {
	job, err := f.cancel(r.Context(), r.PathValue("uuid"), c.hotkey, c.sdk)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, job)
}

// handleCheated takes upstream's cheat report, signed (scope FullRequest)
// over exactly {job_uuid, trusted_job_uuid, details}: the validator checks
// the same signature over those three, so the body may hold nothing else.
func (f *Facilitator) handleCheated(w http.ResponseWriter, r *http.Request, c *caller) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(c.body, &keys); err != nil {
		writeError(w, fmt.Errorf("%w: JSON body: %v", ErrBadRequest, err))
		return
	}
	for k := range keys {
		if k != "job_uuid" && k != "trusted_job_uuid" && k != "details" {
			writeError(w, fmt.Errorf("%w: unknown field %q", ErrBadRequest, k))
			return
		}
	}
	if _, ok := keys["details"]; !ok {
		writeError(w, fmt.Errorf("%w: details is required (null for none): validators check the signature over it", ErrBadRequest))
		return
	}
	var rep protocol.CheatReport
	if err := decodeStrict(c.body, &rep); err != nil {
		writeError(w, err)
		return
	}
	for _, id := range []string{rep.JobUUID, rep.TrustedJobUUID} {
		if _, err := uuid.Parse(id); err != nil {
			writeError(w, fmt.Errorf("%w: %q is not a valid UUID", ErrBadRequest, id))
			return
		}
	}
	if err := f.reportCheat(r.Context(), c.hotkey, rep, *c.sig, time.Now()); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, protocol.CheatReported{Message: "Job reported as cheated"})
}

func (f *Facilitator) handleStop(w http.ResponseWriter, r *http.Request, c *caller) {
	job, err := f.stop(r.Context(), r.PathValue("uuid"), c.hotkey)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, job)
}

func (f *Facilitator) handleVolume(w http.ResponseWriter, r *http.Request, c *caller) {
	var msg protocol.VolumeMessage
	if err := decodeStrict(c.body, &msg); err != nil {
		writeError(w, err)
		return
	}
	ack, err := f.sendVolume(r.Context(), r.PathValue("uuid"), c.hotkey, msg)
	if err != nil {
		if r.Context().Err() == nil {
			writeError(w, err)
		}
		return
	}
	writeJSON(w, http.StatusOK, ack)
}

func (f *Facilitator) handlePair(w http.ResponseWriter, r *http.Request, c *caller) {
	id := r.PathValue("uuid")
	var p protocol.StreamPair
	if err := decodeStrict(c.body, &p); err != nil {
		writeError(w, err)
		return
	}
	rid, err := f.reportPair(r.Context(), id, c.hotkey, p, time.Now())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{"job_uuid": id, "request_id": rid})
}

func (f *Facilitator) handleScores(w http.ResponseWriter, r *http.Request, _ *caller) {
	out, err := f.scores(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// keepalive is how often an idle event stream carries a comment, so that
// proxies do not close it.
const keepalive = 15 * time.Second

// handleEvents streams the job's status history and then live updates as
// server-sent events until the job ends. With ?job=1 (horde's client) the
// stream of an ended job ends with the job itself (event "job"), which the
// client would otherwise ask for again.
func (f *Facilitator) handleEvents(w http.ResponseWriter, r *http.Request, c *caller) {
	ctx := r.Context()
	id := r.PathValue("uuid")
	withJob := r.URL.Query().Get("job") == "1"
	ch := f.subscribe(id) // before reading, so no update falls between
	defer f.unsubscribe(id, ch)
	job, err := f.job(ctx, id, c.hotkey, c.sdk)
	if err != nil {
		writeError(w, err)
		return
	}
	fl, _ := w.(http.Flusher)
	flush := func() {
		if fl != nil {
			fl.Flush()
		}
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	sent := 0
	emit := func(hist []protocol.StatusEntry) {
		for _, e := range hist[min(sent, len(hist)):] {
			b, _ := json.Marshal(e)
			fmt.Fprintf(w, "event: status\ndata: %s\n\n", b)
			sent++
		}
	}
	final := func(job *protocol.Job) {
		if withJob {
			b, _ := json.Marshal(job)
			fmt.Fprintf(w, "event: job\ndata: %s\n\n", b)
		}
	}
	emit(job.StatusHistory)
	if job.Status.Terminal() {
		final(job)
		flush()
		return
	}
	flush()
	tick := time.NewTicker(keepalive)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			fmt.Fprint(w, ": keepalive\n\n")
		case <-ch:
			// Re-read the history so a coalesced signal loses nothing. The
			// job's row is not read again: its owner does not change, and
			// its status is terminal once its history holds a terminal
			// status (the store sets the first one and keeps it).
			hist, err := f.cfg.Store.History(ctx, id)
			if err != nil {
				return
			}
			view := hist
			if c.sdk {
				view = forSDK(hist)
			}
			emit(view)
			if slices.ContainsFunc(hist, func(e protocol.StatusEntry) bool { return e.Status.Terminal() }) {
				if withJob {
					if rec, err := f.cfg.Store.Job(ctx, id); err == nil {
						final(toJob(rec, hist, c.sdk))
					}
				}
				flush()
				return
			}
		}
		flush()
	}
}
