package main

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/eventstore"
)

// readWatch counts the events the program reads from the log, and those of
// them before a position.
type readWatch struct {
	eventstore.Store
	before eventstore.Position
	mu     sync.Mutex
	read   int
	old    []eventstore.Position
}

func (w *readWatch) ReadAll(ctx context.Context, after eventstore.Position, max int) ([]eventstore.Event, error) {
	events, err := w.Store.ReadAll(ctx, after, max)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.read += len(events)
	for _, e := range events {
		if e.Position.Less(w.before) {
			w.old = append(w.old, e.Position)
		}
	}
	return events, err
}

// Health keeps the wrapped store's readiness check.
func (w *readWatch) Health() error { return storeHealth(w.Store) }

// A restart reads no event of the log from before where the read models stood when
// the program stopped, on the embedded store and on PostgreSQL: the read
// models, the forwarder's unfinished batches, the opt-out lists and the live
// hub all start from checkpoints, so start-up does not grow with history.
func TestRestartReadsNoHistory(t *testing.T) {
	onEachStore(t, func(t *testing.T, cfg Config) {
		cfg.RateUnlimited = true
		c := startMain(t, cfg)
		for range 3 {
			st := c.create(batchBody(recipients(20), "high"))
			c.waitStatus(st.ID, 30*time.Second, "completed")
		}
		// Everything applied: the position the read models stop at.
		deadline := time.Now().Add(30 * time.Second)
		for {
			more, err := c.main.store.ReadAll(t.Context(), c.main.runner.Position(), 1)
			if err != nil {
				t.Fatal(err)
			}
			if len(more) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the read models did not catch up")
			}
			time.Sleep(20 * time.Millisecond)
		}
		stoppedAt := c.main.runner.Position()
		c.stop()

		watch := &readWatch{before: stoppedAt}
		again, err := runMainWith(t, cfg, func(s eventstore.Store) eventstore.Store {
			watch.Store = s
			return watch
		})
		if err != nil {
			t.Fatal(err)
		}
		again.waitReady()
		// It works on: a new batch goes out and is seen by every follower.
		st := again.create(batchBody(recipients(5), "high"))
		again.waitStatus(st.ID, 30*time.Second, "completed")

		watch.mu.Lock()
		defer watch.mu.Unlock()
		if watch.read == 0 {
			t.Fatal("the restarted program never read the log; the watch saw nothing")
		}
		if len(watch.old) > 0 {
			t.Fatalf("the restarted program read %d events from before %s, where its read models stood: %v", len(watch.old), stoppedAt, watch.old)
		}
	})
}
