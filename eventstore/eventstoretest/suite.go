// Package eventstoretest owns the contract of the event store port: one test suite
// that every eventstore.Store adapter runs from its own tests, so that all of them
// behave alike for the code built on the port.
//
//	func TestContract(t *testing.T) {
//		eventstoretest.Run(t, func(t *testing.T) eventstore.Store { return memory.New() })
//	}
//
// Stores that persist also run RunDurability. The suite names its streams with a
// random prefix and ignores other streams when it reads the global order, so it can
// run against a shared server; event IDs are UUIDs.
package eventstoretest

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/eventstore"
)

// Run runs the contract suite. newStore returns a new store for one subtest, empty
// or at least free of the suite's streams; the suite closes it when the subtest ends
// (adapters may close it again in their own cleanup: Close must be harmless twice).
func Run(t *testing.T, newStore func(t *testing.T) eventstore.Store) {
	tests := []struct {
		name string
		run  func(t *testing.T, f *fixture)
	}{
		{"AppendToNewStreamWithNoStream", testAppendNoStream},
		{"NoStreamOnExistingStreamConflicts", testNoStreamConflicts},
		{"ExactRevision", testExactRevision},
		{"AfterCount", testAfterCount},
		{"AnyAppendsAtTheEnd", testAny},
		{"EmptyAppendIsAnError", testEmptyAppend},
		{"CancelledContextWritesNothing", testCancelledContext},
		{"ReadStreamFromRevisionWithMax", testReadStreamRange},
		{"ReadStreamBackwardNewestFirst", testReadStreamBackward},
		{"ReadStreamBackwardSeesEveryAppend", testReadStreamBackwardSeesEveryAppend},
		{"RevisionsStartAtZeroAndAreContiguous", testRevisionsContiguous},
		{"StoredEventsAreCopies", testCopies},
		{"GlobalOrderAcrossStreams", testGlobalOrder},
		{"ReadAllAfterIsExclusiveAndPaginates", testReadAllExclusivePages},
		{"ConcurrentAppendersToOneStream", testConcurrentOneStream},
		{"ConcurrentAppendersToManyStreams", testConcurrentManyStreams},
		{"SubscriptionDeliversEveryEventInOrder", testSubscriptionInOrder},
		{"SubscriptionResumesAfterPosition", testSubscriptionResume},
		{"SubscriptionStopsOnHandlerError", testSubscriptionHandlerError},
		{"WaitForEventsWakesOnAppend", testWaitWakes},
		{"WaitForEventsReturnsContextError", testWaitContext},
		{"RetriedAppendIsIdempotent", testIdempotentRetry},
		{"BigAppendIsAtomic", testBigAppend},
		{"ClosedStoreReturnsErrClosed", testClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			t.Cleanup(func() { _ = s.Close() })
			tt.run(t, newFixture(t, s))
		})
	}
}

func testAppendNoStream(t *testing.T, f *fixture) {
	stream := f.stream("new")
	evs := events("Created", 3)
	before := time.Now()
	res := f.append(stream, eventstore.NoStream(), evs...)
	after := time.Now()

	if res.NextExpected != 2 {
		t.Errorf("NextExpected = %d, want 2 (revision of the third event)", res.NextExpected)
	}
	got := f.readStream(stream)
	checkStored(t, got, stream, 0, evs)
	if got[2].Position != res.Position {
		t.Errorf("append result position %s, last event read at %s", res.Position, got[2].Position)
	}
	for _, e := range got {
		if e.Time.Location() != time.UTC {
			t.Errorf("event %s: time %s is not in UTC", e.ID, e.Time)
		}
		// Generous bounds: a server's clock may differ a little from ours.
		if e.Time.Before(before.Add(-time.Minute)) || e.Time.After(after.Add(time.Minute)) {
			t.Errorf("event %s: time %s, appended between %s and %s", e.ID, e.Time, before, after)
		}
	}
}

func testNoStreamConflicts(t *testing.T, f *fixture) {
	stream := f.stream("existing")
	first := events("Created", 1)
	f.append(stream, eventstore.NoStream(), first...)
	f.conflict(stream, eventstore.NoStream(), events("Created", 1)...)
	checkStored(t, f.readStream(stream), stream, 0, first)
}

func testExactRevision(t *testing.T, f *fixture) {
	stream := f.stream("exact")
	want := events("Step", 3)
	f.append(stream, eventstore.NoStream(), want...)

	f.conflict(stream, eventstore.Exact(1), events("Step", 1)...) // behind
	f.conflict(stream, eventstore.Exact(3), events("Step", 1)...) // ahead
	next := events("Step", 2)
	res := f.append(stream, eventstore.Exact(2), next...)
	if res.NextExpected != 4 {
		t.Errorf("NextExpected = %d, want 4", res.NextExpected)
	}
	want = append(want, next...)
	f.conflict(stream, eventstore.Exact(2), events("Step", 1)...) // somebody appended first
	checkStored(t, f.readStream(stream), stream, 0, want)

	missing := f.stream("exact-missing")
	f.conflict(missing, eventstore.Exact(0), events("Step", 1)...)
	if got := f.readStream(missing); len(got) != 0 {
		t.Errorf("a rejected append created stream %s with %d events", missing, len(got))
	}
}

func testAfterCount(t *testing.T, f *fixture) {
	stream := f.stream("after")
	want := events("Step", 1)
	f.append(stream, eventstore.After(0), want...)
	f.conflict(stream, eventstore.After(0), events("Step", 1)...)
	f.conflict(stream, eventstore.After(2), events("Step", 1)...)
	more := events("Step", 2)
	if res := f.append(stream, eventstore.After(1), more...); res.NextExpected != 2 {
		t.Errorf("NextExpected = %d, want 2", res.NextExpected)
	}
	f.conflict(stream, eventstore.After(1), events("Step", 1)...)
	checkStored(t, f.readStream(stream), stream, 0, append(want, more...))
}

func testAny(t *testing.T, f *fixture) {
	stream := f.stream("any")
	first := events("Note", 2)
	if res := f.append(stream, eventstore.Any(), first...); res.NextExpected != 1 {
		t.Errorf("Any on a new stream: NextExpected = %d, want 1", res.NextExpected)
	}
	second := events("Note", 1)
	if res := f.append(stream, eventstore.Any(), second...); res.NextExpected != 2 {
		t.Errorf("Any on an existing stream: NextExpected = %d, want 2", res.NextExpected)
	}
	checkStored(t, f.readStream(stream), stream, 0, append(first, second...))
}

func testEmptyAppend(t *testing.T, f *fixture) {
	stream := f.stream("empty")
	for _, evs := range [][]eventstore.EventData{nil, {}} {
		if _, err := f.s.Append(f.ctx, stream, eventstore.NoStream(), evs); err == nil {
			t.Errorf("appending %#v succeeded, want an error", evs)
		}
	}
	// The failed appends must not have created the stream.
	evs := events("Created", 1)
	f.append(stream, eventstore.NoStream(), evs...)
	checkStored(t, f.readStream(stream), stream, 0, evs)
}

func testCancelledContext(t *testing.T, f *fixture) {
	stream := f.stream("cancelled")
	ctx, cancel := context.WithCancel(f.ctx)
	cancel()
	if _, err := f.s.Append(ctx, stream, eventstore.NoStream(), events("Created", 1)); err == nil {
		t.Error("append with a cancelled context succeeded")
	}
	if got := f.readStream(stream); len(got) != 0 {
		t.Errorf("append with a cancelled context wrote %d events", len(got))
	}
	if _, err := f.s.ReadAll(ctx, eventstore.Start, 10); err == nil {
		t.Error("read all with a cancelled context succeeded")
	}
	if _, err := f.s.ReadStreamBackward(ctx, stream, eventstore.StreamEnd, 10); err == nil {
		t.Error("read stream backward with a cancelled context succeeded")
	}
}

func testReadStreamRange(t *testing.T, f *fixture) {
	stream := f.stream("range")
	var want []eventstore.EventData
	for _, n := range []int{3, 3, 4} {
		evs := events("Step", n)
		f.append(stream, eventstore.After(uint64(len(want))), evs...)
		want = append(want, evs...)
	}
	cases := []struct {
		from     uint64
		max      int
		wantFrom int
		wantTo   int // exclusive
	}{
		{0, 100, 0, 10},
		{0, 1, 0, 1},
		{3, 4, 3, 7},
		{8, 10, 8, 10},
		{9, 1, 9, 10},
		{10, 5, 10, 10},
		{1000, 5, 10, 10},
	}
	for _, c := range cases {
		got, err := f.s.ReadStream(f.ctx, stream, c.from, c.max)
		if err != nil {
			t.Fatalf("read stream from %d max %d: %v", c.from, c.max, err)
		}
		checkStored(t, got, stream, uint64(c.wantFrom), want[c.wantFrom:c.wantTo])
	}

	got, err := f.s.ReadStream(f.ctx, f.stream("never-written"), 0, 10)
	if err != nil || len(got) != 0 {
		t.Errorf("read of a missing stream: %d events, error %v; want none and no error", len(got), err)
	}
}

func testRevisionsContiguous(t *testing.T, f *fixture) {
	stream := f.stream("contiguous")
	var want []eventstore.EventData
	var results []eventstore.AppendResult
	for _, n := range []int{1, 2, 5, 1} {
		evs := events("Step", n)
		results = append(results, f.append(stream, eventstore.After(uint64(len(want))), evs...))
		want = append(want, evs...)
	}
	got := f.readStream(stream)
	checkStored(t, got, stream, 0, want)
	for i := 1; i < len(got); i++ {
		if !got[i-1].Position.Less(got[i].Position) {
			t.Errorf("revision %d at %s does not come after revision %d at %s", i, got[i].Position, i-1, got[i-1].Position)
		}
	}
	for _, res := range results {
		if e := got[res.NextExpected]; e.Position != res.Position {
			t.Errorf("append result says revision %d is at %s; read at %s", res.NextExpected, res.Position, e.Position)
		}
	}
}

func testCopies(t *testing.T, f *fixture) {
	stream := f.stream("copies")
	evs := events("Created", 1)
	evs[0].Data = []byte(`{"n":1}`)
	evs[0].Metadata = []byte(`{"m":1}`)
	want := []eventstore.EventData{{ID: evs[0].ID, Type: evs[0].Type, Data: []byte(`{"n":1}`), Metadata: []byte(`{"m":1}`)}}
	f.append(stream, eventstore.NoStream(), evs...)
	evs[0].Data[2], evs[0].Metadata[2] = 'X', 'X'

	got := f.readStream(stream)
	checkStored(t, got, stream, 0, want)
	got[0].Data[2], got[0].Metadata[2] = 'Y', 'Y'
	checkStored(t, f.readStream(stream), stream, 0, want)
}

func testGlobalOrder(t *testing.T, f *fixture) {
	start := f.mark()
	a, b, c := f.stream("a"), f.stream("b"), f.stream("c")
	plan := []struct {
		stream string
		n      int
	}{{a, 2}, {b, 1}, {a, 1}, {c, 3}, {b, 2}, {a, 1}}
	counts := map[string]int{}
	var want []eventstore.EventData
	var results []eventstore.AppendResult
	for _, p := range plan {
		evs := events("Step", p.n)
		results = append(results, f.append(p.stream, eventstore.After(uint64(counts[p.stream])), evs...))
		counts[p.stream] += p.n
		want = append(want, evs...)
	}

	got := f.readAll(start, 100) // checks that positions strictly increase
	if !slices.Equal(ids(got), dataIDs(want)) {
		t.Fatalf("read all: got events %v, want them in append order %v", ids(got), dataIDs(want))
	}
	at := 0
	for i, p := range plan {
		at += p.n
		if last := got[at-1]; last.Position != results[i].Position || last.Stream != p.stream {
			t.Errorf("append %d: result position %s, its last event read at %s in %s", i, results[i].Position, last.Position, last.Stream)
		}
	}
}

func testReadAllExclusivePages(t *testing.T, f *fixture) {
	start := f.mark()
	evs := events("Step", 7)
	f.append(f.stream("x"), eventstore.NoStream(), evs...)
	more := events("Step", 3)
	f.append(f.stream("y"), eventstore.NoStream(), more...)
	want := dataIDs(append(evs, more...))

	for _, size := range []int{1, 3, 4, 100} {
		if got := ids(f.readAll(start, size)); !slices.Equal(got, want) {
			t.Fatalf("read all in pages of %d: got %v, want %v", size, got, want)
		}
	}
	all := f.readAll(start, 100)
	for k, e := range all {
		got := ids(f.readAll(e.Position, 2))
		if !slices.Equal(got, want[k+1:]) {
			t.Fatalf("read all after event %d (%s): got %v, want %v", k, e.Position, got, want[k+1:])
		}
	}

	// A page is bounded by max even when more events follow.
	page, err := f.s.ReadAll(f.ctx, start, 2)
	if err != nil || len(page) == 0 || len(page) > 2 {
		t.Fatalf("read all max 2: %d events, error %v", len(page), err)
	}
}

// testConcurrentOneStream is the fencing guarantee commands rely on: appenders that
// read, decide and append at the revision they read, retrying on conflict, never
// lose or duplicate an event, and each event lands at the revision it was decided on.
func testConcurrentOneStream(t *testing.T, f *fixture) {
	const workers, perWorker = 16, 50
	start := f.mark()
	stream := f.stream("contended")
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	appended := make([][]string, workers)
	for w := range workers {
		wg.Go(func() {
			var known uint64 // events of the stream this worker has read
			for range perWorker {
				id := newID()
				for {
					ev := eventstore.EventData{
						ID:   id,
						Type: "Decided",
						Data: []byte(`{"decidedAt":` + strconv.FormatUint(known, 10) + `}`),
					}
					_, err := f.s.Append(f.ctx, stream, eventstore.After(known), []eventstore.EventData{ev})
					if err == nil {
						known++
						appended[w] = append(appended[w], id)
						break
					}
					if !errors.Is(err, eventstore.ErrConcurrency) {
						errs <- err
						return
					}
					page, err := f.s.ReadStream(f.ctx, stream, known, 1000)
					if err != nil {
						errs <- err
						return
					}
					if len(page) == 0 {
						errs <- errors.New("append conflicted, yet no event after the revision read")
						return
					}
					known += uint64(len(page))
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	got := f.readStream(stream)
	if len(got) != workers*perWorker {
		t.Fatalf("stream holds %d events, want %d", len(got), workers*perWorker)
	}
	seen := map[string]bool{}
	for i, e := range got {
		if e.Revision != uint64(i) {
			t.Fatalf("event %d has revision %d", i, e.Revision)
		}
		if seen[e.ID] {
			t.Fatalf("event %s stored twice", e.ID)
		}
		seen[e.ID] = true
		var d struct{ DecidedAt uint64 }
		decodeData(t, e, &d)
		if d.DecidedAt != e.Revision {
			t.Fatalf("event %s decided at revision %d landed at %d", e.ID, d.DecidedAt, e.Revision)
		}
	}
	for w, list := range appended {
		for _, id := range list {
			if !seen[id] {
				t.Fatalf("worker %d: event %s acknowledged but not stored", w, id)
			}
		}
	}
	global := f.readAll(start, 500)
	count := map[string]int{}
	for _, e := range global {
		count[e.ID]++
	}
	for id := range seen {
		if count[id] != 1 {
			t.Fatalf("read all saw event %s %d times", id, count[id])
		}
	}
}

func testConcurrentManyStreams(t *testing.T, f *fixture) {
	const workers, perWorker = 16, 50
	start := f.mark()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	want := make([][]eventstore.EventData, workers)
	for w := range workers {
		wg.Go(func() {
			stream := f.stream("worker-" + strconv.Itoa(w))
			expected := eventstore.NoStream()
			for range perWorker {
				evs := events("Step", 1)
				res, err := f.s.Append(f.ctx, stream, expected, evs)
				if err != nil {
					errs <- err
					return
				}
				expected = eventstore.Exact(res.NextExpected)
				want[w] = append(want[w], evs...)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("append to the worker's own stream: %v", err)
	}

	for w := range workers {
		stream := f.stream("worker-" + strconv.Itoa(w))
		checkStored(t, f.readStream(stream), stream, 0, want[w])
	}
	global := f.readAll(start, 128)
	if len(global) != workers*perWorker {
		t.Fatalf("read all: %d events, want %d", len(global), workers*perWorker)
	}
	next := map[string]uint64{}
	for _, e := range global {
		if e.Revision != next[e.Stream] {
			t.Fatalf("read all: %s revision %d came when %d was next", e.Stream, e.Revision, next[e.Stream])
		}
		next[e.Stream]++
	}
}

func testSubscriptionInOrder(t *testing.T, f *fixture) {
	start := f.mark()
	a, b := f.stream("a"), f.stream("b")
	var want []eventstore.EventData
	for i := range 5 {
		for _, stream := range []string{a, b} {
			evs := events("Before", 1)
			f.append(stream, eventstore.After(uint64(i)), evs...)
			want = append(want, evs...)
		}
	}

	c := newCollector(f)
	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	caughtUp := make(chan []eventstore.Event, 2)
	done := make(chan error, 1)
	go func() {
		done <- eventstore.SubscribeWith(ctx, f.s, eventstore.SubscribeOptions{
			After:      start,
			BatchSize:  3,
			OnCaughtUp: func() { caughtUp <- c.got() },
		}, c.handle)
	}()
	select {
	case got := <-caughtUp:
		if !slices.Equal(ids(got), dataIDs(want)) {
			t.Fatalf("caught up having handled %v, want %v", ids(got), dataIDs(want))
		}
	case <-time.After(timeout):
		t.Fatalf("subscription did not catch up within %s", timeout)
	}

	later := events("After", 4)
	f.append(a, eventstore.After(5), later[:1]...)
	f.append(b, eventstore.After(5), later[1:]...)
	want = append(want, later...)
	more := events("After", 1)
	f.append(f.stream("c"), eventstore.NoStream(), more...)
	want = append(want, more...)

	got := c.waitFor(len(want))
	if !slices.Equal(ids(got), dataIDs(want)) {
		t.Fatalf("subscription delivered %v, want %v", ids(got), dataIDs(want))
	}
	for i := 1; i < len(got); i++ {
		if !got[i-1].Position.Less(got[i].Position) {
			t.Fatalf("subscription delivered %s after %s", got[i].Position, got[i-1].Position)
		}
	}

	cancel()
	if err := waitErr(t, "cancelled subscription", done); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled subscription returned %v, want context.Canceled", err)
	}
	if n := len(caughtUp); n != 0 {
		t.Errorf("OnCaughtUp called %d more times, want once", n)
	}
}

func testSubscriptionResume(t *testing.T, f *fixture) {
	f.mark()
	stream := f.stream("resume")
	evs := events("Step", 6)
	f.append(stream, eventstore.NoStream(), evs[:3]...)
	f.append(stream, eventstore.Exact(2), evs[3:]...)
	stored := f.readStream(stream)
	resumeAt := stored[2].Position // the last event a previous run handled

	c := newCollector(f)
	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	caughtUp := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- eventstore.SubscribeWith(ctx, f.s, eventstore.SubscribeOptions{
			After:      resumeAt,
			OnCaughtUp: func() { close(caughtUp) },
		}, c.handle)
	}()
	select {
	case <-caughtUp:
	case <-time.After(timeout):
		t.Fatalf("subscription did not catch up within %s", timeout)
	}
	if got, want := ids(c.got()), dataIDs(evs[3:]); !slices.Equal(got, want) {
		t.Fatalf("resumed after revision 2, got %v, want %v", got, want)
	}

	later := events("Step", 2)
	f.append(stream, eventstore.Exact(5), later...)
	want := dataIDs(append(evs[3:], later...))
	if got := ids(c.waitFor(len(want))); !slices.Equal(got, want) {
		t.Fatalf("resumed subscription delivered %v, want %v", got, want)
	}
	cancel()
	if err := waitErr(t, "cancelled subscription", done); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled subscription returned %v, want context.Canceled", err)
	}
}

func testSubscriptionHandlerError(t *testing.T, f *fixture) {
	start := f.mark()
	f.append(f.stream("boom"), eventstore.NoStream(), events("Step", 3)...)
	errBoom := errors.New("projection failed")
	done := make(chan error, 1)
	go func() {
		done <- eventstore.Subscribe(f.ctx, f.s, start, 2, func(_ context.Context, page []eventstore.Event) error {
			for _, e := range page {
				if f.ours(e) {
					return errBoom
				}
			}
			return nil
		})
	}()
	err := waitErr(t, "subscription with a failing handler", done)
	if !errors.Is(err, errBoom) {
		t.Fatalf("subscription returned %v, want the handler's error", err)
	}
}

func testWaitWakes(t *testing.T, f *fixture) {
	head := f.mark()
	if err := f.s.WaitForEvents(f.ctx, eventstore.Start); err != nil {
		t.Fatalf("wait with events already after the position: %v", err)
	}

	found := make(chan error, 1)
	go func() {
		pos := head
		for {
			if err := f.s.WaitForEvents(f.ctx, pos); err != nil {
				found <- err
				return
			}
			page, err := f.s.ReadAll(f.ctx, pos, 100)
			if err != nil {
				found <- err
				return
			}
			for _, e := range page {
				if f.ours(e) {
					found <- nil
					return
				}
				pos = e.Position // skip other tests' events on a shared server
			}
		}
	}()
	time.Sleep(20 * time.Millisecond) // let the waiter block first
	appendedAt := time.Now()
	f.append(f.stream("wake"), eventstore.NoStream(), events("Step", 1)...)
	if err := waitErr(t, "WaitForEvents after an append", found); err != nil {
		t.Fatalf("waiting for the append: %v", err)
	}
	if d := time.Since(appendedAt); d > 2*time.Second {
		t.Errorf("the waiter saw the append after %s; want it promptly", d)
	}
}

func testWaitContext(t *testing.T, f *fixture) {
	head := f.mark()
	wait := func(ctx context.Context) <-chan error {
		errs := make(chan error, 1)
		go func() {
			pos := head
			for {
				// Spurious returns are allowed: wait again after reading.
				if err := f.s.WaitForEvents(ctx, pos); err != nil {
					errs <- err
					return
				}
				page, err := f.s.ReadAll(ctx, pos, 100)
				if err != nil {
					errs <- err
					return
				}
				if len(page) > 0 {
					pos = page[len(page)-1].Position
				}
			}
		}()
		return errs
	}

	ctx, cancel := context.WithCancel(f.ctx)
	errs := wait(ctx)
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := waitErr(t, "WaitForEvents after cancel", errs); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitForEvents after cancel returned %v, want context.Canceled", err)
	}

	ctx, cancel = context.WithTimeout(f.ctx, 30*time.Millisecond)
	defer cancel()
	if err := waitErr(t, "WaitForEvents past its deadline", wait(ctx)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitForEvents past its deadline returned %v, want context.DeadlineExceeded", err)
	}
}

// testIdempotentRetry: an append whose answer was lost is retried with the same
// event IDs and expectation; the retry succeeds with the original result and
// nothing is written twice, even when others have appended since.
func testIdempotentRetry(t *testing.T, f *fixture) {
	start := f.mark()
	stream := f.stream("retry")
	evs := events("Step", 3)
	first := f.append(stream, eventstore.NoStream(), evs...)
	if again := f.append(stream, eventstore.NoStream(), evs...); again != first {
		t.Errorf("retried append returned %+v, the original returned %+v", again, first)
	}

	other := events("Step", 1)
	f.append(stream, eventstore.Exact(2), other...)
	if again := f.append(stream, eventstore.NoStream(), evs...); again != first {
		t.Errorf("append retried after another one returned %+v, the original returned %+v", again, first)
	}

	want := append(evs, other...)
	checkStored(t, f.readStream(stream), stream, 0, want)
	if got := ids(f.readAll(start, 100)); !slices.Equal(got, dataIDs(want)) {
		t.Errorf("read all after retries: got %v, want %v", got, dataIDs(want))
	}
}

func testBigAppend(t *testing.T, f *fixture) {
	const n, size = 1000, 200
	start := f.mark()
	stream := f.stream("big")
	evs := make([]eventstore.EventData, n)
	for i := range evs {
		data := make([]byte, size)
		copy(data, `{"pad":"`)
		for j := 8; j < size-2; j++ {
			data[j] = 'a' + byte((i+j)%26)
		}
		copy(data[size-2:], `"}`)
		evs[i] = eventstore.EventData{ID: newID(), Type: "Page", Data: data}
	}

	// A reader running during the append must see none of it or all of it.
	stop := make(chan struct{})
	seen := make(chan []int, 1)
	go func() {
		var counts []int
		defer func() { seen <- counts }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			page, err := f.s.ReadStream(f.ctx, stream, 0, 2*n)
			if err != nil {
				return
			}
			counts = append(counts, len(page))
		}
	}()
	res := f.append(stream, eventstore.NoStream(), evs...)
	close(stop)
	for _, c := range <-seen {
		if c != 0 && c != n {
			t.Fatalf("a reader saw %d of the %d events of one append", c, n)
		}
	}

	if res.NextExpected != n-1 {
		t.Errorf("NextExpected = %d, want %d", res.NextExpected, n-1)
	}
	checkStored(t, f.readStream(stream), stream, 0, evs)
	if got := f.readAll(start, 256); !slices.Equal(ids(got), dataIDs(evs)) {
		t.Fatalf("read all: %d events, want the %d appended in order", len(got), n)
	}
}

func testClosed(t *testing.T, f *fixture) {
	head := f.mark()
	stream := f.stream("closed")
	f.append(stream, eventstore.NoStream(), events("Step", 1)...)

	waiting := make(chan error, 1)
	go func() {
		pos := head
		for {
			if err := f.s.WaitForEvents(f.ctx, pos); err != nil {
				waiting <- err
				return
			}
			page, err := f.s.ReadAll(f.ctx, pos, 100)
			if err != nil {
				waiting <- err
				return
			}
			if len(page) > 0 {
				pos = page[len(page)-1].Position
			}
		}
	}()
	caughtUp := make(chan struct{})
	subscribed := make(chan error, 1)
	go func() {
		subscribed <- eventstore.SubscribeWith(f.ctx, f.s, eventstore.SubscribeOptions{
			After:      head,
			OnCaughtUp: func() { close(caughtUp) },
		}, func(context.Context, []eventstore.Event) error { return nil })
	}()
	select {
	case <-caughtUp:
	case <-time.After(timeout):
		t.Fatalf("subscription did not catch up within %s", timeout)
	}
	time.Sleep(20 * time.Millisecond) // let the waiter block

	if err := f.s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := waitErr(t, "WaitForEvents blocked during Close", waiting); !errors.Is(err, eventstore.ErrClosed) {
		t.Errorf("WaitForEvents blocked during Close returned %v, want ErrClosed", err)
	}
	if err := waitErr(t, "subscription running during Close", subscribed); !errors.Is(err, eventstore.ErrClosed) {
		t.Errorf("subscription running during Close returned %v, want ErrClosed", err)
	}

	if _, err := f.s.Append(f.ctx, stream, eventstore.Any(), events("Step", 1)); !errors.Is(err, eventstore.ErrClosed) {
		t.Errorf("append after Close: %v, want ErrClosed", err)
	}
	if _, err := f.s.ReadStream(f.ctx, stream, 0, 10); !errors.Is(err, eventstore.ErrClosed) {
		t.Errorf("read stream after Close: %v, want ErrClosed", err)
	}
	if _, err := f.s.ReadStreamBackward(f.ctx, stream, eventstore.StreamEnd, 10); !errors.Is(err, eventstore.ErrClosed) {
		t.Errorf("read stream backward after Close: %v, want ErrClosed", err)
	}
	if _, err := f.s.ReadAll(f.ctx, eventstore.Start, 10); !errors.Is(err, eventstore.ErrClosed) {
		t.Errorf("read all after Close: %v, want ErrClosed", err)
	}
	if err := f.s.WaitForEvents(f.ctx, eventstore.Start); !errors.Is(err, eventstore.ErrClosed) {
		t.Errorf("wait for events after Close: %v, want ErrClosed", err)
	}
	if err := f.s.Close(); err != nil && !errors.Is(err, eventstore.ErrClosed) {
		t.Errorf("second Close: %v, want nil or ErrClosed", err)
	}
}
