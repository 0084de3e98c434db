package projections_test

import (
	"context"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/eventstore"
	esmemory "github.com/smsbatch/smsbatch/eventstore/memory"
	"github.com/smsbatch/smsbatch/projections/memory"
	"github.com/smsbatch/smsbatch/projections/projectionstest"
)

// slowApply is the lease holder applying a big page (a large create's
// recipients): healthy, just busy for a while.
type slowApply struct {
	sharedAs
	d time.Duration
}

func (s slowApply) Apply(ctx context.Context, events []eventstore.Event) error {
	time.Sleep(s.d)
	return s.sharedAs.Apply(ctx, events)
}

// After a quiet spell of over 10 s, the first events appended are reported as
// a stalled lease holder while the holder is applying them: the "stood still"
// time counts the quiet spell, when nothing waited. Every instance but the
// holder turns /readyz red on the first write after any idle period.
func TestTheFirstWriteAfterAQuietSpellIsNotAStall(t *testing.T) {
	t.Parallel()
	es := esmemory.New()
	defer es.Close()
	shared := &sharedStore{Store: memory.New(), applies: map[int]int{}}
	startLeased(t, es, slowApply{sharedAs{shared, 1}, 1500 * time.Millisecond})
	other := startLeased(t, es, sharedAs{shared, 2})

	time.Sleep(11 * time.Second) // quiet: nothing to apply
	h := projectionstest.NewEvents()
	h.Campaign("acme", "b1", t0, 5)
	pos := appendAll(t, es, h.List())
	end := time.Now().Add(1200 * time.Millisecond) // the holder is applying
	for time.Now().Before(end) {
		if err := other.Health(); err != nil {
			t.Fatalf("%.1fs after the write, while the holder applies it: %v", time.Since(end.Add(-1200*time.Millisecond)).Seconds(), err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	waitFor(t, other, pos)
}
