// Package bolt owns the embedded event store: an eventstore.Store in a single bbolt
// file under the data directory, the default when smsbatch runs with no
// configuration. Every append is fsynced before it returns, so data survives a crash
// or restart. Only one process can hold the file open at a time.
//
// # Layout
//
//   - bucket "all": big-endian uint64 global sequence -> the event record (see
//     record.go). The sequence starts at 1 and is the event's Position.Commit;
//     Prepare is always 0.
//   - bucket "streams": one nested bucket per stream, big-endian uint64 revision ->
//     8-byte global sequence. The nested bucket's sequence counter holds the number
//     of events in the stream.
//   - bucket "ids": event ID -> 8-byte global sequence, to recognise retried appends
//     and refuse a reused event ID.
//   - bucket "meta": "format" -> the layout version, checked at Open.
//
// # Appends
//
// Appends are written by one goroutine, which gathers the appends that arrive while
// it is committing and writes them in one bbolt transaction: one fsync for many
// appends when many callers append at once, no waiting when one caller appends
// alone. Each append is still all or nothing, and checked against the state left by
// the appends before it.
//
// An append is recognised as a retry of an earlier one (whose answer the caller may
// have lost) when its first event ID is already stored in the same stream at a
// revision that satisfies the append's expected revision, and the stored events from
// that revision on match the appended ones exactly (ID, type, data, metadata). Such an
// append succeeds with the original result and writes nothing. Any other append that
// reuses a stored event ID fails with an error wrapping eventstore.ErrConcurrency.
package bolt

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
	"time"

	bbolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/smsbatch/smsbatch/eventstore"
)

// ErrInUse is returned by Open when another process holds the file open.
var ErrInUse = errors.New("data directory is in use by another process")

// DefaultLockTimeout is how long Open waits for the file lock by default.
const DefaultLockTimeout = time.Second

// formatVersion is the layout written in the "meta" bucket. Change it, and teach
// Open to migrate, whenever the layout or the record encoding changes.
const formatVersion = "1"

// maxGroup bounds how many appends share one transaction, so that one commit
// does not grow without limit under a flood of appends.
const maxGroup = 256

var (
	bucketAll     = []byte("all")
	bucketStreams = []byte("streams")
	bucketIDs     = []byte("ids")
	bucketMeta    = []byte("meta")
	keyFormat     = []byte("format")
)

// Options configures Open. The zero value is ready to use.
type Options struct {
	// LockTimeout is how long Open waits for another process to release the file
	// before failing with ErrInUse. Optional; DefaultLockTimeout when <= 0.
	LockTimeout time.Duration
	// Clock stamps appended events. Optional; time.Now when nil. Times are stored
	// in UTC with nanosecond precision.
	Clock func() time.Time
}

func (o *Options) setDefaults() {
	if o.LockTimeout <= 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
}

// Store is an eventstore.Store in a bbolt file, safe for concurrent use.
type Store struct {
	path  string
	db    *bbolt.DB
	clock func() time.Time

	requests   chan *appendRequest
	stop       chan struct{} // closed by Close: the writer takes no more requests
	writerDone chan struct{} // closed when the writer goroutine has returned
	closeOnce  sync.Once
	closeErr   error

	mu     sync.Mutex
	closed bool
	last   uint64 // global sequence of the last committed event
	// wake is closed and replaced on every commit that wrote events and closed on
	// Close, so that WaitForEvents can block on it without polling.
	wake chan struct{}
}

var _ eventstore.Store = (*Store)(nil)

// Open opens the store in the bbolt file at path, creating the file and its parent
// directories if needed. It fails with an error wrapping ErrInUse when another
// process has the file open and does not let go within opts.LockTimeout.
func Open(path string, opts Options) (*Store, error) {
	opts.setDefaults()
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("bolt: open %s: %w", path, err)
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout:      opts.LockTimeout,
		FreelistType: bbolt.FreelistMapType,
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("bolt: open %s: %w (file lock not released within %s)", path, ErrInUse, opts.LockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("bolt: open %s: %w", path, err)
	}
	var last uint64
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{bucketAll, bucketStreams, bucketIDs, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		switch v := meta.Get(keyFormat); {
		case v == nil:
			if err := meta.Put(keyFormat, []byte(formatVersion)); err != nil {
				return err
			}
		case string(v) != formatVersion:
			return fmt.Errorf("file has layout version %q, this build reads %q", v, formatVersion)
		}
		last = tx.Bucket(bucketAll).Sequence()
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("bolt: open %s: %w", path, err)
	}
	s := &Store{
		path:       path,
		db:         db,
		clock:      opts.Clock,
		requests:   make(chan *appendRequest),
		stop:       make(chan struct{}),
		writerDone: make(chan struct{}),
		last:       last,
		wake:       make(chan struct{}),
	}
	go s.write()
	return s, nil
}

// Path returns the file the store is kept in.
func (s *Store) Path() string { return s.path }

// appendRequest is one Append handed to the writer goroutine.
type appendRequest struct {
	ctx      context.Context
	stream   string
	expected eventstore.ExpectedRevision
	events   []eventstore.EventData

	result eventstore.AppendResult
	err    error
	done   chan struct{} // closed once result and err are set
}

func (r *appendRequest) finish(res eventstore.AppendResult, err error) {
	r.result, r.err = res, err
	close(r.done)
}

// Append implements eventstore.Store. Once the append has reached the writer it
// waits for the outcome even if ctx is done meanwhile, so that an error means
// nothing was written (except for a failing commit, where the disk is in doubt).
func (s *Store) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	if err := validateAppend(stream, events); err != nil {
		return eventstore.AppendResult{}, fmt.Errorf("bolt: append to %s: %w", stream, err)
	}
	if err := ctx.Err(); err != nil {
		return eventstore.AppendResult{}, fmt.Errorf("bolt: append to %s: %w", stream, err)
	}
	r := &appendRequest{ctx: ctx, stream: stream, expected: expected, events: events, done: make(chan struct{})}
	select {
	case s.requests <- r:
	case <-s.stop:
		return eventstore.AppendResult{}, fmt.Errorf("bolt: append to %s: %w", stream, eventstore.ErrClosed)
	case <-ctx.Done():
		return eventstore.AppendResult{}, fmt.Errorf("bolt: append to %s: %w", stream, ctx.Err())
	}
	<-r.done
	if r.err != nil {
		return eventstore.AppendResult{}, fmt.Errorf("bolt: append to %s: %w", stream, r.err)
	}
	return r.result, nil
}

// validateAppend adds bolt's key size limits to the port's rules.
func validateAppend(stream string, events []eventstore.EventData) error {
	if err := eventstore.ValidateAppend(stream, events); err != nil {
		return err
	}
	if len(stream) > bbolt.MaxKeySize {
		return fmt.Errorf("stream name is %d bytes, more than %d", len(stream), bbolt.MaxKeySize)
	}
	for i, e := range events {
		if len(e.ID) > bbolt.MaxKeySize {
			return fmt.Errorf("event %d has an ID of %d bytes, more than %d", i, len(e.ID), bbolt.MaxKeySize)
		}
	}
	return nil
}

// write is the writer goroutine: it commits appends in groups until Close.
func (s *Store) write() {
	defer close(s.writerDone)
	group := make([]*appendRequest, 0, maxGroup)
	for {
		// Close wins over waiting appends: they get ErrClosed from Append.
		select {
		case <-s.stop:
			return
		default:
		}
		select {
		case <-s.stop:
			return
		case r := <-s.requests:
			group = append(group[:0], r)
		}
	gather:
		for len(group) < maxGroup {
			select {
			case r := <-s.requests:
				group = append(group, r)
			default:
				break gather
			}
		}
		s.commit(group)
		clear(group)
	}
}

// commit writes a group of appends in one transaction and answers each of them.
func (s *Store) commit(group []*appendRequest) {
	tx, err := s.db.Begin(true)
	if err != nil {
		for _, r := range group {
			r.finish(eventstore.AppendResult{}, fmt.Errorf("begin transaction: %w", storeErr(err)))
		}
		return
	}
	type answer struct {
		result eventstore.AppendResult
		err    error
	}
	answers := make([]answer, len(group))
	wrote := false
	for i, r := range group {
		if err := r.ctx.Err(); err != nil {
			answers[i].err = err
			continue
		}
		res, wroteThis, err := s.apply(tx, r)
		var w writeError
		if errors.As(err, &w) {
			// The transaction may hold part of this append: drop it all, and give
			// every append its own transaction so that only the bad one fails.
			_ = tx.Rollback()
			if len(group) == 1 {
				r.finish(eventstore.AppendResult{}, w.err)
				return
			}
			for _, one := range group {
				s.commit([]*appendRequest{one})
			}
			return
		}
		answers[i] = answer{res, err}
		wrote = wrote || wroteThis
	}
	if !wrote {
		// Nothing to make durable: skip the fsync.
		_ = tx.Rollback()
	} else {
		last := tx.Bucket(bucketAll).Sequence()
		if err := tx.Commit(); err != nil {
			// Answers computed in this transaction may rest on its writes.
			for _, r := range group {
				r.finish(eventstore.AppendResult{}, fmt.Errorf("commit: %w", storeErr(err)))
			}
			return
		}
		s.published(last)
	}
	for i, r := range group {
		r.finish(answers[i].result, answers[i].err)
	}
}

// lastCommitted returns the global sequence of the last committed event.
func (s *Store) lastCommitted() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// published records that events up to seq are committed and wakes the waiters.
func (s *Store) published(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last = seq
	close(s.wake)
	s.wake = make(chan struct{})
}

// writeError marks a failure while writing, after which the transaction may hold a
// partial append and must be rolled back.
type writeError struct{ err error }

func (e writeError) Error() string { return e.err.Error() }
func (e writeError) Unwrap() error { return e.err }

// apply checks one append against the state in tx and writes it, reporting
// whether it wrote (a recognised retry does not). It returns a writeError when it
// failed after starting to write; any other error means tx is untouched.
func (s *Store) apply(tx *bbolt.Tx, r *appendRequest) (eventstore.AppendResult, bool, error) {
	all := tx.Bucket(bucketAll)
	ids := tx.Bucket(bucketIDs)
	streams := tx.Bucket(bucketStreams)
	sb := streams.Bucket([]byte(r.stream))
	var n uint64
	if sb != nil {
		n = sb.Sequence()
	}

	if seq := ids.Get([]byte(r.events[0].ID)); seq != nil {
		res, ok, err := retried(all, sb, r, binary.BigEndian.Uint64(seq))
		if err != nil || ok {
			return res, false, err
		}
	}
	if !r.expected.Check(n) {
		return eventstore.AppendResult{}, false, fmt.Errorf("expected %s, stream holds %d events: %w", r.expected, n, eventstore.ErrConcurrency)
	}
	for _, e := range r.events {
		if seq := ids.Get([]byte(e.ID)); seq != nil {
			return eventstore.AppendResult{}, false, duplicateID(all, e.ID, binary.BigEndian.Uint64(seq))
		}
	}

	// Keys only ever grow, so full pages split less and the file stays compact.
	all.FillPercent = 1
	if sb == nil {
		var err error
		if sb, err = streams.CreateBucket([]byte(r.stream)); err != nil {
			return eventstore.AppendResult{}, false, writeError{fmt.Errorf("create stream bucket: %w", err)}
		}
	}
	sb.FillPercent = 1

	unixNano := s.clock().UnixNano()
	seq := all.Sequence()
	for k, e := range r.events {
		seq++
		rev := n + uint64(k)
		seqKey := u64(seq)
		if err := all.Put(seqKey, encodeRecord(r.stream, rev, unixNano, e)); err != nil {
			return eventstore.AppendResult{}, false, writeError{fmt.Errorf("put event %s: %w", e.ID, err)}
		}
		if err := sb.Put(u64(rev), seqKey); err != nil {
			return eventstore.AppendResult{}, false, writeError{fmt.Errorf("index event %s by revision: %w", e.ID, err)}
		}
		if err := ids.Put([]byte(e.ID), seqKey); err != nil {
			return eventstore.AppendResult{}, false, writeError{fmt.Errorf("index event %s by ID: %w", e.ID, err)}
		}
	}
	if err := all.SetSequence(seq); err != nil {
		return eventstore.AppendResult{}, false, writeError{fmt.Errorf("set global sequence: %w", err)}
	}
	next := n + uint64(len(r.events))
	if err := sb.SetSequence(next); err != nil {
		return eventstore.AppendResult{}, false, writeError{fmt.Errorf("set stream length: %w", err)}
	}
	return eventstore.AppendResult{NextExpected: next - 1, Position: eventstore.Position{Commit: seq}}, true, nil
}

// retried reports whether r was already written by an earlier append whose first
// event is at global sequence firstSeq, and if so that append's result. See the
// package doc.
func retried(all, sb *bbolt.Bucket, r *appendRequest, firstSeq uint64) (eventstore.AppendResult, bool, error) {
	if sb == nil {
		return eventstore.AppendResult{}, false, nil
	}
	first, err := readEvent(all, firstSeq)
	if err != nil {
		return eventstore.AppendResult{}, false, err
	}
	if first.Stream != r.stream || !r.expected.Check(first.Revision) || sb.Sequence()-first.Revision < uint64(len(r.events)) {
		return eventstore.AppendResult{}, false, nil
	}
	var seq uint64
	for k, e := range r.events {
		v := sb.Get(u64(first.Revision + uint64(k)))
		if len(v) != 8 {
			return eventstore.AppendResult{}, false, fmt.Errorf("stream %s: revision %d missing from index", r.stream, first.Revision+uint64(k))
		}
		seq = binary.BigEndian.Uint64(v)
		stored, err := readEvent(all, seq)
		if err != nil {
			return eventstore.AppendResult{}, false, err
		}
		if !sameEvent(stored, e) {
			return eventstore.AppendResult{}, false, nil
		}
	}
	return eventstore.AppendResult{
		NextExpected: first.Revision + uint64(len(r.events)) - 1,
		Position:     eventstore.Position{Commit: seq},
	}, true, nil
}

func duplicateID(all *bbolt.Bucket, id string, seq uint64) error {
	stored, err := readEvent(all, seq)
	if err != nil {
		return err
	}
	return fmt.Errorf("event ID %s already stored in %s at revision %d: %w", id, stored.Stream, stored.Revision, eventstore.ErrConcurrency)
}

// ReadStream implements eventstore.Store.
func (s *Store) ReadStream(ctx context.Context, stream string, from uint64, max int) ([]eventstore.Event, error) {
	events, err := s.readStream(ctx, stream, from, max, false)
	if err != nil {
		return nil, fmt.Errorf("bolt: read stream %s from %d: %w", stream, from, err)
	}
	return events, nil
}

// ReadStreamBackward implements eventstore.Store.
func (s *Store) ReadStreamBackward(ctx context.Context, stream string, from uint64, max int) ([]eventstore.Event, error) {
	events, err := s.readStream(ctx, stream, from, max, true)
	if err != nil {
		return nil, fmt.Errorf("bolt: read stream %s backward from %d: %w", stream, from, err)
	}
	return events, nil
}

// readStream reads up to max events of stream from revision from on, towards
// its end or, backward, towards its start.
func (s *Store) readStream(ctx context.Context, stream string, from uint64, max int, backward bool) ([]eventstore.Event, error) {
	if max <= 0 {
		return nil, fmt.Errorf("max must be positive, got %d", max)
	}
	if err := s.usable(ctx); err != nil {
		return nil, err
	}
	var events []eventstore.Event
	err := s.db.View(func(tx *bbolt.Tx) error {
		sb := tx.Bucket(bucketStreams).Bucket([]byte(stream))
		if sb == nil || sb.Sequence() == 0 || !backward && from >= sb.Sequence() {
			return nil
		}
		left := sb.Sequence() - from // events from `from` to the end
		if backward {
			from = min(from, sb.Sequence()-1)
			left = from + 1
		}
		all := tx.Bucket(bucketAll)
		events = make([]eventstore.Event, 0, min(uint64(max), left, 1024))
		c := sb.Cursor()
		k, v := c.Seek(u64(from))
		next := c.Next
		if backward {
			next = c.Prev
			// Revisions are contiguous, so Seek lands on from itself; the other
			// cases only guard against an index with holes.
			switch {
			case k == nil:
				k, v = c.Last()
			case binary.BigEndian.Uint64(k) > from:
				k, v = c.Prev()
			}
		}
		for ; k != nil && len(events) < max; k, v = next() {
			if len(v) != 8 {
				return fmt.Errorf("revision %d: corrupt index entry", binary.BigEndian.Uint64(k))
			}
			e, err := readEvent(all, binary.BigEndian.Uint64(v))
			if err != nil {
				return err
			}
			events = append(events, e)
		}
		return nil
	})
	return events, storeErr(err)
}

// ReadAll implements eventstore.Store.
func (s *Store) ReadAll(ctx context.Context, after eventstore.Position, max int) ([]eventstore.Event, error) {
	events, err := s.readAll(ctx, after, max)
	if err != nil {
		return nil, fmt.Errorf("bolt: read all after %s: %w", after, err)
	}
	return events, nil
}

func (s *Store) readAll(ctx context.Context, after eventstore.Position, max int) ([]eventstore.Event, error) {
	if max <= 0 {
		return nil, fmt.Errorf("max must be positive, got %d", max)
	}
	if err := s.usable(ctx); err != nil {
		return nil, err
	}
	// Every event has Prepare 0, so the first one after `after` is at Commit+1
	// whatever after.Prepare is.
	if after.Commit == math.MaxUint64 || after.Commit >= s.lastCommitted() {
		return nil, nil
	}
	var events []eventstore.Event
	err := s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketAll).Cursor()
		for k, v := c.Seek(u64(after.Commit + 1)); k != nil && len(events) < max; k, v = c.Next() {
			e, err := decodeRecord(binary.BigEndian.Uint64(k), v)
			if err != nil {
				return err
			}
			events = append(events, e)
		}
		return nil
	})
	return events, storeErr(err)
}

// WaitForEvents implements eventstore.Store. It returns as soon as an event after
// the position is committed by this process, without spurious wake-ups.
func (s *Store) WaitForEvents(ctx context.Context, after eventstore.Position) error {
	for {
		s.mu.Lock()
		closed, last, wake := s.closed, s.last, s.wake
		s.mu.Unlock()
		switch {
		case closed:
			return fmt.Errorf("bolt: wait for events after %s: %w", after, eventstore.ErrClosed)
		case last > after.Commit:
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		}
	}
}

// Close implements eventstore.Store: it lets the append being written finish, fails
// the waiting ones and every later call with ErrClosed, wakes WaitForEvents with
// ErrClosed and closes the file. Closing twice returns the first Close's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.writerDone
		s.mu.Lock()
		s.closed = true
		close(s.wake)
		s.mu.Unlock()
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("bolt: close %s: %w", s.path, err)
		}
	})
	return s.closeErr
}

// usable returns why a read cannot start: a done context or a closed store.
func (s *Store) usable(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return eventstore.ErrClosed
	}
	return nil
}

// storeErr maps bbolt's "not open", met when Close races a read, to ErrClosed.
func storeErr(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return eventstore.ErrClosed
	}
	return err
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(make([]byte, 0, 8), v) }
