// Package dashboard is the facilitator's read-only web page for operators:
// jobs with their live status and per-stage timings, validators and their
// miners, executors by class, the latest scores and weights, and
// validation windows with their verdicts.
//
// Pages are rendered on the server (html/template, embedded in the binary)
// and work without JavaScript; a few lines of script apply live updates,
// which an event stream (server-sent events) pushes whenever a job or a
// validator changes. The handler reads through a Source (the facilitator),
// knows nothing of stores or links, and writes nothing.
//
// Access: with a token configured, a request must carry it (Authorization:
// Bearer, or ?token= once, which sets a cookie); without one, only requests
// from loopback are served.
package dashboard

import (
	"bytes"
	"context"
	"crypto/subtle"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"
)

// Path is where the dashboard is served.
const Path = "/dashboard/"

// Source is what the dashboard shows: the facilitator.
type Source interface {
	// Overview returns the newest jobs (at most limit), the validators,
	// executors, scores and validation windows.
	Overview(ctx context.Context, limit int) (*Overview, error)
	// Job returns one job with its whole history; an error wrapping
	// ErrNotFound when there is none.
	Job(ctx context.Context, uuid string) (*Job, error)
	// Subscribe returns a channel signalled when anything shown may have
	// changed, and a func that ends the subscription.
	Subscribe() (<-chan struct{}, func())
}

// ErrNotFound is what a Source wraps for a job it does not have.
var ErrNotFound = errors.New("not found")

// Overview is the dashboard's main page.
type Overview struct {
	Jobs       []Job
	Validators []Validator
	// Executors are the executors the validators' miners claim, by class.
	Executors []ClassCount
	Windows   []Window
}

// Job is one job as the dashboard shows it.
type Job struct {
	UUID      string
	Status    string
	Terminal  bool
	Image     string
	Class     string
	Streaming bool
	Validator string
	Miner     string
	// Reason is why a job was rejected or failed; Comment the last comment.
	Reason  string
	Message string
	Created time.Time
	// Stages are the times between the statuses of the job's history; Total
	// from acceptance to the last status.
	Stages []Stage
	Total  time.Duration
	// Timings are the validator's own stage timings, reported with the end.
	Timings []Stage
	// URL is where a streaming job serves (when it does).
	URL string
}

// Stage is a named duration.
type Stage struct {
	Name string
	Took time.Duration
	At   time.Time
}

// Validator is a validator of the facilitator: connected or not, and what
// its latest report says.
type Validator struct {
	Hotkey    string
	Connected bool
	Cycle     int64
	ReportAt  time.Time
	Miners    []Miner
}

// Miner is a miner as a validator's latest report scores it.
type Miner struct {
	Hotkey    string
	Score     float64
	Weight    float64
	Reachable bool
	Note      string
	Classes   []ClassCount
}

// ClassCount is executors of one class: claimed, and synthetic jobs passed and failed.
type ClassCount struct {
	Class     string
	Executors int
	Passed    int
	Failed    int
}

// Window is a validation window a validator reported.
type Window struct {
	Validator      string
	ID             int64
	Image          string
	At             time.Time
	Pairs          int
	Checked        int
	Failed         int
	TrustedSeconds float64
	Verdicts       []Verdict
}

// Verdict is the judgement of one replayed pair.
type Verdict struct {
	JobUUID   string
	RequestID string
	Miner     string
	Pass      bool
	Detail    string
}

// Config configures the dashboard.
type Config struct {
	Source Source
	// Token, if set, is the operator token every request must carry; empty
	// serves loopback requests only.
	Token string
	// Jobs is how many of the newest jobs the main page lists (default 50).
	Jobs int
	// Streams counts the open event streams (nil: not counted).
	Streams func(delta int)
	Log     *slog.Logger
}

//go:embed templates/*.html templates/*.css
var files embed.FS

var funcs = template.FuncMap{
	"short": func(s string) string {
		if len(s) > 12 {
			return s[:6] + "…" + s[len(s)-4:]
		}
		return s
	},
	"dur": func(d time.Duration) string {
		switch {
		case d <= 0:
			return "–"
		case d < time.Second:
			return fmt.Sprintf("%dms", d.Milliseconds())
		case d < time.Minute:
			return fmt.Sprintf("%.1fs", d.Seconds())
		default:
			return d.Round(time.Second).String()
		}
	},
	"when":    func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") },
	"percent": func(f float64) string { return fmt.Sprintf("%.1f%%", f*100) },
	"fixed":   func(f float64) string { return fmt.Sprintf("%.3f", f) },
	"path":    func() string { return Path },
}

var pages = template.Must(template.New("").Funcs(funcs).ParseFS(files, "templates/*.html"))

// Handler serves the dashboard under Path.
type Handler struct {
	cfg Config
	mux *http.ServeMux
}

// New returns the dashboard's handler; it starts nothing.
func New(cfg Config) (*Handler, error) {
	if cfg.Source == nil {
		return nil, errors.New("dashboard config: Source is required")
	}
	if cfg.Jobs == 0 {
		cfg.Jobs = 50
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Streams == nil {
		cfg.Streams = func(int) {}
	}
	h := &Handler{cfg: cfg, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET "+Path+"{$}", h.overview)
	h.mux.HandleFunc("GET "+Path+"jobs/{uuid}", h.job)
	h.mux.HandleFunc("GET "+Path+"events", h.events)
	h.mux.HandleFunc("GET "+Path+"style.css", h.style)
	return h, nil
}

// cookie carries the operator token after a ?token= visit.
const cookie = "horde_dashboard"

// ServeHTTP checks access, then serves the page.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Token == "" {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			http.Error(w, "the dashboard serves loopback only; give the facilitator --dashboard-token to open it to operators", http.StatusForbidden)
			return
		}
	} else {
		if q := r.URL.Query().Get("token"); q != "" && h.match(q) {
			http.SetCookie(w, &http.Cookie{Name: cookie, Value: q, Path: Path, HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
			u := *r.URL
			q := u.Query()
			q.Del("token")
			u.RawQuery = q.Encode()
			http.Redirect(w, r, u.String(), http.StatusSeeOther) // the token leaves the address bar
			return
		}
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if c, err := r.Cookie(cookie); tok == "" && err == nil {
			tok = c.Value
		}
		if !h.match(tok) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="horde dashboard"`)
			http.Error(w, "operator token required: open "+Path+"?token=… once, or send Authorization: Bearer …", http.StatusUnauthorized)
			return
		}
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "no-referrer")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self'; frame-ancestors 'none'")
	h.mux.ServeHTTP(w, r)
}

func (h *Handler) match(tok string) bool {
	return tok != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(h.cfg.Token)) == 1
}

func (h *Handler) render(w http.ResponseWriter, name string, data any) {
	var b bytes.Buffer
	if err := pages.ExecuteTemplate(&b, name, data); err != nil {
		h.cfg.Log.Error("dashboard: render", "page", name, "err", err)
		http.Error(w, "render: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Write(b.Bytes())
}

// page is what a page template gets.
type page struct {
	Title string
	Now   time.Time
	*Overview
	Job *Job
}

func (h *Handler) overview(w http.ResponseWriter, r *http.Request) {
	o, err := h.cfg.Source.Overview(r.Context(), h.cfg.Jobs)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	h.render(w, "overview.html", page{Title: "horde", Now: time.Now(), Overview: o})
}

func (h *Handler) job(w http.ResponseWriter, r *http.Request) {
	j, err := h.cfg.Source.Job(r.Context(), r.PathValue("uuid"))
	if errors.Is(err, ErrNotFound) {
		http.Error(w, "no job "+r.PathValue("uuid"), http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	h.render(w, "job.html", page{Title: "job " + j.UUID, Now: time.Now(), Job: j})
}

func (h *Handler) style(w http.ResponseWriter, r *http.Request) {
	b, _ := files.ReadFile("templates/style.css")
	w.Header().Set("Content-Type", "text/css; charset=utf-8")
	w.Write(b)
}

// events streams the main page's content (the "main" template) each time
// the Source signals a change, as server-sent events; ?job=UUID streams a
// job page's instead. Changes that come quickly are coalesced.
func (h *Handler) events(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	changes, stop := h.cfg.Source.Subscribe()
	defer stop()
	h.cfg.Streams(1)
	defer h.cfg.Streams(-1)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	id := r.URL.Query().Get("job")
	ctx := r.Context()
	keepalive := time.NewTicker(25 * time.Second)
	defer keepalive.Stop()
	for {
		var b bytes.Buffer
		var err error
		if id != "" {
			var j *Job
			if j, err = h.cfg.Source.Job(ctx, id); err == nil {
				err = pages.ExecuteTemplate(&b, "jobmain", page{Now: time.Now(), Job: j})
			}
		} else {
			var o *Overview
			if o, err = h.cfg.Source.Overview(ctx, h.cfg.Jobs); err == nil {
				err = pages.ExecuteTemplate(&b, "main", page{Now: time.Now(), Overview: o})
			}
		}
		if err != nil {
			if ctx.Err() == nil {
				h.cfg.Log.Warn("dashboard: event", "err", err)
			}
			return
		}
		if _, err := fmt.Fprintf(w, "event: update\ndata: %s\n\n", strings.ReplaceAll(b.String(), "\n", "\ndata: ")); err != nil {
			return
		}
		fl.Flush()
		if !waitChange(ctx, w, fl, changes, keepalive.C) {
			return
		}
	}
}

// waitChange waits for a change, writing keepalive comments meanwhile; false
// when the request ended.
func waitChange(ctx context.Context, w http.ResponseWriter, fl http.Flusher, changes <-chan struct{}, keepalive <-chan time.Time) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case <-changes:
			return true
		case <-keepalive:
			if _, err := fmt.Fprint(w, ": keepalive\n\n"); err != nil {
				return false
			}
			fl.Flush()
		}
	}
}
