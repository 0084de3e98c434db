package postgres_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/postgres"
	"github.com/smsbatch/smsbatch/internal/pgtest"
)

// heldStore is a store with one writer that the test can hold, so that appends
// queue up behind it and are written as one group when it lets go.
type heldStore struct {
	*postgres.Store
	t *testing.T

	mu      sync.Mutex
	armed   bool
	entered chan struct{}
	release chan struct{}
	sizes   []int
}

func openHeld(t *testing.T) *heldStore {
	h := &heldStore{t: t, Store: open(t, pgtest.Database(t), postgres.Options{Writers: 1})}
	postgres.SetGroupHook(h.Store, func(size int) {
		h.mu.Lock()
		h.sizes = append(h.sizes, size)
		armed, entered, release := h.armed, h.entered, h.release
		h.armed = false
		h.mu.Unlock()
		if armed {
			close(entered)
			<-release
		}
	})
	return h
}

// hold makes the writer stop before the next group (an append of one event to a
// stream of its own) until the returned release is called. The appends made before
// release, each queued before the next is made, are then written in one group, in
// the order they were made.
func (h *heldStore) hold() (queue func(stream string, expected eventstore.ExpectedRevision, evs []eventstore.EventData) <-chan appendOutcome, release func()) {
	h.t.Helper()
	h.mu.Lock()
	h.armed, h.entered, h.release = true, make(chan struct{}), make(chan struct{})
	entered, rel := h.entered, h.release
	h.mu.Unlock()
	blocker := h.queue(h.t.Context(), "blocker-"+uuid.NewString(), eventstore.NoStream(), stepEvents(1))
	<-entered
	queued := 0
	queue = func(stream string, expected eventstore.ExpectedRevision, evs []eventstore.EventData) <-chan appendOutcome {
		out := h.queue(h.t.Context(), stream, expected, evs)
		queued++
		deadline := time.Now().Add(10 * time.Second)
		for postgres.QueuedAppends(h.Store) < queued {
			if time.Now().After(deadline) {
				h.t.Fatalf("append %d did not reach the queue", queued)
			}
			time.Sleep(time.Millisecond)
		}
		return out
	}
	release = func() {
		close(rel)
		if o := <-blocker; o.err != nil {
			h.t.Fatalf("the append holding the writer: %v", o.err)
		}
	}
	return queue, release
}

// groupSizes returns the sizes of the groups written so far.
func (h *heldStore) groupSizes() []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.sizes)
}

type appendOutcome struct {
	res eventstore.AppendResult
	err error
}

func (h *heldStore) queue(ctx context.Context, stream string, expected eventstore.ExpectedRevision, evs []eventstore.EventData) <-chan appendOutcome {
	out := make(chan appendOutcome, 1)
	go func() {
		res, err := h.Append(ctx, stream, expected, evs)
		out <- appendOutcome{res, err}
	}()
	return out
}

func stepEvents(n int) []eventstore.EventData {
	evs := make([]eventstore.EventData, n)
	for i := range evs {
		evs[i] = eventstore.EventData{ID: uuid.NewString(), Type: "Step", Data: []byte(`{}`)}
	}
	return evs
}

func mustAppend(t *testing.T, s eventstore.Store, stream string, expected eventstore.ExpectedRevision, evs []eventstore.EventData) eventstore.AppendResult {
	t.Helper()
	res, err := s.Append(t.Context(), stream, expected, evs)
	if err != nil {
		t.Fatalf("append to %s: %v", stream, err)
	}
	return res
}

func checkStream(t *testing.T, s eventstore.Store, stream string, want []eventstore.EventData) {
	t.Helper()
	got, err := s.ReadStream(t.Context(), stream, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(eventIDs(got), dataIDs(want)) {
		t.Errorf("stream %s holds %v, want %v", stream, eventIDs(got), dataIDs(want))
	}
}

func dataIDs(evs []eventstore.EventData) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.ID
	}
	return out
}

func hasGroupOf(sizes []int, n int) bool { return slices.Contains(sizes, n) }

// TestGroupedWrongRevisionFailsOnlyItsAppend: appends written in one transaction
// are checked each against its own stream, in the order they came: one at a wrong
// revision fails alone, and one after it on the same stream at the right revision
// goes through, as do those to other streams.
func TestGroupedWrongRevisionFailsOnlyItsAppend(t *testing.T) {
	h := openHeld(t)
	first := stepEvents(1)
	mustAppend(t, h, "a", eventstore.NoStream(), first)

	queue, release := h.hold()
	wrong, aNext, b, c := stepEvents(1), stepEvents(2), stepEvents(1), stepEvents(3)
	outWrong := queue("a", eventstore.Exact(5), wrong)
	outANext := queue("a", eventstore.Exact(0), aNext)
	outB := queue("b", eventstore.NoStream(), b)
	outC := queue("c", eventstore.NoStream(), c)
	release()

	if o := <-outWrong; !errors.Is(o.err, eventstore.ErrConcurrency) {
		t.Errorf("append at a wrong revision: %v, want ErrConcurrency", o.err)
	}
	var results []eventstore.AppendResult
	for name, out := range map[string]<-chan appendOutcome{"a at 0": outANext, "b": outB, "c": outC} {
		o := <-out
		if o.err != nil {
			t.Errorf("append to %s in the group of a failing one: %v", name, o.err)
		}
		results = append(results, o.res)
	}
	if !hasGroupOf(h.groupSizes(), 4) {
		t.Fatalf("group sizes %v: the four appends were not written together; the test proves nothing", h.groupSizes())
	}
	for _, r := range results[1:] {
		if r.Position.Commit != results[0].Position.Commit {
			t.Errorf("appends of one group committed in transactions %d and %d", results[0].Position.Commit, r.Position.Commit)
		}
	}
	checkStream(t, h, "a", append(first, aNext...))
	checkStream(t, h, "b", b)
	checkStream(t, h, "c", c)
}

// TestGroupedReusedIDFailsOnlyItsAppend: an append reusing a stored event ID fails
// the group's transaction; the others are then written each on its own and only
// that one fails.
func TestGroupedReusedIDFailsOnlyItsAppend(t *testing.T) {
	h := openHeld(t)
	stored := stepEvents(1)
	mustAppend(t, h, "x", eventstore.NoStream(), stored)

	queue, release := h.hold()
	d, e, f := stepEvents(1), stepEvents(1), stepEvents(2)
	outE := queue("e", eventstore.NoStream(), e)
	outD := queue("d", eventstore.NoStream(), []eventstore.EventData{d[0], stored[0]})
	outF := queue("f", eventstore.Any(), f)
	release()

	if o := <-outD; !errors.Is(o.err, eventstore.ErrConcurrency) {
		t.Errorf("append reusing a stored ID: %v, want ErrConcurrency", o.err)
	}
	for name, out := range map[string]<-chan appendOutcome{"e": outE, "f": outF} {
		if o := <-out; o.err != nil {
			t.Errorf("append to %s in the group of one reusing an ID: %v", name, o.err)
		}
	}
	if !hasGroupOf(h.groupSizes(), 3) {
		t.Fatalf("group sizes %v: the three appends were not written together; the test proves nothing", h.groupSizes())
	}
	checkStream(t, h, "d", nil)
	checkStream(t, h, "e", e)
	checkStream(t, h, "f", f)
	checkStream(t, h, "x", stored)
}

// TestGroupedRetryIsRecognised: appends retried after a lost answer, with the same
// event IDs, are answered with the first result when they land in a group, whether
// their expectation no longer holds (NoStream) or still does (Any), and nothing is
// written twice.
func TestGroupedRetryIsRecognised(t *testing.T) {
	h := openHeld(t)
	r1, r2 := stepEvents(3), stepEvents(2)
	first1 := mustAppend(t, h, "r1", eventstore.NoStream(), r1)
	first2 := mustAppend(t, h, "r2", eventstore.Any(), r2)

	queue, release := h.hold()
	g, next := stepEvents(1), stepEvents(1)
	outRetry1 := queue("r1", eventstore.NoStream(), r1)
	outNext := queue("r1", eventstore.Exact(first1.NextExpected), next)
	outRetry2 := queue("r2", eventstore.Any(), r2)
	outG := queue("g", eventstore.NoStream(), g)
	release()

	if o := <-outRetry1; o.err != nil || o.res != first1 {
		t.Errorf("retried NoStream append in a group: %+v, %v; the first returned %+v", o.res, o.err, first1)
	}
	if o := <-outRetry2; o.err != nil || o.res != first2 {
		t.Errorf("retried Any append in a group: %+v, %v; the first returned %+v", o.res, o.err, first2)
	}
	for name, out := range map[string]<-chan appendOutcome{"r1 next": outNext, "g": outG} {
		if o := <-out; o.err != nil {
			t.Errorf("append to %s in the group of retries: %v", name, o.err)
		}
	}
	if !hasGroupOf(h.groupSizes(), 4) {
		t.Fatalf("group sizes %v: the four appends were not written together; the test proves nothing", h.groupSizes())
	}
	checkStream(t, h, "r1", append(r1, next...))
	checkStream(t, h, "r2", r2)
	checkStream(t, h, "g", g)
}

// TestQueuedAppendHonoursItsContext: an append waiting for a busy writer returns
// when its context ends, and is then not written.
func TestQueuedAppendHonoursItsContext(t *testing.T) {
	h := openHeld(t)
	_, release := h.hold()
	ctx, cancel := context.WithCancel(t.Context())
	evs := stepEvents(1)
	out := make(chan appendOutcome, 1)
	go func() {
		res, err := h.Append(ctx, "gone", eventstore.NoStream(), evs)
		out <- appendOutcome{res, err}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for postgres.QueuedAppends(h.Store) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the append did not reach the queue")
		}
		time.Sleep(time.Millisecond)
	}
	other := stepEvents(1)
	outOther := h.queue(t.Context(), "kept", eventstore.NoStream(), other)
	cancel()
	select {
	case o := <-out:
		if !errors.Is(o.err, context.Canceled) {
			t.Errorf("append whose context ended while queued: %v, want context.Canceled", o.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("an append whose context ended kept waiting for the writer")
	}
	release()
	if o := <-outOther; o.err != nil {
		t.Fatal(o.err)
	}
	checkStream(t, h, "gone", nil)
	checkStream(t, h, "kept", other)
}

// TestGroupedAppendsAreDeliveredInOrder: 16 appenders writing through group
// commit, to streams of their own at exact revisions and to shared streams, while a
// subscription follows. It must see every acknowledged event once, in an order
// that never goes back, with every stream's revisions in order and none missing;
// and groups of more than one append must have formed.
func TestGroupedAppendsAreDeliveredInOrder(t *testing.T) {
	s := open(t, pgtest.Database(t), postgres.Options{})
	var sizesMu sync.Mutex
	grouped := 0
	postgres.SetGroupHook(s, func(size int) {
		if size > 1 {
			sizesMu.Lock()
			grouped++
			sizesMu.Unlock()
		}
	})
	rec := subscribe(t, s)

	const workers, appendsPerWorker, sharedStreams = 16, 40, 3
	var (
		mu    sync.Mutex
		acked = map[string]bool{}
		wg    sync.WaitGroup
	)
	for w := range workers {
		wg.Go(func() {
			own := "own-" + strconv.Itoa(w)
			expected := eventstore.NoStream()
			for i := range appendsPerWorker {
				evs := stepEvents(1 + i%3)
				var err error
				if i%2 == 0 {
					var res eventstore.AppendResult
					res, err = s.Append(t.Context(), own, expected, evs)
					expected = eventstore.Exact(res.NextExpected)
				} else {
					_, err = s.Append(t.Context(), "shared-"+strconv.Itoa(i%sharedStreams), eventstore.Any(), evs)
				}
				if err != nil {
					t.Errorf("append: %v", err)
					return
				}
				mu.Lock()
				for _, e := range evs {
					acked[e.ID] = true
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	rec.waitFor(t, len(acked), 30*time.Second)
	time.Sleep(2 * postgres.DefaultPollInterval)
	got := rec.got()
	if len(got) != len(acked) {
		t.Fatalf("delivered %d events, %d acknowledged", len(got), len(acked))
	}
	next := map[string]uint64{}
	for i, e := range got {
		if !acked[e.ID] {
			t.Fatalf("delivered event %s that no append acknowledged", e.ID)
		}
		delete(acked, e.ID)
		if e.Revision != next[e.Stream] {
			t.Fatalf("event %d: %s revision %d delivered when revision %d was next", i, e.Stream, e.Revision, next[e.Stream])
		}
		next[e.Stream]++
		if i > 0 && !got[i-1].Position.Less(e.Position) {
			t.Fatalf("event %d at %s delivered after one at %s", i, e.Position, got[i-1].Position)
		}
	}
	sizesMu.Lock()
	defer sizesMu.Unlock()
	if grouped == 0 {
		t.Fatal("no group of more than one append formed: the test proves nothing about group commit")
	}
	t.Logf("%d events delivered once in order; %d groups of more than one append", len(got), grouped)
}

// TestSlowTransactionDoesNotHoldOtherAppends: while one transaction of appends is
// held open, a small append waits a little behind it, then goes in a transaction of
// its own (up to Options.Writers) instead of waiting for it.
func TestSlowTransactionDoesNotHoldOtherAppends(t *testing.T) {
	s := open(t, pgtest.Database(t), postgres.Options{Writers: 2})
	entered, release := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	postgres.SetGroupHook(s, func(int) {
		if first.CompareAndSwap(false, true) {
			close(entered)
			<-release
		}
	})
	held := make(chan error, 1)
	go func() {
		_, err := s.Append(t.Context(), "held", eventstore.NoStream(), stepEvents(1))
		held <- err
	}()
	<-entered
	defer close(release)
	done := make(chan error, 1)
	go func() {
		_, err := s.Append(t.Context(), "other", eventstore.NoStream(), stepEvents(1))
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("an append waited for a held transaction of appends of other streams")
	}
	select {
	case err := <-held:
		t.Fatalf("the held append returned (%v) before it was released", err)
	default:
	}
}

// An append willing to wait for company (eventstore.WithCommitDelay) is held
// while nothing else comes, up to its delay; an append that may not wait is
// written at once and takes the waiting one into its transaction.
func TestAppendsWaitForCompanyOnlyWhenAllMay(t *testing.T) {
	s := open(t, pgtest.Database(t), postgres.Options{})
	var mu sync.Mutex
	var sizes []int
	postgres.SetGroupHook(s, func(size int) {
		mu.Lock()
		sizes = append(sizes, size)
		mu.Unlock()
	})
	ctx := t.Context()

	const delay = 300 * time.Millisecond
	began := time.Now()
	if _, err := s.Append(eventstore.WithCommitDelay(ctx, delay), "alone", eventstore.Any(), stepEvents(1)); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(began); waited < delay {
		t.Fatalf("append answered after %s, before its %s delay: it did not wait for company", waited, delay)
	}

	waiting := make(chan error, 1)
	go func() {
		_, err := s.Append(eventstore.WithCommitDelay(ctx, time.Hour), "willing", eventstore.Any(), stepEvents(1))
		waiting <- err
	}()
	for postgres.QueuedAppends(s) == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case err := <-waiting:
		t.Fatalf("the willing append was answered alone (%v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	mustAppend(t, s, "unwilling", eventstore.Any(), stepEvents(1))
	select {
	case err := <-waiting:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the willing append was not written with the one that may not wait")
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(sizes, []int{1, 2}) {
		t.Fatalf("groups of %v appends, want [1 2]: the one alone, then the two together", sizes)
	}
}

// Close does not wait out the delay of an append that waits for company: its
// group is written at once, and the append answered.
func TestCloseCommitsAppendsWaitingForCompany(t *testing.T) {
	url := pgtest.Database(t)
	s := open(t, url, postgres.Options{})
	waiting := make(chan error, 1)
	evs := stepEvents(1)
	go func() {
		_, err := s.Append(eventstore.WithCommitDelay(t.Context(), time.Hour), "willing", eventstore.Any(), evs)
		waiting <- err
	}()
	for postgres.QueuedAppends(s) == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-waiting:
		if err != nil {
			t.Fatalf("the waiting append failed at Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close held the waiting append for its delay")
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	checkStream(t, open(t, url, postgres.Options{}), "willing", evs)
}
