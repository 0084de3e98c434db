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
//   - bucket "heads": stream name -> its number of events and the global sequence
//     of its last event, two big-endian uint64s.
//   - bucket "prev": global sequence -> the global sequence of the previous event of
//     the same stream (0 for a stream's first), so that a stream is a chain back
//     through the log from its head (see chain.go).
//   - bucket "marks": stream name and revision -> global sequence, for every 32nd
//     revision, where a read far from the head starts following the chain.
//   - bucket "ids": event ID -> 8-byte global sequence, to recognise retried appends
//     and refuse a reused event ID.
//   - bucket "meta": "format" -> the layout version, checked at Open; "id" -> the
//     store's identity, a random ID also kept in a small file beside the store
//     (events.db.id), so that Open can tell an emptied, truncated or replaced
//     store file from a new one (see identity.go).
//
// # Integrity
//
// Every record carries a CRC-32C checksum, verified on every read (record.go); a
// stream read also checks that every record its chain leads to is the revision
// of the stream it should be. Open refuses, with an error wrapping
// eventstore.ErrCorrupt and naming the file, a store file that is empty, shorter
// than its own pages reach, not a bbolt file, or another store's. Once a read
// meets corrupt data (or bbolt panics on a damaged page) the store fails: every
// later operation, appends included, returns an error wrapping
// eventstore.ErrCorrupt and Health reports it, so that nothing more is decided on
// a history that can no longer be read. Check verifies a whole store offline.
//
// Layout "2" kept a nested bucket for each stream, revision -> global sequence,
// and layout "1" had no checksums either; Open migrates both (migrate.go).
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
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"syscall"
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
// Open to migrate, whenever the layout or the record encoding changes. Layout "1"
// had no record checksums and no identity, layout "2" a nested bucket for each
// stream; Open migrates both (migrate.go).
const (
	formatVersion   = "3"
	formatVersionV2 = "2"
	formatVersionV1 = "1"
)

// maxGroup bounds how many appends share one transaction, so that one commit
// does not grow without limit under a flood of appends.
const maxGroup = 256

var (
	bucketAll     = []byte("all")
	bucketHeads   = []byte("heads")
	bucketPrev    = []byte("prev")
	bucketMarks   = []byte("marks")
	bucketStreams = []byte("streams") // layouts 1 and 2
	bucketIDs     = []byte("ids")
	bucketMeta    = []byte("meta")
	keyFormat     = []byte("format")
	keyStoreID    = []byte("id")
)

// Options configures Open. The zero value is ready to use.
type Options struct {
	// LockTimeout is how long Open waits for another process to release the file
	// before failing with ErrInUse. Optional; DefaultLockTimeout when <= 0.
	LockTimeout time.Duration
	// Clock stamps appended events. Optional; time.Now when nil. Times are stored
	// in UTC with nanosecond precision.
	Clock func() time.Time
	// Logger receives what an operator should know: a migration, a recreated
	// identity file, the store failing on corrupt data. Optional; discarded when nil.
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.LockTimeout <= 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Store is an eventstore.Store in a bbolt file, safe for concurrent use.
type Store struct {
	path  string
	id    string
	db    *bbolt.DB
	clock func() time.Time
	log   *slog.Logger

	requests   chan *appendRequest
	stop       chan struct{} // closed by Close: the writer takes no more requests
	writerDone chan struct{} // closed when the writer goroutine has returned
	closeOnce  sync.Once
	closeErr   error

	mu     sync.Mutex
	closed bool
	broken error  // set once corrupt data was met; wraps eventstore.ErrCorrupt
	stuck  bool   // a rollback failed: bbolt may hold its writer lock for good
	last   uint64 // global sequence of the last committed event
	// wake is closed and replaced on every commit that wrote events and when the
	// store fails, and closed on Close, so that WaitForEvents can block on it
	// without polling.
	wake chan struct{}
}

var _ eventstore.Store = (*Store)(nil)

// Open opens the store in the bbolt file at path, creating the file and its parent
// directories if needed. It fails with an error wrapping ErrInUse when another
// process has the file open and does not let go within opts.LockTimeout, and with
// one wrapping eventstore.ErrCorrupt, naming the file, when the file is not the
// store this data directory held (emptied, truncated, replaced, not a store). A
// store of layout "1" is migrated to the current layout first.
func Open(path string, opts Options) (*Store, error) {
	opts.setDefaults()
	s, err := open(path, opts)
	if err != nil {
		return nil, fmt.Errorf("bolt: open %s: %w", path, err)
	}
	return s, nil
}

func open(path string, opts Options) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	held, err := readIdentityFile(path)
	if err != nil {
		return nil, err
	}
	if err := preflight(path, held); err != nil {
		return nil, err
	}
	db, err := openDB(path, &bbolt.Options{
		Timeout:      opts.LockTimeout,
		FreelistType: bbolt.FreelistMapType,
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%w (file lock not released within %s)", ErrInUse, opts.LockTimeout)
	}
	if err != nil {
		return nil, err
	}
	var id string
	var last uint64
	err = guard(func() (err error) {
		id, last, err = prepare(db, path, held, opts.Logger)
		return err
	})
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	if held == "" {
		if err := writeIdentityFile(path, id); err != nil {
			_ = db.Close()
			return nil, err
		}
	}
	s := &Store{
		path:       path,
		id:         id,
		db:         db,
		clock:      opts.Clock,
		log:        opts.Logger,
		requests:   make(chan *appendRequest),
		stop:       make(chan struct{}),
		writerDone: make(chan struct{}),
		last:       last,
		wake:       make(chan struct{}),
	}
	go s.write()
	return s, nil
}

// openDB opens the bbolt file. bbolt panics on some damaged pages (a freelist
// page that is not one, say): guard turns that into an error wrapping
// eventstore.ErrCorrupt instead of a crash. After such a panic bbolt's file handle
// is not released; the caller is about to give up anyway.
func openDB(path string, o *bbolt.Options) (*bbolt.DB, error) {
	var db *bbolt.DB
	err := guard(func() (err error) {
		db, err = bbolt.Open(path, 0o600, o)
		return err
	})
	return db, err
}

// prepare makes db a store of the current layout: it creates a new store's
// buckets and identity, migrates layout "1", and checks the identity against the
// one the data directory held (held; empty when there is no identity file). It
// returns the store's identity and its last global sequence.
func prepare(db *bbolt.DB, path, held string, log *slog.Logger) (id string, last uint64, err error) {
	var format string
	var fresh bool
	err = db.View(func(tx *bbolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			fresh = tx.Bucket(bucketAll) == nil && tx.Bucket(bucketHeads) == nil &&
				tx.Bucket(bucketStreams) == nil && tx.Bucket(bucketIDs) == nil
			return nil
		}
		format, id = string(meta.Get(keyFormat)), string(meta.Get(keyStoreID))
		return nil
	})
	if err != nil {
		return "", 0, err
	}
	switch {
	case fresh && held != "":
		return "", 0, replacedError(path, held, "a new, empty store")
	case fresh:
		if id, err = newStoreID(); err != nil {
			return "", 0, err
		}
		err = db.Update(func(tx *bbolt.Tx) error {
			for _, name := range [][]byte{bucketAll, bucketHeads, bucketPrev, bucketMarks, bucketIDs, bucketMeta} {
				if _, err := tx.CreateBucket(name); err != nil {
					return err
				}
			}
			meta := tx.Bucket(bucketMeta)
			if err := meta.Put(keyFormat, []byte(formatVersion)); err != nil {
				return err
			}
			return meta.Put(keyStoreID, []byte(id))
		})
		return id, 0, err
	case format == "":
		return "", 0, fmt.Errorf("the file is a bbolt database but not an smsbatch event store: %w", eventstore.ErrCorrupt)
	case format == formatVersionV1 && held != "":
		return "", 0, replacedError(path, held, "a store of layout 1, which has no identity")
	case format == formatVersionV1:
		if id, err = migrateV1(db, log, path); err != nil {
			return "", 0, fmt.Errorf("migrate layout 1 to %s: %w", formatVersionV2, err)
		}
		format = formatVersionV2
	case format != formatVersion && format != formatVersionV2:
		return "", 0, fmt.Errorf("file has layout version %q, this build reads %q (and migrates %q and %q)",
			format, formatVersion, formatVersionV1, formatVersionV2)
	case held != "" && id != held:
		return "", 0, replacedError(path, held, "store "+id)
	case held == "":
		log.Warn("event store identity file was missing: written again from the store", "file", identityPath(path), "store_id", id)
	}
	if format == formatVersionV2 {
		if err := migrateV2(db, log, path); err != nil {
			return "", 0, fmt.Errorf("migrate layout 2 to %s: %w", formatVersion, err)
		}
	}
	err = db.View(func(tx *bbolt.Tx) error {
		all := tx.Bucket(bucketAll)
		if all == nil || tx.Bucket(bucketHeads) == nil || tx.Bucket(bucketPrev) == nil ||
			tx.Bucket(bucketMarks) == nil || tx.Bucket(bucketIDs) == nil {
			return fmt.Errorf("a bucket of the layout is missing: %w", eventstore.ErrCorrupt)
		}
		last = all.Sequence()
		return nil
	})
	return id, last, err
}

// Path returns the file the store is kept in.
func (s *Store) Path() string { return s.path }

// ID returns the store's identity, the random ID kept in the store and in the
// identity file beside it.
func (s *Store) ID() string { return s.id }

// appendRequest is one Append handed to the writer goroutine.
type appendRequest struct {
	ctx      context.Context
	stream   string
	expected eventstore.ExpectedRevision
	events   []eventstore.EventData
	// waitUntil is how long its group may stay open for others to join
	// (eventstore.WithCommitDelay); zero: commit as soon as the writer can.
	waitUntil time.Time

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
	if err := s.usable(ctx); err != nil {
		return eventstore.AppendResult{}, fmt.Errorf("bolt: append to %s: %w", stream, err)
	}
	r := &appendRequest{ctx: ctx, stream: stream, expected: expected, events: events, done: make(chan struct{})}
	if d := eventstore.CommitDelay(ctx); d > 0 {
		r.waitUntil = time.Now().Add(d)
	}
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

// maxStreamName is the longest stream name bolt stores: a stream's marks are
// keyed by its name with its length before and a revision after (markKey), and
// bbolt refuses a key longer than MaxKeySize.
const maxStreamName = bbolt.MaxKeySize - binary.MaxVarintLen64 - 8

// validateAppend adds bolt's key size limits to the port's rules.
func validateAppend(stream string, events []eventstore.EventData) error {
	if err := eventstore.ValidateAppend(stream, events); err != nil {
		return err
	}
	if len(stream) > maxStreamName {
		return fmt.Errorf("stream name is %d bytes, more than %d", len(stream), maxStreamName)
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
		group = s.linger(group)
		s.commit(group)
		clear(group)
	}
}

// linger keeps a group whose appends are all willing to wait (see
// eventstore.WithCommitDelay) open for more until the first of them has waited
// its delay, the group is full, an append that is not willing comes, or the
// store closes. A commit costs bbolt a rewrite of every page on the paths it
// touches, so at a paced rate, where appends come one at a time from many
// batches, sharing commits writes a fraction of the pages.
func (s *Store) linger(group []*appendRequest) []*appendRequest {
	until := group[0].waitUntil
	for _, r := range group {
		if r.waitUntil.IsZero() {
			return group
		}
		if r.waitUntil.Before(until) {
			until = r.waitUntil
		}
	}
	wait := time.Until(until)
	if wait <= 0 {
		return group
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for len(group) < maxGroup {
		select {
		case r := <-s.requests:
			group = append(group, r)
			if r.waitUntil.IsZero() {
				return group
			}
		case <-t.C:
			return group
		case <-s.stop:
			return group
		}
	}
	return group
}

// commit writes a group of appends in one transaction and answers each of them.
func (s *Store) commit(group []*appendRequest) {
	if err := s.Health(); err != nil {
		finishAll(group, err)
		return
	}
	tx, err := s.db.Begin(true)
	if err != nil {
		finishAll(group, fmt.Errorf("begin transaction: %w", storeErr(err)))
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
		var res eventstore.AppendResult
		var wroteThis bool
		err := guard(func() (err error) {
			res, wroteThis, err = s.apply(tx, r)
			return err
		})
		if errors.Is(err, eventstore.ErrCorrupt) {
			s.abandon(tx)
			finishAll(group, s.fail(err))
			return
		}
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
		err := guard(tx.Commit)
		if errors.Is(err, eventstore.ErrCorrupt) {
			s.abandon(tx)
			finishAll(group, s.fail(err))
			return
		}
		if err != nil {
			// Answers computed in this transaction may rest on its writes.
			finishAll(group, fmt.Errorf("commit: %w", writeFailed(err)))
			return
		}
		s.published(last)
	}
	for i, r := range group {
		r.finish(answers[i].result, answers[i].err)
	}
}

func finishAll(group []*appendRequest, err error) {
	for _, r := range group {
		r.finish(eventstore.AppendResult{}, err)
	}
}

// writeFailed classifies a commit that failed to write: bbolt rolled it back, so
// the store is as it was and a later append may succeed once the cause is gone
// (a full disk, a quota, a file size limit, an I/O error). It wraps
// eventstore.ErrUnavailable, and says so plainly when the disk is full. (A file
// size limit shows as bbolt's "file resize error: ... file too large": bbolt
// formats the error of growing the file with %s, so its errno is lost.)
func writeFailed(err error) error {
	err = storeErr(err)
	switch {
	case errors.Is(err, eventstore.ErrClosed):
		return err
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return fmt.Errorf("the disk is full: %w: %w", eventstore.ErrUnavailable, err)
	default:
		return fmt.Errorf("%w: %w", eventstore.ErrUnavailable, err)
	}
}

// guard runs fn, which calls into bbolt, turning a panic into an error wrapping
// eventstore.ErrCorrupt: bbolt panics on pages it cannot make sense of, and a
// page mapped beyond a file that shrank faults.
func guard(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("bbolt failed reading the file (%v): %w", v, eventstore.ErrCorrupt)
		}
	}()
	return fn()
}

// abandon rolls back a write transaction that met corrupt data. When even the
// rollback panics, bbolt keeps its writer lock, so Close must not wait for it.
func (s *Store) abandon(tx *bbolt.Tx) {
	if err := guard(tx.Rollback); errors.Is(err, eventstore.ErrCorrupt) {
		s.mu.Lock()
		s.stuck = true
		s.mu.Unlock()
	}
}

// fail puts the store in its failed state after it met corrupt data (err, which
// wraps eventstore.ErrCorrupt): every later operation returns an error wrapping
// ErrCorrupt, WaitForEvents wakes with it, and Health reports it. It returns err.
func (s *Store) fail(err error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.broken != nil || s.closed {
		return err
	}
	s.broken = fmt.Errorf("%s is damaged; the event store takes no more reads or writes until it is repaired (see smsbatch check): %w",
		filepath.Base(s.path), err)
	close(s.wake)
	s.wake = make(chan struct{})
	s.log.Error("event store damaged: every read and write is refused from now on; stop smsbatch and run `smsbatch check`",
		"file", s.path, "err", err)
	return err
}

// Health returns nil while the store is usable. Once it met corrupt data it
// returns why, an error wrapping eventstore.ErrCorrupt, for good: readiness checks
// consult it.
func (s *Store) Health() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.broken
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
	heads := tx.Bucket(bucketHeads)
	h, err := streamHead(heads, r.stream)
	if err != nil {
		return eventstore.AppendResult{}, false, err
	}

	if seq := ids.Get([]byte(r.events[0].ID)); seq != nil {
		res, ok, err := retried(all, ids, h, r, binary.BigEndian.Uint64(seq))
		if err != nil || ok {
			return res, false, err
		}
	}
	if !r.expected.Check(h.n) {
		return eventstore.AppendResult{}, false, fmt.Errorf("expected %s, stream holds %d events: %w", r.expected, h.n, eventstore.ErrConcurrency)
	}
	for _, e := range r.events {
		if seq := ids.Get([]byte(e.ID)); seq != nil {
			return eventstore.AppendResult{}, false, duplicateID(all, e.ID, binary.BigEndian.Uint64(seq))
		}
	}

	// Keys only ever grow, so full pages split less and the file stays compact.
	all.FillPercent = 1
	prev, marks := tx.Bucket(bucketPrev), tx.Bucket(bucketMarks)
	prev.FillPercent = 1
	unixNano := s.clock().UnixNano()
	seq := all.Sequence()
	for k, e := range r.events {
		seq++
		rev := h.n + uint64(k)
		seqKey := u64(seq)
		if err := all.Put(seqKey, encodeRecord(seq, r.stream, rev, unixNano, e)); err != nil {
			return eventstore.AppendResult{}, false, writeError{fmt.Errorf("put event %s: %w", e.ID, err)}
		}
		if err := link(prev, marks, r.stream, rev, seq, h.last); err != nil {
			return eventstore.AppendResult{}, false, writeError{fmt.Errorf("event %s: %w", e.ID, err)}
		}
		h.last = seq
		if err := ids.Put([]byte(e.ID), seqKey); err != nil {
			return eventstore.AppendResult{}, false, writeError{fmt.Errorf("index event %s by ID: %w", e.ID, err)}
		}
	}
	if err := all.SetSequence(seq); err != nil {
		return eventstore.AppendResult{}, false, writeError{fmt.Errorf("set global sequence: %w", err)}
	}
	h.n += uint64(len(r.events))
	if err := heads.Put([]byte(r.stream), h.encode()); err != nil {
		return eventstore.AppendResult{}, false, writeError{fmt.Errorf("set stream head: %w", err)}
	}
	return eventstore.AppendResult{NextExpected: h.n - 1, Position: eventstore.Position{Commit: seq}}, true, nil
}

// retried reports whether r was already written by an earlier append whose first
// event is at global sequence firstSeq, and if so that append's result. See the
// package doc.
func retried(all, ids *bbolt.Bucket, h head, r *appendRequest, firstSeq uint64) (eventstore.AppendResult, bool, error) {
	first, err := readEvent(all, firstSeq)
	if err != nil {
		return eventstore.AppendResult{}, false, err
	}
	if first.Stream != r.stream || !r.expected.Check(first.Revision) || h.n-first.Revision < uint64(len(r.events)) {
		return eventstore.AppendResult{}, false, nil
	}
	// The retried events are the stream's from first on, each found by its ID.
	var seq uint64
	for k, e := range r.events {
		v := ids.Get([]byte(e.ID))
		if v == nil {
			return eventstore.AppendResult{}, false, nil
		}
		if len(v) != 8 {
			return eventstore.AppendResult{}, false, fmt.Errorf("event ID %s: %w: index entry of %d bytes", e.ID, eventstore.ErrCorrupt, len(v))
		}
		seq = binary.BigEndian.Uint64(v)
		stored, err := readEvent(all, seq)
		if err != nil {
			return eventstore.AppendResult{}, false, err
		}
		if stored.Stream != r.stream || stored.Revision != first.Revision+uint64(k) || !sameEvent(stored, e) {
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
	err := s.view(func(tx *bbolt.Tx) (err error) {
		events, err = readChain(tx, stream, from, max, backward)
		return err
	})
	return events, err
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
	err := s.view(func(tx *bbolt.Tx) error {
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
	return events, err
}

// view runs fn in a read transaction. Corrupt data met there, or a bbolt panic,
// fails the store.
func (s *Store) view(fn func(*bbolt.Tx) error) error {
	err := guard(func() error { return s.db.View(fn) })
	if errors.Is(err, eventstore.ErrCorrupt) {
		return s.fail(err)
	}
	return storeErr(err)
}

// WaitForEvents implements eventstore.Store. It returns as soon as an event after
// the position is committed by this process, without spurious wake-ups.
func (s *Store) WaitForEvents(ctx context.Context, after eventstore.Position) error {
	for {
		s.mu.Lock()
		closed, broken, last, wake := s.closed, s.broken, s.last, s.wake
		s.mu.Unlock()
		switch {
		case closed:
			return fmt.Errorf("bolt: wait for events after %s: %w", after, eventstore.ErrClosed)
		case broken != nil:
			return fmt.Errorf("bolt: wait for events after %s: %w", after, broken)
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
		stuck := s.stuck
		s.mu.Unlock()
		if stuck {
			s.closeErr = fmt.Errorf("bolt: close %s: left open, bbolt could not roll back a write on damaged data", s.path)
			return
		}
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("bolt: close %s: %w", s.path, err)
		}
	})
	return s.closeErr
}

// usable returns why an operation cannot start: a done context, a closed store or
// a failed one.
func (s *Store) usable(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return eventstore.ErrClosed
	}
	return s.broken
}

// storeErr maps bbolt's "not open", met when Close races a read, to ErrClosed.
func storeErr(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return eventstore.ErrClosed
	}
	return err
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(make([]byte, 0, 8), v) }
