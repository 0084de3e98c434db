// Package postgres owns the PostgreSQL event store: an eventstore.Store kept in the
// events and streams tables that migrations/0001_eventstore.sql creates, for running
// several smsbatch instances on one database.
//
// # Appends
//
// An append is one transaction. It locks the stream's row in streams (creating it
// if needed), so appends to one stream are checked against their expected revision
// one after another while appends to different streams do not wait for each other.
// An append is recognised as a retry of an earlier one (whose answer the caller may
// have lost) when all its event IDs are already stored in the same stream, in the
// same order, at the revisions right after one the append's expectation allows, with
// the same type, data and metadata. Such an append succeeds with the original result
// and writes nothing. Any other append that reuses a stored event ID fails with an
// error wrapping eventstore.ErrConcurrency.
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
// The cost: one long transaction on the server, in any database of the cluster,
// holds back delivery of every event written after it began until it ends. Nothing
// is lost, and ReadStream is not affected (it shows committed events at once).
//
// # Waking readers
//
// Appends send a NOTIFY on channel smsbatch_events when they commit; one connection
// per Store listens and wakes every WaitForEvents. An event may become readable
// later than its notification (an older transaction was still running), so waiters
// also poll every Options.PollInterval. The listener reconnects when its connection
// drops, and waiters wake when it does, so that a restart of the server loses no
// wake-up.
package postgres

import (
	"bytes"
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

// Options configures Open and New. The zero value is ready to use.
type Options struct {
	// Logger receives the listener's connection troubles. Optional; slog.Default()
	// when nil.
	Logger *slog.Logger
	// PollInterval bounds how long a waiter goes without looking for events, for
	// events that become readable later than their notification. Optional;
	// DefaultPollInterval when <= 0.
	PollInterval time.Duration
}

func (o *Options) setDefaults() {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
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
	closeOnce    sync.Once

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
	s, err := New(pool, opts)
	if err != nil {
		pool.Close()
		return nil, err
	}
	s.ownsPool = true
	return s, nil
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
		wake:         make(chan struct{}),
	}
	go s.listen(ctx)
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

func (s *Store) append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	if err := eventstore.ValidateAppend(stream, events); err != nil {
		return eventstore.AppendResult{}, err
	}
	if err := s.usable(ctx); err != nil {
		return eventstore.AppendResult{}, err
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return eventstore.AppendResult{}, s.opErr(ctx, "begin", err)
	}
	// Rollback after Commit is a no-op; on every other path it drops the append.
	defer tx.Rollback(context.WithoutCancel(ctx))

	res, wrote, err := s.write(ctx, tx, stream, expected, events)
	if err != nil {
		return eventstore.AppendResult{}, err
	}
	if !wrote {
		return res, nil
	}
	if s.appendDelay != nil {
		if err := s.appendDelay(ctx); err != nil {
			return eventstore.AppendResult{}, err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return eventstore.AppendResult{}, s.opErr(ctx, "commit", err)
	}
	return res, nil
}

// write checks the append against the stream in tx and writes it, reporting whether
// it wrote (a recognised retry does not).
func (s *Store) write(ctx context.Context, tx pgx.Tx, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, bool, error) {
	ids := make([]string, len(events))
	for i, e := range events {
		ids[i] = e.ID
	}
	// Lock the stream's row (inserting it for a new stream) and look for the IDs in
	// one round trip. DO UPDATE, unlike DO NOTHING, locks an existing row and returns
	// its latest committed revision even when another append just moved it.
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO streams (stream, revision) VALUES ($1, -1)
		ON CONFLICT (stream) DO UPDATE SET stream = EXCLUDED.stream
		RETURNING revision`, stream)
	b.Queue(`SELECT id, stream, revision, type, data, metadata, xid::text AS xid_text, global_id
		FROM events WHERE id = ANY($1)`, ids)
	br := tx.SendBatch(ctx, b)
	var last int64
	if err := br.QueryRow().Scan(&last); err != nil {
		_ = br.Close()
		return eventstore.AppendResult{}, false, s.opErr(ctx, "lock stream", err)
	}
	rows, _ := br.Query()
	stored, err := pgx.CollectRows(rows, scanEvent)
	if err != nil {
		_ = br.Close()
		return eventstore.AppendResult{}, false, s.opErr(ctx, "look up event IDs", err)
	}
	if err := br.Close(); err != nil {
		return eventstore.AppendResult{}, false, s.opErr(ctx, "look up event IDs", err)
	}
	n := uint64(last + 1) // events in the stream

	if len(stored) > 0 {
		if res, ok := retried(stream, expected, events, stored); ok {
			return res, false, nil
		}
		if !expected.Check(n) {
			return eventstore.AppendResult{}, false, fmt.Errorf("expected %s, stream holds %d events: %w", expected, n, eventstore.ErrConcurrency)
		}
		e := stored[0]
		return eventstore.AppendResult{}, false, fmt.Errorf("event ID %s already stored in %s at revision %d: %w", e.ID, e.Stream, e.Revision, eventstore.ErrConcurrency)
	}
	if !expected.Check(n) {
		return eventstore.AppendResult{}, false, fmt.Errorf("expected %s, stream holds %d events: %w", expected, n, eventstore.ErrConcurrency)
	}

	types := make([]string, len(events))
	data := make([][]byte, len(events))
	meta := make([][]byte, len(events))
	for i, e := range events {
		types[i], data[i], meta[i] = e.Type, e.Data, e.Metadata
	}
	next := int64(n) + int64(len(events)) - 1
	b = &pgx.Batch{}
	// ORDER BY ord makes the sequence hand out global_ids in revision order.
	b.Queue(`WITH ins AS (
			INSERT INTO events (stream, revision, id, type, data, metadata)
			SELECT $1, $2 + t.ord - 1, t.id, t.type, coalesce(t.data, ''::bytea), t.meta
			FROM unnest($3::text[], $4::text[], $5::bytea[], $6::bytea[]) WITH ORDINALITY AS t(id, type, data, meta, ord)
			ORDER BY t.ord
			RETURNING global_id)
		SELECT max(global_id), pg_current_xact_id()::text FROM ins`,
		stream, int64(n), ids, types, data, meta)
	b.Queue(`UPDATE streams SET revision = $2 WHERE stream = $1`, stream, next)
	b.Queue(`SELECT pg_notify($1, '')`, Channel)
	br = tx.SendBatch(ctx, b)
	var globalID int64
	var xid string
	if err := br.QueryRow().Scan(&globalID, &xid); err != nil {
		_ = br.Close()
		return eventstore.AppendResult{}, false, s.opErr(ctx, "insert events", err)
	}
	if err := br.Close(); err != nil {
		return eventstore.AppendResult{}, false, s.opErr(ctx, "insert events", err)
	}
	commit, err := strconv.ParseUint(xid, 10, 64)
	if err != nil {
		return eventstore.AppendResult{}, false, fmt.Errorf("transaction id %q: %w", xid, err)
	}
	return eventstore.AppendResult{
		NextExpected: uint64(next),
		Position:     eventstore.Position{Commit: commit, Prepare: uint64(globalID)},
	}, true, nil
}

// retried reports whether events were already written to stream by an earlier
// append that expected allows, and if so that append's result. stored holds the
// stored events that have one of the events' IDs. See the package doc.
func retried(stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData, stored []eventstore.Event) (eventstore.AppendResult, bool) {
	if len(stored) != len(events) {
		return eventstore.AppendResult{}, false
	}
	byID := make(map[string]eventstore.Event, len(stored))
	for _, e := range stored {
		byID[e.ID] = e
	}
	first := byID[events[0].ID]
	if first.Stream != stream || !expected.Check(first.Revision) {
		return eventstore.AppendResult{}, false
	}
	var last eventstore.Event
	for k, e := range events {
		got, ok := byID[e.ID]
		if !ok || got.Stream != stream || got.Revision != first.Revision+uint64(k) ||
			got.Type != e.Type || !bytes.Equal(got.Data, e.Data) || !bytes.Equal(got.Metadata, e.Metadata) {
			return eventstore.AppendResult{}, false
		}
		last = got
	}
	return eventstore.AppendResult{NextExpected: last.Revision, Position: last.Position}, true
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

// readable reports whether ReadAll after the position would return an event.
func (s *Store) readable(ctx context.Context, after eventstore.Position) (bool, error) {
	if err := s.usable(ctx); err != nil {
		return false, err
	}
	var found bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM events
		WHERE (xid, global_id) > ($1::text::xid8, $2)
		  AND xid < pg_snapshot_xmin(pg_current_snapshot()))`,
		strconv.FormatUint(after.Commit, 10), int64(min(after.Prepare, math.MaxInt64))).Scan(&found)
	if err != nil {
		return false, s.opErr(ctx, "look for events", err)
	}
	return found, nil
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
// every later call fail with ErrClosed, stops the listener and, when Open made the
// pool, closes it (waiting for running calls to finish). Closing twice is harmless.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		close(s.wake)
		s.mu.Unlock()
		s.stopListener()
		<-s.listenerDone
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
