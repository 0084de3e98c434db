// Package memory owns the in-memory event store: an eventstore.Store kept in a slice
// and a few maps, for tests and for trying things out. Nothing survives Close or the
// process. It passes the same contract suite (eventstore/eventstoretest) as the
// durable adapters.
//
// Global positions are a counter: the first event appended has Commit 1, Prepare 0.
//
// An append is recognised as a retry of an earlier one (whose answer the caller may
// have lost) when its first event ID is already stored in the same stream at a
// revision that satisfies the append's expected revision, and the stored events from
// that revision on match the appended ones exactly (ID, type, data, metadata). Such an
// append succeeds with the original result and writes nothing. Any other append that
// reuses a stored event ID fails with an error wrapping eventstore.ErrConcurrency.
package memory

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/smsbatch/smsbatch/eventstore"
)

// Store is an in-memory eventstore.Store, safe for concurrent use.
type Store struct {
	clock func() time.Time

	mu      sync.RWMutex
	closed  bool
	all     []eventstore.Event // all[i] has Position.Commit i+1
	streams map[string][]int   // stream -> indexes into all, by revision
	ids     map[string]int     // event ID -> index into all
	// wake is closed and replaced on every append and closed on Close, so that
	// WaitForEvents can block on it without polling.
	wake chan struct{}
}

var _ eventstore.Store = (*Store)(nil)

// New returns an empty store that stamps events with time.Now in UTC.
func New() *Store { return NewWithClock(time.Now) }

// NewWithClock returns an empty store that stamps events with clock's time in UTC.
func NewWithClock(clock func() time.Time) *Store {
	if clock == nil {
		clock = time.Now
	}
	return &Store{
		clock:   clock,
		streams: make(map[string][]int),
		ids:     make(map[string]int),
		wake:    make(chan struct{}),
	}
}

// Append implements eventstore.Store.
func (s *Store) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	if err := eventstore.ValidateAppend(stream, events); err != nil {
		return eventstore.AppendResult{}, fmt.Errorf("memory: append to %s: %w", stream, err)
	}
	if err := ctx.Err(); err != nil {
		return eventstore.AppendResult{}, fmt.Errorf("memory: append to %s: %w", stream, err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return eventstore.AppendResult{}, fmt.Errorf("memory: append to %s: %w", stream, eventstore.ErrClosed)
	}
	indexes := s.streams[stream]
	if res, ok := s.retried(stream, expected, events); ok {
		return res, nil
	}
	if !expected.Check(uint64(len(indexes))) {
		return eventstore.AppendResult{}, fmt.Errorf("memory: append to %s: expected %s, stream holds %d events: %w",
			stream, expected, len(indexes), eventstore.ErrConcurrency)
	}
	for _, e := range events {
		if i, ok := s.ids[e.ID]; ok {
			return eventstore.AppendResult{}, fmt.Errorf("memory: append to %s: event ID %s already stored in %s at revision %d: %w",
				stream, e.ID, s.all[i].Stream, s.all[i].Revision, eventstore.ErrConcurrency)
		}
	}

	now := s.clock().UTC()
	for _, e := range events {
		i := len(s.all)
		s.all = append(s.all, eventstore.Event{
			ID:       e.ID,
			Stream:   stream,
			Type:     e.Type,
			Data:     bytes.Clone(e.Data),
			Metadata: bytes.Clone(e.Metadata),
			Revision: uint64(len(indexes)),
			Position: eventstore.Position{Commit: uint64(i) + 1},
			Time:     now,
		})
		indexes = append(indexes, i)
		s.ids[e.ID] = i
	}
	s.streams[stream] = indexes
	close(s.wake)
	s.wake = make(chan struct{})

	last := s.all[len(s.all)-1]
	return eventstore.AppendResult{NextExpected: last.Revision, Position: last.Position}, nil
}

// retried reports whether events were already appended to stream by an earlier
// append with the same expectation, and if so that append's result. See the package
// doc. Callers hold s.mu.
func (s *Store) retried(stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, bool) {
	first, ok := s.ids[events[0].ID]
	if !ok || s.all[first].Stream != stream {
		return eventstore.AppendResult{}, false
	}
	from := s.all[first].Revision
	indexes := s.streams[stream]
	if !expected.Check(from) || uint64(len(indexes))-from < uint64(len(events)) {
		return eventstore.AppendResult{}, false
	}
	for k, e := range events {
		if !sameEvent(s.all[indexes[from+uint64(k)]], e) {
			return eventstore.AppendResult{}, false
		}
	}
	last := s.all[indexes[from+uint64(len(events))-1]]
	return eventstore.AppendResult{NextExpected: last.Revision, Position: last.Position}, true
}

func sameEvent(stored eventstore.Event, e eventstore.EventData) bool {
	return stored.ID == e.ID && stored.Type == e.Type &&
		bytes.Equal(stored.Data, e.Data) && bytes.Equal(stored.Metadata, e.Metadata)
}

// ReadStream implements eventstore.Store.
func (s *Store) ReadStream(ctx context.Context, stream string, from uint64, max int) ([]eventstore.Event, error) {
	if max <= 0 {
		return nil, fmt.Errorf("memory: read stream %s: max must be positive, got %d", stream, max)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("memory: read stream %s: %w", stream, err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, fmt.Errorf("memory: read stream %s: %w", stream, eventstore.ErrClosed)
	}
	indexes := s.streams[stream]
	if from >= uint64(len(indexes)) {
		return nil, nil
	}
	indexes = indexes[from:]
	if len(indexes) > max {
		indexes = indexes[:max]
	}
	out := make([]eventstore.Event, len(indexes))
	for k, i := range indexes {
		out[k] = clone(s.all[i])
	}
	return out, nil
}

// ReadStreamBackward implements eventstore.Store.
func (s *Store) ReadStreamBackward(ctx context.Context, stream string, from uint64, max int) ([]eventstore.Event, error) {
	if max <= 0 {
		return nil, fmt.Errorf("memory: read stream %s backward: max must be positive, got %d", stream, max)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("memory: read stream %s backward: %w", stream, err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, fmt.Errorf("memory: read stream %s backward: %w", stream, eventstore.ErrClosed)
	}
	indexes := s.streams[stream]
	if len(indexes) == 0 {
		return nil, nil
	}
	last := min(from, uint64(len(indexes))-1)
	out := make([]eventstore.Event, 0, min(uint64(max), last+1))
	for rev := int64(last); rev >= 0 && len(out) < max; rev-- {
		out = append(out, clone(s.all[indexes[rev]]))
	}
	return out, nil
}

// ReadAll implements eventstore.Store.
func (s *Store) ReadAll(ctx context.Context, after eventstore.Position, max int) ([]eventstore.Event, error) {
	if max <= 0 {
		return nil, fmt.Errorf("memory: read all after %s: max must be positive, got %d", after, max)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("memory: read all after %s: %w", after, err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, fmt.Errorf("memory: read all after %s: %w", after, eventstore.ErrClosed)
	}
	// Every event has Prepare 0, so the first one after `after` is at Commit+1
	// whatever after.Prepare is; all[Commit] is that event.
	if after.Commit >= uint64(len(s.all)) {
		return nil, nil
	}
	page := s.all[after.Commit:]
	if len(page) > max {
		page = page[:max]
	}
	out := make([]eventstore.Event, len(page))
	for k, e := range page {
		out[k] = clone(e)
	}
	return out, nil
}

// WaitForEvents implements eventstore.Store. It returns as soon as an event after
// the position is stored, without spurious wake-ups.
func (s *Store) WaitForEvents(ctx context.Context, after eventstore.Position) error {
	for {
		s.mu.RLock()
		closed, n, wake := s.closed, uint64(len(s.all)), s.wake
		s.mu.RUnlock()
		switch {
		case closed:
			return fmt.Errorf("memory: wait for events after %s: %w", after, eventstore.ErrClosed)
		case n > after.Commit:
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		}
	}
}

// Close implements eventstore.Store. It wakes every WaitForEvents with ErrClosed and
// drops the events. Closing twice is harmless.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.all, s.streams, s.ids = nil, nil, nil
	close(s.wake)
	return nil
}

// clone copies e's byte slices so that callers cannot change what is stored.
func clone(e eventstore.Event) eventstore.Event {
	e.Data = bytes.Clone(e.Data)
	e.Metadata = bytes.Clone(e.Metadata)
	return e
}
