// Package devstack runs a whole horde on loopback in one process — a
// facilitator, a validator and miners with local executors on Docker (or on
// an in-process fake runtime, for tests) — with
// SQLite stores and Bittensor wallets under one data directory. It backs
// `horde dev` and the integration tests.
package devstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/horde-compute/horde/internal/blob"
	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/executor/sandbox"
	"github.com/horde-compute/horde/internal/facilitator"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/internal/metrics"
	"github.com/horde-compute/horde/internal/miner"
	"github.com/horde-compute/horde/internal/store/backend"
	"github.com/horde-compute/horde/internal/store/sqlite"
	"github.com/horde-compute/horde/internal/validator"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// Config configures a dev stack.
type Config struct {
	DataDir string
	// Miners is how many miners to run (default 1).
	Miners int
	// Manifest is each miner's executors per class (default: 2 always_on.test).
	Manifest map[string]int
	// ExtraNeurons are added to the metagraph (e.g. fake miners in tests).
	ExtraNeurons []chain.Neuron
	// FacilitatorAddr is where the facilitator listens (default 127.0.0.1:0).
	FacilitatorAddr string
	AllowPull       bool
	// MinerImagePull and MinerStreamingImages are the miners' own image
	// policy (miner.Config.ImagePull, StreamingImages).
	MinerImagePull       protocol.ImagePullPolicy
	MinerStreamingImages []string
	// MinerUpstreamOnly makes the miners look like upstream's
	// (miner.Config.UpstreamOnly).
	MinerUpstreamOnly bool
	// ValidatorUpstream makes the validator speak upstream's protocol only
	// (validator.Config.Upstream); the facilitator then takes upstream's
	// authentication from it.
	ValidatorUpstream bool
	Limits            blob.Limits
	// AllowPrivate lists the non-public destinations executors may fetch
	// volumes from and upload to (see blob.NewDialGuard): only the local
	// servers the stack's user starts (its object server). Everything else
	// on loopback or a private network is refused, as on a real miner.
	AllowPrivate []string
	// BoundDisks bounds job directories (see executor.Config; needs root).
	BoundDisks bool
	Refresh    time.Duration
	ReapEvery  time.Duration
	// Synthetic configures the validator's rounds (Image defaults to the job
	// image, Weights to <data-dir>/weights.jsonl).
	Synthetic validator.SyntheticConfig
	// StreamingWhitelist maps images streaming jobs may use to their digests.
	StreamingWhitelist map[string]string
	// StreamCheaters maps miners (by index) to the fraction of streaming
	// requests on which they serve the demo LLM's cheaper model.
	StreamCheaters map[int]float64
	// StreamingSandboxes is how many streaming sandboxes (package sandbox)
	// each miner keeps ready on Docker; 0: none, each streaming job makes
	// its network when it starts.
	StreamingSandboxes int
	// TrustedMiner starts the validator's own unregistered miner, with
	// Validation passed to the validator.
	TrustedMiner bool
	Validation   validator.ValidationConfig
	// Cheaters lists miners (by index) that claim more than they have: all
	// their executors share one CPU.
	Cheaters map[int]bool
	// Runtime runs every executor's containers. Nil: the local Docker Engine
	// (what `horde dev` uses); tests may pass an in-process fake (package
	// fakert, with images.RegisterFake) and need no Docker at all.
	Runtime executor.Runtime
	// OpenStore opens the store of the role called name ("facilitator",
	// "validator", "miner0", …). Nil: a SQLite file <DataDir>/<name>.db.
	// The stack closes what it opens.
	OpenStore func(ctx context.Context, name string) (backend.Store, error)
	Log       *slog.Logger
}

// Stack is a running dev horde.
type Stack struct {
	FacilitatorURL string
	DataDir        string
	Client         *sig.Hotkey
	Validator      *sig.Hotkey
	Miners         []*sig.Hotkey
	MinerAddrs     []string
	// Sandboxes are the miners' streaming sandbox pools (with
	// Config.StreamingSandboxes), by miner index.
	Sandboxes []*sandbox.Pool

	validator *validator.Validator

	cancel  context.CancelFunc
	wg      sync.WaitGroup
	errs    chan error
	closers []func() error
}

// Wallet names under DataDir/wallets.
const (
	WalletClient    = "client"
	WalletValidator = "validator"
	WalletMiner     = "miner"
)

// LoadOrCreate loads the hotkey of wallet (hotkey "default") under root, creating it if absent.
func LoadOrCreate(root, wallet string) (*sig.Hotkey, error) {
	path := sig.HotkeyPath(root, wallet, "default")
	if k, err := sig.LoadKeyfile(path, ""); err == nil {
		return k, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	k, phrase, err := sig.Generate()
	if err != nil {
		return nil, err
	}
	if err := sig.WriteKeyfile(path, k, phrase); err != nil {
		return nil, err
	}
	return k, nil
}

// Start launches the stack and returns once every role is listening.
func Start(ctx context.Context, cfg Config) (*Stack, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("devstack: DataDir is required")
	}
	if cfg.Miners == 0 {
		cfg.Miners = 1
	}
	if cfg.Manifest == nil {
		cfg.Manifest = map[string]int{protocol.ClassTest: 2}
	}
	if cfg.FacilitatorAddr == "" {
		cfg.FacilitatorAddr = "127.0.0.1:0"
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Limits.Tries == 0 {
		cfg.Limits = blob.DefaultLimits()
	}
	if cfg.Refresh == 0 {
		cfg.Refresh = 5 * time.Second
	}
	guard, err := blob.NewDialGuard(cfg.AllowPrivate...)
	if err != nil {
		return nil, fmt.Errorf("devstack: AllowPrivate: %w", err)
	}
	rt := cfg.Runtime
	if rt == nil {
		dock, err := docker.New("")
		if err != nil {
			return nil, err
		}
		if err := dock.Ping(ctx); err != nil {
			return nil, fmt.Errorf("devstack: the Docker Engine does not answer (is it running?): %w", err)
		}
		rt = dock
	}
	wallets := filepath.Join(cfg.DataDir, "wallets")
	s := &Stack{DataDir: cfg.DataDir, errs: make(chan error, 8)}
	if cfg.Synthetic.Image == "" {
		cfg.Synthetic.Image = images.JobImage
	}
	if cfg.Synthetic.Weights == nil {
		cfg.Synthetic.Weights = chain.WeightsFile{Path: filepath.Join(cfg.DataDir, "weights.jsonl")}
	}
	if s.Client, err = LoadOrCreate(wallets, WalletClient); err != nil {
		return nil, err
	}
	if s.Validator, err = LoadOrCreate(wallets, WalletValidator); err != nil {
		return nil, err
	}
	fln, err := net.Listen("tcp", cfg.FacilitatorAddr)
	if err != nil {
		return nil, fmt.Errorf("devstack: facilitator: %w", err)
	}
	s.FacilitatorURL = "http://" + fln.Addr().String()
	mg := &chain.Metagraph{Block: 1, Neurons: []chain.Neuron{{UID: 0, Hotkey: s.Validator.SS58(), Active: true, Stake: 1000, ValidatorPermit: true}}}
	var mlns []net.Listener
	for i := range cfg.Miners {
		k, err := LoadOrCreate(wallets, fmt.Sprintf("%s%d", WalletMiner, i))
		if err != nil {
			return nil, err
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		s.Miners = append(s.Miners, k)
		mlns = append(mlns, ln)
		s.MinerAddrs = append(s.MinerAddrs, ln.Addr().String())
		a := ln.Addr().(*net.TCPAddr)
		mg.Neurons = append(mg.Neurons, chain.Neuron{UID: i + 1, Hotkey: k.SS58(), Active: true, Stake: 10,
			AxonInfo: chain.AxonInfo{IP: "127.0.0.1", Port: a.Port, Protocol: 4}})
	}
	for i, n := range cfg.ExtraNeurons {
		n.UID = cfg.Miners + 1 + i
		mg.Neurons = append(mg.Neurons, n)
	}
	mgPath := filepath.Join(cfg.DataDir, "metagraph.json")
	if err := chain.Write(mgPath, mg); err != nil {
		return nil, err
	}
	meta := chain.File{Path: mgPath}

	ctx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	openStore := cfg.OpenStore
	if openStore == nil {
		openStore = func(ctx context.Context, name string) (backend.Store, error) {
			return sqlite.Open(ctx, filepath.Join(cfg.DataDir, name+".db"))
		}
	}
	open := func(name string) (backend.Store, error) {
		db, err := openStore(ctx, name)
		if err == nil {
			s.closers = append(s.closers, db.Close)
		}
		return db, err
	}
	run := func(name string, f func() error) {
		s.wg.Go(func() {
			if err := f(); err != nil && ctx.Err() == nil {
				s.errs <- fmt.Errorf("%s: %w", name, err)
				cancel()
			}
		})
	}
	fdb, err := open("facilitator")
	if err != nil {
		s.fail()
		return nil, err
	}
	vdb, err := open("validator")
	if err != nil {
		s.fail()
		return nil, err
	}
	validatorKey := s.Validator.SS58()
	// Each role has its own registry, as it would in its own process; the
	// facilitator and miners serve theirs at /metrics on their listeners,
	// the validator's is served by ValidatorHandler.
	fac, err := facilitator.New(facilitator.Config{Listener: fln, Store: fdb, Log: cfg.Log, AllowUpstreamAuth: cfg.ValidatorUpstream,
		AllowValidator: func(hk string) bool { return hk == validatorKey }, Metrics: metrics.NewRegistry()})
	if err != nil {
		fln.Close()
		s.fail()
		return nil, err
	}
	run("facilitator", func() error { return fac.Run(ctx) })
	for i, k := range s.Miners {
		mdb, err := open(fmt.Sprintf("miner%d", i))
		if err != nil {
			s.fail()
			return nil, err
		}
		execDir := filepath.Join(cfg.DataDir, fmt.Sprintf("miner%d-jobs", i))
		mlog := cfg.Log.With("miner", i)
		var rewrite func(*protocol.V0JobRequest)
		if f, ok := cfg.StreamCheaters[i]; ok {
			rewrite = func(r *protocol.V0JobRequest) {
				if r.DockerImage == images.LLMImage {
					r.DockerRunCmd = append(r.DockerRunCmd, "--cheat-fraction", strconv.FormatFloat(f, 'f', -1, 64))
				}
			}
		}
		classes := miner.DefaultClasses()
		if cfg.Cheaters[i] {
			for name, c := range classes {
				c.CPUSet = "0"
				classes[name] = c
			}
		}
		reg := metrics.NewRegistry()
		var pool *sandbox.Pool
		reaper := &miner.Reaper{Runtime: rt, Owner: k.SS58(), DataDir: execDir, Log: mlog}
		if cfg.StreamingSandboxes > 0 {
			pool = &sandbox.Pool{Runtime: rt, Owner: k.SS58(), Size: cfg.StreamingSandboxes, Log: mlog}
			reaper.Sandboxes = pool
			s.Sandboxes = append(s.Sandboxes, pool)
			run(fmt.Sprintf("miner %d sandboxes", i), func() error { pool.Run(ctx); return nil })
		}
		m, err := miner.New(miner.Config{Hotkey: k, Listener: mlns[i], Manifest: cfg.Manifest, Classes: classes,
			Metagraph: meta, Store: mdb, Log: mlog, ReapEvery: cfg.ReapEvery, ImagePull: cfg.MinerImagePull, StreamingImages: cfg.MinerStreamingImages, UpstreamOnly: cfg.MinerUpstreamOnly,
			Metrics: reg,
			Backend: &miner.Local{Runtime: rt, DataDir: execDir, Owner: k.SS58(), Limits: cfg.Limits, Log: mlog, Rewrite: rewrite,
				Net: guard, BoundDisks: cfg.BoundDisks, StreamingMetrics: metrics.NewStreaming(reg), Sandboxes: sandboxes(pool)},
			Reaper: reaper})
		if err != nil {
			s.fail()
			return nil, err
		}
		run(fmt.Sprintf("miner %d", i), func() error { return m.Run(ctx) })
	}
	if cfg.TrustedMiner {
		k, err := LoadOrCreate(wallets, "trusted")
		if err != nil {
			s.fail()
			return nil, err
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			s.fail()
			return nil, err
		}
		tdb, err := open("trusted")
		if err != nil {
			s.fail()
			return nil, err
		}
		execDir := filepath.Join(cfg.DataDir, "trusted-jobs")
		tlog := cfg.Log.With("miner", "trusted")
		a := ln.Addr().(*net.TCPAddr)
		cfg.Validation.TrustedMiner = &chain.Neuron{Hotkey: k.SS58(), AxonInfo: chain.AxonInfo{IP: "127.0.0.1", Port: a.Port}}
		tm, err := miner.New(miner.Config{Hotkey: k, Listener: ln, Manifest: map[string]int{protocol.ClassTest: 1}, Classes: miner.DefaultClasses(),
			TrustedValidator: s.Validator.SS58(), Store: tdb, Log: tlog, ReapEvery: cfg.ReapEvery,
			Backend: &miner.Local{Runtime: rt, DataDir: execDir, Owner: k.SS58(), Limits: cfg.Limits, Log: tlog, Net: guard, BoundDisks: cfg.BoundDisks},
			Reaper:  &miner.Reaper{Runtime: rt, Owner: k.SS58(), DataDir: execDir, Log: tlog}})
		if err != nil {
			ln.Close()
			s.fail()
			return nil, err
		}
		run("trusted miner", func() error { return tm.Run(ctx) })
	}
	v, err := validator.New(validator.Config{Hotkey: s.Validator, FacilitatorURL: "ws://" + fln.Addr().String() + protocol.FacilitatorPath,
		Metagraph: meta, Store: vdb, AllowPull: cfg.AllowPull, Refresh: cfg.Refresh, Log: cfg.Log,
		Synthetic: cfg.Synthetic, StreamingWhitelist: cfg.StreamingWhitelist, Validation: cfg.Validation, Upstream: cfg.ValidatorUpstream,
		Metrics: metrics.NewRegistry()})
	if err != nil {
		s.fail()
		return nil, err
	}
	s.validator = v
	run("validator", func() error { return v.Run(ctx) })
	return s, nil
}

// ValidatorHandler is the validator's HTTP handler: /healthz and /metrics.
func (s *Stack) ValidatorHandler() http.Handler { return s.validator.Handler() }

// PairsWaiting returns how many pairs of image wait for validation on the validator.
func (s *Stack) PairsWaiting(ctx context.Context, image string) (int, error) {
	return s.validator.PairsWaiting(ctx, image)
}

// Validate opens a validation window for image on the validator now.
func (s *Stack) Validate(ctx context.Context, image string) (*validator.WindowReport, error) {
	return s.validator.OpenWindow(ctx, image)
}

// Canary sends the validator's own requests to a streaming job of image.
func (s *Stack) Canary(ctx context.Context, image string, requests [][]byte, path string) (int, error) {
	return s.validator.Canary(ctx, image, requests, path)
}

// Round runs one synthetic round on the validator now.
func (s *Stack) Round(ctx context.Context) (*validator.Report, error) {
	return s.validator.Round(ctx)
}

func (s *Stack) fail() {
	s.cancel()
	s.wg.Wait()
	for _, c := range s.closers {
		c()
	}
}

// Errors yields the error of a role that failed.
func (s *Stack) Errors() <-chan error { return s.errs }

// Stop ends every role and closes the stores.
func (s *Stack) Stop() error {
	s.cancel()
	s.wg.Wait()
	var errs []error
	for _, c := range s.closers {
		errs = append(errs, c())
	}
	select {
	case err := <-s.errs:
		errs = append(errs, err)
	default:
	}
	return errors.Join(errs...)
}

// sandboxes is pool as executor.Sandboxes: nil (none) for a nil pool.
func sandboxes(pool *sandbox.Pool) executor.Sandboxes {
	if pool == nil {
		return nil
	}
	return pool
}
