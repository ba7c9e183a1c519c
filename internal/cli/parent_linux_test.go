package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStopsWithItsParent runs the real thing: this test binary starts a
// parent process (playing 'go run'), which starts a child (playing 'horde
// dev') that calls stopWithParent. The parent is killed with SIGKILL; the
// child must get SIGTERM and end. The child reports over a pipe whose end
// closes when it exits, so the test waits on events only.
func TestStopsWithItsParent(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	parent := exec.Command(os.Args[0], "-test.run=^TestParentDeathHelper$")
	parent.Env = append(os.Environ(), "HORDE_TEST_PDEATH=parent")
	parent.ExtraFiles = []*os.File{w} // fd 3, passed on to the child
	parent.Stderr = os.Stderr
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	lines := bufio.NewReader(r)
	if got := readLine(t, lines); got != "ready" {
		t.Fatalf("child said %q, want ready", got)
	}
	if err := parent.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	parent.Wait()
	if got := readLine(t, lines); got != "stopped by SIGTERM" {
		t.Fatalf("after its parent died the child said %q", got)
	}
	if rest, _ := io.ReadAll(lines); len(rest) != 0 { // EOF: the child has exited
		t.Errorf("child said more: %q", rest)
	}
}

func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	s, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read from child: %v (read %q)", err, s)
	}
	return strings.TrimSpace(s)
}

// TestParentDeathHelper is the parent and the child of TestStopsWithItsParent.
func TestParentDeathHelper(t *testing.T) {
	report := os.NewFile(3, "report")
	switch os.Getenv("HORDE_TEST_PDEATH") {
	case "parent":
		child := exec.Command(os.Args[0], "-test.run=^TestParentDeathHelper$")
		child.Env = append(os.Environ(), "HORDE_TEST_PDEATH=child")
		child.ExtraFiles = []*os.File{report}
		child.Stderr = os.Stderr
		if err := child.Start(); err != nil {
			fmt.Fprintf(report, "parent: %v\n", err)
			os.Exit(1)
		}
		report.Close()
		child.Wait() // killed before the child ends
		os.Exit(0)
	case "child":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		defer stop()
		if err := stopWithParent(); err != nil {
			fmt.Fprintf(report, "child: %v\n", err)
			os.Exit(1)
		}
		fmt.Fprintln(report, "ready")
		select {
		case <-ctx.Done():
			fmt.Fprintln(report, "stopped by SIGTERM")
		case <-time.After(time.Minute): // failsafe: the test reports what was said
			fmt.Fprintln(report, "still running a minute after its parent died")
		}
		os.Exit(0)
	default:
		t.Skip("helper process of TestStopsWithItsParent")
	}
}

// TestStopWithAParentAlreadyGone: when the parent exited before the request
// was made, the process is re-parented and signals itself at once.
func TestStopWithAParentAlreadyGone(t *testing.T) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if err := stopWith(os.Getppid() + 1_000_000); err != nil { // not our parent
		t.Fatal(err)
	}
	if s := <-sigs; s != syscall.SIGTERM {
		t.Errorf("got %v", s)
	}
}
