package live_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	esmemory "github.com/smsbatch/smsbatch/eventstore/memory"
	"github.com/smsbatch/smsbatch/live"
	"github.com/smsbatch/smsbatch/projections"
	"github.com/smsbatch/smsbatch/projections/memory"
	"github.com/smsbatch/smsbatch/projections/projectionstest"
)

// flakyReadModels fails Checkpoint while failCheckpoint > 0, and Batch of
// failBatch once armed.
type flakyReadModels struct {
	projections.Store
	failCheckpoint atomic.Int32
	mu             sync.Mutex
	failBatch      string
	failed         chan struct{}
}

func (f *flakyReadModels) Checkpoint(ctx context.Context) (eventstore.Position, error) {
	if f.failCheckpoint.Add(-1) >= 0 {
		return eventstore.Position{}, errors.New("read models briefly unreachable")
	}
	return f.Store.Checkpoint(ctx)
}

func (f *flakyReadModels) Batch(ctx context.Context, tenant, id string) (projections.BatchStatus, error) {
	f.mu.Lock()
	fail := f.failBatch != "" && f.failBatch == id
	if fail {
		f.failBatch = ""
	}
	f.mu.Unlock()
	if fail {
		close(f.failed)
		return projections.BatchStatus{}, errors.New("read models briefly unreachable")
	}
	return f.Store.Batch(ctx, tenant, id)
}

// A read models' hiccup at the moment the hub starts must not leave the
// instance without live updates for good while /readyz says all is well: the
// hub retries, as the projections runner does, and Health says so meanwhile.
func TestTheHubStartsAfterAFailedCheckpointRead(t *testing.T) {
	es := esmemory.New()
	defer es.Close()
	rm := &flakyReadModels{Store: memory.New()}
	rm.failCheckpoint.Store(3)
	runner, err := projections.NewRunner(projections.RunnerConfig{Events: es, Store: rm.Store})
	if err != nil {
		t.Fatal(err)
	}
	hub, err := live.NewHub(live.Config{Events: es, ReadModels: rm, Projections: runner})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = runner.Run(ctx) }()
	runErr := make(chan error, 1)
	go func() { runErr <- hub.Run(ctx) }()

	sawRed := false
	deadline := time.Now().Add(5 * time.Second)
	for !hub.Running() {
		select {
		case err := <-runErr:
			t.Fatalf("the hub stopped after a failed checkpoint read: %v; the instance would have no live updates until restarted", err)
		default:
		}
		if hub.Health() != nil {
			sawRed = true
		}
		if time.Now().After(deadline) {
			t.Fatalf("the hub is not running 5 s after its first checkpoint reads failed (health: %v)", hub.Health())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !sawRed {
		t.Error("Health was nil while the hub could not start")
	}
	if err := hub.Health(); err != nil {
		t.Errorf("running, Health still says %v", err)
	}
}

// A client that reconnects with the position of the last message it got must
// get every status change after it. When a flush cannot read one batch's
// status, the hub still sends the others and moves Flushed past that batch's
// change; a client registering before the retry is never told of it.
func TestAReconnectAfterAFailedStatusReadMissesNothing(t *testing.T) {
	es := esmemory.New()
	defer es.Close()
	rm := &flakyReadModels{Store: memory.New(), failed: make(chan struct{})}
	ctx, runner, hub := runHub(t, es, rm.Store, live.Config{ReadModels: rm, StatusInterval: time.Second})
	ev := projectionstest.NewEvents()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	x, y := ev.Batch("acme", uuid.NewString(), t0), ev.Batch("acme", uuid.NewString(), t0)
	flushed(t, ctx, es, runner, hub, []eventstore.Event{x.Created(1), x.Started(), y.Created(1), y.Started()})

	// A dashboard follows every batch of acme.
	first, err := hub.Subscribe(ctx, live.Subscription{Tenant: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	// x completes, then y sends; the status read of x fails once.
	rm.mu.Lock()
	rm.failBatch = x.ID
	rm.mu.Unlock()
	time.Sleep(1100 * time.Millisecond) // the next flush is not held back by the interval
	if _, err := projectionstest.AppendTo(ctx, es, []eventstore.Event{x.Sent(0, 1, time.Millisecond), x.Completed(1, 0), y.Dispatched(0)}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-rm.failed:
	case <-time.After(5 * time.Second):
		t.Fatal("the status read of x never failed")
	}
	completed := func(m []byte) bool {
		return containsAll(string(m), x.ID, `"status":"`+string(domain.StatusCompleted)+`"`)
	}
	var lastPos string
	select {
	case m := <-first.Messages():
		lastPos = positionOf(t, m)
		t.Logf("first client got %s", m)
		if completed(m) {
			return // told before it went
		}
	case <-time.After(5 * time.Second):
		t.Fatal("first client got nothing")
	}
	// The dashboard's connection drops; it reconnects with the last position it saw,
	// before the hub retries x.
	hub.Unsubscribe(first)
	after, err := live.ParsePosition(lastPos)
	if err != nil {
		t.Fatal(err)
	}
	again, err := hub.Subscribe(ctx, live.Subscription{Tenant: "acme", After: &after})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range again.Initial() {
		if completed(m) {
			return
		}
	}
	timeout := time.After(3 * time.Second)
	for {
		select {
		case m := <-again.Messages():
			if completed(m) {
				return
			}
		case <-timeout:
			rmStatus, _ := rm.Store.Batch(ctx, "acme", x.ID)
			t.Fatalf("reconnected client (after=%s) never told batch x completed (read models say %q)", lastPos, rmStatus.Status)
		}
	}
}

func positionOf(t *testing.T, m []byte) string {
	t.Helper()
	var v struct {
		Position string `json:"position"`
	}
	if err := json.Unmarshal(m, &v); err != nil {
		t.Fatal(err)
	}
	return v.Position
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// blockingReadModels holds the first status read of tenant until released.
type blockingReadModels struct {
	projections.Store
	tenant   string
	once     sync.Once
	reading  chan struct{}
	released chan struct{}
}

func (b *blockingReadModels) Batch(ctx context.Context, tenant, id string) (projections.BatchStatus, error) {
	if tenant == b.tenant {
		first := false
		b.once.Do(func() { first = true })
		if first {
			close(b.reading)
			<-b.released
		}
	}
	return b.Store.Batch(ctx, tenant, id)
}

// A dashboard reconnecting after a long absence reads the statuses of every
// batch it missed; it must not hold the hub's lock while it does (thousands of
// reads), or every other client's updates, and /readyz, wait for it.
func TestAReconnectReadsWhatItMissedWithoutHoldingUpTheHub(t *testing.T) {
	es := esmemory.New()
	defer es.Close()
	rm := memory.New()
	slow := &blockingReadModels{Store: rm, tenant: "acme", reading: make(chan struct{}), released: make(chan struct{})}
	ctx, runner, hub := runHub(t, es, rm, live.Config{ReadModels: slow})
	ev := projectionstest.NewEvents()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var before eventstore.Position // the dashboard's last position: the log's start
	var events []eventstore.Event
	const missed = 200
	for range missed {
		b := ev.Batch("acme", uuid.NewString(), t0)
		events = append(events, b.Created(1), b.Started())
	}
	flushed(t, ctx, es, runner, hub, events)

	type result struct {
		c   *live.Client
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := hub.Subscribe(ctx, live.Subscription{Tenant: "acme", After: &before})
		done <- result{c, err}
	}()
	<-slow.reading // it reads the statuses of what it missed; one read hangs
	asked := make(chan struct{})
	go func() {
		hub.Flushed() // takes the hub's lock, as every flush and /readyz do
		close(asked)
	}()
	select {
	case <-asked:
	case <-time.After(5 * time.Second):
		close(slow.released)
		<-done
		t.Fatal("the hub's lock was held while the reconnecting client read its statuses")
	}
	close(slow.released)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if n := len(r.c.Initial()); n != missed {
		t.Fatalf("the reconnected client was sent %d statuses, want the %d batches it missed", n, missed)
	}
}

// brokenStatus fails every status read of one batch (a row the read models
// cannot decode, say), for good.
type brokenStatus struct {
	projections.Store
	id string
}

func (b *brokenStatus) Batch(ctx context.Context, tenant, id string) (projections.BatchStatus, error) {
	if id == b.id {
		return projections.BatchStatus{}, errors.New("status row of this batch cannot be decoded")
	}
	return b.Store.Batch(ctx, tenant, id)
}

// One batch whose status cannot be read must not stop every other client's
// live updates (another tenant's among them) for good while Health says all is
// well.
func TestOneUnreadableStatusHoldsUpNoOtherBatch(t *testing.T) {
	es := esmemory.New()
	defer es.Close()
	store := memory.New()
	rm := &brokenStatus{Store: store}
	ctx, runner, hub := runHub(t, es, store, live.Config{ReadModels: rm})
	ev := projectionstest.NewEvents()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	x := ev.Batch("acme", uuid.NewString(), t0)   // its status cannot be read
	y := ev.Batch("globex", uuid.NewString(), t0) // another tenant's batch
	pos := flushed(t, ctx, es, runner, hub, []eventstore.Event{y.Created(1), y.Started()})
	rm.id = x.ID
	// acme's dashboard follows x; globex's follows y.
	if _, err := projectionstest.AppendTo(ctx, es, []eventstore.Event{x.Created(1), x.Started()}); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if err := runner.WaitFor(wctx, pos); err != nil {
		t.Fatal(err)
	}
	if _, err := hub.Subscribe(ctx, live.Subscription{Tenant: "acme"}); err != nil {
		t.Fatal(err)
	}
	globex, err := hub.Subscribe(ctx, live.Subscription{Tenant: "globex", BatchID: y.ID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := projectionstest.AppendTo(ctx, es, []eventstore.Event{x.Dispatched(0), y.Dispatched(0)}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-globex.Messages():
		t.Logf("globex told: %s", m)
	case <-time.After(5 * time.Second):
		t.Fatalf("globex's dashboard got nothing for 5 s because acme's batch %s cannot be read; hub Health: %v", x.ID, hub.Health())
	}
}

// flushed appends events to es and waits until the read models hold them and
// the hub has flushed them, failing the test after 10 s.
func flushed(t *testing.T, ctx context.Context, es eventstore.Store, runner *projections.Runner, hub *live.Hub, events []eventstore.Event) eventstore.Position {
	t.Helper()
	pos, err := projectionstest.AppendTo(ctx, es, events)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := runner.WaitFor(wctx, pos); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); hub.Flushed().Less(pos); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the hub has not flushed %s within 10 s (at %s)", pos, hub.Flushed())
		}
	}
	return pos
}

// runHub runs a projections runner into store and a hub over es configured by
// cfg (its Events and Projections filled in), until the test ends; it returns
// once the hub runs, with the context they run in.
func runHub(t *testing.T, es eventstore.Store, store projections.Store, cfg live.Config) (context.Context, *projections.Runner, *live.Hub) {
	t.Helper()
	runner, err := projections.NewRunner(projections.RunnerConfig{Events: es, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Events, cfg.Projections = es, runner
	hub, err := live.NewHub(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = runner.Run(ctx) }()
	go func() { _ = hub.Run(ctx) }()
	for !hub.Running() {
		time.Sleep(5 * time.Millisecond)
	}
	return ctx, runner, hub
}
