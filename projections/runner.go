package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/smsbatch/smsbatch/eventstore"
)

// DefaultRunnerBatchSize is how many events the runner applies at a time when
// RunnerConfig.BatchSize is not set.
const DefaultRunnerBatchSize = 500

// DefaultGather is how long the runner lets events gather between pages of a
// busy log when RunnerConfig.Gather is not set. At 20 ms a log taking 15,000
// events a second is applied in about 50 transactions a second instead of
// several hundred, each about 300 events.
const DefaultGather = 20 * time.Millisecond

// RunnerConfig configures a Runner.
type RunnerConfig struct {
	// Events is the event store followed (required).
	Events eventstore.Store
	// Store keeps the read models and the checkpoint (required).
	Store Store
	// BatchSize is the most events applied in one Store.Apply; default 500.
	BatchSize int
	// Gather is how long the runner lets events gather after applying a page
	// that was not full, so that a busy log is applied in fewer, larger
	// transactions (each a commit and a sync, and a read and write of every
	// batch it touches); DefaultGather when 0, none when negative. Queries
	// lag the log by up to that much more.
	Gather time.Duration
	// Logger; default discards.
	Logger *slog.Logger
	// Lag, if set, is set after every page to the seconds between now and the
	// store time of the last event applied.
	Lag prometheus.Gauge

	// LeaseRetry is how often a runner without a Shared store's lease asks
	// for it again (the holder may be gone); default 1s.
	LeaseRetry time.Duration
	// WatchEvery is how often a runner without the lease reads the shared
	// checkpoint while a WaitFor waits on it; default 25ms. With nobody
	// waiting it reads it once every LeaseRetry.
	WatchEvery time.Duration

	// backOff makes the wait between retries; tests shorten it.
	backOff func() backoff.BackOff
}

func (c *RunnerConfig) setDefaults() {
	if c.BatchSize <= 0 {
		c.BatchSize = DefaultRunnerBatchSize
	}
	if c.Gather == 0 {
		c.Gather = DefaultGather
	}
	if c.LeaseRetry <= 0 {
		c.LeaseRetry = time.Second
	}
	if c.WatchEvery <= 0 {
		c.WatchEvery = 25 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.backOff == nil {
		c.backOff = func() backoff.BackOff {
			return &backoff.ExponentialBackOff{
				InitialInterval:     100 * time.Millisecond,
				RandomizationFactor: 0.5,
				Multiplier:          2,
				MaxInterval:         15 * time.Second,
			}
		}
	}
}

// Validate reports every missing required field.
func (c RunnerConfig) Validate() error {
	var errs []error
	if c.Events == nil {
		errs = append(errs, errors.New("projections runner: Events is required"))
	}
	if c.Store == nil {
		errs = append(errs, errors.New("projections runner: Store is required"))
	}
	return errors.Join(errs...)
}

// Runner keeps the read models up to date: it follows the event store from the
// store's checkpoint with an eventstore.Follower and applies every page of events
// to the store. A page that fails to apply is handed over again after a backoff
// until it applies or the runner stops, since skipping it would leave the read
// models wrong for good.
type Runner struct {
	cfg     RunnerConfig
	running atomic.Bool

	ready     chan struct{}
	readyOnce sync.Once
	// began is when Run began: a runner following a shared checkpoint is
	// ready once the holder has applied every event appended before then.
	began time.Time

	mu       sync.Mutex
	pos      eventstore.Position
	follower *eventstore.Follower
	// moved is closed and replaced whenever pos moves, waking WaitFor.
	moved chan struct{}
	// waiting counts the WaitFor calls waiting for pos to move; one that
	// starts waiting sends on waiter, waking a runner that watches a shared
	// checkpoint only while someone waits on it.
	waiting int
	waiter  chan struct{}
	// watchErr is the last failure to read a shared store's checkpoint, failing since then.
	watchErr          error
	watchFailingSince time.Time
	// watchAt is the shared checkpoint as last read, unchanged since
	// watchAtSince; stalled says why the lease holder is not applying (the
	// checkpoint has not moved for watchUnhealthyAfter while events wait
	// after it), checked at most once a second (stalledChecked).
	watchAt        eventstore.Position
	watchAtSince   time.Time
	stalled        error
	stalledChecked time.Time
	// waitingSince is when an event was first seen waiting after watchAt;
	// zero while none has been.
	waitingSince time.Time
}

// NewRunner returns a runner; it does nothing until Run.
func NewRunner(cfg RunnerConfig) (*Runner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	return &Runner{cfg: cfg, ready: make(chan struct{}), moved: make(chan struct{}), waiter: make(chan struct{}, 1)}, nil
}

// Run applies events until ctx is done, then returns nil. It returns an error
// when the event store is closed or damaged, or when called while already
// running. Errors reading the event store or applying events are logged and
// retried; Health reports them once they last. With a Shared store, the runner
// applies only while it holds the store's lease, and otherwise follows the
// checkpoint of the one that does (see Shared).
func (r *Runner) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("projections runner: already running")
	}
	defer r.running.Store(false)
	r.began = time.Now()
	shared, ok := r.cfg.Store.(Shared)
	if !ok {
		return r.follow(ctx)
	}
	for {
		lease, err := shared.TryLease(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			r.cfg.Logger.Warn("projections: could not ask for the read models' lease", "error", err)
		}
		if lease == nil {
			r.watch(ctx, r.cfg.LeaseRetry)
			if ctx.Err() != nil {
				return nil
			}
			continue
		}
		r.cfg.Logger.Info("projections: this instance applies the events to the shared read models")
		leading, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-lease.Lost:
				cancel()
			case <-leading.Done():
			}
		}()
		err = r.follow(leading)
		cancel()
		lease.Release()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err // the follower keeps saying why in Health
		}
		r.mu.Lock()
		r.follower = nil
		r.mu.Unlock()
		r.cfg.Logger.Warn("projections: lost the read models' lease; following the checkpoint")
	}
}

// follow applies events from the store's checkpoint until ctx is done.
func (r *Runner) follow(ctx context.Context) error {
	checkpoint, err := retry(ctx, r, "read checkpoint", func() (eventstore.Position, error) {
		return r.cfg.Store.Checkpoint(ctx)
	})
	if err != nil {
		return r.stopped(ctx, err)
	}
	r.advance(checkpoint)
	r.cfg.Logger.Info("projections: following events", "after", checkpoint.String())

	f, err := eventstore.NewFollower(eventstore.FollowerConfig{
		Name: "projections", Store: r.cfg.Events, After: checkpoint, BatchSize: r.cfg.BatchSize, Gather: max(r.cfg.Gather, 0),
		OnCaughtUp: r.caughtUp, Backoff: r.cfg.backOff, Logger: r.cfg.Logger,
	}, r.handle)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.follower = f
	r.mu.Unlock()
	return r.stopped(ctx, f.Run(ctx))
}

// watch follows the shared store's checkpoint, which another process's runner
// moves, for d or until ctx is done: it reads it once, then every WatchEvery
// while a WaitFor waits. An instance nobody asks to read its writes (idle, or
// serving only reads) does not query the store 40 times a second for nothing.
func (r *Runner) watch(ctx context.Context, d time.Duration) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(r.cfg.WatchEvery)
	defer tick.Stop()
	for {
		cp, err := r.cfg.Store.Checkpoint(ctx)
		r.mu.Lock()
		if err != nil && ctx.Err() == nil {
			if r.watchFailingSince.IsZero() {
				r.watchFailingSince = time.Now()
			}
			r.watchErr = err
		} else {
			r.watchFailingSince, r.watchErr = time.Time{}, nil
		}
		waiting := r.waiting > 0
		r.mu.Unlock()
		ready := r.isReady()
		if err == nil {
			r.advance(cp)
			if !ready && r.holderCaughtUp(ctx, cp) {
				r.caughtUp()
				ready = true
			}
			r.checkStalled(ctx, cp)
		}
		// While a WaitFor waits, or until the holder has caught up, read
		// again at the next tick; otherwise when a WaitFor starts to wait
		// (at once: it may be answered already).
		next, woken := tick.C, (<-chan struct{})(nil)
		if !waiting && ready {
			next, woken = nil, r.waiter
		}
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-next:
		case <-woken:
		}
	}
}

// holderCaughtUp reports whether the runner holding the lease, which moved
// the shared checkpoint to cp, has applied every event that was in the store
// when this runner began: the first event after cp, if there is one, was
// appended since. Until then this instance's reads would answer from read
// models behind what it was started after (a holder catching up after a
// restart of every instance), and its /readyz says so. An event stamped by a
// writer whose clock runs ahead may count as appended since a few
// milliseconds early.
func (r *Runner) holderCaughtUp(ctx context.Context, cp eventstore.Position) bool {
	page, err := r.cfg.Events.ReadAll(ctx, cp, 1)
	if err != nil {
		return false // the event store's own health says why
	}
	return len(page) == 0 || !page[0].Time.Before(r.began)
}

// isReady reports whether Ready is closed.
func (r *Runner) isReady() bool {
	select {
	case <-r.ready:
		return true
	default:
		return false
	}
}

// checkStalled notes whether the shared checkpoint, read as cp, has stood
// still for watchUnhealthyAfter while the event store holds events after it:
// the instance holding the lease is not applying them (an event it cannot
// apply, a store failing there only), and this instance's reads,
// read-your-writes waits and live updates are frozen with it.
func (r *Runner) checkStalled(ctx context.Context, cp eventstore.Position) {
	now := time.Now()
	r.mu.Lock()
	moved := cp != r.watchAt || r.watchAtSince.IsZero()
	if moved {
		r.watchAt, r.watchAtSince, r.stalled, r.waitingSince = cp, now, nil, time.Time{}
	}
	// Looked at once a second while the checkpoint stands still, so that the
	// time counted is the time events have waited, not a quiet spell before
	// them (the first write after one is no stall).
	check := !moved && now.Sub(r.stalledChecked) >= time.Second
	if check {
		r.stalledChecked = now
	}
	r.mu.Unlock()
	if !check {
		return
	}
	page, err := r.cfg.Events.ReadAll(ctx, cp, 1)
	if err != nil {
		return // the event store's own health says why
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.watchAt != cp {
		return
	}
	if len(page) == 0 {
		r.waitingSince, r.stalled = time.Time{}, nil
		return
	}
	if r.waitingSince.IsZero() {
		r.waitingSince = now
	}
	// Waiting since it was appended, when that is known and after the
	// checkpoint last moved (a writer's clock far behind counts no more
	// than the checkpoint's standstill).
	since := r.waitingSince
	if at := page[0].Time; at.Before(since) {
		since = latest(at, r.watchAtSince)
	}
	if waited := now.Sub(since); waited >= watchUnhealthyAfter {
		r.stalled = fmt.Errorf("projections: the read models' checkpoint has stood at %s for %s while event %s waits after it: the instance holding their lease is not applying",
			cp, waited.Round(time.Second), page[0].Position)
	}
}

// Health is nil while the runner follows the events (or the checkpoint of the
// runner that applies them); an error when it has been failing for a while or
// stopped.
func (r *Runner) Health() error {
	r.mu.Lock()
	f, since, err, stalled := r.follower, r.watchFailingSince, r.watchErr, r.stalled
	r.mu.Unlock()
	if f != nil {
		return f.Health()
	}
	if !since.IsZero() && time.Since(since) >= watchUnhealthyAfter {
		return fmt.Errorf("projections: reading the shared checkpoint failing for %s: %w", time.Since(since).Round(time.Second), err)
	}
	return stalled
}

// watchUnhealthyAfter is how long reading the shared checkpoint may fail
// before Health says so, as a follower's.
const watchUnhealthyAfter = 10 * time.Second

func (r *Runner) stopped(ctx context.Context, err error) error {
	if ctx.Err() != nil || err == nil {
		return nil
	}
	return fmt.Errorf("projections runner: %w", err)
}

func (r *Runner) handle(ctx context.Context, events []eventstore.Event) error {
	last := events[len(events)-1]
	if err := r.cfg.Store.Apply(ctx, events); err != nil {
		return fmt.Errorf("apply events: %w", err)
	}
	r.advance(last.Position)
	if r.cfg.Lag != nil && !last.Time.IsZero() {
		r.cfg.Lag.Set(max(time.Since(last.Time).Seconds(), 0))
	}
	return nil
}

func (r *Runner) caughtUp() {
	r.readyOnce.Do(func() {
		r.cfg.Logger.Info("projections: caught up", "position", r.Position().String())
		close(r.ready)
	})
}

func (r *Runner) advance(pos eventstore.Position) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pos.Less(pos) {
		r.pos = pos
		close(r.moved)
		r.moved = make(chan struct{})
	}
}

// retry runs op until it succeeds or ctx is done, logging each failure.
func retry[T any](ctx context.Context, r *Runner, what string, op func() (T, error)) (T, error) {
	attempt := 0
	return backoff.Retry(ctx, op,
		backoff.WithBackOff(r.cfg.backOff()),
		backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(func(err error, wait time.Duration) {
			attempt++
			r.cfg.Logger.Error("projections: "+what+" failed; retrying",
				"error", err, "attempt", attempt, "wait", wait, "position", r.Position().String())
		}))
}

// Ready is closed once the runner has applied every event that was in the store
// when it started.
func (r *Runner) Ready() <-chan struct{} { return r.ready }

// Position is the position of the last event applied; Start before the first.
func (r *Runner) Position() eventstore.Position {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pos
}

// WaitFor blocks until the runner has applied the event at pos (or a later
// one), so that a caller who appended an event reads its own write. It returns
// ctx's error when ctx is done first.
func (r *Runner) WaitFor(ctx context.Context, pos eventstore.Position) error {
	counted := false
	defer func() {
		if counted {
			r.mu.Lock()
			r.waiting--
			r.mu.Unlock()
		}
	}()
	for {
		r.mu.Lock()
		applied, moved := !r.pos.Less(pos), r.moved
		if !applied && !counted {
			counted = true
			r.waiting++
		}
		r.mu.Unlock()
		if applied {
			return nil
		}
		select {
		case r.waiter <- struct{}{}:
		default: // a wake-up is pending already
		}
		select {
		case <-moved:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
