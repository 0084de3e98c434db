package postgres

import (
	"context"
	"time"
)

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
