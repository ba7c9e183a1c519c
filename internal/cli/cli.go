// Package cli is the horde command: one binary with a subcommand per role
// (facilitator, validator, miner, executor), for clients (job, keys) and for
// a local stack (dev). Flags can also come from HORDE_* environment variables.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/horde-compute/horde/sig"
)

// ExitError carries the exit code main should use.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// ErrQuiet marks an exit whose command has said all it had to (an image's
// program exiting non-zero): main prints nothing more.
var ErrQuiet = errors.New("exited")

// ErrUsage marks a command-line mistake (exit code 2).
var ErrUsage = errors.New("usage")

func usageErr(format string, a ...any) error {
	return &ExitError{Code: 2, Err: fmt.Errorf("%w: %s", ErrUsage, fmt.Sprintf(format, a...))}
}

const usage = `horde — a decentralized GPU compute market (ComputeHorde-compatible)

Usage: horde <command> [flags]

Roles:
  facilitator   serve the client API and dispatch jobs to validators
  validator     route jobs to miners, check them, sign receipts
  validator scores   per-miner results of the last synthetic rounds
  validator validations   streaming validation windows, verdicts, evidence of cheats
  miner         offer executors to validators
  executor      run one job (started by a miner)

Clients:
  job run       submit a job, show progress, print its result
  job status    show a job and its history
  job list      list your jobs
  job cancel    cancel a job
  stream start  start a streaming job (whitelisted images) and show where it serves
  stream call   send one request to it over mutual TLS and verify the signed receipt
  stream stop   end a streaming job
  stream receipts   list the receipts kept for a streaming job
  stream volume     send a serving job one more input volume, or upload its outputs
  stream report     hand the kept exchanges and receipts to validators
  keys new      create a hotkey in a Bittensor wallet
  keys show     show a wallet's hotkey

Local:
  dev           run a whole horde on this machine (SQLite, local Docker)
  dev demo      run one, make the images, run a demo job, print its result

Deploying:
  deploy init   wallets, metagraph and images for deploy/compose.yaml
  deploy isolate-image   the isolate image as an archive to import on Kubernetes nodes

Images (horde makes its images from this binary; these are their programs):
  program job   the demo and test job (image horde/job:dev)
  program llm   the demo language model service (image horde/llm:dev)
  program isolate   the init container of Kubernetes job Pods (image horde/isolate:dev)

Run 'horde <command> -h' for a command's flags. Flags may come before or after
the other arguments; each can also be set by an environment variable
(--facilitator by HORDE_FACILITATOR, --db by HORDE_DB, …), which -h shows.
`

// StopGrace is how long a command may take to stop once ctx has ended
// (SIGTERM): roles bound their own stop (the miner's StopTimeout, HTTP
// shutdowns) well within it; past it the command gives up on what is left,
// so the process exits whatever its jobs are doing.
var StopGrace = 30 * time.Second

// ErrStopTimeout is returned by Run when a command had not stopped StopGrace
// after its context ended.
var ErrStopTimeout = errors.New("did not stop in time after the stop signal; exiting anyway")

// Run runs the horde command with args (without the program name). Once ctx
// ends, Run returns within StopGrace.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return stopWithin(ctx, StopGrace, func() error { return runCommand(ctx, args, stdout, stderr) })
}

// stopWithin runs f and returns its error, or ErrStopTimeout when f is still
// running grace after ctx ended. f's goroutine is then left to the process's
// exit, which follows.
func stopWithin(ctx context.Context, grace time.Duration, f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }() // owned: waited for below, or ended by the exit that follows ErrStopTimeout
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return &ExitError{Code: 1, Err: fmt.Errorf("%w (%s)", ErrStopTimeout, grace)}
	}
}

func runCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		return nil
	}
	e := &env{ctx: ctx, stdout: stdout, stderr: stderr}
	cmd, rest := args[0], args[1:]
	sub := func(cmds map[string]func([]string) error) error {
		if len(rest) == 0 {
			return usageErr("horde %s needs a subcommand", cmd)
		}
		f, ok := cmds[rest[0]]
		if !ok {
			return usageErr("unknown command 'horde %s %s'", cmd, rest[0])
		}
		return f(rest[1:])
	}
	switch cmd {
	case "facilitator":
		return e.facilitator(rest)
	case "validator":
		if len(rest) > 0 && rest[0] == "scores" {
			return e.validatorScores(rest[1:])
		}
		if len(rest) > 0 && rest[0] == "validations" {
			return e.validatorValidations(rest[1:])
		}
		return e.validator(rest)
	case "miner":
		return e.miner(rest)
	case "executor":
		return e.executor(rest)
	case "job":
		return sub(map[string]func([]string) error{"run": e.jobRun, "status": e.jobStatus, "list": e.jobList, "cancel": e.jobCancel})
	case "stream":
		return e.stream(rest)
	case "keys":
		return sub(map[string]func([]string) error{"new": e.keysNew, "show": e.keysShow})
	case "deploy":
		return e.deploy(rest)
	case "program":
		return e.program(rest)
	case "dev":
		if len(rest) > 0 && rest[0] == "demo" {
			return e.devDemo(rest[1:])
		}
		return e.dev(rest)
	}
	return usageErr("unknown command %q (see 'horde help')", cmd)
}

type env struct {
	ctx            context.Context
	stdout, stderr io.Writer
}

// synopses are the first line of each command's help.
var synopses = map[string]string{
	"job run":         "horde job run --image IMAGE [flags] [-- CMD ARGS…]",
	"job status":      "horde job status JOB_ID [flags]",
	"job cancel":      "horde job cancel JOB_ID [flags]",
	"stream start":    "horde stream start --image IMAGE [flags] [-- CMD ARGS…]",
	"stream call":     "horde stream call JOB_ID PATH [--data BODY|@FILE] [flags]",
	"stream stop":     "horde stream stop JOB_ID [flags]",
	"stream receipts": "horde stream receipts JOB_ID [flags]",
	"stream volume":   "horde stream volume JOB_ID (--volume SPEC | --output-upload SPEC) [flags]",
	"stream report":   "horde stream report JOB_ID [flags]",
}

// secretFlags are flags whose values help never shows.
var secretFlags = map[string]bool{"password": true, "pylon-token": true}

// envName is the environment variable a flag's default comes from.
func envName(flagName string) string {
	return "HORDE_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// flags makes a flag set whose defaults can come from HORDE_<NAME> variables
// and whose help says so, with the values those variables hold now.
func (e *env) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("horde "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		syn, ok := synopses[name]
		if !ok {
			syn = "horde " + name + " [flags]"
		}
		fmt.Fprintf(e.stderr, "Usage: %s\n\nFlags may come before or after the other arguments. Each can also be set by the\nenvironment variable named below it; a flag on the command line wins.\n\n", syn)
		printFlags(e.stderr, fs)
	}
	return fs
}

// printFlags lists fs's flags with their defaults, their variables and the
// values those variables hold now (secrets hidden).
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		kind, usage := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if kind != "" {
			line += " " + kind
		}
		fmt.Fprintln(w, line)
		for _, l := range strings.Split(usage, "\n") {
			fmt.Fprintf(w, "        %s\n", l)
		}
		var notes []string
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" {
			notes = append(notes, fmt.Sprintf("default %q", f.DefValue))
		}
		name := envName(f.Name)
		v, set := os.LookupEnv(name)
		switch {
		case !set:
			notes = append(notes, "$"+name)
		case secretFlags[f.Name]:
			notes = append(notes, fmt.Sprintf("$%s is set (value hidden): used unless --%s is given", name, f.Name))
		default:
			if u, err := url.Parse(v); err == nil && u.User != nil {
				v = u.Redacted() // a database URL's password
			}
			notes = append(notes, fmt.Sprintf("$%s=%q: used unless --%s is given", name, v, f.Name))
		}
		fmt.Fprintf(w, "        %s\n", strings.Join(notes, "; "))
	})
}

// parse parses args and returns the positional arguments. Flags may stand
// before, between or after them; everything after a "--" is positional.
// Flags not given take their values from HORDE_<NAME> (HORDE_DB for --db).
func (e *env) parse(fs *flag.FlagSet, args []string) ([]string, error) {
	flags, rest := splitDashes(fs, args)
	var pos []string
	for {
		if err := fs.Parse(flags); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, &ExitError{Code: 0, Err: err}
			}
			return nil, &ExitError{Code: 2, Err: err}
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		flags = fs.Args()[1:]
	}
	pos = append(pos, rest...)
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		name := envName(f.Name)
		if v, ok := os.LookupEnv(name); ok {
			if serr := fs.Set(f.Name, v); serr != nil && err == nil {
				if secretFlags[f.Name] {
					v = "…"
				}
				err = usageErr("%s=%q: %v", name, v, serr)
			}
		}
	})
	return pos, err
}

// parseFlags parses a command that takes no positional arguments.
func (e *env) parseFlags(fs *flag.FlagSet, args []string) error {
	pos, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr("%s takes no argument %q (see '%s -h')", fs.Name(), pos[0], fs.Name())
	}
	return nil
}

// splitDashes splits args at the first "--" that ends the flags (not one
// that is a flag's value), dropping it.
func splitDashes(fs *flag.FlagSet, args []string) (flags, rest []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return args[:i], args[i+1:]
		}
		if len(a) < 2 || a[0] != '-' {
			continue
		}
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			continue // Parse reports it
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			continue
		}
		i++ // the flag's value
	}
	return args, nil
}

// logger returns a text logger at level ("debug", "info", "warn", "error").
func (e *env) logger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usageErr("--log-level %q: %v", level, err)
	}
	return slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: l})), nil
}

// walletFlags are the flags naming a Bittensor hotkey, the same for every command.
type walletFlags struct {
	path, wallet, hotkey, password string
}

func (w *walletFlags) register(fs *flag.FlagSet, wallet string) {
	fs.StringVar(&w.path, "wallet-path", sig.DefaultWalletRoot(), "Bittensor wallets directory")
	fs.StringVar(&w.wallet, "wallet", wallet, "wallet name")
	fs.StringVar(&w.hotkey, "hotkey", "default", "hotkey name")
	fs.StringVar(&w.password, "password", "", "password of an encrypted ($NACL) key file")
}

func (w *walletFlags) file() string { return sig.HotkeyPath(w.path, w.wallet, w.hotkey) }

func (w *walletFlags) load() (*sig.Hotkey, error) {
	k, err := sig.LoadKeyfile(w.file(), w.password)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no hotkey at %s (create one with 'horde keys new --wallet %s --hotkey %s')", w.file(), w.wallet, w.hotkey)
	}
	return k, err
}
