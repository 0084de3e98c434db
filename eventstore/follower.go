package eventstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// FollowerConfig configures a Follower.
type FollowerConfig struct {
	// Name says which component follows, in logs and in Health's error (required).
	Name string
	// Store is the event store followed (required).
	Store Store
	// After is the position to follow from, exclusive. Optional; Start when zero.
	After Position
	// BatchSize is the most events handed to one call of the handler. Optional;
	// DefaultBatchSize when <= 0.
	BatchSize int
	// Gather is SubscribeOptions.Gather: the wait after a page that was not
	// full, so that the handler gets fewer, larger pages. Zero: none.
	Gather time.Duration
	// OnCaughtUp, if set, is called once, the first time every event that existed
	// when the follower started has been handled. It must not block.
	OnCaughtUp func()
	// UnhealthyAfter is how long the follower may keep failing before Health
	// reports it; it goes on retrying all the same. Default 10s.
	UnhealthyAfter time.Duration
	// Backoff makes the waits between retries. Optional: exponential from 100ms,
	// doubling, with jitter, up to 15s.
	Backoff func() backoff.BackOff
	// Logger; default discards.
	Logger *slog.Logger

	now func() time.Time
}

func (c *FollowerConfig) setDefaults() {
	if c.BatchSize <= 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.UnhealthyAfter <= 0 {
		c.UnhealthyAfter = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Backoff == nil {
		c.Backoff = func() backoff.BackOff {
			return &backoff.ExponentialBackOff{
				InitialInterval:     100 * time.Millisecond,
				RandomizationFactor: 0.5,
				Multiplier:          2,
				MaxInterval:         15 * time.Second,
			}
		}
	}
	if c.now == nil {
		c.now = time.Now
	}
}

// Validate reports every missing required field.
func (c FollowerConfig) Validate() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("missing Name"))
	}
	if c.Store == nil {
		errs = append(errs, errors.New("missing Store"))
	}
	return errors.Join(errs...)
}

// Follower is the one way smsbatch follows the event log: a catch-up subscription
// that hands every page of events to its handler in global order and, when
// reading or handling fails, logs, waits with exponential backoff and jitter, and
// resubscribes from the last page handled. A page whose handling failed is handed
// over again, so a handler that must not lose events returns an error rather
// than skipping them. A follower that keeps failing reports it through Health,
// which turns /readyz red; it never stops silently.
type Follower struct {
	cfg    FollowerConfig
	handle func(ctx context.Context, events []Event) error

	mu           sync.Mutex
	pos          Position
	failingSince time.Time
	lastErr      error
	stopped      error
}

// NewFollower returns a follower handing pages to handle; it reads nothing until Run.
func NewFollower(cfg FollowerConfig, handle func(ctx context.Context, events []Event) error) (*Follower, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("follower config: %w", err)
	}
	if handle == nil {
		return nil, fmt.Errorf("follower %s: nil handler", cfg.Name)
	}
	cfg.setDefaults()
	return &Follower{cfg: cfg, handle: handle, pos: cfg.After}, nil
}

// Run follows the store until ctx is done (returning nil) or the store is closed
// or damaged (returning the error, which Health keeps reporting). Every other
// failure is retried.
func (f *Follower) Run(ctx context.Context) error {
	wait := f.cfg.Backoff()
	wait.Reset()
	onCaughtUp := f.cfg.OnCaughtUp
	for {
		from := f.Position()
		err := SubscribeWith(ctx, f.cfg.Store, SubscribeOptions{
			After:     from,
			BatchSize: f.cfg.BatchSize,
			Gather:    f.cfg.Gather,
			OnCaughtUp: func() {
				f.healthy()
				if onCaughtUp != nil {
					onCaughtUp()
					onCaughtUp = nil
				}
			},
		}, func(ctx context.Context, events []Event) error {
			if err := f.handle(ctx, events); err != nil {
				return err
			}
			f.advance(events[len(events)-1].Position)
			return nil
		})
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrClosed) || errors.Is(err, ErrCorrupt) {
			f.stop(err)
			f.cfg.Logger.Error(f.cfg.Name+": stopped following events", "err", err, "position", f.Position().String())
			return fmt.Errorf("%s: %w", f.cfg.Name, err)
		}
		if from.Less(f.Position()) {
			wait.Reset() // progress since the last failure: start the waits afresh
		}
		f.failing(err)
		next := wait.NextBackOff()
		f.cfg.Logger.Error(f.cfg.Name+": following events failed; retrying",
			"err", err, "wait", next, "position", f.Position().String())
		t := time.NewTimer(next)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil
		}
	}
}

// Position is the position of the last event handled; After before the first.
func (f *Follower) Position() Position {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pos
}

// Health is nil while the follower follows; an error once it has been failing
// for longer than UnhealthyAfter, or has stopped for good.
func (f *Follower) Health() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped != nil {
		return fmt.Errorf("%s stopped: %w", f.cfg.Name, f.stopped)
	}
	if !f.failingSince.IsZero() {
		if d := f.cfg.now().Sub(f.failingSince); d >= f.cfg.UnhealthyAfter {
			return fmt.Errorf("%s failing for %s: %w", f.cfg.Name, d.Round(time.Second), f.lastErr)
		}
	}
	return nil
}

func (f *Follower) advance(pos Position) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pos.Less(pos) {
		f.pos = pos
	}
	f.failingSince, f.lastErr = time.Time{}, nil
}

func (f *Follower) healthy() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failingSince, f.lastErr = time.Time{}, nil
}

func (f *Follower) failing(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failingSince.IsZero() {
		f.failingSince = f.cfg.now()
	}
	f.lastErr = err
}

func (f *Follower) stop(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = err
}
