package eventstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/memory"
)

// failingReads fails ReadAll while fail is set, as a database going away would.
type failingReads struct {
	eventstore.Store
	fail atomic.Bool
}

func (f *failingReads) ReadAll(ctx context.Context, after eventstore.Position, max int) ([]eventstore.Event, error) {
	if f.fail.Load() {
		return nil, fmt.Errorf("connection refused: %w", eventstore.ErrUnavailable)
	}
	return f.Store.ReadAll(ctx, after, max)
}

func appendN(t *testing.T, s eventstore.Store, stream string, n int) {
	t.Helper()
	for i := range n {
		_, err := s.Append(context.Background(), stream, eventstore.Any(), []eventstore.EventData{
			{ID: fmt.Sprintf("%s-%d-%d", stream, i, time.Now().UnixNano()), Type: "T", Data: []byte("{}")},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// clock is a settable clock for health checks.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.now = c.now.Add(d) }
func newClock() *clock               { return &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func TestFollowerResubscribesAndHandsEveryEventOnceInOrder(t *testing.T) {
	store := &failingReads{Store: memory.New()}
	defer store.Close()
	appendN(t, store, "s", 10)

	var mu sync.Mutex
	var seen []eventstore.Position
	handlerFailures := 0
	clk := newClock()
	cfg := eventstore.FollowerConfig{Name: "test", Store: store, BatchSize: 3}
	eventstore.FastFollower(&cfg, clk.Now)
	f, err := eventstore.NewFollower(cfg, func(ctx context.Context, events []eventstore.Event) error {
		mu.Lock()
		defer mu.Unlock()
		// The handler fails the first time it sees the fifth event: that page
		// must come again, and nothing before it twice.
		if handlerFailures == 0 && len(seen) >= 3 && len(seen) < 6 {
			handlerFailures++
			return errors.New("apply failed")
		}
		for _, e := range events {
			seen = append(seen, e.Position)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()

	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) == 10 })
	store.fail.Store(true) // the store goes away...
	appendN(t, store.Store, "s", 5)
	time.Sleep(50 * time.Millisecond)
	store.fail.Store(false) // ...and comes back
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) == 15 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
	for i := 1; i < len(seen); i++ {
		if !seen[i-1].Less(seen[i]) {
			t.Fatalf("event %d at %s handed after %s: out of order or twice", i, seen[i], seen[i-1])
		}
	}
	if handlerFailures != 1 {
		t.Fatalf("handler failed %d times, want 1", handlerFailures)
	}
}

func TestFollowerHealthTurnsRedWhileFailingAndGreenAgain(t *testing.T) {
	store := &failingReads{Store: memory.New()}
	defer store.Close()
	clk := newClock()
	cfg := eventstore.FollowerConfig{Name: "forwarder", Store: store, UnhealthyAfter: 10 * time.Second}
	eventstore.FastFollower(&cfg, clk.Now)
	f, _ := eventstore.NewFollower(cfg, func(context.Context, []eventstore.Event) error { return nil })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store.fail.Store(true)
	go f.Run(ctx)
	time.Sleep(30 * time.Millisecond)
	if err := f.Health(); err != nil {
		t.Fatalf("unhealthy after a brief failure: %v", err)
	}
	clk.Add(11 * time.Second)
	err := f.Health()
	if err == nil || !errors.Is(err, eventstore.ErrUnavailable) {
		t.Fatalf("health %v after failing for 11s, want an error naming the cause", err)
	}
	store.fail.Store(false)
	appendN(t, store.Store, "s", 1)
	waitFor(t, func() bool { return f.Health() == nil })
}

func TestFollowerStopsOnAClosedStore(t *testing.T) {
	store := memory.New()
	cfg := eventstore.FollowerConfig{Name: "hub", Store: store}
	f, _ := eventstore.NewFollower(cfg, func(context.Context, []eventstore.Event) error { return nil })
	done := make(chan error, 1)
	go func() { done <- f.Run(context.Background()) }()
	time.Sleep(20 * time.Millisecond)
	store.Close()
	select {
	case err := <-done:
		if !errors.Is(err, eventstore.ErrClosed) {
			t.Fatalf("Run returned %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follower did not stop after the store closed")
	}
	if f.Health() == nil {
		t.Fatal("a stopped follower reports healthy")
	}
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// With Gather, a busy log reaches the handler in few, larger pages, every
// event once and in order, while the first event after a quiet spell is
// handled at once.
func TestGatherHandsABusyLogInFewerPages(t *testing.T) {
	store := memory.New()
	defer store.Close()
	const gather = 300 * time.Millisecond
	var mu sync.Mutex
	var pages int
	var seen []eventstore.Position
	handled := make(chan struct{}, 1000)
	f, err := eventstore.NewFollower(eventstore.FollowerConfig{Name: "test", Store: store, Gather: gather},
		func(ctx context.Context, events []eventstore.Event) error {
			mu.Lock()
			pages++
			for _, e := range events {
				seen = append(seen, e.Position)
			}
			mu.Unlock()
			handled <- struct{}{}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go f.Run(ctx)

	// Quiet log: one event is handled well within the gathering time.
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	appendN(t, store, "quiet", 1)
	select {
	case <-handled:
	case <-time.After(5 * time.Second):
		t.Fatal("the event was not handled")
	}
	if d := time.Since(start); d >= gather {
		t.Errorf("the first event after a quiet spell took %s, want it at once (not after %s)", d, gather)
	}

	// Busy log: an event every 2 ms for about a second.
	mu.Lock()
	pages = 0
	mu.Unlock()
	const n = 400
	for i := range n {
		appendN(t, store, fmt.Sprintf("busy-%d", i%7), 1)
		time.Sleep(2 * time.Millisecond)
	}
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) == 1+n })
	mu.Lock()
	defer mu.Unlock()
	// About one page per gathering time, a few more for a slow machine;
	// without Gather it would be a page every event or two.
	if most := int(time.Since(start)/gather) + 5; pages > most {
		t.Errorf("%d events in %d pages, want at most %d", n, pages, most)
	}
	for i := 1; i < len(seen); i++ {
		if !seen[i-1].Less(seen[i]) {
			t.Fatalf("event %d at %s handed after %s: out of order or twice", i, seen[i], seen[i-1])
		}
	}
}
