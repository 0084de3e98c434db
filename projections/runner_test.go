package projections_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/smsbatch/smsbatch/eventstore"
	esmemory "github.com/smsbatch/smsbatch/eventstore/memory"
	"github.com/smsbatch/smsbatch/projections"
	"github.com/smsbatch/smsbatch/projections/memory"
	"github.com/smsbatch/smsbatch/projections/projectionstest"
)

const wait = 5 * time.Second

// recording is a projections store that remembers what it was asked to apply
// and can be told to fail.
type recording struct {
	projections.Store
	mu      sync.Mutex
	applied []eventstore.Event
	failing int // fail this many more Apply calls
}

func (r *recording) Apply(ctx context.Context, events []eventstore.Event) error {
	r.mu.Lock()
	if r.failing > 0 {
		r.failing--
		r.mu.Unlock()
		return errors.New("database is down")
	}
	r.applied = append(r.applied, events...)
	r.mu.Unlock()
	return r.Store.Apply(ctx, events)
}

func (r *recording) appliedEvents() []eventstore.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]eventstore.Event(nil), r.applied...)
}

// start runs a runner until the test ends and returns it with a function that
// stops it and returns Run's result.
func start(t *testing.T, cfg projections.RunnerConfig) (*projections.Runner, func() error) {
	t.Helper()
	r, err := projections.NewRunner(projections.WithFastRetry(cfg))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	var result error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case result = <-done:
			case <-time.After(wait):
				result = errors.New("runner did not stop")
			}
		})
		return result
	}
	t.Cleanup(func() { stop() })
	return r, stop
}

func waitReady(t *testing.T, r *projections.Runner) {
	t.Helper()
	select {
	case <-r.Ready():
	case <-time.After(wait):
		t.Fatal("runner not ready")
	}
}

func waitFor(t *testing.T, r *projections.Runner, pos eventstore.Position) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	if err := r.WaitFor(ctx, pos); err != nil {
		t.Fatalf("wait for %s: %v (runner at %s)", pos, err, r.Position())
	}
}

func appendAll(t *testing.T, es eventstore.Store, events []eventstore.Event) eventstore.Position {
	t.Helper()
	pos, err := projectionstest.AppendTo(t.Context(), es, events)
	if err != nil {
		t.Fatal(err)
	}
	return pos
}

func status(t *testing.T, s projections.Store, tenant, id string) projections.BatchStatus {
	t.Helper()
	st, err := s.Batch(t.Context(), tenant, id)
	if err != nil {
		t.Fatalf("batch %s: %v", id, err)
	}
	return st
}

func TestRunnerFollowsAndRestarts(t *testing.T) {
	es := esmemory.New()
	defer es.Close()
	store := memory.New()

	h := projectionstest.NewEvents()
	h.Campaign("acme", "before", t0, 40)
	appendAll(t, es, h.List())

	r, stop := start(t, projections.RunnerConfig{Events: es, Store: store, BatchSize: 7})
	waitReady(t, r)
	// Ready means every event stored before the start is applied.
	if st := status(t, store, "acme", "before"); st.Status != "completed" || st.Progress.Completed+st.Progress.Failed != 40 {
		t.Fatalf("batch appended before the start, once ready: %s with %+v, want completed with 40 outcomes", st.Status, st.Progress)
	}

	n := h.Len()
	b := h.Batch("acme", "after", t0.Add(time.Hour))
	b.Created(5)
	b.Advance(time.Second).Started()
	pos := appendAll(t, es, h.List()[n:])
	waitFor(t, r, pos)
	if st := status(t, store, "acme", "after"); st.Status != "processing" {
		t.Fatalf("batch appended while running, after WaitFor: %s, want processing", st.Status)
	}
	if r.Position() != pos {
		t.Errorf("runner at %s, want %s", r.Position(), pos)
	}
	if err := stop(); err != nil {
		t.Fatalf("run after stop: %v", err)
	}

	// Restarted over the same store, it applies only what came since.
	checkpoint, err := store.Checkpoint(t.Context())
	if err != nil || checkpoint != pos {
		t.Fatalf("checkpoint %s (%v), want %s", checkpoint, err, pos)
	}
	n = h.Len()
	b.Advance(time.Second).Dispatched(0, 1)
	b.Advance(time.Second).Sent(0, 1, 90*time.Millisecond)
	pos = appendAll(t, es, h.List()[n:])

	rec := &recording{Store: store}
	r, _ = start(t, projections.RunnerConfig{Events: es, Store: rec})
	waitReady(t, r)
	waitFor(t, r, pos)
	applied := rec.appliedEvents()
	if len(applied) != 2 || applied[0].Position.Less(checkpoint) || applied[0].Position == checkpoint {
		t.Errorf("restarted runner applied %d events from %s, want the 2 after %s", len(applied), firstPos(applied), checkpoint)
	}
	if st := status(t, store, "acme", "after"); st.Progress != (projections.Progress{Total: 5, Pending: 1, Completed: 1}) {
		t.Errorf("after the restart: %+v, want 5 total, 1 pending, 1 sent", st.Progress)
	}
}

func firstPos(events []eventstore.Event) string {
	if len(events) == 0 {
		return "nothing"
	}
	return events[0].Position.String()
}

func TestRunnerReadyOnEmptyStore(t *testing.T) {
	es := esmemory.New()
	defer es.Close()
	r, _ := start(t, projections.RunnerConfig{Events: es, Store: memory.New()})
	waitReady(t, r)
	if r.Position() != eventstore.Start {
		t.Errorf("position %s on an empty store, want %s", r.Position(), eventstore.Start)
	}
}

func TestRunnerWaitForTimesOut(t *testing.T) {
	es := esmemory.New()
	defer es.Close()
	h := projectionstest.NewEvents()
	h.Batch("acme", "b1", t0).Created(1)
	pos := appendAll(t, es, h.List())
	r, _ := start(t, projections.RunnerConfig{Events: es, Store: memory.New()})
	waitFor(t, r, pos)
	waitFor(t, r, eventstore.Start)

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	err := r.WaitFor(ctx, eventstore.Position{Commit: pos.Commit + 1})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("wait for an event never appended: %v, want the context's deadline", err)
	}
}

func TestRunnerRetriesFailedApply(t *testing.T) {
	es := esmemory.New()
	defer es.Close()
	h := projectionstest.NewEvents()
	h.Campaign("acme", "b1", t0, 10)
	pos := appendAll(t, es, h.List())

	store := memory.New()
	rec := &recording{Store: store, failing: 3}
	r, _ := start(t, projections.RunnerConfig{Events: es, Store: rec})
	waitReady(t, r)
	waitFor(t, r, pos)
	if st := status(t, store, "acme", "b1"); st.Status != "completed" {
		t.Errorf("after three failed applies: %s, want completed", st.Status)
	}
	if got := len(rec.appliedEvents()); got != h.Len() {
		t.Errorf("applied %d events, want each of the %d once", got, h.Len())
	}
}

func TestRunnerLag(t *testing.T) {
	es := esmemory.NewWithClock(func() time.Time { return time.Now().Add(-time.Hour) })
	defer es.Close()
	h := projectionstest.NewEvents()
	h.Batch("acme", "b1", t0).Created(1)
	pos := appendAll(t, es, h.List())
	lag := prometheus.NewGauge(prometheus.GaugeOpts{Name: "lag"})
	r, _ := start(t, projections.RunnerConfig{Events: es, Store: memory.New(), Lag: lag})
	waitFor(t, r, pos)
	var m dto.Metric
	if err := lag.Write(&m); err != nil {
		t.Fatal(err)
	}
	if got := m.GetGauge().GetValue(); got < 3599 || got > 3700 {
		t.Errorf("lag %vs for an event stored an hour ago, want about 3600", got)
	}
}

func TestRunnerStops(t *testing.T) {
	es := esmemory.New()
	r, _ := start(t, projections.RunnerConfig{Events: es, Store: memory.New()})
	waitReady(t, r)
	if err := r.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second Run while running: %v, want an error", err)
	}

	r2, err := projections.NewRunner(projections.RunnerConfig{Events: es, Store: memory.New()})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r2.Run(t.Context()) }()
	<-r2.Ready()
	es.Close()
	select {
	case err := <-done:
		if !errors.Is(err, eventstore.ErrClosed) {
			t.Errorf("run when the event store closes: %v, want ErrClosed", err)
		}
	case <-time.After(wait):
		t.Fatal("runner did not stop when the event store closed")
	}
}

func TestNewRunnerRefusesMissingDependencies(t *testing.T) {
	_, err := projections.NewRunner(projections.RunnerConfig{})
	if err == nil || !strings.Contains(err.Error(), "Events") || !strings.Contains(err.Error(), "Store") {
		t.Errorf("runner without event store and store: %v, want an error naming both", err)
	}
}

// sharedStore is a projections store several runners share, with a lease one
// holds at a time, counting each runner's Apply calls.
type sharedStore struct {
	projections.Store
	mu          sync.Mutex
	holder      int // runner holding the lease; 0 for none
	applies     map[int]int
	checkpoints map[int]int // each runner's reads of the checkpoint
}

// as is the store as runner id sees it.
type sharedAs struct {
	*sharedStore
	id int
}

func (s sharedAs) TryLease(context.Context) (*projections.Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holder != 0 {
		return nil, nil
	}
	s.holder = s.id
	lost := make(chan struct{})
	var once sync.Once
	return &projections.Lease{Lost: lost, Release: func() {
		once.Do(func() {
			s.mu.Lock()
			s.holder = 0
			s.mu.Unlock()
			close(lost)
		})
	}}, nil
}

func (s sharedAs) Checkpoint(ctx context.Context) (eventstore.Position, error) {
	s.mu.Lock()
	if s.checkpoints != nil {
		s.checkpoints[s.id]++
	}
	s.mu.Unlock()
	return s.Store.Checkpoint(ctx)
}

func (s sharedAs) Apply(ctx context.Context, events []eventstore.Event) error {
	s.mu.Lock()
	s.applies[s.id]++
	s.mu.Unlock()
	return s.Store.Apply(ctx, events)
}

// startLeased starts a runner of es into store, one of several sharing it, with
// a quick lease and checkpoint watch, and waits until it is ready.
func startLeased(t *testing.T, es eventstore.Store, store projections.Store) *projections.Runner {
	t.Helper()
	r, _ := start(t, projections.RunnerConfig{Events: es, Store: store,
		LeaseRetry: 50 * time.Millisecond, WatchEvery: 5 * time.Millisecond})
	waitReady(t, r)
	return r
}

// Two runners on one shared store: the lease holder applies, the other answers
// WaitFor from the checkpoint; when the holder stops, the other takes over.
func TestSharedStoreIsAppliedByTheLeaseHolder(t *testing.T) {
	es := esmemory.New()
	defer es.Close()
	shared := &sharedStore{Store: memory.New(), applies: map[int]int{}}
	cfg := func(id int) projections.RunnerConfig {
		return projections.RunnerConfig{Events: es, Store: sharedAs{shared, id},
			LeaseRetry: 50 * time.Millisecond, WatchEvery: 5 * time.Millisecond}
	}
	one, stopOne := start(t, cfg(1))
	waitReady(t, one)
	two, _ := start(t, cfg(2))
	waitReady(t, two)

	h := projectionstest.NewEvents()
	h.Campaign("acme", "first", t0, 20)
	pos := appendAll(t, es, h.List())
	waitFor(t, one, pos)
	waitFor(t, two, pos) // by the checkpoint runner one moved
	shared.mu.Lock()
	first, second := shared.applies[1], shared.applies[2]
	shared.mu.Unlock()
	if first == 0 || second != 0 {
		t.Fatalf("applies: runner one %d, runner two %d; want only the lease holder's", first, second)
	}

	if err := stopOne(); err != nil {
		t.Fatal(err)
	}
	n := h.Len()
	h.Campaign("acme", "second", t0.Add(time.Hour), 10)
	pos = appendAll(t, es, h.List()[n:])
	waitFor(t, two, pos)
	if st := status(t, shared.Store, "acme", "second"); st.Status != "completed" {
		t.Fatalf("after the holder stopped: %s, want completed by the other runner", st.Status)
	}
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.applies[2] == 0 {
		t.Fatal("runner two never applied")
	}
}

// A runner without the lease reads the shared checkpoint while a WaitFor waits
// on it, and otherwise once every LeaseRetry: an idle instance asked 40 times a
// second (1.7% of a core on PostgreSQL, and the server's work for each).
func TestRunnerWithoutTheLeaseReadsTheCheckpointOnlyWhileAsked(t *testing.T) {
	es := esmemory.New()
	defer es.Close()
	shared := &sharedStore{Store: memory.New(), applies: map[int]int{}, checkpoints: map[int]int{}}
	cfg := func(id int) projections.RunnerConfig {
		return projections.RunnerConfig{Events: es, Store: sharedAs{shared, id},
			LeaseRetry: 2 * time.Second, WatchEvery: 2 * time.Millisecond}
	}
	one, _ := start(t, cfg(1))
	waitReady(t, one)
	two, _ := start(t, cfg(2))
	waitReady(t, two)
	reads := func() int {
		shared.mu.Lock()
		defer shared.mu.Unlock()
		return shared.checkpoints[2]
	}

	before := reads()
	time.Sleep(500 * time.Millisecond)
	if n := reads() - before; n > 2 {
		t.Fatalf("idle for 500 ms, the runner without the lease read the checkpoint %d times; want at most one a LeaseRetry (2 s)", n)
	}

	// A waiter is answered as soon as the holder's checkpoint reaches it, not
	// at the next LeaseRetry.
	h := projectionstest.NewEvents()
	for k := range 5 {
		n := h.Len()
		h.Campaign("acme", "c"+strconv.Itoa(k), t0, 3)
		pos := appendAll(t, es, h.List()[n:])
		waitFor(t, one, pos)
		began := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := two.WaitFor(ctx, pos)
		cancel()
		if err != nil {
			t.Fatalf("wait %d on the runner without the lease: %v", k, err)
		}
		if took := time.Since(began); took > time.Second {
			t.Errorf("wait %d took %s; the checkpoint had moved already", k, took)
		}
	}
}

// heldAs is runner id's view of a shared store whose applies wait for held
// to close: a lease holder still catching up.
type heldAs struct {
	sharedAs
	held chan struct{}
}

func (s heldAs) Apply(ctx context.Context, events []eventstore.Event) error {
	select {
	case <-s.held:
	case <-ctx.Done():
		return ctx.Err()
	}
	return s.sharedAs.Apply(ctx, events)
}

// A runner that follows the lease holder's checkpoint is not ready while the
// holder has still to apply events that were in the store when it started
// (every instance restarted, the holder catching up): its instance would
// answer reads and report ready from read models behind. It is ready once the
// holder has applied them, while new events keep coming.
func TestAFollowingRunnerIsReadyOnlyOnceTheHolderCaughtUp(t *testing.T) {
	es := esmemory.New()
	defer es.Close()
	shared := &sharedStore{Store: memory.New(), applies: map[int]int{}}
	held := make(chan struct{})
	holder, _ := start(t, projections.RunnerConfig{Events: es, Store: heldAs{sharedAs{shared, 1}, held},
		LeaseRetry: 50 * time.Millisecond, WatchEvery: 5 * time.Millisecond})
	waitReady(t, holder)
	h := projectionstest.NewEvents()
	h.Campaign("acme", "before", t0, 20)
	pos := appendAll(t, es, h.List())

	follower, _ := start(t, projections.RunnerConfig{Events: es, Store: sharedAs{shared, 2},
		LeaseRetry: 50 * time.Millisecond, WatchEvery: 5 * time.Millisecond})
	select {
	case <-follower.Ready():
		t.Fatalf("ready at %s while the holder has still to apply up to %s", follower.Position(), pos)
	case <-time.After(300 * time.Millisecond):
	}
	n := h.Len()
	h.Campaign("acme", "after", t0.Add(time.Hour), 5)
	appendAll(t, es, h.List()[n:])
	close(held)
	waitReady(t, follower)
	if p := follower.Position(); p.Less(pos) {
		t.Fatalf("ready at %s, before %s", p, pos)
	}
}
