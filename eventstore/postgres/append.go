package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/smsbatch/smsbatch/eventstore"
)

// maxGroup and maxGroupEvents bound what one transaction of appends holds, so that
// a flood of appends does not make one commit (and the wait of its first append)
// grow without limit. An append bigger than maxGroupEvents goes alone.
const (
	maxGroup       = 64
	maxGroupEvents = 2000
)

// appendRequest is one Append on its way to the database.
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

func (s *Store) append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	if err := eventstore.ValidateAppend(stream, events); err != nil {
		return eventstore.AppendResult{}, err
	}
	if err := s.usable(ctx); err != nil {
		return eventstore.AppendResult{}, err
	}
	r := &appendRequest{ctx: ctx, stream: stream, expected: expected, events: events, done: make(chan struct{})}
	lead, err := s.enqueue(r)
	if err != nil {
		return eventstore.AppendResult{}, err
	}
	var promote <-chan time.Time
	if lead {
		s.lead(r)
	} else {
		t := time.NewTimer(promoteAfter)
		defer t.Stop()
		promote = t.C
	}
	for waiting := true; waiting; {
		select {
		case <-r.done:
			waiting = false
		case <-ctx.Done():
			// The append may still be written: like an answer lost on the network,
			// an append retried with the same event IDs finds out (see conflict).
			return eventstore.AppendResult{}, ctx.Err()
		case <-promote:
			promote = nil
			if s.promote() {
				s.lead(r)
			}
		}
	}
	if errors.Is(r.err, errNotAppended) || errors.Is(r.err, eventstore.ErrConcurrency) {
		return s.conflict(ctx, stream, expected, events)
	}
	return r.result, r.err
}

// errNotAppended: the append's statement found the stream at another revision than
// expected and wrote nothing.
var errNotAppended = errors.New("stream not at the expected revision")

// lockSpaceSQL is the first key of the advisory locks on streams ("evst" as an
// int4); the second is hashtext(stream). Two streams with one hash share a lock,
// which only makes their appends wait for each other.
const lockSpaceSQL = "1702261620"

// lockStreamsSQL takes the advisory locks of the streams $1, in one order for every
// transaction, so that transactions taking several cannot deadlock. A group of
// appends takes them all before it writes anything, because the global order
// (see the package doc) needs a transaction that writes to a stream to have a
// newer id than every transaction that wrote to it before: its id is assigned at
// its first write, and the locks are held until commit, so by then every earlier
// writer of its streams has committed. Advisory locks, unlike row locks, take no
// transaction id.
const lockStreamsSQL = `SELECT pg_advisory_xact_lock(` + lockSpaceSQL + `, k)
	FROM (SELECT DISTINCT hashtext(s) AS k FROM unnest($1::text[]) AS s) AS streams
	ORDER BY k`

// The stream's row in streams is checked and moved on by one statement chosen by
// the expectation, after the stream's advisory lock (l, a no-op when the group
// took it already); it returns the stream's new last revision, or no row when the
// expectation does not hold (and then nothing is written). Any creates the row or
// adds to it; NoStream only creates it; Exact only moves a row at that revision.
// Appends of older versions of smsbatch lock the row only, so READ COMMITTED's
// re-check of the row's latest version after waiting for its lock keeps these
// checks exact against them too. $1 is the stream, $2 the number of events, $7 the
// expected revision.
const (
	streamLock = `l AS (SELECT pg_advisory_xact_lock(` + lockSpaceSQL + `, hashtext($1)))`
	streamAny  = `INSERT INTO streams (stream, revision) SELECT $1, $2::bigint - 1 FROM l
		ON CONFLICT (stream) DO UPDATE SET revision = streams.revision + $2::bigint
		RETURNING revision`
	streamNew = `INSERT INTO streams (stream, revision) SELECT $1, $2::bigint - 1 FROM l
		ON CONFLICT (stream) DO NOTHING
		RETURNING revision`
	streamExact = `UPDATE streams SET revision = revision + $2::bigint FROM l
		WHERE stream = $1 AND revision = $7::bigint
		RETURNING revision`
)

// appendManySQL writes an append in one statement: the stream's row (above), then
// the events at the revisions up to the new last one. ORDER BY ord makes the
// sequence hand out global_ids in revision order. A reused event ID fails the
// statement with a unique violation. $3 to $6 are the events' IDs, types, data and
// metadata as arrays. appendOneSQL is the same for one event, without the arrays,
// which cost the client and the server more than the row itself.
const (
	appendManySQL = `WITH ` + streamLock + `, s AS (%s),
	ins AS (
		INSERT INTO events (stream, revision, id, type, data, metadata)
		SELECT $1, s.revision - $2::bigint + t.ord, t.id, t.type, coalesce(t.data, ''::bytea), t.meta
		FROM s, unnest($3::text[], $4::text[], $5::bytea[], $6::bytea[]) WITH ORDINALITY AS t(id, type, data, meta, ord)
		ORDER BY t.ord
		RETURNING global_id)
	SELECT s.revision, (SELECT max(global_id) FROM ins), pg_current_xact_id()::text FROM s`
	appendOneSQL = `WITH ` + streamLock + `, s AS (%s)
	INSERT INTO events (stream, revision, id, type, data, metadata)
	SELECT $1, s.revision, $3::text, $4::text, coalesce($5::bytea, ''::bytea), $6::bytea FROM s
	RETURNING revision, global_id, pg_current_xact_id()::text`
)

// appendSQL holds the statements by [one event][expectation].
var appendSQL = func() (sql [2][3]string) {
	for i, events := range []string{appendManySQL, appendOneSQL} {
		for k, stream := range []string{streamAny, streamNew, streamExact} {
			sql[i][k] = fmt.Sprintf(events, stream)
		}
	}
	return sql
}()

// statement returns an append's SQL statement and its arguments.
func (r *appendRequest) statement() (string, []any) {
	one := 0
	args := []any{r.stream, int64(len(r.events))}
	if len(r.events) == 1 {
		one = 1
		e := r.events[0]
		args = append(args, e.ID, e.Type, e.Data, e.Metadata)
	} else {
		// FlatArray spares pgx finding a plan for the slices by reflection.
		ids := make(pgtype.FlatArray[string], len(r.events))
		types := make(pgtype.FlatArray[string], len(r.events))
		data := make(pgtype.FlatArray[[]byte], len(r.events))
		meta := make(pgtype.FlatArray[[]byte], len(r.events))
		for i, e := range r.events {
			ids[i], types[i], data[i], meta[i] = e.ID, e.Type, e.Data, e.Metadata
		}
		args = append(args, ids, types, data, meta)
	}
	switch rev, exact := r.expected.Revision(); {
	case exact:
		return appendSQL[one][2], append(args, int64(min(rev, math.MaxInt64)))
	case r.expected.IsNoStream():
		return appendSQL[one][1], args
	default:
		return appendSQL[one][0], args
	}
}

// enqueue queues r and reports whether its caller is to lead. Appends are written
// by leaders, at most Options.Writers at a time, each running one transaction after
// another. An append that finds no leader running leads itself: a lone appender
// writes its append at once, in its own goroutine. The appends that come while a
// leader is busy wait in the queue, and the next transaction a leader starts takes
// them all: one round trip and one commit for many appends, as many appenders need
// when each commit waits for the disk. Another leader starts beside the running
// ones only for parallelEvents waiting events, or for an append that waited
// promoteAfter.
func (s *Store) enqueue(r *appendRequest) (lead bool, err error) {
	s.queueMu.Lock()
	defer s.queueMu.Unlock()
	if s.stopped {
		return false, eventstore.ErrClosed
	}
	s.queue = append(s.queue, r)
	s.queuedEvents += len(r.events)
	if s.leaders == 0 || s.leaders < s.maxLeaders && s.queuedEvents >= parallelEvents {
		s.leaders++
		s.leading.Add(1)
		return true, nil
	}
	return false, nil
}

// promote makes its caller a leader if fewer than Options.Writers lead and appends
// wait, and reports whether it did.
func (s *Store) promote() bool {
	s.queueMu.Lock()
	defer s.queueMu.Unlock()
	if s.leaders >= s.maxLeaders || len(s.queue) == 0 {
		return false
	}
	s.leaders++
	s.leading.Add(1)
	return true
}

// promoteAfter is how long an append waits behind a running transaction of appends
// before it starts one of its own beside it (see promote): a transaction that takes
// longer than its commit should (waiting for a stream's lock, for a slow disk, or
// for a test holding it open) must not hold every other append of the Store.
const promoteAfter = 5 * time.Millisecond

// parallelEvents is how many events must wait before a second transaction of
// appends starts beside a running one. Below, the appends cost the server little
// next to the running transaction's commit, and waiting to join the next group
// makes fewer commits than starting one of their own: eight appenders of one
// event each went about a quarter faster so than with two transactions at a time
// (on 2 cores). Above, the work of inserting them is worth spreading over more
// than one connection.
const parallelEvents = 32

// lead writes groups of queued appends until the queue is empty. Once own (which
// may be nil) is answered while appends still wait, it hands the lead on to a new
// goroutine, so that its caller does not wait for others' appends.
func (s *Store) lead(own *appendRequest) {
	for {
		s.queueMu.Lock()
		concurrent := s.concurrent
		s.queueMu.Unlock()
		if concurrent {
			// Appenders answered by the last commit are runnable now and about
			// to append again: let them, so that they join the next group instead
			// of following it alone.
			runtime.Gosched()
		}
		s.commit(s.take())
		s.queueMu.Lock()
		if len(s.queue) == 0 {
			s.leaders--
			s.queueMu.Unlock()
			s.leading.Done()
			return
		}
		s.queueMu.Unlock()
		if own != nil && isDone(own) {
			go s.lead(nil)
			return
		}
	}
}

// take removes the next group from the queue: the appends in it, in the order
// they came, up to maxGroup of them and maxGroupEvents events (at least one
// append). The queue is not empty.
func (s *Store) take() []*appendRequest {
	s.queueMu.Lock()
	defer s.queueMu.Unlock()
	n, events := 0, 0
	for n < len(s.queue) && n < maxGroup && (n == 0 || events+len(s.queue[n].events) <= maxGroupEvents) {
		if n > 0 && s.appendDelay != nil {
			break
		}
		events += len(s.queue[n].events)
		n++
	}
	group := slices.Clone(s.queue[:n])
	s.queuedEvents -= events
	clear(s.queue[:n])
	s.queue = s.queue[n:]
	s.concurrent = n > 1
	return group
}

func isDone(r *appendRequest) bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// answer is the outcome of one append of a group.
type answer struct {
	result eventstore.AppendResult
	err    error
}

// commit writes a group of appends in one transaction and answers each of them. An
// append whose stream is not at the expected revision writes nothing and does not
// stop the others. When the transaction fails (a reused event ID, a lost
// connection), each append is written again in a transaction of its own, so that
// only the one at fault fails; an append of the failed transaction that did commit
// after all is then recognised as retried.
func (s *Store) commit(group []*appendRequest) {
	live := group[:0]
	for _, r := range group {
		if err := r.ctx.Err(); err != nil {
			r.finish(eventstore.AppendResult{}, err)
			continue
		}
		live = append(live, r)
	}
	if len(live) == 0 {
		return
	}
	if s.groupHook != nil {
		s.groupHook(len(live))
	}
	ctx, cancel := groupContext(live)
	defer cancel()
	answers, err := s.run(ctx, live)
	if err != nil {
		if len(live) == 1 {
			live[0].finish(eventstore.AppendResult{}, err)
			return
		}
		for _, r := range live {
			s.commit([]*appendRequest{r})
		}
		return
	}
	wrote := false
	for i, r := range live {
		r.finish(answers[i].result, answers[i].err)
		wrote = wrote || answers[i].err == nil
	}
	if wrote {
		s.notify()
	}
}

// groupContext returns the context a group's transaction runs in: the append's
// own for one append; for more, one that keeps the first append's values and ends
// once every append's context has ended, as the transaction then has nobody left
// to answer.
func groupContext(group []*appendRequest) (context.Context, context.CancelFunc) {
	if len(group) == 1 {
		return group[0].ctx, func() {}
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(group[0].ctx))
	var waiting atomic.Int64
	waiting.Store(int64(len(group)))
	stops := make([]func() bool, len(group))
	for i, r := range group {
		stops[i] = context.AfterFunc(r.ctx, func() {
			if waiting.Add(-1) == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}

// run writes the group's appends in one transaction: their statements go in one
// batch, which PostgreSQL runs as one implicit transaction, committed at its end.
// With the test hook set, groups have one append, run in an explicit transaction
// so that the hook can hold it open.
func (s *Store) run(ctx context.Context, group []*appendRequest) ([]answer, error) {
	if len(group) == 1 && s.appendDelay == nil {
		// A batch of one costs pgx more than a query.
		sql, args := group[0].statement()
		a, err := s.scanAppend(ctx, s.pool.QueryRow(ctx, sql, args...))
		if err != nil {
			return nil, err
		}
		return []answer{a}, nil
	}
	b := &pgx.Batch{}
	if len(group) > 1 {
		streams := make([]string, len(group))
		for i, r := range group {
			streams[i] = r.stream
		}
		b.Queue(lockStreamsSQL, streams)
	}
	for _, r := range group {
		sql, args := r.statement()
		b.Queue(sql, args...)
	}
	if s.appendDelay == nil {
		br := s.pool.SendBatch(ctx, b)
		answers, err := s.scanGroup(ctx, br, group)
		if closeErr := br.Close(); err == nil && closeErr != nil {
			err = s.opErr(ctx, "commit", closeErr)
		}
		return answers, err
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, s.opErr(ctx, "begin", err)
	}
	// Rollback after Commit is a no-op; on every other path it drops the append.
	defer tx.Rollback(context.WithoutCancel(ctx))
	br := tx.SendBatch(ctx, b)
	answers, err := s.scanGroup(ctx, br, group)
	if closeErr := br.Close(); err == nil && closeErr != nil {
		err = s.opErr(ctx, "insert events", closeErr)
	}
	if err != nil {
		return nil, err
	}
	if answers[0].err == nil {
		if err := s.appendDelay(group[0].ctx); err != nil {
			return nil, err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, s.opErr(ctx, "commit", err)
	}
	return answers, nil
}

// scanGroup reads the answers of a group's statements (after its locks, for more
// than one append). An error other than errNotAppended fails the group.
func (s *Store) scanGroup(ctx context.Context, br pgx.BatchResults, group []*appendRequest) ([]answer, error) {
	if len(group) > 1 {
		if _, err := br.Exec(); err != nil {
			return nil, s.opErr(ctx, "lock streams", err)
		}
	}
	answers := make([]answer, len(group))
	for i := range answers {
		a, err := s.scanAppend(ctx, br.QueryRow())
		if err != nil {
			return nil, err
		}
		answers[i] = a
	}
	return answers, nil
}

// scanAppend reads the answer of an append's statement: a result, or errNotAppended
// for an append whose expectation did not hold (answer.err). Any other error is
// returned as the error.
func (s *Store) scanAppend(ctx context.Context, row pgx.Row) (answer, error) {
	var (
		last, globalID int64
		xid            string
	)
	err := row.Scan(&last, &globalID, &xid)
	if errors.Is(err, pgx.ErrNoRows) {
		return answer{err: errNotAppended}, nil
	}
	if err != nil {
		return answer{}, s.opErr(ctx, "insert events", err)
	}
	commit, err := strconv.ParseUint(xid, 10, 64)
	if err != nil {
		return answer{}, fmt.Errorf("transaction id %q: %w", xid, err)
	}
	return answer{result: eventstore.AppendResult{
		NextExpected: uint64(last),
		Position:     eventstore.Position{Commit: commit, Prepare: uint64(globalID)},
	}}, nil
}

// conflict answers an append that wrote nothing because its expectation did not
// hold or one of its event IDs is stored: it succeeds with the original result
// when the append is a retry of an earlier one (see the package doc), and fails
// with ErrConcurrency otherwise. It looks only now, so that appends that go through
// pay nothing for recognising retries.
func (s *Store) conflict(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	ids := make([]string, len(events))
	for i, e := range events {
		ids[i] = e.ID
	}
	b := &pgx.Batch{}
	b.Queue(`SELECT coalesce((SELECT revision FROM streams WHERE stream = $1), -1)`, stream)
	b.Queue(`SELECT id, stream, revision, type, data, metadata, xid::text AS xid_text, global_id
		FROM events WHERE id = ANY($1)`, ids)
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	var last int64
	if err := br.QueryRow().Scan(&last); err != nil {
		return eventstore.AppendResult{}, s.opErr(ctx, "read stream revision", err)
	}
	rows, _ := br.Query()
	stored, err := pgx.CollectRows(rows, scanEvent)
	if err != nil {
		return eventstore.AppendResult{}, s.opErr(ctx, "look up event IDs", err)
	}
	if res, ok := retried(stream, expected, events, stored); ok {
		return res, nil
	}
	n := uint64(last + 1) // events in the stream
	if !expected.Check(n) || len(stored) == 0 {
		return eventstore.AppendResult{}, fmt.Errorf("expected %s, stream holds %d events: %w", expected, n, eventstore.ErrConcurrency)
	}
	e := stored[0]
	return eventstore.AppendResult{}, fmt.Errorf("event ID %s already stored in %s at revision %d: %w", e.ID, e.Stream, e.Revision, eventstore.ErrConcurrency)
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

// notifyInterval is the shortest time between two NOTIFYs of a Store: waiters in
// other instances learn of an append up to this much later, and a Store appending
// thousands of times a second sends a NOTIFY for every several appends instead of
// one each (see notifier).
const notifyInterval = 5 * time.Millisecond

// notify makes the notifier send a NOTIFY soon, once for all the appends that
// commit until it does.
func (s *Store) notify() {
	select {
	case s.notifyReq <- struct{}{}:
	default: // one is pending already
	}
}

// notifier sends the NOTIFYs that appends ask for until ctx is done, at most one
// every notifyInterval. A NOTIFY inside the append's transaction would be simpler,
// but PostgreSQL holds one cluster-wide lock from a notifying transaction's commit
// until its WAL is flushed, so concurrent appends would reach the disk one at a
// time instead of sharing flushes (it cost 8 writers three quarters of their rate).
// A transaction that only notifies waits for no flush, but it still wakes every
// listening backend: one per append cost a single appender a quarter of its rate.
func (s *Store) notifier(ctx context.Context) {
	defer close(s.notifierDone)
	timer := time.NewTimer(notifyInterval)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.notifyReq:
		}
		if _, err := s.pool.Exec(ctx, `SELECT pg_notify($1, '')`, Channel); err != nil && ctx.Err() == nil {
			s.log.Warn("postgres: cannot notify of appended events; waiters find them by polling", "error", s.opErr(ctx, "notify", err))
		}
		// The appends that commit meanwhile share the next NOTIFY.
		timer.Reset(notifyInterval)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
	}
}
