package dashboard

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSource is a Source held in memory.
type fakeSource struct {
	mu      sync.Mutex
	o       Overview
	changes chan struct{}
}

func (s *fakeSource) Overview(ctx context.Context, limit int) (*Overview, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.o
	return &o, nil
}

func (s *fakeSource) Job(ctx context.Context, uuid string) (*Job, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, j := range s.o.Jobs {
		if j.UUID == uuid {
			return &j, nil
		}
	}
	return nil, ErrNotFound
}

func (s *fakeSource) Subscribe() (<-chan struct{}, func()) { return s.changes, func() {} }

func source() *fakeSource {
	at := time.Date(2026, 11, 30, 3, 0, 0, 0, time.UTC)
	return &fakeSource{changes: make(chan struct{}, 1), o: Overview{
		Jobs: []Job{{UUID: "11111111-aaaa-bbbb-cccc-000000000001", Status: "completed", Terminal: true, Image: "horde/job", Class: "always_on.test",
			Created: at, Total: 1500 * time.Millisecond, Stages: []Stage{{Name: "sent", Took: 20 * time.Millisecond, At: at}}}},
		Validators: []Validator{{Hotkey: "5Validator", Connected: true, Cycle: 7, ReportAt: at,
			Miners: []Miner{{Hotkey: "5Miner", Score: 2.5, Weight: 1, Reachable: true, Classes: []ClassCount{{Class: "always_on.test", Executors: 2, Passed: 2}}}}}},
		Executors: []ClassCount{{Class: "always_on.test", Executors: 2, Passed: 2}},
		Windows: []Window{{Validator: "5Validator", ID: 3, Image: "horde/llm", At: at, Pairs: 10, Checked: 2, Failed: 1,
			Verdicts: []Verdict{{JobUUID: "22222222-aaaa-bbbb-cccc-000000000002", RequestID: "r1", Miner: "5Cheat", Pass: false, Detail: "output differs <script>"}}}},
	}}
}

func get(t *testing.T, h http.Handler, remote, target string, hdr map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest("GET", target, nil)
	r.RemoteAddr = remote
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// Without a token only loopback is served; with one, the token (header,
// cookie after ?token=) is required from anywhere.
func TestAccess(t *testing.T) {
	open, _ := New(Config{Source: source()})
	for _, c := range []struct {
		remote string
		want   int
	}{{"127.0.0.1:5000", 200}, {"[::1]:5000", 200}, {"10.0.0.7:5000", 403}, {"203.0.113.9:5000", 403}} {
		if w := get(t, open, c.remote, Path, nil); w.Code != c.want {
			t.Errorf("no token, from %s: %d, want %d", c.remote, w.Code, c.want)
		}
	}
	locked, _ := New(Config{Source: source(), Token: "s3cret"})
	if w := get(t, locked, "127.0.0.1:1", Path, nil); w.Code != 401 {
		t.Errorf("token set, none sent (loopback): %d, want 401", w.Code)
	}
	if w := get(t, locked, "203.0.113.9:1", Path, map[string]string{"Authorization": "Bearer wrong"}); w.Code != 401 {
		t.Errorf("wrong token: %d, want 401", w.Code)
	}
	if w := get(t, locked, "203.0.113.9:1", Path, map[string]string{"Authorization": "Bearer s3cret"}); w.Code != 200 {
		t.Errorf("right token: %d, want 200", w.Code)
	}
	w := get(t, locked, "203.0.113.9:1", Path+"?token=s3cret", nil)
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != Path || !strings.Contains(w.Header().Get("Set-Cookie"), "HttpOnly") {
		t.Fatalf("?token=: %d %v", w.Code, w.Header())
	}
	cookie := strings.SplitN(w.Header().Get("Set-Cookie"), ";", 2)[0]
	if w := get(t, locked, "203.0.113.9:1", Path, map[string]string{"Cookie": cookie}); w.Code != 200 {
		t.Errorf("with the cookie: %d, want 200", w.Code)
	}
}

// The page shows every part, escaped, without needing script.
func TestPages(t *testing.T) {
	h, _ := New(Config{Source: source()})
	body := get(t, h, "127.0.0.1:1", Path, nil).Body.String()
	for _, want := range []string{`data-status="completed"`, "horde/job", "1.5s", "5Miner"[:6], "100.0%", "always_on.test",
		"horde/llm", "mismatch", `href="/dashboard/jobs/22222222-aaaa-bbbb-cccc-000000000002"`, "output differs &lt;script&gt;", `name="viewport"`} {
		if !strings.Contains(body, want) {
			t.Errorf("overview lacks %q", want)
		}
	}
	if strings.Contains(body, "<script>\"") || strings.Contains(body, "differs <script>") {
		t.Error("a reported detail reached the page unescaped")
	}
	w := get(t, h, "127.0.0.1:1", Path+"jobs/11111111-aaaa-bbbb-cccc-000000000001", nil)
	if w.Code != 200 || !strings.Contains(w.Body.String(), "Status history") {
		t.Errorf("job page: %d\n%s", w.Code, w.Body)
	}
	if w := get(t, h, "127.0.0.1:1", Path+"jobs/nope", nil); w.Code != 404 {
		t.Errorf("unknown job: %d", w.Code)
	}
	if w := get(t, h, "127.0.0.1:1", Path+"style.css", nil); w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/css") {
		t.Errorf("style: %d %s", w.Code, w.Header().Get("Content-Type"))
	}
}

// The event stream sends the page's content at once and again after each change.
func TestEvents(t *testing.T) {
	src := source()
	h, _ := New(Config{Source: src})
	srv := httptest.NewServer(h) // loopback
	defer srv.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+Path+"events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	rd := bufio.NewReader(resp.Body)
	event := func() string {
		var b strings.Builder
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				t.Fatalf("read event: %v", err)
			}
			if line == "\n" {
				return b.String()
			}
			b.WriteString(line)
		}
	}
	if e := event(); !strings.HasPrefix(e, "event: update\n") || !strings.Contains(e, `data-status="completed"`) {
		t.Fatalf("first event:\n%s", e)
	}
	src.mu.Lock()
	src.o.Jobs[0].Status = "failed"
	src.mu.Unlock()
	src.changes <- struct{}{}
	if e := event(); !strings.Contains(e, `data-status="failed"`) {
		t.Fatalf("event after a change:\n%s", e)
	}
	cancel()
	io.Copy(io.Discard, resp.Body)
}

// BenchmarkOverview renders the main page of 50 jobs, each with a full
// history, as every event of the live stream does.
func BenchmarkOverview(b *testing.B) {
	src := source()
	j := src.o.Jobs[0]
	for _, s := range []string{"received", "accepted", "executor_ready", "volumes_ready", "execution_done", "completed"} {
		j.Stages = append(j.Stages, Stage{Name: s, Took: time.Second, At: j.Created})
	}
	src.o.Jobs = nil
	for range 50 {
		src.o.Jobs = append(src.o.Jobs, j)
	}
	h, _ := New(Config{Source: src})
	r := httptest.NewRequest("GET", Path, nil)
	r.RemoteAddr = "127.0.0.1:1"
	var size int
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		size = w.Body.Len()
	}
	b.ReportMetric(float64(size), "bytes/page")
}
