package kurrent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
)

// codedErr is an error carrying a client error code, as *esdb.Error does; the
// client offers no way to build one with a code from outside its package.
type codedErr struct {
	code esdb.ErrorCode
	msg  string
}

func (e codedErr) Error() string        { return fmt.Sprintf("[code %d] %s", e.code, e.msg) }
func (e codedErr) Code() esdb.ErrorCode { return e.code }

// fakeClient models the parts of a KurrentDB server the store uses: streams with
// revisions, $all with (commit, prepare) positions, inclusive reads, the server's
// idempotent answer to a retried append (success without a position), and
// filtered subscriptions. Positions step by 10 so that tests can ask for positions
// between events.
type fakeClient struct {
	mu      sync.Mutex
	all     []*esdb.RecordedEvent
	streams map[string][]*esdb.RecordedEvent
	subs    []*fakeSub
	closed  bool

	// recorded calls
	appends     []fakeAppend
	readAllFrom []esdb.AllPosition
	// readBackwardFrom records where each backward stream read started.
	readBackwardFrom []esdb.StreamPosition
	subscribedAt     []esdb.AllPosition

	// failAppend, if set, decides the error of the n-th append call (from 0).
	failAppend func(n int) error
	// failSubscribe, if set, decides the error of the n-th subscribe call.
	failSubscribe func(n int) error
}

type fakeAppend struct {
	stream   string
	expected esdb.ExpectedRevision
	n        int
}

func newFakeClient() *fakeClient {
	return &fakeClient{streams: map[string][]*esdb.RecordedEvent{}}
}

func (f *fakeClient) nextPosition() esdb.Position {
	n := uint64(len(f.all)+1) * 10
	return esdb.Position{Commit: n, Prepare: n}
}

func (f *fakeClient) appendToStream(ctx context.Context, stream string, expected esdb.ExpectedRevision, events []esdb.EventData) (*esdb.WriteResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	call := len(f.appends)
	f.appends = append(f.appends, fakeAppend{stream, expected, len(events)})
	if f.closed {
		return nil, codedErr{esdb.ErrorCodeConnectionClosed, "closed"}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if f.failAppend != nil {
		if err := f.failAppend(call); err != nil {
			return nil, err
		}
	}
	have := f.streams[stream]
	var at int // the revision the first event goes to
	switch e := expected.(type) {
	case esdb.NoStream:
		at = 0
	case esdb.StreamRevision:
		at = int(e.Value) + 1
	case esdb.Any:
		at = len(have)
	default:
		return nil, fmt.Errorf("fake: unexpected expectation %T", expected)
	}
	if at != len(have) {
		// The server's idempotence: the same IDs already there at that place.
		if at+len(events) <= len(have) && slices.EqualFunc(have[at:at+len(events)], events,
			func(r *esdb.RecordedEvent, e esdb.EventData) bool { return r.EventID == e.EventID }) {
			return &esdb.WriteResult{NextExpectedVersion: uint64(at + len(events) - 1)}, nil
		}
		return nil, codedErr{esdb.ErrorCodeWrongExpectedVersion, fmt.Sprintf("expected %d events, stream has %d", at, len(have))}
	}
	var last *esdb.RecordedEvent
	for _, e := range events {
		last = &esdb.RecordedEvent{
			EventID: e.EventID, EventType: e.EventType, ContentType: "application/json",
			StreamID: stream, EventNumber: uint64(len(f.streams[stream])), Position: f.nextPosition(),
			CreatedDate: time.Now(), Data: slices.Clone(e.Data), UserMetadata: slices.Clone(e.Metadata),
		}
		f.streams[stream] = append(f.streams[stream], last)
		f.all = append(f.all, last)
		for _, s := range f.subs {
			s.offer(last)
		}
	}
	return &esdb.WriteResult{CommitPosition: last.Position.Commit, PreparePosition: last.Position.Prepare, NextExpectedVersion: last.EventNumber}, nil
}

// appendForeign writes events the store must not return (other applications,
// system streams).
func (f *fakeClient) appendForeign(stream string, n int) {
	for range n {
		var id [16]byte
		id[0] = byte(len(f.all))
		_, _ = f.appendToStream(context.Background(), stream, esdb.Any{}, []esdb.EventData{{EventID: id, EventType: "Other"}})
	}
}

func copyRec(r *esdb.RecordedEvent) *esdb.RecordedEvent {
	c := *r
	c.Data, c.UserMetadata = slices.Clone(r.Data), slices.Clone(r.UserMetadata)
	return &c
}

func (f *fakeClient) readStream(ctx context.Context, stream string, from uint64, count uint64) ([]*esdb.RecordedEvent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	have, err := f.stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	var out []*esdb.RecordedEvent
	for i := from; i < uint64(len(have)) && uint64(len(out)) < count; i++ {
		out = append(out, copyRec(have[i]))
	}
	return out, nil
}

// stream returns the events of a stream as the server would find them, or the
// server's error; callers hold f.mu.
func (f *fakeClient) stream(ctx context.Context, stream string) ([]*esdb.RecordedEvent, error) {
	if f.closed {
		return nil, codedErr{esdb.ErrorCodeConnectionClosed, "closed"}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	have, ok := f.streams[stream]
	if !ok {
		return nil, codedErr{esdb.ErrorCodeResourceNotFound, "stream '" + stream + "' is not found"}
	}
	return have, nil
}

// readStreamBackward reads as the server does: from a revision it covers only
// revisions from-count+1 to from, even past the stream's end.
func (f *fakeClient) readStreamBackward(ctx context.Context, stream string, from esdb.StreamPosition, count uint64) ([]*esdb.RecordedEvent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.readBackwardFrom = append(f.readBackwardFrom, from)
	have, err := f.stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	var end uint64
	switch p := from.(type) {
	case esdb.End:
		end = uint64(len(have)) - 1
	case esdb.StreamRevision:
		end = p.Value
	default:
		return nil, fmt.Errorf("fake: unexpected stream position %T", from)
	}
	var out []*esdb.RecordedEvent
	for i := int64(end); i >= 0 && end-uint64(i) < count; i-- {
		if uint64(i) < uint64(len(have)) {
			out = append(out, copyRec(have[i]))
		}
	}
	return out, nil
}

func after(from esdb.AllPosition, p esdb.Position, inclusive bool) bool {
	q, ok := from.(esdb.Position)
	if !ok {
		return true // Start
	}
	if p.Commit != q.Commit {
		return p.Commit > q.Commit
	}
	if inclusive {
		return p.Prepare >= q.Prepare
	}
	return p.Prepare > q.Prepare
}

func (f *fakeClient) readAll(ctx context.Context, from esdb.AllPosition, count uint64) ([]*esdb.RecordedEvent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.readAllFrom = append(f.readAllFrom, from)
	if f.closed {
		return nil, codedErr{esdb.ErrorCodeConnectionClosed, "closed"}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []*esdb.RecordedEvent
	for _, r := range f.all {
		if uint64(len(out)) == count {
			break
		}
		if after(from, r.Position, true) {
			out = append(out, copyRec(r))
		}
	}
	return out, nil
}

func (f *fakeClient) lastPosition(ctx context.Context) (esdb.AllPosition, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(f.all) == 0 {
		return esdb.Start{}, nil
	}
	return f.all[len(f.all)-1].Position, nil
}

func (f *fakeClient) subscribeToAll(ctx context.Context, from esdb.AllPosition, filter *esdb.SubscriptionFilter) (subscription, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	call := len(f.subscribedAt)
	f.subscribedAt = append(f.subscribedAt, from)
	if f.failSubscribe != nil {
		if err := f.failSubscribe(call); err != nil {
			return nil, err
		}
	}
	s := &fakeSub{ctx: ctx, filter: filter, events: make(chan *esdb.SubscriptionEvent, 100000)}
	for _, r := range f.all {
		if after(from, r.Position, false) {
			s.offer(r)
		}
	}
	f.subs = append(f.subs, s)
	return s, nil
}

// drop ends every open subscription with err, after a checkpoint at the end of $all
// when checkpoint is set.
func (f *fakeClient) drop(err error, checkpoint bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.subs {
		if checkpoint && len(f.all) > 0 {
			p := f.all[len(f.all)-1].Position
			s.events <- &esdb.SubscriptionEvent{CheckPointReached: &p}
		}
		s.events <- &esdb.SubscriptionEvent{SubscriptionDropped: &esdb.SubscriptionDropped{Error: err}}
	}
	f.subs = nil
}

func (f *fakeClient) subscriptions() []esdb.AllPosition {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.subscribedAt)
}

func (f *fakeClient) close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

// fakeSub is a subscription fed by the fake server.
type fakeSub struct {
	ctx    context.Context
	filter *esdb.SubscriptionFilter
	events chan *esdb.SubscriptionEvent
}

// offer hands the subscription an event if its filter lets it through, and a
// checkpoint otherwise, as a server with a checkpoint interval of 1 would.
func (s *fakeSub) offer(r *esdb.RecordedEvent) {
	match := s.filter == nil
	if s.filter != nil {
		for _, p := range s.filter.Prefixes {
			match = match || strings.HasPrefix(r.StreamID, p)
		}
	}
	if match {
		s.events <- &esdb.SubscriptionEvent{EventAppeared: &esdb.ResolvedEvent{Event: copyRec(r)}}
		return
	}
	p := r.Position
	s.events <- &esdb.SubscriptionEvent{CheckPointReached: &p}
}

func (s *fakeSub) Recv() *esdb.SubscriptionEvent {
	select {
	case ev := <-s.events:
		return ev
	case <-s.ctx.Done():
		return &esdb.SubscriptionEvent{SubscriptionDropped: &esdb.SubscriptionDropped{Error: errors.New("subscription has been dropped")}}
	}
}

func (s *fakeSub) Close() error { return nil }
