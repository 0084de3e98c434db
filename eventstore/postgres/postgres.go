// Package postgres owns the PostgreSQL event store: an eventstore.Store kept in the
// events and streams tables that migrations/0001_eventstore.sql creates, for running
// several smsbatch instances on one database.
//
// # Appends
//
// An append is one SQL statement (append.go): it takes the stream's advisory lock,
// checks the expected revision against the stream's row in streams while moving
// the row on, and inserts the events, all in one round trip and one commit, like a
// bare INSERT. When the expectation does not hold it writes nothing. Appends to one
// stream are thus checked one after another, while appends to different streams do
// not wait for each other.
//
// Concurrent appends of one Store are group-committed (group.go): the appends that arrive
// while a transaction of appends runs go together in the next one, as one batch of
// statements (one round trip, one commit, one flush of the WAL); another
// transaction (up to Options.Writers) runs beside it only when many events wait or
// an append has waited long. Each append is still checked against its own stream:
// one whose expectation fails writes nothing and the others go on. When the
// transaction fails (a reused event ID, a lost connection), each append is written
// again on its own, so that only the one at fault fails.
//
// An append is recognised as a retry of an earlier one (whose answer the caller may
// have lost) when all its event IDs are already stored in the same stream, in the
// same order, at the revisions right after one the append's expectation allows, with
// the same type, data and metadata. Such an append succeeds with the original result
// and writes nothing. Any other append that reuses a stored event ID fails with an
// error wrapping eventstore.ErrConcurrency. The stored IDs are looked up only when
// an append wrote nothing or hit a stored ID, so appends that go through pay
// nothing for this.
//
// # Global order
//
// A sequence alone cannot order events for readers: sequence values are taken
// before commit, so a transaction that took 10 may commit after one that took 11,
// and a reader that already handed over 11 would never see 10. Instead an event's
// Position is (Commit: id of the transaction that wrote it, Prepare: its global_id
// from the sequence), and ReadAll only returns events of transactions older than the
// oldest transaction still running on the server (the xmin of the current
// snapshot). Every transaction that could still commit has a larger id than those,
// so nothing can later appear before an event once it has been read.
//
// A transaction that writes to a stream must also have a newer id than every
// transaction that wrote to it before, or the stream's events would be read out of
// revision order. The id is assigned at a transaction's first write, so appends take
// their streams' advisory locks (which, unlike row locks, take no id) before
// writing anything, in one order, and hold them until commit. Appends of versions
// of smsbatch before group commit take no such locks: do not run them against the
// same database at the same time as this one.
//
// The cost: one long transaction on the server, in any database of the cluster,
// holds back delivery of every event written after it began until it ends. Nothing
// is lost, and ReadStream is not affected (it shows committed events at once).
//
// # Waking readers
//
// After appends commit, the Store sends a NOTIFY on channel smsbatch_events
// (notify.go), at most one every 5 ms for all the appends committed meanwhile; one
// connection per Store listens and wakes every WaitForEvents. An event may become readable later than
// its notification (an older transaction was still running), so waiters also poll
// every Options.PollInterval. The listener reconnects when its connection drops,
// and waiters wake when it does, so that a restart of the server loses no wake-up.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/internal/pgerr"
	"github.com/smsbatch/smsbatch/migrations"
)

// Channel is the NOTIFY channel appends signal on.
const Channel = "smsbatch_events"

// DefaultPollInterval is how often waiters look for events by default when no
// notification came.
const DefaultPollInterval = 250 * time.Millisecond

// DefaultWriters is how many transactions of appends a Store runs at once by
// default: a second one starts only when many events wait (see parallelEvents), so
// that big appends are inserted over two connections while small ones join one
// group a commit.
const DefaultWriters = 2

// Options configures Open and New. The zero value is ready to use.
type Options struct {
	// Logger receives the listener's connection troubles. Optional; slog.Default()
	// when nil.
	Logger *slog.Logger
	// PollInterval bounds how long a waiter goes without looking for events, for
	// events that become readable later than their notification. Optional;
	// DefaultPollInterval when <= 0.
	PollInterval time.Duration
	// Writers is how many transactions of appends the Store runs at most at once,
	// each on a connection of the pool. Appends that arrive while one is running
	// are written together in the next one. Optional; DefaultWriters when <= 0.
	Writers int
}

func (o *Options) setDefaults() {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.Writers <= 0 {
		o.Writers = DefaultWriters
	}
}

// Store is an eventstore.Store in PostgreSQL, safe for concurrent use.
type Store struct {
	pool     *pgxpool.Pool
	ownsPool bool
	log      *slog.Logger
	poll     time.Duration

	// appendDelay, when set (by tests), runs inside the append's transaction just
	// before commit; an error rolls the append back.
	appendDelay func(ctx context.Context) error

	stopListener context.CancelFunc
	listenerDone chan struct{}
	// notifyReq asks the notifier goroutine for a NOTIFY (see notify).
	notifyReq    chan struct{}
	notifierDone chan struct{}
	closeOnce    sync.Once

	// queue holds the appends waiting for a leader (see lead).
	queueMu sync.Mutex
	queue   []*appendRequest
	// queuedEvents counts the events of the queued appends.
	queuedEvents int
	leaders      int  // goroutines leading, at most maxLeaders
	maxLeaders   int  // Options.Writers
	stopped      bool // set by Close: no more appends are queued
	concurrent   bool // the last group taken had more than one append
	leading      sync.WaitGroup
	// arrived is signalled (without blocking) by every append queued, for a
	// leader waiting for company (see linger); Close closes it once stopped is
	// set, when no append is queued any more, so that none lingers on.
	arrived chan struct{}
	// groupHook, when set (by tests), is told the size of every group of appends
	// before it is written.
	groupHook func(size int)

	mu     sync.Mutex
	closed bool
	// wake is closed and replaced on every notification and on every (re)connect of
	// the listener, and closed on Close.
	wake chan struct{}
}

var _ eventstore.Store = (*Store)(nil)

// Open connects to the database at url, applies the migrations and returns a
// Store that owns the connection pool. Errors never contain the URL's password;
// failing to reach the server wraps eventstore.ErrUnavailable.
func Open(ctx context.Context, url string, opts Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx redacts the password from parse errors.
		return nil, fmt.Errorf("postgres: open: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: open: %w", pgerr.Classify(err))
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: open: %w", pgerr.Classify(err))
	}
	if _, err := migrations.Apply(ctx, pool); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: open: %w", pgerr.Classify(err))
	}
	if err := checkTransactionIDs(ctx, pool); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: open: %w", err)
	}
	s, err := New(pool, opts)
	if err != nil {
		pool.Close()
		return nil, err
	}
	s.ownsPool = true
	return s, nil
}

// ErrForeignTransactionIDs is returned by Open when the events were written by
// transactions this server has not reached yet: a logical copy of the database
// (pg_dump and restore, logical replication) into another cluster keeps each
// event's transaction ID, which is its position, while the new cluster counts
// its own from lower down. Its new events would sort before the old ones, and
// every follower whose checkpoint is an old position would skip them for good
// (the read models, the forwarder, the opt-out lists: a STOP never honoured).
// A physical copy or pg_upgrade keeps the counter and is fine.
var ErrForeignTransactionIDs = errors.New("the events were written by transaction IDs this PostgreSQL server has not reached: " +
	"was the database copied logically (pg_dump, logical replication) into another cluster? Copy it physically " +
	"(pg_basebackup, pg_upgrade), or advance this cluster's transaction counter past the newest event's before starting")

// checkTransactionIDs fails with ErrForeignTransactionIDs when the newest
// event's transaction ID is at or past the server's next one, which in the
// cluster that wrote it never happens.
func checkTransactionIDs(ctx context.Context, pool *pgxpool.Pool) error {
	var foreign bool
	err := pool.QueryRow(ctx, `SELECT COALESCE((SELECT xid FROM events ORDER BY xid DESC, global_id DESC LIMIT 1)
		>= pg_snapshot_xmax(pg_current_snapshot()), false)`).Scan(&foreign)
	if err != nil {
		return fmt.Errorf("check the events' transaction IDs: %w", pgerr.Classify(err))
	}
	if foreign {
		return ErrForeignTransactionIDs
	}
	return nil
}

// New returns a Store on a pool made elsewhere, whose database already has the
// migrations applied. Close does not close the pool: its maker does.
func New(pool *pgxpool.Pool, opts Options) (*Store, error) {
	if pool == nil {
		return nil, errors.New("postgres: new: pool is required")
	}
	opts.setDefaults()
	// The listener lives as long as the Store, not as any caller's context; Close
	// cancels it.
	ctx, cancel := context.WithCancel(context.Background())
	s := &Store{
		pool:         pool,
		log:          opts.Logger,
		poll:         opts.PollInterval,
		stopListener: cancel,
		listenerDone: make(chan struct{}),
		notifyReq:    make(chan struct{}, 1),
		notifierDone: make(chan struct{}),
		maxLeaders:   opts.Writers,
		arrived:      make(chan struct{}, 1),
		wake:         make(chan struct{}),
	}
	go s.listen(ctx)
	go s.notifier(ctx)
	return s, nil
}

// Append implements eventstore.Store.
func (s *Store) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	res, err := s.append(ctx, stream, expected, events)
	if err != nil {
		return eventstore.AppendResult{}, fmt.Errorf("postgres: append to %s at %s: %w", stream, expected, err)
	}
	return res, nil
}

// columns are the events columns scanEvent reads, in its order.
// xid is read as text (pgx has no xid8 type) under another name, for ORDER BY xid
// must sort by the xid8 column, not by its text.
const columns = `id, stream, revision, type, data, metadata, xid::text AS xid_text, global_id, created_at`

// scanEvent scans the first eight of columns (created_at is optional, for the
// look-up of IDs, which needs no time).
func scanEvent(row pgx.CollectableRow) (eventstore.Event, error) {
	var (
		e        eventstore.Event
		revision int64
		xid      string
		globalID int64
		at       time.Time
	)
	dest := []any{&e.ID, &e.Stream, &revision, &e.Type, &e.Data, &e.Metadata, &xid, &globalID}
	if len(row.FieldDescriptions()) > len(dest) {
		dest = append(dest, &at)
	}
	if err := row.Scan(dest...); err != nil {
		return eventstore.Event{}, err
	}
	commit, err := strconv.ParseUint(xid, 10, 64)
	if err != nil {
		return eventstore.Event{}, fmt.Errorf("transaction id %q: %w", xid, err)
	}
	e.Revision = uint64(revision)
	e.Position = eventstore.Position{Commit: commit, Prepare: uint64(globalID)}
	e.Time = at.UTC()
	return e, nil
}

// ReadStream implements eventstore.Store.
func (s *Store) ReadStream(ctx context.Context, stream string, from uint64, max int) ([]eventstore.Event, error) {
	events, err := s.read(ctx, `SELECT `+columns+` FROM events
		WHERE stream = $1 AND revision >= $2
		ORDER BY revision LIMIT $3`,
		max, stream, int64(min(from, math.MaxInt64)), max)
	if err != nil {
		return nil, fmt.Errorf("postgres: read stream %s from %d: %w", stream, from, err)
	}
	return events, nil
}

// ReadStreamBackward implements eventstore.Store. The primary key (stream,
// revision) serves it as a backward index scan.
func (s *Store) ReadStreamBackward(ctx context.Context, stream string, from uint64, max int) ([]eventstore.Event, error) {
	events, err := s.read(ctx, `SELECT `+columns+` FROM events
		WHERE stream = $1 AND revision <= $2
		ORDER BY revision DESC LIMIT $3`,
		max, stream, int64(min(from, math.MaxInt64)), max)
	if err != nil {
		return nil, fmt.Errorf("postgres: read stream %s backward from %d: %w", stream, from, err)
	}
	return events, nil
}

// ReadAll implements eventstore.Store. See the package doc for why it stops at the
// oldest running transaction.
func (s *Store) ReadAll(ctx context.Context, after eventstore.Position, max int) ([]eventstore.Event, error) {
	events, err := s.read(ctx, `SELECT `+columns+` FROM events
		WHERE (xid, global_id) > ($1::text::xid8, $2)
		  AND xid < pg_snapshot_xmin(pg_current_snapshot())
		ORDER BY events.xid, events.global_id LIMIT $3`,
		max, strconv.FormatUint(after.Commit, 10), int64(min(after.Prepare, math.MaxInt64)), max)
	if err != nil {
		return nil, fmt.Errorf("postgres: read all after %s: %w", after, err)
	}
	return events, nil
}

func (s *Store) read(ctx context.Context, sql string, max int, args ...any) ([]eventstore.Event, error) {
	if max <= 0 {
		return nil, fmt.Errorf("max must be positive, got %d", max)
	}
	if err := s.usable(ctx); err != nil {
		return nil, err
	}
	rows, _ := s.pool.Query(ctx, sql, args...)
	events, err := pgx.CollectRows(rows, scanEvent)
	if err != nil {
		return nil, s.opErr(ctx, "query", err)
	}
	return events, nil
}

// WaitForEvents implements eventstore.Store. It returns once an event after the
// position is readable; while the server cannot be reached it keeps waiting, as the
// listener reconnects and wakes it when the server is back.
func (s *Store) WaitForEvents(ctx context.Context, after eventstore.Position) error {
	timer := time.NewTimer(s.poll)
	defer timer.Stop()
	for {
		s.mu.Lock()
		closed, wake := s.closed, s.wake
		s.mu.Unlock()
		if closed {
			return fmt.Errorf("postgres: wait for events after %s: %w", after, eventstore.ErrClosed)
		}
		found, err := s.readable(ctx, after)
		switch {
		case err == nil && found:
			return nil
		case err != nil && !errors.Is(err, eventstore.ErrUnavailable):
			if ctxErr := ctx.Err(); ctxErr != nil {
				return ctxErr
			}
			return fmt.Errorf("postgres: wait for events after %s: %w", after, err)
		case err != nil:
			s.log.Debug("postgres: waiting for events: server unavailable", "error", err)
		}
		timer.Reset(s.poll)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		case <-timer.C:
		}
	}
}

// readableQuery finds the first event ReadAll after ($1, $2) would return.
const readableQuery = `SELECT 1 FROM events
	WHERE (xid, global_id) > ($1::text::xid8, $2)
	  AND xid < pg_snapshot_xmin(pg_current_snapshot())
	ORDER BY xid, global_id LIMIT 1`

// readable reports whether ReadAll after the position would return an event.
func (s *Store) readable(ctx context.Context, after eventstore.Position) (bool, error) {
	if err := s.usable(ctx); err != nil {
		return false, err
	}
	// In the global order, as ReadAll reads: the planner walks the index from
	// the position, where a bare EXISTS was planned as a scan of the table
	// (all of it, when the new events are at its end).
	var one int
	err := s.pool.QueryRow(ctx, readableQuery, strconv.FormatUint(after.Commit, 10), int64(min(after.Prepare, math.MaxInt64))).Scan(&one)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, nil
	case err != nil:
		return false, s.opErr(ctx, "look for events", err)
	}
	return true, nil
}

// listen keeps one connection listening on Channel until ctx is done, waking the
// waiters on every notification and every reconnect.
func (s *Store) listen(ctx context.Context) {
	defer close(s.listenerDone)
	const maxBackoff = 2 * time.Second
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		err := s.listenOnce(ctx, func() { backoff = 50 * time.Millisecond })
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("postgres: event listener lost its connection; reconnecting", "error", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// listenOnce connects, listens and forwards notifications until the connection
// fails or ctx is done. connected is called once it listens.
func (s *Store) listenOnce(ctx context.Context, connected func()) error {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		return pgerr.Classify(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+Channel); err != nil {
		return pgerr.Classify(err)
	}
	connected()
	// Notifications sent while nobody listened are gone: let waiters look.
	s.broadcast()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return pgerr.Classify(err)
		}
		s.broadcast()
	}
}

// broadcast wakes every WaitForEvents.
func (s *Store) broadcast() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	close(s.wake)
	s.wake = make(chan struct{})
}

// Close implements eventstore.Store: it wakes WaitForEvents with ErrClosed, makes
// every later call fail with ErrClosed, writes the appends already queued, stops
// the listener and, when Open made the pool, closes it (waiting for running calls
// to finish). Closing twice is harmless.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		close(s.wake)
		s.mu.Unlock()
		// Appends queued before are written; later ones fail with ErrClosed.
		s.queueMu.Lock()
		s.stopped = true
		close(s.arrived)
		s.queueMu.Unlock()
		s.leading.Wait()
		s.stopListener()
		<-s.listenerDone
		<-s.notifierDone
		if s.ownsPool {
			s.pool.Close()
		}
	})
	return nil
}

// usable returns why a call cannot start: a done context or a closed store.
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

// opErr describes a failed database call: the context's error when ctx is done,
// ErrClosed when Close raced the call, the classified error otherwise.
func (s *Store) opErr(ctx context.Context, op string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		if errors.Is(err, ctxErr) {
			return fmt.Errorf("%s: %w", op, err)
		}
		return fmt.Errorf("%s: %w", op, errors.Join(ctxErr, err))
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return fmt.Errorf("%s: %w", op, errors.Join(eventstore.ErrClosed, err))
	}
	return fmt.Errorf("%s: %w", op, pgerr.Classify(err))
}

// Count returns the number of events stored; a projection rebuild uses it to
// report how far along it is.
func (s *Store) Count(ctx context.Context) (int64, error) {
	var n int64
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM events").Scan(&n); err != nil {
		return 0, fmt.Errorf("postgres: count events: %w", pgerr.Classify(err))
	}
	return n, nil
}
