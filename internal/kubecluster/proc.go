package kubecluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// A proc is one component of the cluster: a child process whose output goes
// to a log file and whose exit is reaped by a goroutine the cluster waits for.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string        // path of its log file
	done chan struct{} // closed when it has exited
	err  error         // how it exited; read after done
}

// spawn starts a component. It outlives ctx: Stop ends it.
func (c *Cluster) spawn(name, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(c.dir, "logs", name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own copy
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = c.dir
	cmd.Env = withSbin(os.Environ())
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true, // a ^C to the test does not reach it before Stop does
		// If the test binary dies, so do the components (the next Start
		// cleans up what they leave).
		Pdeathsig: syscall.SIGKILL,
	}
	fmt.Fprintf(f, "### %s %s %s\n", time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	c.procs = append(c.procs, p)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		p.err = cmd.Wait()
		close(p.done)
		c.exitOnce.Do(func() {
			c.exited = p
			close(c.anyExit)
		})
	}()
	c.log.Debug("started", "component", name, "pid", cmd.Process.Pid)
	return p, nil
}

// stop sends SIGTERM and waits up to grace before SIGKILL.
func (p *proc) stop(ctx context.Context, grace time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	p.cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("%s did not stop within %s of SIGTERM: killed", p.name, grace)
}

// exitErr describes a component that exited when it should not have.
func (p *proc) exitErr() error {
	return fmt.Errorf("%s exited: %v\n%s", p.name, p.err, p.tail(40))
}

// tail returns the last n lines of the component's log.
func (p *proc) tail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return tailLines(b, n)
}

func tailLines(b []byte, n int) string {
	b = bytes.TrimRight(b, "\n")
	for i, k := len(b)-1, 0; i >= 0; i-- {
		if b[i] == '\n' {
			k++
			if k == n {
				b = b[i+1:]
				break
			}
		}
	}
	return "    | " + strings.ReplaceAll(string(b), "\n", "\n    | ")
}

// DumpLogs writes the last n lines of every component's log to w, for a
// test that failed.
func (c *Cluster) DumpLogs(w io.Writer, n int) {
	for _, p := range c.procs {
		fmt.Fprintf(w, "--- %s (%s), last %d lines:\n%s\n", p.name, p.log, n, p.tail(n))
	}
}

// RSS is the resident memory of each running component, in bytes (the
// Pods' containers and containerd's shims are not counted).
func (c *Cluster) RSS() map[string]int64 {
	out := map[string]int64{}
	for _, p := range c.procs {
		select {
		case <-p.done:
			continue
		default:
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				var kb int64
				fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
				out[p.name] = kb << 10
			}
		}
	}
	return out
}

// waitUntil polls ready every interval until it returns true, an error
// wrapping errPermanent, ctx ends, or a component exits.
func (c *Cluster) waitUntil(ctx context.Context, what string, interval time.Duration, ready func(context.Context) (bool, error)) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var last error
	for {
		ok, err := ready(ctx)
		if ok {
			return nil
		}
		if errors.Is(err, errPermanent) {
			return fmt.Errorf("wait for %s: %w", what, err)
		}
		if err != nil {
			last = err
		}
		select {
		case <-c.anyExit:
			return fmt.Errorf("wait for %s: %w", what, c.exited.exitErr())
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last: %v)", what, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

var errPermanent = errors.New("permanent")

// withSbin makes sure PATH has the sbin directories: the kubelet runs
// iptables and mount, containerd runs runc.
func withSbin(env []string) []string {
	const sbin = "/usr/local/sbin:/usr/sbin:/sbin"
	for i, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			env[i] = "PATH=" + v + ":" + sbin
			return env
		}
	}
	return append(env, "PATH=/usr/local/bin:/usr/bin:/bin:"+sbin)
}
