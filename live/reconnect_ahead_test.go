package live_test

import (
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	esmemory "github.com/smsbatch/smsbatch/eventstore/memory"
	"github.com/smsbatch/smsbatch/live"
	"github.com/smsbatch/smsbatch/projections/memory"
	"github.com/smsbatch/smsbatch/projections/projectionstest"
)

// A dashboard reconnects with ?after= the last position it saw. When the event
// store is behind that position (the data directory was restored from a backup,
// or events.db replaced, as the README's integrity section tells operators to
// do), the client must still be told the batch's current status and its
// changes; it must not be left silent until the log happens to pass a position
// from another history.
func TestAReconnectWithAPositionAheadOfTheLogStillGetsTheStatus(t *testing.T) {
	es := esmemory.New()
	defer es.Close()
	rm := memory.New()
	ctx, runner, hub := runHub(t, es, rm, live.Config{ReadModels: rm, StatusInterval: 10 * time.Millisecond})
	ev := projectionstest.NewEvents()
	b := ev.Batch("acme", uuid.NewString(), time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	pos := flushed(t, ctx, es, runner, hub, []eventstore.Event{b.Created(2), b.Started()})

	// The position the browser kept from before the restore.
	ahead := eventstore.Position{Commit: pos.Commit + 1000}
	c, err := hub.Subscribe(ctx, live.Subscription{Tenant: "acme", BatchID: b.ID, After: &ahead})
	if err != nil {
		t.Logf("refused: %v (a refusal the client can act on is fine)", err)
		return
	}
	defer hub.Unsubscribe(c)
	for _, m := range c.Initial() {
		if containsAll(string(m), b.ID, `"status":"`+string(domain.StatusProcessing)+`"`) {
			return
		}
	}
	// The batch moves on; the client must hear of it.
	if _, err := projectionstest.AppendTo(ctx, es, []eventstore.Event{b.Sent(0, 1, time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-c.Messages():
		t.Logf("got %s", m)
	case <-time.After(3 * time.Second):
		t.Fatalf("a client reconnecting with after=%s (the log is at %s) got no status and no update", live.FormatPosition(ahead), live.FormatPosition(pos))
	}
}
