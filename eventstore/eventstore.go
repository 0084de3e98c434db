// Package eventstore defines the event store port smsbatch is built on: streams of
// events appended at an expected revision, one global order over all streams, and a
// catch-up subscription that follows that order from any position. It knows nothing
// of batches; adapters live in the sub-packages (memory, bolt, ...) and all of them
// pass the contract suite in eventstore/eventstoretest.
package eventstore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"
)

// ErrConcurrency is returned by Append when the stream's revision is not the expected
// one: somebody else appended first. Callers reload and decide again.
var ErrConcurrency = errors.New("eventstore: wrong expected revision")

// ErrClosed is returned by operations on a store that has been closed.
var ErrClosed = errors.New("eventstore: closed")

// ErrUnavailable wraps errors that may go away when the operation is retried later
// (a server restarting, a network blip, a deadline). Callers may retry.
var ErrUnavailable = errors.New("eventstore: unavailable")

// ErrCorrupt wraps errors about data the store finds damaged: a record whose
// checksum does not match, an index that disagrees with its records, a store file
// emptied, truncated or replaced. Retrying cannot help: the store must be repaired or
// restored, and components that meet it stop rather than go on half-working.
var ErrCorrupt = errors.New("eventstore: data corrupt")

// ExpectedRevision states what the appender believes about a stream before appending.
// Build one with NoStream, Any or Exact.
type ExpectedRevision struct {
	kind     expectKind
	revision uint64
}

type expectKind uint8

const (
	expectAny expectKind = iota
	expectNoStream
	expectExact
)

// NoStream expects the stream not to exist yet.
func NoStream() ExpectedRevision { return ExpectedRevision{kind: expectNoStream} }

// Any appends whatever the stream's revision is. Use it only where order does not matter.
func Any() ExpectedRevision { return ExpectedRevision{kind: expectAny} }

// Exact expects the stream's last event to have revision rev (revisions start at 0).
func Exact(rev uint64) ExpectedRevision { return ExpectedRevision{kind: expectExact, revision: rev} }

// After expects the stream to hold exactly n events: NoStream for n == 0, Exact(n-1) otherwise.
func After(n uint64) ExpectedRevision {
	if n == 0 {
		return NoStream()
	}
	return Exact(n - 1)
}

// IsAny reports whether the append skips the revision check.
func (e ExpectedRevision) IsAny() bool { return e.kind == expectAny }

// IsNoStream reports whether the stream is expected not to exist.
func (e ExpectedRevision) IsNoStream() bool { return e.kind == expectNoStream }

// Revision returns the exact revision expected and true, or false when the
// expectation is NoStream or Any.
func (e ExpectedRevision) Revision() (uint64, bool) { return e.revision, e.kind == expectExact }

// Check reports whether a stream holding n events satisfies the expectation;
// adapters that check revisions themselves use it to agree on the rule.
func (e ExpectedRevision) Check(n uint64) bool {
	switch e.kind {
	case expectNoStream:
		return n == 0
	case expectExact:
		return n == e.revision+1
	default:
		return true
	}
}

func (e ExpectedRevision) String() string {
	switch e.kind {
	case expectNoStream:
		return "no stream"
	case expectExact:
		return fmt.Sprintf("revision %d", e.revision)
	default:
		return "any"
	}
}

// StreamEnd is past every revision a stream can hold: ReadStreamBackward from
// StreamEnd starts at the stream's last event.
const StreamEnd uint64 = math.MaxUint64

// Position is a place in the global order of all events. Commit orders first,
// Prepare breaks ties; adapters with a single counter leave Prepare at 0. The zero
// Position is before the first event. Positions are exclusive when reading: ReadAll
// after p returns events strictly greater than p.
type Position struct {
	Commit  uint64 `json:"commit"`
	Prepare uint64 `json:"prepare"`
}

// Start is the position before every event.
var Start = Position{}

// Less reports whether p comes before q.
func (p Position) Less(q Position) bool {
	if p.Commit != q.Commit {
		return p.Commit < q.Commit
	}
	return p.Prepare < q.Prepare
}

func (p Position) String() string { return fmt.Sprintf("%d/%d", p.Commit, p.Prepare) }

// EventData is an event to append. ID must be unique and is chosen by the caller, so
// that an append retried with the same IDs can be recognised.
type EventData struct {
	ID   string
	Type string
	Data []byte // JSON
	// Metadata is free-form JSON (tenant, correlation); may be nil.
	Metadata []byte
}

// Event is an event as stored.
type Event struct {
	ID       string
	Stream   string
	Type     string
	Data     []byte
	Metadata []byte
	// Revision is the event's place in its stream, from 0.
	Revision uint64
	// Position is the event's place in the global order.
	Position Position
	// Time is when the store recorded the event (UTC).
	Time time.Time
}

// AppendResult tells where an append landed.
type AppendResult struct {
	// NextExpected is the revision of the last event written: pass Exact(NextExpected)
	// to append after it.
	NextExpected uint64
	// Position is the global position of the last event written.
	Position Position
}

// Store is the event store port.
type Store interface {
	// Append writes events to the end of stream atomically, all or none, if the
	// stream's revision matches expected; otherwise it returns an error wrapping
	// ErrConcurrency. Appending no events is an error.
	Append(ctx context.Context, stream string, expected ExpectedRevision, events []EventData) (AppendResult, error)

	// ReadStream returns up to max events of stream with revision >= from, in
	// revision order. A stream that does not exist reads as empty.
	ReadStream(ctx context.Context, stream string, from uint64, max int) ([]Event, error)

	// ReadStreamBackward returns up to max events of stream with revision <= from,
	// newest first; from StreamEnd (or any revision past the last) it starts at the
	// stream's last event. A stream that does not exist reads as empty. It finds
	// the latest events of a stream, a snapshot, without reading from the start.
	ReadStreamBackward(ctx context.Context, stream string, from uint64, max int) ([]Event, error)

	// ReadAll returns up to max events of all streams strictly after the position,
	// in global order. It never returns an event and later return one that sorts
	// before it: events are only visible once nothing can commit before them.
	ReadAll(ctx context.Context, after Position, max int) ([]Event, error)

	// WaitForEvents blocks until events after the position may be readable, ctx is
	// done (returning ctx.Err()), or the store is closed (ErrClosed). It may return
	// early without new events; callers read and wait again.
	WaitForEvents(ctx context.Context, after Position) error

	// Close releases the store. Operations after Close return ErrClosed.
	Close() error
}

// ValidateAppend checks what every adapter requires of an append: a stream name,
// at least one event, and events with an ID and a type, no ID twice. Adapters
// add their own limits.
func ValidateAppend(stream string, events []EventData) error {
	if stream == "" {
		return errors.New("stream name is empty")
	}
	if len(events) == 0 {
		return errors.New("no events to append")
	}
	seen := make(map[string]struct{}, len(events))
	for i, e := range events {
		if e.ID == "" {
			return fmt.Errorf("event %d has no ID", i)
		}
		if e.Type == "" {
			return fmt.Errorf("event %s has no type", e.ID)
		}
		if _, dup := seen[e.ID]; dup {
			return fmt.Errorf("event ID %s appears twice", e.ID)
		}
		seen[e.ID] = struct{}{}
	}
	return nil
}
