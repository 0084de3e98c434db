package eventstore_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/eventstoretest"
	"github.com/smsbatch/smsbatch/eventstore/memory"
)

// A Tail is a store like any other to its users.
func TestTailContract(t *testing.T) {
	eventstoretest.Run(t, func(t *testing.T) eventstore.Store {
		return eventstore.NewTail(memory.New(), 8)
	})
}

// countingReads counts the ReadAll calls that reach the store.
type countingReads struct {
	eventstore.Store
	reads atomic.Int64
}

func (c *countingReads) ReadAll(ctx context.Context, after eventstore.Position, max int) ([]eventstore.Event, error) {
	c.reads.Add(1)
	return c.Store.ReadAll(ctx, after, max)
}

// readToEnd reads everything after from, in pages of max.
func readToEnd(t *testing.T, s eventstore.Store, from eventstore.Position, max int) []eventstore.Event {
	t.Helper()
	var out []eventstore.Event
	for {
		page, err := s.ReadAll(context.Background(), from, max)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			return out
		}
		out = append(out, page...)
		from = page[len(page)-1].Position
	}
}

func TestFollowersAtTheEndShareOneRead(t *testing.T) {
	base := &countingReads{Store: memory.New()}
	tail := eventstore.NewTail(base, 1000)
	appendN(t, base, "a", 20)
	first := readToEnd(t, tail, eventstore.Start, 500)
	end := first[len(first)-1].Position

	appendN(t, base, "b", 50)
	base.reads.Store(0)
	var wg sync.WaitGroup
	got := make([][]eventstore.Event, 4)
	for i := range got {
		wg.Go(func() {
			page, err := tail.ReadAll(context.Background(), end, 500)
			if err != nil {
				t.Error(err)
			}
			got[i] = page
		})
	}
	wg.Wait()
	if n := base.reads.Load(); n != 1 {
		t.Errorf("four followers at the end made %d reads of the store, want 1", n)
	}
	want, err := base.Store.ReadAll(context.Background(), end, 500)
	if err != nil {
		t.Fatal(err)
	}
	for i, page := range got {
		if fmt.Sprint(ids(page)) != fmt.Sprint(ids(want)) {
			t.Errorf("follower %d got %v, want %v", i, ids(page), ids(want))
		}
	}
}

func TestFollowersFarBehindReadTheStore(t *testing.T) {
	base := &countingReads{Store: memory.New()}
	tail := eventstore.NewTail(base, 10) // keeps the latest 10 to 15
	appendN(t, base, "a", 5)
	readToEnd(t, tail, eventstore.Start, 100) // the run starts
	for i := range 10 {
		appendN(t, base, fmt.Sprintf("s%d", i), 7)
		readToEnd(t, tail, eventstore.Start, 3) // a slow follower
	}
	want := readToEnd(t, base.Store, eventstore.Start, 1000)
	for _, from := range []int{-1, 0, 10, 40, len(want) - 12, len(want) - 2} {
		after := eventstore.Start
		if from >= 0 {
			after = want[from].Position
		}
		got := readToEnd(t, tail, after, 4)
		if fmt.Sprint(ids(got)) != fmt.Sprint(ids(want[from+1:])) {
			t.Fatalf("after event %d: got %v, want %v", from, ids(got), ids(want[from+1:]))
		}
	}
}

func ids(events []eventstore.Event) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.ID
	}
	return out
}
