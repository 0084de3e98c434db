package kurrent

import (
	"context"
	"fmt"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/smsbatch/smsbatch/eventstore"
)

// WaitForEvents implements eventstore.Store. The first call starts the store's one
// subscription to $all, filtered on the server to our streams and begun at the
// current end of $all; every waiter then blocks until that subscription sees an
// event of ours after the waiter's position. A waiter older than the subscription's
// start first reads once to learn whether something of ours is already there.
func (s *Store) WaitForEvents(ctx context.Context, after eventstore.Position) error {
	probed := false
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return fmt.Errorf("kurrent: wait for events after %s: %w", after, eventstore.ErrClosed)
		}
		if !s.watching {
			s.mu.Unlock()
			if err := s.startWatching(ctx); err != nil {
				if ctxErr := ctx.Err(); ctxErr != nil {
					return ctxErr
				}
				return fmt.Errorf("kurrent: wait for events after %s: %w", after, err)
			}
			continue
		}
		if s.seen && after.Less(s.head) {
			s.mu.Unlock()
			return nil
		}
		wake := s.wake
		// The subscription sees everything of ours after its start; events
		// between after and its start can only be found by reading. Reading
		// after taking wake means nothing can slip between the two.
		probe := !probed && after.Less(s.from)
		s.mu.Unlock()

		if probe {
			found, err := s.ReadAll(ctx, after, 1)
			if err != nil {
				if ctxErr := ctx.Err(); ctxErr != nil {
					return ctxErr
				}
				return fmt.Errorf("kurrent: wait for events after %s: %w", after, err)
			}
			if len(found) > 0 {
				return nil
			}
			probed = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		}
	}
}

// startWatching starts the watcher at the current end of $all, unless another
// caller did meanwhile.
func (s *Store) startWatching(ctx context.Context) error {
	end, err := s.client.lastPosition(ctx)
	if err != nil {
		return fmt.Errorf("find the end of $all: %w", s.mapError(ctx, err))
	}
	from := eventstore.Start
	if p, ok := end.(esdb.Position); ok {
		from = fromPosition(p)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.watching {
		return nil
	}
	s.watching, s.from = true, from
	go s.watch(from)
	return nil
}

// watch runs the store's subscription until Close: it notes every event of ours
// and wakes the waiters, keeps the last position the server reported (events and
// checkpoints alike, so a quiet filter still moves it on), and after a drop
// subscribes again from there, waiting longer after each failure in a row.
func (s *Store) watch(from eventstore.Position) {
	defer close(s.watchDone)
	resume := from
	delay := s.backoff[0]
	for {
		var start esdb.AllPosition = toPosition(resume)
		if resume == eventstore.Start {
			start = esdb.Start{}
		}
		sub, err := s.client.subscribeToAll(s.life, start, s.filter)
		if err != nil {
			if s.life.Err() != nil {
				return
			}
			s.log.Warn("kurrent: subscribe to $all failed; retrying", "from", resume.String(), "retry_in", delay, "err", err)
		} else {
			var dropped error
			resume, dropped = s.follow(sub, resume, &delay)
			_ = sub.Close()
			if s.life.Err() != nil {
				return
			}
			s.log.Warn("kurrent: subscription to $all dropped; resubscribing", "from", resume.String(), "retry_in", delay, "err", dropped)
		}
		select {
		case <-s.life.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, s.backoff[1])
	}
}

// follow reads sub until it drops, returning the position to resume from and
// why it dropped. Any message from the server resets the backoff.
func (s *Store) follow(sub subscription, resume eventstore.Position, delay *time.Duration) (eventstore.Position, error) {
	for {
		ev := sub.Recv()
		switch {
		case ev.SubscriptionDropped != nil:
			return resume, ev.SubscriptionDropped.Error
		case ev.EventAppeared != nil:
			*delay = s.backoff[0]
			rec := ev.EventAppeared.OriginalEvent()
			if rec == nil {
				continue
			}
			p := fromPosition(rec.Position)
			if resume.Less(p) {
				resume = p
			}
			if s.ours(rec.StreamID) {
				s.noteEvent(p)
			}
		case ev.CheckPointReached != nil:
			*delay = s.backoff[0]
			// Not a wake-up: ReadAll would find nothing of ours up to here.
			if p := fromPosition(*ev.CheckPointReached); resume.Less(p) {
				resume = p
			}
		}
	}
}

// noteEvent records an event of ours at p and wakes the waiters.
func (s *Store) noteEvent(p eventstore.Position) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if !s.seen || s.head.Less(p) {
		s.seen, s.head = true, p
	}
	close(s.wake)
	s.wake = make(chan struct{})
}
