package pgerr_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/internal/pgerr"
)

func TestClassify(t *testing.T) {
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	for _, c := range []struct {
		name string
		err  error
		want error // nil: neither sentinel
	}{
		{"unique violation", &pgconn.PgError{Code: "23505"}, eventstore.ErrConcurrency},
		{"connection failure", &pgconn.PgError{Code: "08006"}, eventstore.ErrUnavailable},
		{"admin shutdown", &pgconn.PgError{Code: "57P01"}, eventstore.ErrUnavailable},
		{"crash shutdown", &pgconn.PgError{Code: "57P02"}, eventstore.ErrUnavailable},
		{"starting up", &pgconn.PgError{Code: "57P03"}, eventstore.ErrUnavailable},
		{"too many connections", &pgconn.PgError{Code: "53300"}, eventstore.ErrUnavailable},
		{"serialization failure", &pgconn.PgError{Code: "40001"}, eventstore.ErrUnavailable},
		{"deadlock", &pgconn.PgError{Code: "40P01"}, eventstore.ErrUnavailable},
		{"wrapped server error", fmt.Errorf("query: %w", &pgconn.PgError{Code: "57P01"}), eventstore.ErrUnavailable},
		{"connection refused", dial, eventstore.ErrUnavailable},
		{"connection reset mid-query", io.ErrUnexpectedEOF, eventstore.ErrUnavailable},
		{"closed connection", net.ErrClosed, eventstore.ErrUnavailable},
		{"syntax error", &pgconn.PgError{Code: "42601"}, nil},
		{"undefined table", &pgconn.PgError{Code: "42P01"}, nil},
		{"a plain error", errors.New("no rows"), nil},
		{"canceled by the caller", context.Canceled, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := pgerr.Classify(c.err)
			if !errors.Is(got, c.err) {
				t.Errorf("Classify(%v) = %v, which no longer wraps the original", c.err, got)
			}
			for _, sentinel := range []error{eventstore.ErrConcurrency, eventstore.ErrUnavailable} {
				if is, want := errors.Is(got, sentinel), sentinel == c.want; is != want {
					t.Errorf("Classify(%v) wraps %v: %v, want %v", c.err, sentinel, is, want)
				}
			}
		})
	}
	if pgerr.Classify(nil) != nil {
		t.Error("Classify(nil) is not nil")
	}
}
