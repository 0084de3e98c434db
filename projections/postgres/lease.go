package postgres

import (
	"context"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/smsbatch/smsbatch/internal/pgerr"
	"github.com/smsbatch/smsbatch/projections"
)

var _ projections.Shared = (*Store)(nil)

// leaseCheckEvery is how often a held lease's connection is checked.
const leaseCheckEvery = time.Second

// TryLease implements projections.Shared with a session advisory lock on a
// connection of its own, taken out of the pool: the server releases it when
// that connection ends, so a process that dies gives the lease up with it.
func (s *Store) TryLease(ctx context.Context) (*projections.Lease, error) {
	pc, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres projections: lease: %w", pgerr.Classify(err))
	}
	conn := pc.Hijack()
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, s.leaseKey()).Scan(&got); err != nil || !got {
		_ = conn.Close(context.Background())
		if err != nil {
			return nil, fmt.Errorf("postgres projections: lease: %w", pgerr.Classify(err))
		}
		return nil, nil
	}
	lost := make(chan struct{})
	done := make(chan struct{})
	var once sync.Once
	go func() {
		defer close(lost)
		t := time.NewTicker(leaseCheckEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			pctx, cancel := context.WithTimeout(context.Background(), leaseCheckEvery)
			err := conn.Ping(pctx)
			cancel()
			if err != nil {
				return // the connection, and the lock with it, is gone
			}
		}
	}()
	release := func() {
		once.Do(func() {
			close(done)
			<-lost
			// Closing the session releases the lock.
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = conn.Close(cctx)
		})
	}
	return &projections.Lease{Lost: lost, Release: release}, nil
}

// leaseKey is the advisory lock of the store's schema.
func (s *Store) leaseKey() int64 {
	h := fnv.New64a()
	h.Write([]byte("smsbatch read models lease: " + s.schema))
	return int64(h.Sum64())
}
