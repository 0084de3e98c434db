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

// countingWaits counts the WaitForEvents calls that reach the store.
type countingWaits struct {
	eventstore.Store
	waits atomic.Int64
}

func (c *countingWaits) WaitForEvents(ctx context.Context, after eventstore.Position) error {
	c.waits.Add(1)
	return c.Store.WaitForEvents(ctx, after)
}

// joined waits until n followers have joined the tail's wait.
func joined(t *testing.T, tail *eventstore.Tail, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for eventstore.TailJoined(tail) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d followers joined the wait, want %d", eventstore.TailJoined(tail), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// woken waits for n waits to end without error.
func woken(t *testing.T, errs <-chan error, n int) {
	t.Helper()
	for range n {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a follower still waits after an append")
		}
	}
}

// On PostgreSQL every wait on the store is a query for every wake-up: four
// followers of one instance at the end ask it once.
func TestFollowersAtTheEndShareOneWait(t *testing.T) {
	base := &countingWaits{Store: memory.New()}
	tail := eventstore.NewTail(base, 100)
	appendN(t, base, "a", 3)
	end := readToEnd(t, tail, eventstore.Start, 10)[2].Position

	errs := make(chan error, 4)
	for range 4 {
		go func() { errs <- tail.WaitForEvents(context.Background(), end) }()
	}
	joined(t, tail, 3)
	appendN(t, base, "b", 1)
	woken(t, errs, 4)
	if n := base.waits.Load(); n != 1 {
		t.Errorf("four followers waiting at the end made %d waits on the store, want 1", n)
	}
	if got := readToEnd(t, tail, end, 10); len(got) != 1 {
		t.Errorf("after the wait the tail reads %d events, want 1", len(got))
	}
}

// A follower that stops waiting (its context ends) does not end the wait of
// the others that joined it, and its own context's end is only its own.
func TestAFollowerThatStopsWaitingLeavesTheOthersWaiting(t *testing.T) {
	base := &countingWaits{Store: memory.New()}
	tail := eventstore.NewTail(base, 100)
	appendN(t, base, "a", 1)
	end := readToEnd(t, tail, eventstore.Start, 10)[0].Position

	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { first <- tail.WaitForEvents(ctx, end) }()
	for base.waits.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	others := make(chan error, 2)
	for range 2 {
		go func() { others <- tail.WaitForEvents(context.Background(), end) }()
	}
	joined(t, tail, 2)
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("the follower whose context ended got %v, want context.Canceled", err)
	}
	select {
	case err := <-others:
		t.Fatalf("a follower stopped waiting with %v when another's context ended", err)
	case <-time.After(50 * time.Millisecond):
	}
	appendN(t, base, "b", 1)
	woken(t, others, 2)
}

// Following the log at its end does not allocate a new run: the run moves
// within its array, and keeps answering as the store does.
func TestTheRunKeepsItsArray(t *testing.T) {
	const size = 64
	base := memory.New()
	tail := eventstore.NewTail(base, size)
	appendN(t, base, "a", 1)
	end := readToEnd(t, tail, eventstore.Start, 10)[0].Position

	const reads, perRead = 101, 7 // AllocsPerRun's 100 and its warm-up
	var pages [][]eventstore.Event
	for c := end.Commit + 1; len(pages) < reads; c += perRead {
		page := make([]eventstore.Event, perRead)
		for i := range page {
			at := eventstore.Position{Commit: c + uint64(i)}
			page[i] = eventstore.Event{ID: fmt.Sprint(at.Commit), Stream: "s", Type: "T", Position: at}
		}
		pages = append(pages, page)
	}
	readOn := func() {
		page := pages[0]
		pages = pages[1:]
		eventstore.TailExtend(tail, end, page)
		end = page[len(page)-1].Position
	}
	if allocs := testing.AllocsPerRun(100, readOn); allocs != 0 {
		t.Errorf("a read on at the end allocated %.1f times for the run, want 0", allocs)
	}
	latest := func() {
		t.Helper()
		var want []string
		for c := end.Commit - size + 1; c <= end.Commit; c++ {
			want = append(want, fmt.Sprint(c))
		}
		from := eventstore.Position{Commit: end.Commit - size}
		got, err := tail.ReadAll(context.Background(), from, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(ids(got)) != fmt.Sprint(want) {
			t.Errorf("after %s the run answered %v, want %v", from, ids(got), want)
		}
	}
	// The latest size events are answered from the run, as they were read.
	latest()
	// So they are after one read longer than the run's whole array.
	long := make([]eventstore.Event, 3*size)
	for i := range long {
		at := eventstore.Position{Commit: end.Commit + 1 + uint64(i)}
		long[i] = eventstore.Event{ID: fmt.Sprint(at.Commit), Stream: "s", Type: "T", Position: at}
	}
	eventstore.TailExtend(tail, end, long)
	end = long[len(long)-1].Position
	latest()
}
