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
// them. Everything but ReadAll is the store's own.
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
	run    []Event
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
		// which asks the store itself.
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

// restart makes events, read after `after` up to the end, the run.
func (t *Tail) restart(after Position, events []Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.valid, t.before = true, after
	t.run = append(t.run[:0:0], events...)
	t.trim()
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
	t.run = append(t.run, events...)
	t.trim()
}

// trim drops the oldest events once the run is half as long again as the
// size, down to the size: a copy every size/2 events, not every read.
func (t *Tail) trim() {
	if over := len(t.run) - t.size; over > t.size/2 {
		t.before = t.run[over-1].Position
		t.run = append(t.run[:0:0], t.run[over:]...)
	}
}
