package eventstore

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
)

// DefaultTailSize is how many of the latest events a Tail keeps.
const DefaultTailSize = 16384

// Tail is a Store whose ReadAll serves the latest events from memory to every
// follower of one process: the read models, the live hub, the forwarder and
// the opt-out lists all follow the whole log near its end, and without it each
// would read (and the database send) every event once for itself.
//
// It keeps one run of events exactly as the store's ReadAll returned them, in
// order and without gaps: a read that starts at the run's start or at one of
// its events is answered from it, and one that reaches its end reads on from
// there once, for everyone. A read from anywhere else (a follower far behind)
// goes to the store. What ReadAll returned once it returns again (positions are
// final once read, on every adapter), so answers from the run are the store's.
// Events handed out share their Data and Metadata: callers must not change
// them.
//
// Followers that have read to the end wait there together too: WaitForEvents
// after the position another follower already waits at joins that wait, so the
// store is asked once (on PostgreSQL a query for every wake-up), not once for
// every follower. Everything but ReadAll and WaitForEvents is the store's own.
type Tail struct {
	Store
	size int

	// fill is held while the run is read on from its end, so that followers
	// at the end wait for one read instead of each making its own.
	fill  sync.Mutex
	fills atomic.Int64 // reads on from the end, done

	mu     sync.Mutex
	valid  bool     // a run was started
	before Position // the position the run's first event follows
	run    []Event  // its capacity, size and a half, is allocated once

	wmu  sync.Mutex
	wait *sharedWait // the wait on the store in progress, if any
}

// sharedWait is one wait on the store for events after a position, which the
// followers that wait there share.
type sharedWait struct {
	after   Position
	joined  int           // followers waiting on it besides the one that asks the store
	done    chan struct{} // closed when the wait has ended, err set
	err     error
	dropped bool // err is the context of the follower that asked: the others wait again
}

// NewTail wraps s; size is how many of the latest events it keeps
// (DefaultTailSize when <= 0).
func NewTail(s Store, size int) *Tail {
	if size <= 0 {
		size = DefaultTailSize
	}
	return &Tail{Store: s, size: size}
}

// ReadAll implements Store.
func (t *Tail) ReadAll(ctx context.Context, after Position, max int) ([]Event, error) {
	if max <= 0 {
		return t.Store.ReadAll(ctx, after, max)
	}
	out, ok := t.cached(after, max)
	if ok && len(out) > 0 {
		return out, nil
	}
	if !ok {
		events, err := t.Store.ReadAll(ctx, after, max)
		if err == nil && len(events) < max {
			t.restart(after, events) // it reached the end: the run starts here
		}
		return events, err
	}

	// after is the run's end: read on, once for every follower there.
	gen := t.fills.Load()
	t.fill.Lock()
	defer t.fill.Unlock()
	if out, ok := t.cached(after, max); !ok || len(out) > 0 {
		if ok {
			return out, nil // another follower read on meanwhile
		}
		return t.Store.ReadAll(ctx, after, max) // the run moved on past after
	}
	if t.fills.Load() != gen {
		// Another follower read on from here while this one waited, and
		// found nothing: so does this one. It goes on to WaitForEvents,
		// where it joins the others waiting at the end.
		return nil, nil
	}
	events, err := t.Store.ReadAll(ctx, after, max)
	if err != nil {
		return nil, err
	}
	t.extend(after, events)
	t.fills.Add(1)
	return events, nil
}

// cached returns the run's events after `after`, up to max. ok is false when
// after is neither the run's start nor one of its events.
func (t *Tail) cached(after Position, max int) (out []Event, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.valid {
		return nil, false
	}
	i := 0
	if after != t.before {
		k := sort.Search(len(t.run), func(k int) bool { return !t.run[k].Position.Less(after) })
		if k == len(t.run) || t.run[k].Position != after {
			return nil, false
		}
		i = k + 1
	}
	n := min(len(t.run)-i, max)
	return append([]Event(nil), t.run[i:i+n]...), true
}

// WaitForEvents implements Store. A follower waiting after the position another
// one already waits at joins its wait; one waiting elsewhere asks the store
// itself.
func (t *Tail) WaitForEvents(ctx context.Context, after Position) error {
	for {
		t.wmu.Lock()
		w := t.wait
		switch {
		case w == nil:
			w = &sharedWait{after: after, done: make(chan struct{})}
			t.wait = w
			t.wmu.Unlock()
			err := t.Store.WaitForEvents(ctx, after)
			t.wmu.Lock()
			t.wait = nil
			w.err, w.dropped = err, err != nil && ctx.Err() != nil
			close(w.done)
			t.wmu.Unlock()
			return err
		case w.after != after:
			t.wmu.Unlock()
			return t.Store.WaitForEvents(ctx, after)
		}
		w.joined++
		t.wmu.Unlock()
		select {
		case <-w.done:
			if !w.dropped {
				return w.err
			}
			// The follower that asked the store stopped waiting: so did the
			// store for everyone. Wait again, perhaps asking it this time.
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// restart makes events, read after `after` up to the end, the run.
func (t *Tail) restart(after Position, events []Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.valid, t.before = true, after
	if t.run == nil {
		t.run = make([]Event, 0, t.size+t.size/2)
	}
	clear(t.run)
	t.run = t.run[:0]
	t.keep(events)
}

// extend appends events, read after from, to the run if from is still its end.
func (t *Tail) extend(from Position, events []Event) {
	if len(events) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	end := t.before
	if len(t.run) > 0 {
		end = t.run[len(t.run)-1].Position
	}
	if !t.valid || end != from {
		return
	}
	t.keep(events)
}

// keep appends events to the run. When they do not fit in its capacity, the
// oldest events go first, down to the size (or fewer, for a read longer than
// that): the run moves within its own array, a copy every size/2 events, and
// following the log allocates nothing here. (Grown and copied to new arrays
// instead, the run took 5% of the bytes an instance allocated at 1,000 batches
// on bolt, large arrays full of pointers for the collector to scan, and a third
// of the tail's CPU with three instances on PostgreSQL.)
func (t *Tail) keep(events []Event) {
	if over := len(t.run) + len(events) - cap(t.run); over > 0 {
		over = max(over, len(t.run)+len(events)-t.size)
		if over < len(t.run) {
			t.before = t.run[over-1].Position
			n := copy(t.run, t.run[over:])
			clear(t.run[n:]) // let go of what the dropped events hold
			t.run = t.run[:n]
		} else { // a read longer than the size: the run is its latest events
			over -= len(t.run)
			if len(t.run) > 0 {
				t.before = t.run[len(t.run)-1].Position
			}
			clear(t.run)
			t.run = t.run[:0]
			if over > 0 {
				t.before = events[over-1].Position
				events = events[over:]
			}
		}
	}
	t.run = append(t.run, events...)
}
