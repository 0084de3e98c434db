package live_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/smsbatch/smsbatch/eventstore"
	esmemory "github.com/smsbatch/smsbatch/eventstore/memory"
	"github.com/smsbatch/smsbatch/live"
	"github.com/smsbatch/smsbatch/projections"
	"github.com/smsbatch/smsbatch/projections/memory"
	"github.com/smsbatch/smsbatch/projections/projectionstest"
)

// blockingList holds the first list read of tenant (a dashboard's list page
// opening /api/ws reads the status of its 100 newest batches) until released.
type blockingList struct {
	projections.Store
	tenant   string
	once     sync.Once
	reading  chan struct{}
	released chan struct{}
}

func (b *blockingList) Batches(ctx context.Context, q projections.ListQuery) ([]projections.BatchStatus, string, error) {
	if q.Tenant == b.tenant {
		first := false
		b.once.Do(func() { first = true })
		if first {
			close(b.reading)
			<-b.released
		}
	}
	return b.Store.Batches(ctx, q)
}

// A dashboard opening the feed of all its batches reads their statuses (one
// list query of up to 100 rows); while that query is slow, every other
// client's updates, of every tenant, and /readyz (Health, Running) must not
// wait for it, as they do not for a reconnecting client's reads.
func TestANewSubscriberReadsItsSnapshotWithoutHoldingUpTheHub(t *testing.T) {
	es := esmemory.New()
	defer es.Close()
	rm := memory.New()
	slow := &blockingList{Store: rm, tenant: "acme", reading: make(chan struct{}), released: make(chan struct{})}
	ctx, runner, hub := runHub(t, es, rm, live.Config{ReadModels: slow})
	ev := projectionstest.NewEvents()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	other := ev.Batch("globex", uuid.NewString(), t0)
	flushed(t, ctx, es, runner, hub, []eventstore.Event{other.Created(1)})
	// Another tenant follows its batch.
	globex, err := hub.Subscribe(ctx, live.Subscription{Tenant: "globex", BatchID: other.ID})
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Unsubscribe(globex)

	done := make(chan error, 1)
	go func() {
		c, err := hub.Subscribe(ctx, live.Subscription{Tenant: "acme"})
		if err == nil {
			hub.Unsubscribe(c)
		}
		done <- err
	}()
	<-slow.reading // acme's list query hangs
	defer func() { close(slow.released); <-done }()

	if _, err := projectionstest.AppendTo(ctx, es, []eventstore.Event{other.Started()}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-globex.Messages():
		t.Logf("globex got its update: %s", m)
	case <-time.After(3 * time.Second):
		healthy := make(chan struct{})
		go func() { hub.Health(); close(healthy) }()
		select {
		case <-healthy:
		case <-time.After(time.Second):
			t.Error("Health (and so /readyz) hangs too")
		}
		t.Fatal("globex's batch started, and its client got nothing for 3s: the hub waits for acme's list query, held under its lock")
	}
}

// staleList returns, for the first list read of tenant, what the read models
// held when the read began, after being held until released: a slow query.
type staleList struct {
	projections.Store
	tenant   string
	once     sync.Once
	reading  chan struct{}
	released chan struct{}
}

func (b *staleList) Batches(ctx context.Context, q projections.ListQuery) ([]projections.BatchStatus, string, error) {
	list, next, err := b.Store.Batches(ctx, q)
	if q.Tenant == b.tenant {
		b.once.Do(func() {
			close(b.reading)
			<-b.released
		})
	}
	return list, next, err
}

// A batch that changes while a new client's snapshot is read reaches the
// client in its latest state: the snapshot is old, and the flush that sent the
// change to the others came before the client's first message.
func TestANewSubscriberGetsWhatChangedWhileItsSnapshotWasRead(t *testing.T) {
	es := esmemory.New()
	defer es.Close()
	rm := memory.New()
	slow := &staleList{Store: rm, tenant: "acme", reading: make(chan struct{}), released: make(chan struct{})}
	ctx, runner, hub := runHub(t, es, rm, live.Config{ReadModels: slow})
	ev := projectionstest.NewEvents()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	b := ev.Batch("acme", uuid.NewString(), t0)
	flushed(t, ctx, es, runner, hub, []eventstore.Event{b.Created(1)})
	type result struct {
		c   *live.Client
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := hub.Subscribe(ctx, live.Subscription{Tenant: "acme"})
		done <- result{c, err}
	}()
	<-slow.reading // the snapshot is read: the batch is pending
	if _, err := projectionstest.AppendTo(ctx, es, []eventstore.Event{b.Started()}); err != nil {
		t.Fatal(err)
	}
	// The hub flushes the start while the snapshot's read is slow to return
	// (or, holding its lock, cannot flush until it has: either way).
	time.Sleep(300 * time.Millisecond)
	close(slow.released)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer hub.Unsubscribe(r.c)
	last := ""
	see := func(data []byte) {
		var m struct {
			Batch *projections.BatchStatus `json:"batch"`
		}
		if json.Unmarshal(data, &m) == nil && m.Batch != nil && m.Batch.ID == b.ID {
			last = m.Batch.Status
		}
	}
	for _, data := range r.c.Initial() {
		see(data)
	}
	deadline := time.After(3 * time.Second)
	for last != "processing" {
		select {
		case data := <-r.c.Messages():
			see(data)
		case <-deadline:
			t.Fatalf("the new client last saw the batch %q, want processing", last)
		}
	}
}
