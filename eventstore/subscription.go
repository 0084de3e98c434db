package eventstore

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// DefaultBatchSize is the page size a subscription reads with when none is given.
const DefaultBatchSize = 512

// SubscribeOptions configures SubscribeWith. The zero value follows all events from
// the start in pages of DefaultBatchSize.
type SubscribeOptions struct {
	// After is the position to follow from, exclusive: the first event handed over
	// is the first one after it. Optional; Start when zero.
	After Position
	// BatchSize is the most events handed to one call of handle. Optional;
	// DefaultBatchSize when <= 0.
	BatchSize int
	// OnCaughtUp, if set, is called once, the first time the subscription finds no
	// event after the last one it handled (every event that existed when it started
	// has been handled). Projections use it to say they are ready. It runs on the
	// subscription's goroutine, so it must not block.
	OnCaughtUp func()
	// Gather, when positive, is how long after handling a page that was not
	// full the next read waits, so that it carries what came meanwhile: for a
	// handler that pays per call (a commit, a sync) more than per event, at
	// the cost of up to that much more delay. An event after a quiet spell
	// longer than Gather is read at once; a full page, catching up, is
	// followed at once. Zero: never wait.
	Gather time.Duration
}

// Subscribe follows the global order of s from after (exclusive), handing each page
// of up to batchSize events to handle, in order, and waiting for new events once it
// has caught up. It is SubscribeWith with only After and BatchSize set; see there.
func Subscribe(ctx context.Context, s Store, after Position, batchSize int, handle func(ctx context.Context, events []Event) error) error {
	return SubscribeWith(ctx, s, SubscribeOptions{After: after, BatchSize: batchSize}, handle)
}

// SubscribeWith is a catch-up subscription: it reads s with ReadAll from opts.After,
// calls handle with every non-empty page in global order, and, once a read comes back
// empty, blocks in WaitForEvents until more events may be there. A page is handed over
// once; the next read starts after its last event whatever handle did with it, so a
// handler that must not lose events returns an error rather than skipping them.
//
// It runs until ctx is done (returning ctx.Err()), handle fails (returning its error,
// wrapped), or the store fails (ErrClosed as is, anything else wrapped). To resume
// later, record the Position of the last event handled and pass it as After.
func SubscribeWith(ctx context.Context, s Store, opts SubscribeOptions, handle func(ctx context.Context, events []Event) error) error {
	if s == nil || handle == nil {
		return errors.New("subscribe: store and handle are required")
	}
	batch := opts.BatchSize
	if batch <= 0 {
		batch = DefaultBatchSize
	}
	pos := opts.After
	caughtUp := opts.OnCaughtUp == nil
	var notBefore time.Time // with Gather: the next read's earliest time
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if d := time.Until(notBefore); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		}
		events, err := s.ReadAll(ctx, pos, batch)
		if err != nil {
			return storeError(ctx, "read all after "+pos.String(), err)
		}
		if len(events) == 0 {
			if !caughtUp {
				caughtUp = true
				opts.OnCaughtUp()
			}
			if err := s.WaitForEvents(ctx, pos); err != nil {
				return storeError(ctx, "wait for events after "+pos.String(), err)
			}
			continue
		}
		last := events[len(events)-1].Position
		if !pos.Less(last) {
			// A store handing back what was already handled would make us loop forever.
			return fmt.Errorf("subscribe: read all after %s returned an event at %s: store breaks the ordering contract", pos, last)
		}
		if err := handle(ctx, events); err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(err, ctxErr) {
				return ctxErr
			}
			return fmt.Errorf("subscribe: handle events %s..%s: %w", events[0].Position, last, err)
		}
		pos = last
		notBefore = time.Time{}
		if opts.Gather > 0 && len(events) < batch {
			notBefore = time.Now().Add(opts.Gather)
		}
	}
}

// storeError turns an error from the store into what SubscribeWith returns: the
// context's error when the context is done, ErrClosed as is, the rest wrapped.
func storeError(ctx context.Context, op string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	if errors.Is(err, ErrClosed) {
		return ErrClosed
	}
	return fmt.Errorf("subscribe: %s: %w", op, err)
}
