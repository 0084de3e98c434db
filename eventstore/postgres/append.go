package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/smsbatch/smsbatch/eventstore"
)

// appendRequest is one Append on its way to the database.
type appendRequest struct {
	ctx      context.Context
	stream   string
	expected eventstore.ExpectedRevision
	events   []eventstore.EventData
	// waitUntil is how long its group may wait for others to join
	// (eventstore.WithCommitDelay); zero: no longer than the writer must.
	waitUntil time.Time

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
	if d := eventstore.CommitDelay(ctx); d > 0 {
		r.waitUntil = time.Now().Add(d)
	}
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
