package kurrent

import (
	"context"
	"errors"
	"fmt"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/smsbatch/smsbatch/eventstore"
)

// coded is what *esdb.Error offers to tell errors apart. Errors are matched through
// it with errors.As, rather than with esdb.FromError, because the client wraps some
// of them ("could not construct append operation. Reason: %w") and FromError only
// looks at the outermost one.
type coded interface {
	Code() esdb.ErrorCode
}

var _ coded = (*esdb.Error)(nil)

// mapError turns a client error into what the port promises: ErrClosed once the
// store is closed, the context's error when the caller's context is done, then the
// server's verdict as classify reads it.
func (s *Store) mapError(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if s.usable() != nil {
		return fmt.Errorf("%w (%v)", eventstore.ErrClosed, err)
	}
	mapped := classify(err)
	if errors.Is(mapped, eventstore.ErrConcurrency) {
		return mapped
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("%w (%v)", ctxErr, err)
	}
	return mapped
}

// classify wraps err in the port's sentinel for what went wrong: ErrConcurrency
// for a wrong expected revision; ErrUnavailable for what a later retry may cure
// (deadlines, a server that is down or not ready, a follower asked to write, an
// aborted call); ErrClosed for a closed connection. Other errors stay as they are.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var c coded
	if errors.As(err, &c) {
		switch c.Code() {
		case esdb.ErrorCodeWrongExpectedVersion:
			return fmt.Errorf("%w: %w", eventstore.ErrConcurrency, err)
		case esdb.ErrorCodeDeadlineExceeded, esdb.ErrorUnavailable, esdb.ErrorCodeNotLeader, esdb.ErrorAborted:
			return fmt.Errorf("%w: %w", eventstore.ErrUnavailable, err)
		case esdb.ErrorCodeConnectionClosed:
			return fmt.Errorf("%w: %w", eventstore.ErrClosed, err)
		}
	}
	// Some calls hand back the gRPC status as it came, and an esdb.Error with
	// an unknown code may still carry one.
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.ResourceExhausted:
		return fmt.Errorf("%w: %w", eventstore.ErrUnavailable, err)
	}
	return err
}

// isCode reports whether err carries the client's error code.
func isCode(err error, code esdb.ErrorCode) bool {
	var c coded
	return errors.As(err, &c) && c.Code() == code
}
