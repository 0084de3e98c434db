package kurrent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/eventstoretest"
)

// TestContract runs the shared contract suite against a real KurrentDB server.
// Start one with
//
//	docker run -p 2113:2113 kurrentplatform/kurrentdb --insecure --run-projections=All --mem-db
//
// and run KURRENTDB_URL='esdb://127.0.0.1:2113?tls=false' go test ./eventstore/kurrent/
func TestContract(t *testing.T) {
	url := os.Getenv("KURRENTDB_URL")
	if url == "" {
		t.Skip("KURRENTDB_URL not set: contract suite against KurrentDB skipped")
	}
	eventstoretest.Run(t, func(t *testing.T) eventstore.Store {
		// The suite's streams are named contract<random>-...
		s, err := Open(url, Options{StreamPrefixes: []string{"contract"}})
		if err != nil {
			t.Fatalf("open %s: %v", url, err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

// TestContractAgainstFake runs the contract suite against the store over the fake
// server: it checks the adapter's own logic (mapping, filtering, paging, waiting),
// not KurrentDB.
func TestContractAgainstFake(t *testing.T) {
	eventstoretest.Run(t, func(t *testing.T) eventstore.Store {
		return newTestStore(t, newFakeClient(), Options{StreamPrefixes: []string{"contract"}})
	})
}

func newTestStore(t *testing.T, c client, opts Options) *Store {
	t.Helper()
	opts.minBackoff, opts.maxBackoff = time.Millisecond, 10*time.Millisecond
	opts.setDefaults()
	s := newStore(c, opts)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func newEvents(n, size int) []eventstore.EventData {
	out := make([]eventstore.EventData, n)
	for i := range out {
		out[i] = eventstore.EventData{ID: uuid.NewString(), Type: "Page", Data: []byte(`"` + strings.Repeat("x", max(size-2, 0)) + `"`)}
	}
	return out
}

func TestExpectedRevisionMapping(t *testing.T) {
	tests := []struct {
		in   eventstore.ExpectedRevision
		want esdb.ExpectedRevision
	}{
		{eventstore.NoStream(), esdb.NoStream{}},
		{eventstore.Any(), esdb.Any{}},
		{eventstore.Exact(0), esdb.Revision(0)},
		{eventstore.Exact(41), esdb.Revision(41)},
		{eventstore.After(0), esdb.NoStream{}},
		{eventstore.After(3), esdb.Revision(2)},
	}
	for _, tt := range tests {
		if got := toExpectedRevision(tt.in); got != tt.want {
			t.Errorf("expected revision %s: sent as %#v, want %#v", tt.in, got, tt.want)
		}
	}
}

func TestPositionConversions(t *testing.T) {
	for _, p := range []eventstore.Position{eventstore.Start, {Commit: 1, Prepare: 1}, {Commit: 1 << 40, Prepare: 1<<40 - 7}, {Commit: ^uint64(0), Prepare: ^uint64(0)}} {
		e := toPosition(p)
		if e.Commit != p.Commit || e.Prepare != p.Prepare {
			t.Errorf("position %s sent as %+v", p, e)
		}
		if back := fromPosition(e); back != p {
			t.Errorf("position %s came back as %s", p, back)
		}
	}
	w := &esdb.WriteResult{CommitPosition: 900, PreparePosition: 850, NextExpectedVersion: 7}
	if got := fromWritePosition(w); got != (eventstore.Position{Commit: 900, Prepare: 850}) {
		t.Errorf("write result position %+v read as %s", w, got)
	}
}

func TestClassifyErrors(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want error // nil: left as it is
	}{
		{"wrong expected version", codedErr{esdb.ErrorCodeWrongExpectedVersion, "x"}, eventstore.ErrConcurrency},
		{"wrong expected version, wrapped by the client", fmt.Errorf("could not send append request. Reason: %w", codedErr{esdb.ErrorCodeWrongExpectedVersion, "x"}), eventstore.ErrConcurrency},
		{"deadline", codedErr{esdb.ErrorCodeDeadlineExceeded, "x"}, eventstore.ErrUnavailable},
		{"unavailable", codedErr{esdb.ErrorUnavailable, "x"}, eventstore.ErrUnavailable},
		{"not leader", codedErr{esdb.ErrorCodeNotLeader, "x"}, eventstore.ErrUnavailable},
		{"aborted", codedErr{esdb.ErrorAborted, "x"}, eventstore.ErrUnavailable},
		{"connection closed", codedErr{esdb.ErrorCodeConnectionClosed, "x"}, eventstore.ErrClosed},
		{"raw gRPC unavailable", status.Error(codes.Unavailable, "connection refused"), eventstore.ErrUnavailable},
		{"raw gRPC deadline", status.Error(codes.DeadlineExceeded, "slow"), eventstore.ErrUnavailable},
		{"unknown code carrying gRPC unavailable", codedErrWrapping{esdb.ErrorCodeUnknown, status.Error(codes.Unavailable, "down")}, eventstore.ErrUnavailable},
		{"access denied", codedErr{esdb.ErrorCodeAccessDenied, "x"}, nil},
		{"stream deleted", codedErr{esdb.ErrorCodeStreamDeleted, "x"}, nil},
		{"plain", errors.New("boom"), nil},
	}
	sentinels := []error{eventstore.ErrConcurrency, eventstore.ErrUnavailable, eventstore.ErrClosed}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := classify(tt.err)
			if !errors.Is(got, tt.err) {
				t.Errorf("classify(%v) = %v: lost the original error", tt.err, got)
			}
			for _, s := range sentinels {
				if errors.Is(got, s) != (s == tt.want) {
					t.Errorf("classify(%v) = %v: errors.Is(%v) = %v", tt.err, got, s, errors.Is(got, s))
				}
			}
		})
	}
	if classify(nil) != nil {
		t.Error("classify(nil) is not nil")
	}
}

// codedErrWrapping is a coded error wrapping another, as *esdb.Error does.
type codedErrWrapping struct {
	code esdb.ErrorCode
	err  error
}

func (e codedErrWrapping) Error() string        { return e.err.Error() }
func (e codedErrWrapping) Code() esdb.ErrorCode { return e.code }
func (e codedErrWrapping) Unwrap() error        { return e.err }

func TestSplitAppend(t *testing.T) {
	ev := func(size int) esdb.EventData {
		return esdb.EventData{EventType: "T", Data: make([]byte, size-eventOverhead-1)} // eventSize == size
	}
	tests := []struct {
		name   string
		sizes  []int
		budget int
		want   []int // events per part
	}{
		{"one small", []int{200}, 1000, []int{1}},
		{"all fit exactly", []int{400, 600}, 1000, []int{2}},
		{"one byte over", []int{400, 601}, 1000, []int{1, 1}},
		{"greedy in order", []int{300, 300, 300, 300, 300, 300, 300}, 1000, []int{3, 3, 1}},
		{"big one alone", []int{100, 1000, 100}, 1000, []int{1, 1, 1}},
		{"many pages", slices.Repeat([]int{250}, 10), 1000, []int{4, 4, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var evs []esdb.EventData
			for _, s := range tt.sizes {
				evs = append(evs, ev(s))
			}
			parts, err := splitAppend(evs, tt.budget)
			if err != nil {
				t.Fatal(err)
			}
			var got []int
			var joined []esdb.EventData
			for _, p := range parts {
				got = append(got, len(p))
				size := 0
				for _, e := range p {
					size += eventSize(e)
				}
				if size > tt.budget {
					t.Errorf("a part of %d bytes, over the budget of %d", size, tt.budget)
				}
				joined = append(joined, p...)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("parts of %v events, want %v", got, tt.want)
			}
			if len(joined) != len(evs) {
				t.Errorf("parts hold %d events, want %d", len(joined), len(evs))
			}
		})
	}
	if _, err := splitAppend([]esdb.EventData{ev(100), ev(1001)}, 1000); !errors.Is(err, ErrEventTooLarge) {
		t.Errorf("an event over the budget: %v, want ErrEventTooLarge", err)
	}
}

func TestAppendSplitsAtChainedRevisions(t *testing.T) {
	tests := []struct {
		name     string
		expected eventstore.ExpectedRevision
		existing int
		want     []esdb.ExpectedRevision
	}{
		{"new stream", eventstore.NoStream(), 0, []esdb.ExpectedRevision{esdb.NoStream{}, esdb.Revision(3), esdb.Revision(7), esdb.Revision(11)}},
		{"exact", eventstore.Exact(1), 2, []esdb.ExpectedRevision{esdb.Revision(1), esdb.Revision(5), esdb.Revision(9), esdb.Revision(13)}},
		{"any", eventstore.Any(), 2, []esdb.ExpectedRevision{esdb.Any{}, esdb.Revision(5), esdb.Revision(9), esdb.Revision(13)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := newFakeClient()
			s := newTestStore(t, fake, Options{MaxAppendBytes: 4 * (eventOverhead + 4 + 100)})
			ctx := t.Context()
			if tt.existing > 0 {
				if _, err := s.Append(ctx, "batch-1", eventstore.NoStream(), newEvents(tt.existing, 100)); err != nil {
					t.Fatal(err)
				}
			}
			fake.appends = nil
			evs := newEvents(14, 100) // 4+4+4+2
			res, err := s.Append(ctx, "batch-1", tt.expected, evs)
			if err != nil {
				t.Fatal(err)
			}
			var got []esdb.ExpectedRevision
			var counts []int
			for _, a := range fake.appends {
				got, counts = append(got, a.expected), append(counts, a.n)
			}
			if !slices.Equal(got, tt.want) || !slices.Equal(counts, []int{4, 4, 4, 2}) {
				t.Errorf("requests at %v with %v events, want at %v with [4 4 4 2]", got, counts, tt.want)
			}
			stored, _ := s.ReadStream(ctx, "batch-1", 0, 100)
			if len(stored) != tt.existing+14 || res.NextExpected != uint64(tt.existing+13) || res.Position != stored[len(stored)-1].Position {
				t.Errorf("after the split append: %d events stored, result %+v; want %d, ending at the last one", len(stored), res, tt.existing+14)
			}
		})
	}
}

func TestAppendFailingPartWayLeavesAPrefix(t *testing.T) {
	fake := newFakeClient()
	fake.failAppend = func(n int) error {
		if n == 1 {
			return codedErr{esdb.ErrorUnavailable, "server went away"}
		}
		return nil
	}
	s := newTestStore(t, fake, Options{MaxAppendBytes: 2 * (eventOverhead + 4 + 100)})
	_, err := s.Append(t.Context(), "batchrecipients-1", eventstore.NoStream(), newEvents(5, 100))
	if !errors.Is(err, eventstore.ErrUnavailable) || !strings.Contains(err.Error(), "the first 2 of 5 events were written") {
		t.Fatalf("append failing at its second part: %v; want ErrUnavailable saying 2 of 5 were written", err)
	}
	if got, _ := s.ReadStream(t.Context(), "batchrecipients-1", 0, 10); len(got) != 2 {
		t.Errorf("%d events stored, want the first part's 2", len(got))
	}
}

func TestAppendRefusesWhatTheServerCannotKeep(t *testing.T) {
	s := newTestStore(t, newFakeClient(), Options{MaxAppendBytes: 1000})
	id := uuid.NewString()
	tests := []struct {
		name string
		ev   eventstore.EventData
		want string
	}{
		{"not a UUID", eventstore.EventData{ID: "evt-1", Type: "T"}, "not a UUID"},
		{"upper case UUID", eventstore.EventData{ID: strings.ToUpper(id), Type: "T"}, "canonical form"},
		{"UUID in braces", eventstore.EventData{ID: "{" + id + "}", Type: "T"}, "canonical form"},
		{"nil UUID", eventstore.EventData{ID: uuid.Nil.String(), Type: "T"}, "nil UUID"},
		{"no type", eventstore.EventData{ID: id}, "type is empty"},
		{"too large", eventstore.EventData{ID: id, Type: "T", Data: make([]byte, 1000)}, ErrEventTooLarge.Error()},
	}
	for _, tt := range tests {
		_, err := s.Append(t.Context(), "batch-x", eventstore.NoStream(), []eventstore.EventData{tt.ev})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error saying %q", tt.name, err, tt.want)
		}
	}
	if got, _ := s.ReadStream(t.Context(), "batch-x", 0, 10); len(got) != 0 {
		t.Errorf("refused appends wrote %d events", len(got))
	}
}

// The server answers an append it recognises as a retry without a position; the
// store reports the original's.
func TestRetriedAppendReportsTheOriginalPosition(t *testing.T) {
	s := newTestStore(t, newFakeClient(), Options{})
	evs := newEvents(3, 10)
	first, err := s.Append(t.Context(), "batch-r", eventstore.NoStream(), evs)
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.Append(t.Context(), "batch-r", eventstore.NoStream(), evs)
	if err != nil || again != first {
		t.Errorf("retry: %+v, %v; want the original %+v", again, err, first)
	}
}

// TestReadStreamBackwardRequests: the newest snapshot costs one request from the
// stream's end; a from past the end, which the server would answer short, is read
// from the end instead.
func TestReadStreamBackwardRequests(t *testing.T) {
	fake := newFakeClient()
	s := newTestStore(t, fake, Options{})
	evs := newEvents(10, 10)
	if _, err := s.Append(t.Context(), "batchsnapshot-1", eventstore.NoStream(), evs); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		from     uint64
		max      int
		requests []esdb.StreamPosition
		first    uint64
	}{
		{eventstore.StreamEnd, 1, []esdb.StreamPosition{esdb.End{}}, 9},
		{4, 2, []esdb.StreamPosition{esdb.Revision(4)}, 4},
		{9, 3, []esdb.StreamPosition{esdb.Revision(9)}, 9},
		{12, 5, []esdb.StreamPosition{esdb.Revision(12), esdb.End{}}, 9},
	}
	for _, tt := range tests {
		fake.mu.Lock()
		fake.readBackwardFrom = nil
		fake.mu.Unlock()
		got, err := s.ReadStreamBackward(t.Context(), "batchsnapshot-1", tt.from, tt.max)
		if err != nil || len(got) != tt.max || got[0].Revision != tt.first || got[0].ID != evs[tt.first].ID {
			t.Fatalf("from %d max %d: %d events from revision %v, %v; want %d from %d", tt.from, tt.max, len(got), got, err, tt.max, tt.first)
		}
		fake.mu.Lock()
		requests := slices.Clone(fake.readBackwardFrom)
		fake.mu.Unlock()
		if !slices.Equal(requests, tt.requests) {
			t.Errorf("from %d: asked the server from %v, want %v", tt.from, requests, tt.requests)
		}
	}
	if got, err := s.ReadStreamBackward(t.Context(), "batchsnapshot-missing", eventstore.StreamEnd, 1); err != nil || len(got) != 0 {
		t.Errorf("missing stream: %d events, %v; want none and no error", len(got), err)
	}
}

func TestReadStreamErrors(t *testing.T) {
	fake := newFakeClient()
	s := newTestStore(t, fake, Options{})
	if got, err := s.ReadStream(t.Context(), "batch-missing", 0, 10); err != nil || len(got) != 0 {
		t.Errorf("missing stream: %d events, %v; want none and no error", len(got), err)
	}
	if _, err := s.ReadStream(t.Context(), "batch-missing", 0, 0); err == nil {
		t.Error("max 0 accepted")
	}
	if _, err := s.Append(t.Context(), "batch-c", eventstore.Exact(4), newEvents(1, 10)); !errors.Is(err, eventstore.ErrConcurrency) {
		t.Errorf("append at a wrong revision: %v, want ErrConcurrency", err)
	}
}

func TestReadAllFiltersSkipsAndPaginates(t *testing.T) {
	fake := newFakeClient()
	s := newTestStore(t, fake, Options{})
	ctx := t.Context()
	var want []string
	add := func(stream string, n int) {
		evs := newEvents(n, 10)
		if _, err := s.Append(ctx, stream, eventstore.Any(), evs); err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			want = append(want, e.ID)
		}
	}
	fake.appendForeign("$stats-127.0.0.1", 3)
	add("batch-1", 2)
	fake.appendForeign("otherapp-1", 300) // more than a scan page
	add("batchrecipients-1", 3)
	fake.appendForeign("$$metadata", 1)
	add("batch-2", 1)
	fake.appendForeign("otherapp-2", 5)

	for _, size := range []int{1, 2, 3, 100} {
		var got []string
		for pos := eventstore.Start; ; {
			page, err := s.ReadAll(ctx, pos, size)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) > size {
				t.Fatalf("max %d: a page of %d", size, len(page))
			}
			if len(page) == 0 {
				break
			}
			for _, e := range page {
				if !pos.Less(e.Position) {
					t.Fatalf("max %d: event at %s read after %s", size, e.Position, pos)
				}
				pos = e.Position
				got = append(got, e.ID)
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("pages of %d: read %v, want our events %v", size, got, want)
		}
	}

	// Exclusive: after each event, the ones following it; also from a position
	// between events.
	all, _ := s.ReadAll(ctx, eventstore.Start, 100)
	for k, e := range all {
		rest, err := s.ReadAll(ctx, e.Position, 100)
		if err != nil || !slices.Equal(ids(rest), want[k+1:]) {
			t.Errorf("after event %d at %s: %v, %v; want %v", k, e.Position, ids(rest), err, want[k+1:])
		}
		between := eventstore.Position{Commit: e.Position.Commit + 5, Prepare: e.Position.Prepare + 5}
		if rest, _ := s.ReadAll(ctx, between, 100); !slices.Equal(ids(rest), want[k+1:]) {
			t.Errorf("after %s, between events: %v; want %v", between, ids(rest), want[k+1:])
		}
	}

	// A caught-up reader does not scan the same foreign events again.
	tail := all[len(all)-1].Position
	fake.readAllFrom = nil
	for range 3 {
		if page, _ := s.ReadAll(ctx, tail, 10); len(page) != 0 {
			t.Fatalf("read after the last event of ours: %d events", len(page))
		}
	}
	end := fake.all[len(fake.all)-1].Position
	if got := fake.readAllFrom; len(got) != 3 || got[1] != end || got[2] != end {
		t.Errorf("caught-up reads started at %v; want the second and third to start at the end of $all %v", got, end)
	}
	add("batch-3", 1)
	if page, _ := s.ReadAll(ctx, tail, 10); len(page) != 1 || page[0].ID != want[len(want)-1] {
		t.Errorf("after a new event, the caught-up read returned %v, want %v", ids(page), want[len(want)-1:])
	}
}

func ids(evs []eventstore.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.ID
	}
	return out
}

// waitAsync runs WaitForEvents in the background.
func waitAsync(ctx context.Context, s *Store, after eventstore.Position) <-chan error {
	done := make(chan error, 1)
	go func() { done <- s.WaitForEvents(ctx, after) }()
	return done
}

func expectWake(t *testing.T, what string, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: the waiter was not woken", what)
	}
}

func expectBlocked(t *testing.T, what string, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("%s: the waiter returned (%v) with nothing new of ours", what, err)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestWaitForEventsResubscribesAfterADrop(t *testing.T) {
	fake := newFakeClient()
	failures := 0
	fake.failSubscribe = func(n int) error {
		if n == 1 || n == 2 { // the first two resubscriptions fail
			failures++
			return codedErr{esdb.ErrorUnavailable, "server restarting"}
		}
		return nil
	}
	s := newTestStore(t, fake, Options{})
	ctx := t.Context()
	res, err := s.Append(ctx, "batch-1", eventstore.NoStream(), newEvents(1, 10))
	if err != nil {
		t.Fatal(err)
	}
	fake.appendForeign("otherapp-1", 2)

	// Nothing new of ours: the waiter blocks, even though $all moved on.
	done := waitAsync(ctx, s, res.Position)
	expectBlocked(t, "only foreign events", done)
	if subs := fake.subscriptions(); len(subs) != 1 || subs[0] != fake.all[len(fake.all)-1].Position {
		t.Fatalf("subscribed at %v, want once at the end of $all", subs)
	}

	// Other streams move $all on; the subscription drops after a checkpoint there.
	fake.appendForeign("otherapp-2", 2)
	checkpoint := fake.all[len(fake.all)-1].Position
	fake.drop(errors.New("connection reset"), true)
	expectBlocked(t, "a drop", done)

	res2, err := s.Append(ctx, "batch-1", eventstore.Exact(0), newEvents(1, 10))
	if err != nil {
		t.Fatal(err)
	}
	expectWake(t, "an append after the drop", done)
	subs := fake.subscriptions()
	if len(subs) != 4 || subs[1] != checkpoint || subs[2] != checkpoint || subs[3] != checkpoint {
		t.Errorf("subscribed at %v; want to resume from the checkpoint %v after the drop, through two failures", subs, checkpoint)
	}
	if failures != 2 {
		t.Errorf("%d failed resubscriptions, want 2", failures)
	}

	// Waiters at the new event block; waiters before it return at once.
	expectWake(t, "waiter behind the new event", waitAsync(ctx, s, res.Position))
	next := waitAsync(ctx, s, res2.Position)
	expectBlocked(t, "waiter at the new event", next)
	fake.drop(errors.New("again"), false)
	if _, err := s.Append(ctx, "batchrecipients-1", eventstore.NoStream(), newEvents(1, 10)); err != nil {
		t.Fatal(err)
	}
	expectWake(t, "an append after a drop without checkpoint", next)
	if subs := fake.subscriptions(); subs[len(subs)-1] != toPosition(res2.Position) {
		t.Errorf("resubscribed at %v, want after the last event seen %v", subs[len(subs)-1], res2.Position)
	}
}

func TestWaitForEventsOlderThanTheSubscription(t *testing.T) {
	fake := newFakeClient()
	s := newTestStore(t, fake, Options{})
	ctx := t.Context()
	first, _ := s.Append(ctx, "batch-1", eventstore.NoStream(), newEvents(1, 10))
	fake.appendForeign("otherapp", 3)
	// Starts the subscription at the end of $all.
	expectBlocked(t, "caught up", waitAsync(ctx, s, first.Position))
	// A waiter from before an event of ours returns at once, by reading.
	expectWake(t, "waiter from the start", waitAsync(ctx, s, eventstore.Start))
}

func TestWaitForEventsEndsOnContextAndClose(t *testing.T) {
	fake := newFakeClient()
	s := newTestStore(t, fake, Options{})
	ctx, cancel := context.WithCancel(t.Context())
	done := waitAsync(ctx, s, eventstore.Start)
	expectBlocked(t, "empty store", done)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled wait: %v, want context.Canceled", err)
	}
	done = waitAsync(t.Context(), s, eventstore.Start)
	expectBlocked(t, "empty store", done)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, eventstore.ErrClosed) {
		t.Errorf("wait during Close: %v, want ErrClosed", err)
	}
	if !fake.closed {
		t.Error("Close left the connection open")
	}
}

func TestOpenValidates(t *testing.T) {
	if _, err := Open("esdb://127.0.0.1:2113?tls=false", Options{StreamPrefixes: []string{"batch-", ""}}); err == nil {
		t.Error("an empty stream prefix accepted")
	}
	if _, err := Open("http://[::1", Options{}); err == nil {
		t.Error("a broken connection string accepted")
	}
	s, err := Open("esdb://127.0.0.1:2113?tls=false", Options{})
	if err != nil {
		t.Fatalf("open without a server: %v (connections are made lazily)", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
}
