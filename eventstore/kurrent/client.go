package kurrent

import (
	"context"
	"errors"
	"io"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
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

// esdbClient is the client over a real KurrentDB connection.
type esdbClient struct {
	c *esdb.Client
}

var _ client = esdbClient{}

// *esdb.Subscription is what subscribeToAll hands back.
var _ subscription = (*esdb.Subscription)(nil)

func (e esdbClient) appendToStream(ctx context.Context, stream string, expected esdb.ExpectedRevision, events []esdb.EventData) (*esdb.WriteResult, error) {
	return e.c.AppendToStream(ctx, stream, esdb.AppendToStreamOptions{ExpectedRevision: expected}, events...)
}

func (e esdbClient) readStream(ctx context.Context, stream string, from uint64, count uint64) ([]*esdb.RecordedEvent, error) {
	rs, err := e.c.ReadStream(ctx, stream, esdb.ReadStreamOptions{From: esdb.Revision(from)}, count)
	if err != nil {
		return nil, err
	}
	return drain(rs, count)
}

func (e esdbClient) readStreamBackward(ctx context.Context, stream string, from esdb.StreamPosition, count uint64) ([]*esdb.RecordedEvent, error) {
	rs, err := e.c.ReadStream(ctx, stream, esdb.ReadStreamOptions{From: from, Direction: esdb.Backwards}, count)
	if err != nil {
		return nil, err
	}
	return drain(rs, count)
}

func (e esdbClient) readAll(ctx context.Context, from esdb.AllPosition, count uint64) ([]*esdb.RecordedEvent, error) {
	rs, err := e.c.ReadAll(ctx, esdb.ReadAllOptions{From: from}, count)
	if err != nil {
		return nil, err
	}
	return drain(rs, count)
}

func (e esdbClient) lastPosition(ctx context.Context) (esdb.AllPosition, error) {
	rs, err := e.c.ReadAll(ctx, esdb.ReadAllOptions{From: esdb.End{}, Direction: esdb.Backwards}, 1)
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
}

func (e esdbClient) subscribeToAll(ctx context.Context, from esdb.AllPosition, filter *esdb.SubscriptionFilter) (subscription, error) {
	return e.c.SubscribeToAll(ctx, esdb.SubscribeToAllOptions{From: from, Filter: filter})
}

func (e esdbClient) close() error { return e.c.Close() }

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
