package dashboard_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/horde-compute/horde/internal/devstack"
	"github.com/horde-compute/horde/internal/hordetest"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/protocol"
)

var updateScreenshot = flag.Bool("update-screenshot", false, "write the README's screenshot, docs/dashboard.png")

// chromium returns the path of Debian's chromium (the browser gate): with
// HORDE_BROWSER_TESTS=off the test skips, and otherwise fails when no
// chromium is installed (`bash .ci/chromium` installs it).
func chromium(t *testing.T) string {
	t.Helper()
	if os.Getenv("HORDE_BROWSER_TESTS") == "off" {
		t.Skip("HORDE_BROWSER_TESTS=off")
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium is missing: install it with `bash .ci/chromium` (Debian's chromium package), or skip with HORDE_BROWSER_TESTS=off")
	return ""
}

// artifacts is where screenshots go: $HORDE_ARTIFACTS/<test> when set, else
// the test's temporary directory.
func artifacts(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if a := os.Getenv("HORDE_ARTIFACTS"); a != "" {
		dir = filepath.Join(a, t.Name())
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// A real browser loads the dashboard of a running horde (fake runtime): it
// shows a completed job, a failed one with its reason, a serving streaming
// job, the validator with its scored miner and executors; when the
// streaming job is stopped, the page shows it completed without a reload
// (server-sent events). Screenshots, desktop and phone, are kept.
func TestDashboardInBrowser(t *testing.T) {
	exe := chromium(t)
	h := hordetest.StartFake(t, devstack.Config{StreamingWhitelist: map[string]string{images.LLMImage: hordetest.OnFake.LLMDigest(t)}})
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	done := h.Run(t, hordetest.Spec("echo", "hello"))
	failed := h.Run(t, hordetest.Spec("exit", "3"))
	if done.Status != protocol.StatusCompleted || failed.Status != protocol.StatusFailed {
		t.Fatalf("jobs ended %s and %s", done.Status, failed.Status)
	}
	if _, err := h.Round(ctx); err != nil { // scores, weights and executors for the page
		t.Fatal(err)
	}
	st, err := h.Client.StartStreaming(ctx, &protocol.JobSpec{ExecutorClass: protocol.ClassTest, DockerImage: images.LLMImage, Args: []string{},
		DownloadTimeLimit: 30, ExecutionTimeLimit: 120, UploadTimeLimit: 30, StreamingStartTimeLimit: 30}, nil)
	if err != nil {
		t.Fatal(err)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-dev-shm-usage", true))
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer bcancel()

	row := func(uuid, status string) chromedp.CSS {
		return chromedp.CSS(fmt.Sprintf(`tr.job[data-uuid=%q][data-status=%q]`, uuid, status))
	}
	text := func(sel chromedp.CSS) string {
		t.Helper()
		s, err := chromedp.Run(bctx, chromedp.Text(sel))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	shot := func() []byte {
		t.Helper()
		b, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		return b
	}
	if err := chromedp.Do(bctx,
		chromedp.Navigate(h.FacilitatorURL+"/dashboard/"),
		chromedp.WaitVisible(row(done.UUID, "completed")),
		chromedp.WaitVisible(row(st.JobUUID, "streaming_ready")),
		chromedp.WaitVisible(row(failed.UUID, "failed")),
		chromedp.WaitVisible(chromedp.CSS(`#live`)), // the event stream is up
	); err != nil {
		t.Fatal(err)
	}
	if s := text(row(failed.UUID, "failed")); !strings.Contains(s, "nonzero_return_code") {
		t.Errorf("the failed job's row does not say why: %q", s)
	}
	if s := text(`#validators`); !strings.Contains(s, "connected") || !strings.Contains(s, "always_on.test: 2") {
		t.Errorf("validators section: %q", s)
	}
	if s := text(`#executors`); !strings.Contains(s, "always_on.test") {
		t.Errorf("executors section: %q", s)
	}
	desktop := shot()

	// Live: the job ends, the page follows without a reload.
	if _, err := h.Client.Stop(ctx, st.JobUUID); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(bctx, chromedp.WaitVisible(row(st.JobUUID, "completed"))); err != nil {
		t.Fatal(err)
	}
	live := shot()

	// A job's own page, and the overview on a phone.
	if err := chromedp.Do(bctx, chromedp.Navigate(h.FacilitatorURL+"/dashboard/jobs/"+failed.UUID),
		chromedp.WaitVisible(chromedp.CSS(`ol.history`))); err != nil {
		t.Fatal(err)
	}
	if s := text(`#main`); !strings.Contains(s, "Status history") || !strings.Contains(s, "nonzero_return_code") {
		t.Errorf("job page: %q", s)
	}
	if err := chromedp.Do(bctx, chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile),
		chromedp.Navigate(h.FacilitatorURL+"/dashboard/"), chromedp.WaitVisible(row(done.UUID, "completed"))); err != nil {
		t.Fatal(err)
	}
	phone := shot()
	dir := artifacts(t)
	for name, b := range map[string][]byte{"desktop.png": desktop, "live.png": live, "phone.png": phone} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("screenshots in %s", dir)
	if *updateScreenshot {
		if err := os.WriteFile(filepath.Join("..", "..", "docs", "dashboard.png"), desktop, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
