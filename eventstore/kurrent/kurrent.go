// Package kurrent owns the KurrentDB (formerly EventStoreDB) event store: an
// eventstore.Store over the server's gRPC API, for deployments that run a KurrentDB
// server or cluster. Streams, revisions and the global order are the server's own;
// eventstore.Position maps 1:1 to the server's $all position (commit, prepare).
//
// # Appends
//
// An append is sent as one request at the caller's expected revision, so it is
// atomic and fenced by the server. KurrentDB refuses requests above a size limit (1
// MiB on servers before 25.1), so an Append whose events are bigger than
// Options.MaxAppendBytes is split into consecutive requests, each at the revision
// the previous one ended at. Such an append is NOT atomic: a failure part-way
// leaves the first parts written, and a reader may see a prefix in between. smsbatch
// accepts this because the appends that grow big are recipient pages, one event
// each, so a prefix is a whole number of pages; a single event bigger than the
// budget is refused with ErrEventTooLarge.
//
// Event IDs are sent as the server's event IDs, so they must be UUIDs in canonical
// form; the server then recognises a retried append (same IDs at the same
// expectation) and writes nothing twice.
//
// # Reading the global order
//
// ReadAll keeps only the streams named by Options.StreamPrefixes. The client
// library (v4.2) cannot filter reads of $all on the server, so ReadAll filters on
// this side, reading past other streams' and system events; it remembers where a
// scan found nothing, so a caught-up subscriber does not read the same foreign
// events again and again. WaitForEvents is served by one server-side filtered
// subscription to $all per store, which wakes waiters when an event of our streams
// appears and resubscribes from where it stopped after a drop.
//
// Stream metadata (max age, truncation, ACLs) is not used. Snapshot streams, of
// which only the last event is ever read (backward), grow by about a thousandth
// of their batch's stream: too little to be worth truncating.
package kurrent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"

	"github.com/smsbatch/smsbatch/eventstore"
)

// DefaultMaxAppendBytes is the default byte budget of one append request: the 1 MiB
// limit of KurrentDB servers before 25.1, less headroom for the request's framing.
const DefaultMaxAppendBytes = 1<<20 - 64<<10

// DefaultStreamPrefixes are the streams smsbatch writes, the ones ReadAll returns.
var DefaultStreamPrefixes = []string{"batch-", "batchrecipients-"}

// ErrEventTooLarge is returned by Append when one event alone is bigger than the
// append budget, so that no request can carry it.
var ErrEventTooLarge = errors.New("event larger than the append budget")

// eventOverhead estimates what one event adds to a request besides its type, data
// and metadata: its ID, content type and the protobuf framing.
const eventOverhead = 96

// scanPage is the fewest events ReadAll asks the server for at a time, so that
// skipping other streams' events does not take one round trip each.
const scanPage = 256

// Options configures Open. The zero value is ready to use.
type Options struct {
	// MaxAppendBytes bounds the estimated size of one append request; bigger
	// appends are split (see the package doc). Optional; DefaultMaxAppendBytes
	// when <= 0. Raise it only for servers with a higher limit (25.1 and later).
	MaxAppendBytes int
	// StreamPrefixes names the streams ReadAll and WaitForEvents follow, by
	// prefix. Optional; DefaultStreamPrefixes when empty.
	StreamPrefixes []string
	// Logger receives the client library's messages and the subscription's
	// troubles. Optional; slog.Default() when nil.
	Logger *slog.Logger

	// minBackoff and maxBackoff bound the wait before resubscribing after a drop;
	// tests shorten them.
	minBackoff, maxBackoff time.Duration
}

func (o *Options) setDefaults() {
	if o.MaxAppendBytes <= 0 {
		o.MaxAppendBytes = DefaultMaxAppendBytes
	}
	if len(o.StreamPrefixes) == 0 {
		o.StreamPrefixes = DefaultStreamPrefixes
	}
	o.StreamPrefixes = append([]string(nil), o.StreamPrefixes...)
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.minBackoff <= 0 {
		o.minBackoff = 100 * time.Millisecond
	}
	if o.maxBackoff <= 0 {
		o.maxBackoff = 5 * time.Second
	}
}

// Validate reports what is wrong with the options, all of it.
func (o Options) Validate() error {
	var errs []error
	for _, p := range o.StreamPrefixes {
		if p == "" {
			errs = append(errs, errors.New("stream prefixes: an empty prefix would follow every stream, system ones included"))
		}
	}
	return errors.Join(errs...)
}

// Store is an eventstore.Store on a KurrentDB server, safe for concurrent use.
type Store struct {
	client   client
	maxBytes int
	prefixes []string
	filter   *esdb.SubscriptionFilter
	log      *slog.Logger
	backoff  [2]time.Duration

	// life ends the watcher's subscription on Close. The store outlives any one
	// caller's context, so it is rooted here, as in the postgres adapter.
	life      context.Context
	stopLife  context.CancelFunc
	watchDone chan struct{} // closed when the watcher goroutine returns

	mu       sync.Mutex
	closed   bool
	watching bool
	from     eventstore.Position // where the watcher subscribed from
	seen     bool                // the watcher has seen an event of our streams
	head     eventstore.Position // the last one it saw
	// wake is closed and replaced whenever the watcher sees an event of our
	// streams, and closed on Close.
	wake chan struct{}
	// scanned maps a ReadAll position to the furthest event that a read after it
	// went over without finding one of our streams' events.
	scanned map[eventstore.Position]eventstore.Position
}

var _ eventstore.Store = (*Store)(nil)

// maxScanHints bounds the scanned map; it is cleared when full.
const maxScanHints = 64

// Open connects to the KurrentDB server or cluster named by connString, an
// esdb:// or esdb+discover:// connection string such as
// "esdb://127.0.0.1:2113?tls=false". The connection is made lazily, so a server
// that is down shows up as ErrUnavailable from the first operation, not here.
func Open(connString string, opts Options) (*Store, error) {
	opts.setDefaults()
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("kurrent: open: %w", err)
	}
	conf, err := esdb.ParseConnectionString(connString)
	if err != nil {
		return nil, fmt.Errorf("kurrent: open: parse connection string: %w", err)
	}
	logger := opts.Logger
	conf.Logger = func(level esdb.LogLevel, format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		switch level {
		case esdb.LogError:
			logger.Error("kurrentdb client", "msg", msg)
		case esdb.LogWarn:
			logger.Warn("kurrentdb client", "msg", msg)
		default:
			logger.Debug("kurrentdb client", "msg", msg)
		}
	}
	c, err := newESDBClient(*conf)
	if err != nil {
		return nil, fmt.Errorf("kurrent: open: %w", err)
	}
	return newStore(c, opts), nil
}

// newStore builds a store over c; opts must have its defaults set.
func newStore(c client, opts Options) *Store {
	life, stop := context.WithCancel(context.Background())
	return &Store{
		client:    c,
		maxBytes:  opts.MaxAppendBytes,
		prefixes:  opts.StreamPrefixes,
		filter:    &esdb.SubscriptionFilter{Type: esdb.StreamFilterType, Prefixes: opts.StreamPrefixes},
		log:       opts.Logger,
		backoff:   [2]time.Duration{opts.minBackoff, opts.maxBackoff},
		life:      life,
		stopLife:  stop,
		watchDone: make(chan struct{}),
		wake:      make(chan struct{}),
		scanned:   map[eventstore.Position]eventstore.Position{},
	}
}

// usable returns ErrClosed once the store is closed.
func (s *Store) usable() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return eventstore.ErrClosed
	}
	return nil
}

// Append implements eventstore.Store; see the package doc for appends bigger than
// Options.MaxAppendBytes, which are not atomic.
func (s *Store) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	res, err := s.append(ctx, stream, expected, events)
	if err != nil {
		return eventstore.AppendResult{}, fmt.Errorf("kurrent: append to %s at %s: %w", stream, expected, err)
	}
	return res, nil
}

func (s *Store) append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	if stream == "" {
		return eventstore.AppendResult{}, errors.New("stream name is empty")
	}
	if len(events) == 0 {
		return eventstore.AppendResult{}, errors.New("no events to append")
	}
	if err := s.usable(); err != nil {
		return eventstore.AppendResult{}, err
	}
	if err := ctx.Err(); err != nil {
		return eventstore.AppendResult{}, err
	}
	proposed, err := toEventData(events)
	if err != nil {
		return eventstore.AppendResult{}, err
	}
	parts, err := splitAppend(proposed, s.maxBytes)
	if err != nil {
		return eventstore.AppendResult{}, err
	}
	var (
		exp     = toExpectedRevision(expected)
		res     eventstore.AppendResult
		written int
	)
	for i, part := range parts {
		wr, err := s.client.appendToStream(ctx, stream, exp, part)
		if err != nil {
			err = s.mapError(ctx, err)
			if i > 0 {
				return eventstore.AppendResult{}, fmt.Errorf("part %d of %d failed, the first %d of %d events were written: %w",
					i+1, len(parts), written, len(events), err)
			}
			return eventstore.AppendResult{}, err
		}
		written += len(part)
		res = eventstore.AppendResult{NextExpected: wr.NextExpectedVersion, Position: fromWritePosition(wr)}
		exp = esdb.Revision(wr.NextExpectedVersion)
	}
	if res.Position == eventstore.Start {
		// The server answers an append it recognises as a retry without a
		// position; the original's is that of the event at NextExpected.
		last, err := s.client.readStream(ctx, stream, res.NextExpected, 1)
		if err != nil {
			return eventstore.AppendResult{}, fmt.Errorf("written, but finding its position: %w", s.mapError(ctx, err))
		}
		if len(last) == 0 {
			return eventstore.AppendResult{}, fmt.Errorf("written, but revision %d is not there to tell its position", res.NextExpected)
		}
		res.Position = fromPosition(last[0].Position)
	}
	return res, nil
}

// toEventData converts events for the client, refusing IDs the server cannot keep
// as they are.
func toEventData(events []eventstore.EventData) ([]esdb.EventData, error) {
	out := make([]esdb.EventData, len(events))
	for i, e := range events {
		id, err := uuid.Parse(e.ID)
		if err != nil || id.String() != e.ID {
			return nil, fmt.Errorf("event %d: ID %q is not a UUID in canonical form (KurrentDB keeps event IDs as UUIDs)", i, e.ID)
		}
		if id == uuid.Nil {
			// The client library would replace it with a random one.
			return nil, fmt.Errorf("event %d: ID is the nil UUID", i)
		}
		if e.Type == "" {
			return nil, fmt.Errorf("event %d (%s): type is empty", i, e.ID)
		}
		out[i] = esdb.EventData{
			EventID:     id,
			EventType:   e.Type,
			ContentType: esdb.ContentTypeJson,
			Data:        e.Data,
			Metadata:    e.Metadata,
		}
	}
	return out, nil
}

// eventSize estimates what an event adds to an append request.
func eventSize(e esdb.EventData) int {
	return eventOverhead + len(e.EventType) + len(e.Data) + len(e.Metadata)
}

// splitAppend cuts events into consecutive parts of at most budget estimated bytes
// each, in order; a single event over the budget is an error.
func splitAppend(events []esdb.EventData, budget int) ([][]esdb.EventData, error) {
	var (
		parts [][]esdb.EventData
		start int
		size  int
	)
	for i, e := range events {
		n := eventSize(e)
		if n > budget {
			return nil, fmt.Errorf("event %d (%s) is about %d bytes, the budget is %d: %w", i, e.EventID, n, budget, ErrEventTooLarge)
		}
		if size+n > budget {
			parts = append(parts, events[start:i])
			start, size = i, 0
		}
		size += n
	}
	return append(parts, events[start:]), nil
}

// ReadStream implements eventstore.Store.
func (s *Store) ReadStream(ctx context.Context, stream string, from uint64, max int) ([]eventstore.Event, error) {
	if max <= 0 {
		return nil, fmt.Errorf("kurrent: read stream %s: max must be positive, got %d", stream, max)
	}
	if err := s.usable(); err != nil {
		return nil, fmt.Errorf("kurrent: read stream %s: %w", stream, err)
	}
	recs, err := s.client.readStream(ctx, stream, from, uint64(max))
	if isCode(err, esdb.ErrorCodeResourceNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kurrent: read stream %s from %d: %w", stream, from, s.mapError(ctx, err))
	}
	out := make([]eventstore.Event, 0, len(recs))
	for _, r := range recs {
		out = append(out, toEvent(r))
	}
	return out, nil
}

// ReadStreamBackward implements eventstore.Store.
func (s *Store) ReadStreamBackward(ctx context.Context, stream string, from uint64, max int) ([]eventstore.Event, error) {
	if max <= 0 {
		return nil, fmt.Errorf("kurrent: read stream %s backward: max must be positive, got %d", stream, max)
	}
	if err := s.usable(); err != nil {
		return nil, fmt.Errorf("kurrent: read stream %s backward: %w", stream, err)
	}
	var start esdb.StreamPosition = esdb.End{}
	if from != eventstore.StreamEnd {
		start = esdb.Revision(from)
	}
	recs, err := s.client.readStreamBackward(ctx, stream, start, uint64(max))
	if err == nil && from != eventstore.StreamEnd && (len(recs) == 0 || recs[0].EventNumber != from) {
		// The server reads only revisions up to max below from, so a from past
		// the stream's end misses events the port promises; everything in the
		// stream is at or before from then, so reading from its end is the same.
		// (In a stream truncated after from, nothing is at or before from.)
		recs, err = s.client.readStreamBackward(ctx, stream, esdb.End{}, uint64(max))
		for len(recs) > 0 && recs[0].EventNumber > from {
			recs = recs[1:]
		}
	}
	if isCode(err, esdb.ErrorCodeResourceNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kurrent: read stream %s backward from %d: %w", stream, from, s.mapError(ctx, err))
	}
	out := make([]eventstore.Event, 0, len(recs))
	for _, r := range recs {
		out = append(out, toEvent(r))
	}
	return out, nil
}

// ReadAll implements eventstore.Store, keeping the streams named by
// Options.StreamPrefixes (see the package doc).
func (s *Store) ReadAll(ctx context.Context, after eventstore.Position, max int) ([]eventstore.Event, error) {
	if max <= 0 {
		return nil, fmt.Errorf("kurrent: read all after %s: max must be positive, got %d", after, max)
	}
	if err := s.usable(); err != nil {
		return nil, fmt.Errorf("kurrent: read all after %s: %w", after, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("kurrent: read all after %s: %w", after, err)
	}
	cursor := after
	s.mu.Lock()
	if hint, ok := s.scanned[after]; ok {
		cursor = hint
	}
	s.mu.Unlock()

	page := uint64(scanPage)
	if max >= scanPage {
		page = uint64(max) + 1
	}
	var out []eventstore.Event
	for {
		var from esdb.AllPosition = toPosition(cursor)
		if cursor == eventstore.Start {
			from = esdb.Start{}
		}
		recs, err := s.client.readAll(ctx, from, page)
		if err != nil {
			return nil, fmt.Errorf("kurrent: read all after %s: %w", after, s.mapError(ctx, err))
		}
		for _, r := range recs {
			p := fromPosition(r.Position)
			// Reads start at the event at cursor itself; that one is done.
			if !cursor.Less(p) {
				continue
			}
			cursor = p
			if !s.ours(r.StreamID) {
				continue
			}
			out = append(out, toEvent(r))
			if len(out) == max {
				return out, nil
			}
		}
		if uint64(len(recs)) < page {
			if len(out) == 0 && cursor != after {
				s.rememberScan(after, cursor)
			}
			return out, nil
		}
	}
}

// rememberScan notes that nothing of ours lies between after and to.
func (s *Store) rememberScan(after, to eventstore.Position) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.scanned) >= maxScanHints {
		clear(s.scanned)
	}
	s.scanned[after] = to
}

func (s *Store) ours(stream string) bool {
	for _, p := range s.prefixes {
		if strings.HasPrefix(stream, p) {
			return true
		}
	}
	return false
}

// Close implements eventstore.Store. It stops the subscription that serves
// WaitForEvents, wakes its waiters with ErrClosed and closes the connection.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.wake)
	watching := s.watching
	s.mu.Unlock()

	s.stopLife()
	if watching {
		<-s.watchDone
	}
	if err := s.client.close(); err != nil {
		return fmt.Errorf("kurrent: close: %w", err)
	}
	return nil
}

// toExpectedRevision maps the port's expectation to the server's.
func toExpectedRevision(e eventstore.ExpectedRevision) esdb.ExpectedRevision {
	if rev, ok := e.Revision(); ok {
		return esdb.Revision(rev)
	}
	if e.IsNoStream() {
		return esdb.NoStream{}
	}
	return esdb.Any{}
}

func toPosition(p eventstore.Position) esdb.Position {
	return esdb.Position{Commit: p.Commit, Prepare: p.Prepare}
}

func fromPosition(p esdb.Position) eventstore.Position {
	return eventstore.Position{Commit: p.Commit, Prepare: p.Prepare}
}

func fromWritePosition(w *esdb.WriteResult) eventstore.Position {
	return eventstore.Position{Commit: w.CommitPosition, Prepare: w.PreparePosition}
}

func toEvent(r *esdb.RecordedEvent) eventstore.Event {
	e := eventstore.Event{
		ID:       r.EventID.String(),
		Stream:   r.StreamID,
		Type:     r.EventType,
		Data:     r.Data,
		Revision: r.EventNumber,
		Position: fromPosition(r.Position),
		Time:     r.CreatedDate.UTC(),
	}
	if len(r.UserMetadata) > 0 {
		e.Metadata = r.UserMetadata
	}
	return e
}
