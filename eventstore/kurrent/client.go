package kurrent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/smsbatch/smsbatch/eventstore"
)

// client is the part of the KurrentDB client the store uses. The real one is
// esdbClient; tests use a fake, so that everything above the gRPC wire is tested
// without a server. Reads hand back whole pages rather than streams so that a fake
// is a few lines.
type client interface {
	// appendToStream writes events to stream in one request, all or none, if the
	// stream's revision matches expected.
	appendToStream(ctx context.Context, stream string, expected esdb.ExpectedRevision, events []esdb.EventData) (*esdb.WriteResult, error)

	// readStream returns up to count events of stream forwards from revision from
	// (inclusive). A missing stream fails with ErrorCodeResourceNotFound.
	readStream(ctx context.Context, stream string, from uint64, count uint64) ([]*esdb.RecordedEvent, error)

	// readStreamBackward returns up to count events of stream backwards from from
	// (esdb.End{} or a revision, inclusive), newest first. As on the server, a
	// revision past the stream's end is not moved back to its last event: the read
	// covers only revisions from-count+1 to from. A missing stream fails with
	// ErrorCodeResourceNotFound.
	readStreamBackward(ctx context.Context, stream string, from esdb.StreamPosition, count uint64) ([]*esdb.RecordedEvent, error)

	// readAll returns up to count events of $all forwards from from (inclusive: the
	// event at from, if any, comes first), unfiltered.
	readAll(ctx context.Context, from esdb.AllPosition, count uint64) ([]*esdb.RecordedEvent, error)

	// lastPosition returns the position of the last event in $all, or esdb.Start{}
	// when $all is empty.
	lastPosition(ctx context.Context) (esdb.AllPosition, error)

	// subscribeToAll follows $all from from (exclusive), keeping only the events
	// the filter lets through and reporting checkpoints as the server passes over
	// the others. The subscription ends when ctx is done.
	subscribeToAll(ctx context.Context, from esdb.AllPosition, filter *esdb.SubscriptionFilter) (subscription, error)

	// close releases the connection.
	close() error
}

// subscription is an open subscription to $all.
type subscription interface {
	// Recv blocks for the next event, checkpoint or drop.
	Recv() *esdb.SubscriptionEvent
	// Close ends the subscription; Recv then reports it dropped.
	Close() error
}

// esdbClient is the client over a real KurrentDB connection. It owns the
// library's client rather than keeping one for the store's life, because that
// client gives up for good when it cannot find the server (MaxDiscoverAttempts
// tries, about a second by default: a server restart or a network blip): every
// later call then fails with ErrorCodeConnectionClosed, and calls that were
// waiting for a connection while it gave up block forever, ignoring their
// contexts. So a client that gave up is replaced by a new one (its calls answer
// ErrUnavailable and the next ones use the new client), and every call returns
// by its context, or when its client is replaced, whatever the library does.
// A replaced client is not closed: the library's Close races with (and then
// panics) the calls still blocked in it, which never run. Close closes the
// current client when no call is in it.
type esdbClient struct {
	conf esdb.Configuration

	mu     sync.Mutex
	cur    *liveClient
	closed bool
}

// liveClient is one library client and what ends the calls made through it.
type liveClient struct {
	c *esdb.Client
	// gone is closed when the client is replaced or closed.
	gone chan struct{}
	// calls counts the calls in it, returned or not; guarded by esdbClient.mu.
	calls int
	// reached: its last call's outcome showed the server reached; until
	// then, gate lets one call at a time in.
	reached atomic.Bool
	gate    chan struct{}
}

func newLiveClient(c *esdb.Client) *liveClient {
	return &liveClient{c: c, gone: make(chan struct{}), gate: make(chan struct{}, 1)}
}

func newESDBClient(conf esdb.Configuration) (*esdbClient, error) {
	c, err := esdb.NewClient(&conf)
	if err != nil {
		return nil, err
	}
	return &esdbClient{conf: conf, cur: newLiveClient(c)}, nil
}

var _ client = (*esdbClient)(nil)

// *esdb.Subscription is what subscribeToAll hands back.
var _ subscription = (*esdb.Subscription)(nil)

// enter returns the client to call, counting the call in it, or an error once
// closed. The call is counted out by leave.
func (e *esdbClient) enter() (*liveClient, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, errClientClosed
	}
	e.cur.calls++
	return e.cur, nil
}

func (e *esdbClient) leave(lc *liveClient) {
	e.mu.Lock()
	lc.calls--
	e.mu.Unlock()
}

// errClientClosed answers calls after close.
var errClientClosed = errors.New("kurrent: client closed")

// replace puts a new client in the place of lc, which gave up, unless that was
// done already.
func (e *esdbClient) replace(lc *liveClient) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed || e.cur != lc {
		return
	}
	conf := e.conf
	c, err := esdb.NewClient(&conf)
	if err != nil {
		return // the configuration was good at Open; keep the old one and try again next time
	}
	close(lc.gone)
	e.cur = newLiveClient(c)
}

// call runs op on the current client and returns by ctx, or as soon as that
// client is replaced, whatever op does. A client that gave up is replaced, and
// its error reported as the server being unavailable.
func call[T any](ctx context.Context, e *esdbClient, op func(c *esdb.Client) (T, error)) (T, error) {
	var zero T
	lc, err := e.enter()
	if err != nil {
		return zero, err
	}
	type result struct {
		v   T
		err error
	}
	// While the client is not known to reach the server, one call at a time
	// goes into the library: the others would queue on its connection, and
	// stay blocked there for good if it then gives up. The one inside gets
	// the discovery's answer itself; the others wait here, by their contexts.
	gated := !lc.reached.Load()
	if gated {
		select {
		case lc.gate <- struct{}{}:
		case <-ctx.Done():
			e.leave(lc)
			return zero, ctx.Err()
		case <-lc.gone:
			e.leave(lc)
			return zero, gaveUp(errors.New("the connection was replaced while the call waited for it"))
		}
	}
	done := make(chan result, 1)
	go func() {
		defer e.leave(lc)
		v, err := op(lc.c)
		lc.reached.Store(answered(err))
		if gated {
			<-lc.gate
		}
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		if isCode(r.err, esdb.ErrorCodeConnectionClosed) {
			e.replace(lc)
			return zero, gaveUp(r.err)
		}
		return r.v, r.err
	case <-ctx.Done():
		return zero, ctx.Err()
	case <-lc.gone:
		return zero, gaveUp(errors.New("the connection was replaced while the call waited for it"))
	}
}

// answered reports whether a call's outcome shows the server reached: a
// success or the server's own refusal, not a connection that failed or never
// came.
func answered(err error) bool {
	if err == nil {
		return true
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return false
	}
	var c coded
	if errors.As(err, &c) {
		switch c.Code() {
		case esdb.ErrorUnavailable, esdb.ErrorCodeConnectionClosed, esdb.ErrorCodeDeadlineExceeded, esdb.ErrorCodeNotLeader:
			return false
		}
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return false
	}
	return true
}

// gaveUp reports a call of a client that gave up as the server being unavailable.
func gaveUp(err error) error {
	// err is kept as text: its ErrorCodeConnectionClosed would read as the
	// store being closed.
	return fmt.Errorf("%w: the client could not reach the server and is replaced (%v)", eventstore.ErrUnavailable, err)
}

func (e *esdbClient) appendToStream(ctx context.Context, stream string, expected esdb.ExpectedRevision, events []esdb.EventData) (*esdb.WriteResult, error) {
	return call(ctx, e, func(c *esdb.Client) (*esdb.WriteResult, error) {
		return c.AppendToStream(ctx, stream, esdb.AppendToStreamOptions{ExpectedRevision: expected}, events...)
	})
}

func (e *esdbClient) readStream(ctx context.Context, stream string, from uint64, count uint64) ([]*esdb.RecordedEvent, error) {
	return call(ctx, e, func(c *esdb.Client) ([]*esdb.RecordedEvent, error) {
		rs, err := c.ReadStream(ctx, stream, esdb.ReadStreamOptions{From: esdb.Revision(from)}, count)
		if err != nil {
			return nil, err
		}
		return drain(rs, count)
	})
}

func (e *esdbClient) readStreamBackward(ctx context.Context, stream string, from esdb.StreamPosition, count uint64) ([]*esdb.RecordedEvent, error) {
	return call(ctx, e, func(c *esdb.Client) ([]*esdb.RecordedEvent, error) {
		rs, err := c.ReadStream(ctx, stream, esdb.ReadStreamOptions{From: from, Direction: esdb.Backwards}, count)
		if err != nil {
			return nil, err
		}
		return drain(rs, count)
	})
}

func (e *esdbClient) readAll(ctx context.Context, from esdb.AllPosition, count uint64) ([]*esdb.RecordedEvent, error) {
	return call(ctx, e, func(c *esdb.Client) ([]*esdb.RecordedEvent, error) {
		rs, err := c.ReadAll(ctx, esdb.ReadAllOptions{From: from}, count)
		if err != nil {
			return nil, err
		}
		return drain(rs, count)
	})
}

func (e *esdbClient) lastPosition(ctx context.Context) (esdb.AllPosition, error) {
	return call(ctx, e, func(c *esdb.Client) (esdb.AllPosition, error) {
		rs, err := c.ReadAll(ctx, esdb.ReadAllOptions{From: esdb.End{}, Direction: esdb.Backwards}, 1)
		if err != nil {
			return nil, err
		}
		last, err := drain(rs, 1)
		if err != nil {
			return nil, err
		}
		if len(last) == 0 {
			return esdb.Start{}, nil
		}
		return last[0].Position, nil
	})
}

func (e *esdbClient) subscribeToAll(ctx context.Context, from esdb.AllPosition, filter *esdb.SubscriptionFilter) (subscription, error) {
	return call(ctx, e, func(c *esdb.Client) (subscription, error) {
		return c.SubscribeToAll(ctx, esdb.SubscribeToAllOptions{From: from, Filter: filter})
	})
}

// close closes the current client, unless calls are still in it (blocked
// while the server could not be found: the library's Close would panic them);
// calls made after it fail.
func (e *esdbClient) close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	lc := e.cur
	close(lc.gone)
	busy := lc.calls > 0
	e.mu.Unlock()
	if busy {
		return nil
	}
	return lc.c.Close()
}

// drain reads a read stream to its end.
func drain(rs *esdb.ReadStream, count uint64) ([]*esdb.RecordedEvent, error) {
	defer rs.Close()
	out := make([]*esdb.RecordedEvent, 0, min(count, 1024))
	for {
		ev, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if rec := ev.OriginalEvent(); rec != nil {
			out = append(out, rec)
		}
	}
}
