package live_test

import (
	"encoding/json"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/smsbatch/smsbatch/eventstore"
	esmemory "github.com/smsbatch/smsbatch/eventstore/memory"
	"github.com/smsbatch/smsbatch/live"
	"github.com/smsbatch/smsbatch/projections/memory"
	"github.com/smsbatch/smsbatch/projections/projectionstest"
)

// A tenant running more batches at once than a client's queue holds (64) has
// every one of them change within one flush, ten times a second: its
// dashboard's list, reading promptly, was dropped as too slow at each flush,
// reconnected, and was dropped again. It is kept, and learns every batch's
// newest status.
func TestATenantWithManyBatchesChangingAtOnceKeepsItsDashboard(t *testing.T) {
	es := esmemory.New()
	defer es.Close()
	rm := memory.New()
	ctx, runner, hub := runHub(t, es, rm, live.Config{ReadModels: rm})
	ev := projectionstest.NewEvents()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	const n = 300
	batches := make([]*projectionstest.Batch, n)
	var setup []eventstore.Event
	for i := range batches {
		batches[i] = ev.Batch("acme", uuid.NewString(), t0)
		setup = append(setup, batches[i].Created(2), batches[i].Started())
	}
	flushed(t, ctx, es, runner, hub, setup)
	c, err := hub.Subscribe(ctx, live.Subscription{Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Unsubscribe(c)
	// The client reads everything as it comes.
	completed := make(map[string]bool)
	var last eventstore.Position
	outOfOrder := ""
	got := make(chan struct{})
	go func() {
		defer close(got)
		for {
			select {
			case m := <-c.Messages():
				// In the order of positions: a client reconnecting after
				// the last it read must miss nothing.
				if pos, err := live.ParsePosition(positionOf(t, m)); err == nil {
					if pos.Less(last) && outOfOrder == "" {
						outOfOrder = fmt.Sprintf("%s after %s", pos, last)
					}
					last = pos
				}
				var msg struct {
					Type  string `json:"type"`
					Batch struct {
						ID     string `json:"id"`
						Status string `json:"status"`
					} `json:"batch"`
				}
				if json.Unmarshal(m, &msg) == nil && msg.Type == "batch.status" && msg.Batch.Status == "completed" {
					completed[msg.Batch.ID] = true
					if len(completed) == n {
						return
					}
				}
			case <-c.Gone():
				return
			}
		}
	}()
	for round := range 2 {
		var burst []eventstore.Event
		for _, b := range batches {
			burst = append(burst, b.Dispatched(round), b.Sent(round, 1, time.Millisecond))
		}
		if _, err := projectionstest.AppendTo(ctx, es, burst); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	var done []eventstore.Event
	for _, b := range batches {
		done = append(done, b.Completed(2, 0))
	}
	if _, err := projectionstest.AppendTo(ctx, es, done); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-time.After(15 * time.Second):
		t.Fatal("the client did not learn of every batch's completion within 15 s")
	}
	select {
	case <-c.Gone():
		t.Fatalf("a client reading promptly was dropped (why %d) with %d of %d batches' completion seen", c.Why(), len(completed), n)
	default:
	}
	if len(completed) != n {
		t.Fatalf("%d of %d batches' completion seen", len(completed), n)
	}
	if outOfOrder != "" {
		t.Fatalf("messages out of the order of their positions: %s", outOfOrder)
	}
}

// A subscription refused (a batch that does not exist, another tenant's)
// leaves nothing running behind it: each client has a goroutine handing its
// queue over, ended with the client.
func TestARefusedSubscriptionLeavesNothingRunning(t *testing.T) {
	es := esmemory.New()
	defer es.Close()
	rm := memory.New()
	ctx, _, hub := runHub(t, es, rm, live.Config{ReadModels: rm})
	before := runtime.NumGoroutine()
	for i := range 200 {
		sub := live.Subscription{Tenant: "acme", BatchID: uuid.NewString()}
		if i%2 == 0 {
			sub.After = &eventstore.Position{} // a reconnect
		}
		if _, err := hub.Subscribe(ctx, sub); err == nil {
			t.Fatal("a batch that does not exist was subscribed to")
		}
	}
	time.Sleep(100 * time.Millisecond)
	if after := runtime.NumGoroutine(); after > before+20 {
		t.Fatalf("%d goroutines after 200 refused subscriptions, %d before", after, before)
	}
}
