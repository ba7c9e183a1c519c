package facilitator

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/horde-compute/horde/protocol"
)

// This file: the client API's HTTP transport. Each handler decodes a
// verified request, calls the logic (jobs.go) and writes its answer.

func (f *Facilitator) handleCreate(w http.ResponseWriter, r *http.Request, ar *authedRequest) {
	var spec protocol.JobSpec
	if err := decodeStrict(ar.body, &spec); err != nil {
		writeError(w, err)
		return
	}
	job, err := f.create(r.Context(), spec, ar.sig)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, job)
}

func (f *Facilitator) handleGet(w http.ResponseWriter, r *http.Request, ar *authedRequest) {
	job, err := f.job(r.Context(), r.PathValue("uuid"), ar.signatory)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, job)
}

func (f *Facilitator) handleList(w http.ResponseWriter, r *http.Request, ar *authedRequest) {
	q := r.URL.Query()
	offset, limit := 0, 0
	for name, v := range map[string]*int{"offset": &offset, "limit": &limit} {
		if s := q.Get(name); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil {
				writeError(w, fmt.Errorf("%w: %s %q is not a whole number", ErrBadRequest, name, s))
				return
			}
			*v = n
		}
	}
	out, err := f.list(r.Context(), ar.signatory, offset, limit)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (f *Facilitator) handleCancel(w http.ResponseWriter, r *http.Request, ar *authedRequest) {
	job, err := f.cancel(r.Context(), r.PathValue("uuid"), ar.signatory)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, job)
}

func (f *Facilitator) handleStop(w http.ResponseWriter, r *http.Request, ar *authedRequest) {
	job, err := f.stop(r.Context(), r.PathValue("uuid"), ar.signatory)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, job)
}

func (f *Facilitator) handleVolume(w http.ResponseWriter, r *http.Request, ar *authedRequest) {
	var msg protocol.VolumeMessage
	if err := decodeStrict(ar.body, &msg); err != nil {
		writeError(w, err)
		return
	}
	ack, err := f.sendVolume(r.Context(), r.PathValue("uuid"), ar.signatory, msg)
	if err != nil {
		if r.Context().Err() == nil {
			writeError(w, err)
		}
		return
	}
	writeJSON(w, http.StatusOK, ack)
}

func (f *Facilitator) handlePair(w http.ResponseWriter, r *http.Request, ar *authedRequest) {
	id := r.PathValue("uuid")
	var p protocol.StreamPair
	if err := decodeStrict(ar.body, &p); err != nil {
		writeError(w, err)
		return
	}
	rid, err := f.reportPair(r.Context(), id, ar.signatory, p, time.Now())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{"job_uuid": id, "request_id": rid})
}

func (f *Facilitator) handleScores(w http.ResponseWriter, r *http.Request, _ *authedRequest) {
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
// server-sent events until the job ends.
func (f *Facilitator) handleEvents(w http.ResponseWriter, r *http.Request, ar *authedRequest) {
	ctx := r.Context()
	id := r.PathValue("uuid")
	ch := f.subscribe(id) // before reading, so no update falls between
	defer f.unsubscribe(id, ch)
	job, err := f.job(ctx, id, ar.signatory)
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
	emit(job.StatusHistory)
	flush()
	if job.Status.Terminal() {
		return
	}
	tick := time.NewTicker(keepalive)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			fmt.Fprint(w, ": keepalive\n\n")
		case <-ch:
			// Re-read the history so a coalesced signal loses nothing.
			job, err := f.job(ctx, id, ar.signatory)
			if err != nil {
				return
			}
			emit(job.StatusHistory)
			if job.Status.Terminal() {
				flush()
				return
			}
		}
		flush()
	}
}
