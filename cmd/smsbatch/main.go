// Command smsbatch is the single smsbatch binary. `smsbatch serve` runs the
// service; see `smsbatch help`. This package only wires the parts together.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/smsbatch/smsbatch/api"
	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/live"
	"github.com/smsbatch/smsbatch/optouts"
	"github.com/smsbatch/smsbatch/processors"
	"github.com/smsbatch/smsbatch/projections"
)

const usage = `smsbatch sends SMS campaigns.

Usage:
  smsbatch serve [flags]                     run the service (flags: smsbatch serve -h)
  smsbatch migrate [flags]                   apply the PostgreSQL migrations
  smsbatch projections rebuild [which]       rebuild the read models from the events (embedded:
                                             with the service stopped; which: status,
                                             analytics, errors or all)
  smsbatch simulator [flags]                 serve the SMS simulator's Twilio-style API on --addr
                                             (flags: smsbatch simulator -h)
  smsbatch check --data-dir DIR              verify the embedded event store offline; exits 1 on damage
  smsbatch help                              show this text

With no command, smsbatch serves. migrate and projections take the settings of
serve (flags or SMSBATCH_ variables); simulator takes its own few.
`

func main() {
	args := os.Args[1:]
	cmd := "serve"
	switch {
	case len(args) == 1 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help"):
		// Help on its own is the program's, not serve's flags.
		cmd, args = "help", nil
	case len(args) > 0 && !strings.HasPrefix(args[0], "-"):
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		os.Exit(serve(args))
	case "migrate":
		os.Exit(tool("smsbatch migrate", args, func(ctx context.Context, cfg Config, rest []string) error {
			if len(rest) > 0 {
				return fmt.Errorf("unexpected arguments: %s", strings.Join(rest, " "))
			}
			return migrate(ctx, cfg, os.Stdout)
		}))
	case "check":
		os.Exit(tool("smsbatch check", args, func(ctx context.Context, cfg Config, rest []string) error {
			if len(rest) > 0 {
				// Checking ./data while the operator named another directory
				// would report the wrong store clean.
				return fmt.Errorf("unexpected arguments: %s (the directory checked is --data-dir, SMSBATCH_DATA_DIR)", strings.Join(rest, " "))
			}
			return checkStore(ctx, cfg, os.Stdout)
		}))
	case "simulator":
		os.Exit(tool("smsbatch simulator", args, func(ctx context.Context, cfg Config, rest []string) error {
			if len(rest) > 0 {
				return fmt.Errorf("unexpected arguments: %s", strings.Join(rest, " "))
			}
			return runSimulator(ctx, cfg, os.Stdout)
		}, simulatorFlags...))
	case "projections":
		if len(args) == 0 || args[0] != "rebuild" {
			fmt.Fprintf(os.Stderr, "usage: smsbatch projections rebuild [status|analytics|errors|all]\n")
			os.Exit(2)
		}
		// The read model's name may come before the flags or after them: flags
		// after it would otherwise be dropped, and the rebuild run elsewhere.
		which, flags := "", args[1:]
		if len(flags) > 0 && !strings.HasPrefix(flags[0], "-") {
			which, flags = flags[0], flags[1:]
		}
		os.Exit(tool("smsbatch projections rebuild", flags, func(ctx context.Context, cfg Config, rest []string) error {
			if which == "" && len(rest) > 0 {
				which, rest = rest[0], rest[1:]
			}
			if len(rest) > 0 {
				return fmt.Errorf("unexpected arguments: %s", strings.Join(rest, " "))
			}
			return rebuildProjections(ctx, cfg, which, os.Stdout)
		}))
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
}

// tool runs a one-off command with the serve settings (or only those named);
// Ctrl-C interrupts it.
func tool(name string, args []string, run func(context.Context, Config, []string) error, only ...string) int {
	cfg, rest, err := parseConfig(name, args, os.Getenv, only...)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "smsbatch: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, rest); err != nil {
		fmt.Fprintf(os.Stderr, "smsbatch: %v\n", err)
		return 1
	}
	return 0
}

func serve(args []string) int {
	cfg, err := ParseConfig(args, os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "smsbatch: %v\n", err)
		return 2
	}
	tuneProcs(cfg, os.Getenv)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The parts that log without a logger of their own (the send processor's
	// page reads) log as the service does.
	slog.SetDefault(newLogger(cfg, os.Stdout))

	m := NewMain(cfg, os.Stdout)
	if err := m.Run(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "smsbatch: %v\n", err)
		m.Close()
		return 1
	}
	<-ctx.Done()
	m.logger.Info("shutting down: finishing in-flight sends")
	if err := m.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "smsbatch: shutdown: %v\n", err)
		return 1
	}
	return 0
}

// Main is the running program: Run starts it, Close stops it gracefully. End-to-end
// tests run the real program through it.
type Main struct {
	Config Config
	out    io.Writer
	logger *slog.Logger

	store      eventstore.Store
	readModels readModels
	provider   io.Closer
	transport  transport
	router     *message.Router
	proc       *processors.Processor
	hub        *live.Hub
	runner     *projections.Runner
	fwd        *processors.Forwarder
	server     *http.Server
	listener   net.Listener
	serving    bool // the server took over the listener
	optOuts    *optouts.List
	// DevKey is the API key created when none is configured.
	DevKey string
	// wrapStore, when set (by tests), wraps the event store as soon as it is
	// open, so a test can watch what the program reads.
	wrapStore func(eventstore.Store) eventstore.Store

	cancel context.CancelFunc
	wg     sync.WaitGroup
	errs   chan error

	// stopped holds why components stopped while the program runs: /readyz
	// says so, for none of them stops silently.
	stoppedMu sync.Mutex
	stopped   []error
}

// NewMain returns a program with cfg, writing its logs and notices to out.
func NewMain(cfg Config, out io.Writer) *Main {
	return &Main{Config: cfg, out: out, errs: make(chan error, 8)}
}

// Addr is the address the API listens on, once Run has returned.
func (m *Main) Addr() string { return m.listener.Addr().String() }

// Run opens the stores, starts the processor, the projections and the API, and
// returns once the API is listening.
func (m *Main) Run(ctx context.Context) error {
	cfg := m.Config
	m.logger = newLogger(cfg, m.out)
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}

	keys, err := m.keys()
	if err != nil {
		return err
	}

	store, err := openEventStore(ctx, cfg, m.logger)
	if err != nil {
		return err
	}
	if m.wrapStore != nil {
		store = m.wrapStore(store)
	}
	m.store = store

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	procMetrics := processors.NewMetrics(reg)
	lag := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "smsbatch_projection_lag_seconds",
		Help: "Time between now and the store time of the last event the read models applied.",
	})
	reg.MustRegister(lag)

	repo, err := commands.NewRepositoryFromConfig(commands.RepositoryConfig{Store: store, Logger: m.logger})
	if err != nil {
		return err
	}
	cmds, err := commands.New(store, repo, nil)
	if err != nil {
		return err
	}

	// Listen first: the built-in simulator signs for this address when no
	// public URL is set (and reports delivery in-process).
	m.listener, err = net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	hooks, err := webhooksFor(cfg, m.listener.Addr().String())
	if err != nil {
		return err
	}
	if cfg.SMSProvider == "simulator" && cfg.PublicURL == "" {
		hooks.deliver = recordReceipts(cmds, m.logger)
	}
	provider, closer, err := openProvider(cfg, m.logger, hooks)
	if err != nil {
		return err
	}
	m.provider = closer

	m.readModels, err = openReadModels(ctx, cfg, store, m.logger)
	if err != nil {
		return err
	}
	readModels := m.readModels.Store
	// The followers of the log (read models, opt-out lists, forwarder, live
	// hub) share one read of its latest events.
	tail := eventstore.NewTail(store, 0)
	m.optOuts, err = optouts.New(optouts.Config{Store: tail, From: readModels.Checkpoint, Logger: m.logger})
	if err != nil {
		return err
	}
	optOutCmds, err := commands.NewOptOuts(store, m.optOuts, nil)
	if err != nil {
		return err
	}
	m.runner, err = projections.NewRunner(projections.RunnerConfig{
		Events: tail, Store: readModels, Logger: m.logger, Lag: lag,
	})
	if err != nil {
		return err
	}

	m.transport, err = openTransport(cfg, m.logger)
	if err != nil {
		return err
	}
	instance := uuid.NewString()
	procCfg := processors.Config{
		Commands: cmds, Store: store, Provider: provider, Instance: instance,
		Rates: cfg.Rates, Unlimited: cfg.RateUnlimited, MaxInFlight: cfg.MaxInFlight,
		SliceDuration: cfg.Slice, SendTimeout: cfg.SendTimeout, MaxAttempts: cfg.MaxAttempts,
		BackoffInitial: cfg.BackoffInit, BackoffMax: cfg.BackoffMax, StallTimeout: cfg.StallTimeout,
		BreakerThreshold: cfg.BreakerThreshold, BreakerProbeAfter: cfg.BreakerProbeAfter,
		Metrics: procMetrics, Logger: m.logger,
	}
	// Work messages on GoChannel die with the process: recover them at start.
	procCfg.RecoverAtStart = m.transport.name == "gochannel"
	// A recipient on its tenant's opt-out list is skipped, never sent.
	procCfg.Suppressed = m.optOuts.Suppressed
	// The forwarder starts from the unfinished batches the read models hold, at
	// their checkpoint, not from the start of the log.
	procCfg.StartPoint = func(ctx context.Context) ([]processors.Unfinished, eventstore.Position, error) {
		batches, at, err := readModels.Unfinished(ctx)
		out := make([]processors.Unfinished, 0, len(batches))
		for _, b := range batches {
			u := processors.Unfinished{ID: b.ID, Tenant: b.Tenant, Priority: domain.Priority(b.Priority),
				Status: domain.Status(b.Status), AutoStart: b.AutoStart, LastEvent: b.UpdatedAt}
			if b.ScheduleTime != nil {
				u.ScheduleTime = *b.ScheduleTime
			}
			out = append(out, u)
		}
		return out, at, err
	}
	if exclusiveStore(cfg) {
		// The store's file is held by one process at a time: any other instance
		// that dispatched into it has stopped, and its sends with it.
		procCfg.Gone = func(other string) bool { return other != instance }
	}
	procCfg.TenantMaxRate = cfg.TenantMaxRate
	m.fwd, err = processors.NewForwarder(tail, m.transport.pub, cmds, procCfg)
	if err != nil {
		return err
	}
	// Every batch's share of its tenant's cap comes from the forwarder's index
	// of the batches that are running.
	procCfg.Shares = m.fwd
	m.proc, err = processors.NewProcessor(procCfg)
	if err != nil {
		return err
	}
	proc := m.proc
	m.router, err = processors.NewRouter(proc, m.transport.pub, m.transport.sub, m.logger)
	if err != nil {
		return err
	}

	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m.cancel = cancel
	m.goRun("projections", func() error { return m.runner.Run(bg) })
	m.goRun("router", func() error { return m.router.Run(bg) })
	m.goRun("processor", func() error { return proc.Run(bg) })
	select {
	case <-m.router.Running():
	case err := <-m.errs:
		return err
	}
	m.goRun("forwarder", func() error { return m.fwd.Run(bg) })

	hub, err := live.NewHub(live.Config{Events: tail, ReadModels: readModels, Projections: m.runner, Logger: m.logger})
	if err != nil {
		return err
	}
	m.hub = hub
	m.goRun("live updates", func() error { return hub.Run(bg) })
	m.goRun("opt-out lists", func() error { return m.optOuts.Run(bg) })
	inbound, _ := parseInboundNumbers(cfg.InboundNumbers) // checked by Validate
	m.goRun("opt-out preload", func() error {
		tenants := keys.Tenants()
		for _, t := range inbound {
			tenants = append(tenants, t)
		}
		m.optOuts.Preload(bg, tenants...)
		return nil
	})

	if n, err := api.CleanSpoolDir(cfg.spoolDir()); err != nil {
		return err
	} else if n > 0 {
		m.logger.Info("removed the spool files of uploads an earlier run left unfinished", "files", n)
	}
	pub := m.transport.pub
	apiCfg := api.Config{
		Live:    hub,
		Tickets: api.Tickets{Secret: []byte(cfg.WSTicketSecret), Redeem: cmds.RedeemOnce},
		Started: func(ctx context.Context, batchID string, revision uint64) {
			if err := processors.PublishWork(pub, batchID, revision); err != nil {
				m.logger.Warn("publishing work failed; the event subscription will", "batch", batchID, "err", err)
			}
		},
		Commands: cmds, ReadModels: readModels, Projections: m.runner, Keys: keys,
		DefaultRegion: cfg.DefaultRegion,
		Metrics:       promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
		Ready:         m.ready,
		Logger:        m.logger,
		OptOuts:       &api.OptOuts{List: m.optOuts, Commands: optOutCmds},
	}
	if hooks.publicURL != "" {
		apiCfg.Webhooks = &api.Webhooks{PublicURL: hooks.publicURL, AuthToken: hooks.token, InboundNumbers: inbound}
	}
	cfg.apiLimits(&apiCfg)
	m.server, err = api.NewServer(apiCfg)
	if err != nil {
		return err
	}
	m.serving = true
	m.goRun("http", func() error {
		if err := m.server.Serve(m.listener); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	m.logger.Info("smsbatch is serving", "url", "http://"+m.Addr(), "data_dir", cfg.DataDir,
		"event_store", cfg.EventStore, "read_store", cfg.ReadStore, "transport", m.transport.name,
		"webhooks", hooks.publicURL, "gomaxprocs", runtime.GOMAXPROCS(0))
	return nil
}

func (m *Main) goRun(name string, run func() error) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		if err := run(); err != nil {
			m.logger.Error("component stopped", "component", name, "err", err)
			m.stoppedMu.Lock()
			m.stopped = append(m.stopped, fmt.Errorf("%s stopped: %w", name, err))
			m.stoppedMu.Unlock()
			select {
			case m.errs <- fmt.Errorf("%s: %w", name, err):
			default:
			}
		}
	}()
}

func (m *Main) ready() error {
	if err := storeHealth(m.store); err != nil {
		return err
	}
	for name, ch := range map[string]<-chan struct{}{"projections": m.runner.Ready(), "processor": m.fwd.Ready()} {
		select {
		case <-ch:
		default:
			return fmt.Errorf("%s catching up", name)
		}
	}
	// A component that stopped, or one that follows the event log and keeps
	// failing, turns the instance red: it is not doing its job, even though
	// the latter keeps trying.
	m.stoppedMu.Lock()
	errs := slices.Clone(m.stopped)
	m.stoppedMu.Unlock()
	for _, h := range []interface{ Health() error }{m.runner, m.fwd, m.hub, m.optOuts} {
		errs = append(errs, h.Health())
	}
	return errors.Join(errs...)
}

// Close stops taking requests, lets the work slices finish their in-flight sends
// and record them, then closes the stores.
func (m *Main) Close() error {
	timeout := m.Config.ShutdownTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var errs []error
	// The HTTP server and the work stop side by side, each within the
	// timeout: a request still running (an upload arriving slowly) must not
	// use up the time the sends in flight need to finish and be recorded, or
	// they would be sent again after the restart.
	httpDone := make(chan error, 1)
	if m.server != nil {
		go func() {
			err := m.server.Shutdown(ctx)
			if err != nil {
				// Cut what still runs rather than let it go on against
				// the stores about to close.
				_ = m.server.Close()
				err = fmt.Errorf("http shutdown: %w", err)
			}
			httpDone <- err
		}()
	} else {
		httpDone <- nil
	}
	if m.listener != nil && !m.serving {
		_ = m.listener.Close() // Run failed before serving on it
	}
	if m.router != nil {
		// Closing the router cancels the handlers' contexts: slices stop
		// dispatching and hand their work on.
		if err := m.router.Close(); err != nil {
			errs = append(errs, fmt.Errorf("router: %w", err))
		}
	}
	if m.proc != nil {
		// The sends already handed to the provider finish and their answers
		// are recorded before the store closes.
		if err := m.proc.Drain(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, <-httpDone)
	if m.cancel != nil {
		m.cancel()
	}
	m.wg.Wait()
	errs = append(errs, m.transport.Close())
	if m.provider != nil {
		errs = append(errs, m.provider.Close())
	}
	errs = append(errs, m.readModels.Close())
	if m.store != nil {
		errs = append(errs, m.store.Close())
	}
	return errors.Join(errs...)
}

// keys returns the configured API keys, or the dev key kept in the data directory.
func (m *Main) keys() (*api.Keyring, error) {
	if m.Config.APIKeys != "" {
		return api.ParseKeys(m.Config.APIKeys)
	}
	path := filepath.Join(m.Config.DataDir, "api-key")
	key, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		buf := make([]byte, 24)
		if _, err := rand.Read(buf); err != nil {
			return nil, err
		}
		key = []byte("dev_" + hex.EncodeToString(buf))
		if err := os.WriteFile(path, key, 0o600); err != nil {
			return nil, fmt.Errorf("store dev API key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("read dev API key: %w", err)
	}
	m.DevKey = strings.TrimSpace(string(key))
	k := &api.Keyring{}
	if err := k.Add("dev", m.DevKey); err != nil {
		return nil, err
	}
	// Shown once on the terminal, on purpose: it is the only way a newcomer learns
	// it. It is not passed to the logger.
	fmt.Fprintf(m.out, "No SMSBATCH_API_KEYS set: using the dev API key in %s\n  export SMSBATCH_KEY=%s\n", path, m.DevKey)
	return k, nil
}

func newLogger(cfg Config, out io.Writer) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(out, opts))
	}
	return slog.New(slog.NewTextHandler(out, opts))
}
