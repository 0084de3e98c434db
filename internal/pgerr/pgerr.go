// Package pgerr classifies the errors of PostgreSQL (through pgx) for smsbatch's
// two PostgreSQL adapters, the event store and the read models, so that both mark
// the same failures the same way and the HTTP layer answers an outage of either
// with the same 503: what a later retry may cure wraps eventstore.ErrUnavailable,
// a unique key a concurrent writer took first wraps eventstore.ErrConcurrency.
package pgerr

import (
	"errors"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/smsbatch/smsbatch/eventstore"
)

// Classify marks an error from pgx: a unique violation (a concurrent append won)
// wraps eventstore.ErrConcurrency; a lost connection, a server shutting down or
// refusing connections, too many connections, or a transaction the server aborted
// to break a deadlock or a serialization conflict wraps eventstore.ErrUnavailable.
// Other errors are returned as they are. The original error stays inspectable
// with errors.Is and errors.As. Classify(nil) is nil.
func Classify(err error) error {
	if err == nil {
		return nil
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "23505": // unique_violation: a concurrent append won
			return errors.Join(eventstore.ErrConcurrency, err)
		case len(pgErr.Code) == 5 && pgErr.Code[:2] == "08", // connection exception
			pgErr.Code == "57P01", // admin_shutdown
			pgErr.Code == "57P02", // crash_shutdown
			pgErr.Code == "57P03", // cannot_connect_now
			pgErr.Code == "53300", // too_many_connections
			pgErr.Code == "40001", // serialization_failure
			pgErr.Code == "40P01": // deadlock_detected
			return errors.Join(eventstore.ErrUnavailable, err)
		}
		return err
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	if errors.As(err, &connectErr) || errors.As(err, &netErr) || pgconn.SafeToRetry(err) || pgconn.Timeout(err) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
		return errors.Join(eventstore.ErrUnavailable, err)
	}
	return err
}
