package projections_test

import (
	"context"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	esmemory "github.com/smsbatch/smsbatch/eventstore/memory"
	"github.com/smsbatch/smsbatch/projections/memory"
	"github.com/smsbatch/smsbatch/projections/projectionstest"
)

// One event the projections cannot decode stops every read model: the lease
// holder retries it for ever. Its /readyz turns red; every other instance
// sharing the read models follows a checkpoint that no longer moves, and must
// say so too, or a load balancer keeps sending users to instances whose reads,
// read-your-writes waits and live updates are all frozen.
func TestStuckReadModelsAreVisibleOnEveryInstance(t *testing.T) {
	t.Parallel()
	es := esmemory.New()
	defer es.Close()
	shared := &sharedStore{Store: memory.New(), applies: map[int]int{}}
	holder := startLeased(t, es, sharedAs{shared, 1})
	other := startLeased(t, es, sharedAs{shared, 2})

	h := projectionstest.NewEvents()
	h.AppendRaw(domain.BatchStream("damaged"), domain.TypeBatchCreated, []byte(`{"batchId":"damaged","total":"many"}`), t0)
	h.Campaign("acme", "after", t0, 5)
	appendAll(t, es, h.List())

	time.Sleep(11 * time.Second) // a follower failing for 10 s is unhealthy
	if _, err := shared.Store.Batch(t.Context(), "acme", "after"); err == nil {
		t.Fatal("the batch after the damaged event was applied: nothing is stuck")
	}
	if err := holder.Health(); err == nil {
		t.Error("the lease holder's runner is healthy while it cannot apply")
	} else {
		t.Logf("holder: %v", err)
	}
	if err := other.Health(); err == nil {
		t.Errorf("the other instance's runner is healthy while the read models it serves have not moved for 11 s with events waiting (at %s, log at %s)",
			other.Position(), h.Last())
	}
}

// hanging is the shared store as the lease holder sees it once its applies
// hang (a process frozen with its connections open, a write that never returns).
type hanging struct {
	sharedAs
	hang chan struct{}
}

func (h hanging) Apply(ctx context.Context, events []eventstore.Event) error {
	select {
	case <-h.hang:
	case <-ctx.Done():
		return ctx.Err()
	}
	return h.sharedAs.Apply(ctx, events)
}

// The lease holder hangs in an apply without losing its lease: the other
// instances' read models stand still and they must say so.
func TestAHungHolderIsVisibleOnTheOtherInstances(t *testing.T) {
	t.Parallel()
	es := esmemory.New()
	defer es.Close()
	shared := &sharedStore{Store: memory.New(), applies: map[int]int{}}
	hang := make(chan struct{})
	defer close(hang)
	holder := startLeased(t, es, hanging{sharedAs{shared, 1}, hang})
	other := startLeased(t, es, sharedAs{shared, 2})

	h := projectionstest.NewEvents()
	h.Campaign("acme", "b1", t0, 5)
	pos := appendAll(t, es, h.List())
	time.Sleep(11 * time.Second)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := other.WaitFor(ctx, pos); err == nil {
		t.Fatal("the events were applied: nothing hangs")
	}
	t.Logf("holder health: %v", holder.Health())
	if err := other.Health(); err == nil {
		t.Error("the other instance is healthy while the read models it serves have stood still for 11 s with events waiting")
	} else {
		t.Logf("other: %v", err)
	}
}
