package projections

import (
	"context"
	"fmt"
	"time"

	"github.com/smsbatch/smsbatch/eventstore"
)

// DefaultReplayBatchSize is how many events a replay applies at a time when
// ReplayOptions.BatchSize is not set.
const DefaultReplayBatchSize = 2000

// RebuildProgress is how far a rebuild has got.
type RebuildProgress struct {
	// Done counts the events replayed, earlier interrupted runs included.
	Done int64
	// Total is the number of events in the store when the replay began; 0 when
	// the event store cannot count them (see Counter).
	Total int64
	// Rate is events per second replayed by this run.
	Rate float64
	// Remaining estimates the time left; 0 when Total is unknown.
	Remaining time.Duration
}

// Counter is implemented by event stores that can count their events cheaply;
// Replay uses it, when the store has it, to report RebuildProgress.Total.
type Counter interface {
	// Count returns the number of events stored.
	Count(ctx context.Context) (int64, error)
}

// ReplayOptions configures Replay.
type ReplayOptions struct {
	// After is where the replay starts, exclusive; Start for a rebuild from
	// scratch.
	After eventstore.Position
	// Done is the events already replayed up to After (by an interrupted run),
	// so that the progress counts from there.
	Done int64
	// BatchSize is the most events applied at once; default DefaultReplayBatchSize.
	BatchSize int
	// Progress, if set, is called after every page applied and once at the end.
	Progress func(RebuildProgress)
}

// Replay reads every event of events after opts.After, in pages, and hands
// each page to apply, until a read comes back empty. It returns the position
// of the last event applied (opts.After when there was none) and the events
// done, opts.Done included. Rebuilds of every store share it, so that they
// report progress alike.
func Replay(ctx context.Context, events eventstore.Store, apply func(context.Context, []eventstore.Event) error,
	opts ReplayOptions) (eventstore.Position, int64, error) {
	if opts.BatchSize <= 0 {
		opts.BatchSize = DefaultReplayBatchSize
	}
	var total int64
	if c, ok := events.(Counter); ok && opts.Progress != nil {
		var err error
		if total, err = c.Count(ctx); err != nil {
			return opts.After, opts.Done, fmt.Errorf("replay: count events: %w", err)
		}
	}
	pos, done := opts.After, opts.Done
	began := time.Now()
	report := func() {
		if opts.Progress == nil {
			return
		}
		p := RebuildProgress{Done: done, Total: total}
		if elapsed := time.Since(began).Seconds(); elapsed > 0 {
			p.Rate = float64(done-opts.Done) / elapsed
		}
		if p.Rate > 0 && total > done {
			p.Remaining = time.Duration(float64(total-done) / p.Rate * float64(time.Second))
		}
		opts.Progress(p)
	}
	for {
		page, err := events.ReadAll(ctx, pos, opts.BatchSize)
		if err != nil {
			return pos, done, fmt.Errorf("replay: read events after %s: %w", pos, err)
		}
		if len(page) == 0 {
			break
		}
		if err := apply(ctx, page); err != nil {
			return pos, done, fmt.Errorf("replay: %w", err)
		}
		pos = page[len(page)-1].Position
		done += int64(len(page))
		report()
	}
	report()
	return pos, done, nil
}
