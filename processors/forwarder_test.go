package processors

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/memory"
)

// recordingPublisher keeps what is published and can fail on demand.
type recordingPublisher struct {
	mu   sync.Mutex
	msgs map[string][]*message.Message
	fail atomic.Int32 // fail this many publishes
}

func (p *recordingPublisher) Publish(topic string, msgs ...*message.Message) error {
	if p.fail.Add(-1) >= 0 {
		return errors.New("broker unreachable")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.msgs == nil {
		p.msgs = map[string][]*message.Message{}
	}
	p.msgs[topic] = append(p.msgs[topic], msgs...)
	return nil
}

func (p *recordingPublisher) Close() error { return nil }

// lifecycles returns the lifecycle messages of batchID published so far.
func (p *recordingPublisher) lifecycles(batchID string) []Lifecycle {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []Lifecycle
	for _, m := range p.msgs[TopicBatchEvents] {
		var l Lifecycle
		if json.Unmarshal(m.Payload, &l) == nil && l.BatchID == batchID {
			out = append(out, l)
		}
	}
	return out
}

// flakyReads fails ReadAll while fail is set.
type flakyReads struct {
	eventstore.Store
	fail atomic.Bool
}

func (f *flakyReads) ReadAll(ctx context.Context, after eventstore.Position, max int) ([]eventstore.Event, error) {
	if f.fail.Load() {
		return nil, fmt.Errorf("read failed: %w", eventstore.ErrUnavailable)
	}
	return f.Store.ReadAll(ctx, after, max)
}

// Cause 4: the forwarder used to return on its first read or publish error and
// nothing restarted it: scheduled batches never started and stalled ones were
// never recovered. It must ride out both.
func TestForwarderRidesOutStoreAndBrokerFailures(t *testing.T) {
	store := &flakyReads{Store: memory.New()}
	t.Cleanup(func() { store.Close() })
	h := newHarnessOn(t, store, newFakeProvider(0))
	pub := &recordingPublisher{}
	fwd, err := NewForwarder(store, pub, h.cmds, Config{RecoveryInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fwd.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("forwarder: %v", err)
		}
	}()
	select {
	case <-fwd.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("forwarder not ready")
	}

	// The store fails for a while, then the broker refuses a publish.
	store.fail.Store(true)
	time.Sleep(300 * time.Millisecond)
	pub.fail.Store(1)
	store.fail.Store(false)

	// A batch started by hand gets its lifecycle message...
	tmpl, _ := domain.NewTemplate("Hi", domain.DefaultTemplateLimits)
	create := func(id string, schedule *time.Time, autoStart bool) {
		if _, err := h.cmds.CreateBatch(ctx, commands.CreateBatch{
			ID: id, Tenant: "acme", Template: tmpl, ScheduleTime: schedule, AutoStart: autoStart, Recipients: phones(1),
		}); err != nil {
			t.Fatal(err)
		}
	}
	create("manual", nil, false)
	if _, err := h.cmds.StartBatch(ctx, commands.Act{Tenant: "acme", BatchID: "manual", By: "t"}); err != nil {
		t.Fatal(err)
	}
	// ...and a scheduled batch starts when its time comes.
	at := time.Now().Add(200 * time.Millisecond)
	create("scheduled", &at, true)

	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := h.cmds.Repository().Load(ctx, "scheduled")
		started := len(pub.lifecycles("manual")) > 0 && b.Status() == domain.StatusProcessing
		if started {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the failures: manual batch lifecycle published %d times, scheduled batch %s",
				len(pub.lifecycles("manual")), b.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := fwd.Health(); err != nil {
		t.Fatalf("forwarder reports %v after recovering", err)
	}
}

// readsAfter records the earliest position ReadAll was asked to read after.
type readsAfter struct {
	eventstore.Store
	mu    sync.Mutex
	first *eventstore.Position
}

func (r *readsAfter) ReadAll(ctx context.Context, after eventstore.Position, max int) ([]eventstore.Event, error) {
	r.mu.Lock()
	if r.first == nil || after.Less(*r.first) {
		r.first = &after
	}
	r.mu.Unlock()
	return r.Store.ReadAll(ctx, after, max)
}

// A restart with a long history reads nothing before the start point: the
// unfinished batches come from it, and recovery and the scheduler still act on
// them.
func TestForwarderStartsFromItsStartPoint(t *testing.T) {
	store := &readsAfter{Store: memory.New()}
	t.Cleanup(func() { store.Close() })
	h := newHarnessOn(t, store, newFakeProvider(0))
	ctx := context.Background()
	p := h.processor(Config{Unlimited: true})
	for i := range 20 { // history: finished batches
		drive(t, p, h.create(fmt.Sprintf("old%d", i), 5, domain.PriorityNormal))
	}
	running := h.create("running", 5, domain.PriorityNormal)
	tmpl, _ := domain.NewTemplate("Hi", domain.DefaultTemplateLimits)
	due := time.Now().Add(500 * time.Millisecond)
	if _, err := h.cmds.CreateBatch(ctx, commands.CreateBatch{ID: "scheduled", Tenant: "acme", Template: tmpl,
		ScheduleTime: &due, AutoStart: true, Recipients: phones(1)}); err != nil {
		t.Fatal(err)
	}
	last, err := store.Store.ReadAll(ctx, eventstore.Start, 100_000)
	if err != nil {
		t.Fatal(err)
	}
	at := last[len(last)-1].Position

	pub := &recordingPublisher{}
	fwd, err := NewForwarder(store, pub, h.cmds, Config{
		RecoverAtStart: true, RecoveryInterval: 20 * time.Millisecond,
		StartPoint: func(context.Context) ([]Unfinished, eventstore.Position, error) {
			return []Unfinished{
				{ID: "running", Status: domain.StatusProcessing, LastEvent: time.Now()},
				{ID: "scheduled", Status: domain.StatusPending, ScheduleTime: due, AutoStart: true, LastEvent: time.Now()},
			}, at, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- fwd.Run(runCtx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-fwd.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("forwarder not ready")
	}
	store.mu.Lock()
	first := *store.first
	store.mu.Unlock()
	if first.Less(at) {
		t.Fatalf("the forwarder read the log after %s, before its start point %s", first, at)
	}
	work := func() map[string]string {
		pub.mu.Lock()
		defer pub.mu.Unlock()
		out := map[string]string{}
		for _, m := range pub.msgs[TopicWork] {
			var w Work
			json.Unmarshal(m.Payload, &w)
			out[w.BatchID] = w.PrevSlice
		}
		return out
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(work()) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	got := work()
	if got["running"] != running.PrevSlice {
		t.Fatalf("recovery work for the running batch continues from %q, want its last slice %q", got["running"], running.PrevSlice)
	}
	if _, ok := got["scheduled"]; !ok {
		t.Fatalf("work published %v: the scheduled batch from the start point was not started", got)
	}
}

// Every copy of a lifecycle message, and of the first work message of a chain,
// has the same ID, derived from the event: the forwarder of each instance
// publishes the lifecycle message, and both the API and the lifecycle handler
// publish the chain's first work message. A broker that drops duplicates (NATS
// JetStream, by Nats-Msg-Id) then queues one of each, so one chain starts
// instead of one a copy, each loading the batch to find the chain taken. A
// stalled batch's recovery message is new each time: taken for the message it
// replaces, it would be dropped.
func TestCopiesOfAChainStartAreOneMessage(t *testing.T) {
	pub := &recordingPublisher{}
	if err := PublishWork(pub, "b1", 3); err != nil {
		t.Fatal(err)
	}
	fromAPI := pub.msgs[TopicWork][0]

	l1, err := lifecycleMessage(Lifecycle{BatchID: "b1", Type: domain.TypeBatchStarted, Revision: 3})
	if err != nil {
		t.Fatal(err)
	}
	l2, _ := lifecycleMessage(Lifecycle{BatchID: "b1", Type: domain.TypeBatchStarted, Revision: 3})
	if l1.UUID != l2.UUID {
		t.Fatalf("two forwarders' lifecycle messages of one event: IDs %s and %s, want one", l1.UUID, l2.UUID)
	}
	for _, other := range []Lifecycle{
		{BatchID: "b1", Type: domain.TypeBatchResumed, Revision: 9},
		{BatchID: "b2", Type: domain.TypeBatchStarted, Revision: 3},
	} {
		if m, _ := lifecycleMessage(other); m.UUID == l1.UUID {
			t.Fatalf("lifecycle message of %+v has the ID of b1's start", other)
		}
	}

	p := newHarness(t, newFakeProvider(0)).processor(Config{})
	out, err := p.handleLifecycle(l1)
	if err != nil || len(out) != 1 {
		t.Fatalf("lifecycle handler: %v, %v", out, err)
	}
	if out[0].UUID != fromAPI.UUID || string(out[0].Payload) != string(fromAPI.Payload) {
		t.Fatalf("the lifecycle handler's first work message (%s %s) is not the API's (%s %s)", out[0].UUID, out[0].Payload, fromAPI.UUID, fromAPI.Payload)
	}
	if err := PublishWork(pub, "b1", 12); err != nil {
		t.Fatal(err)
	}
	if resumed := pub.msgs[TopicWork][1]; resumed.UUID == fromAPI.UUID {
		t.Fatal("the chain a resume begins has the ID of the chain before")
	}

	r1, _ := workMessage(Work{BatchID: "b1", PrevSlice: domain.ChainToken(3)})
	r2, _ := workMessage(Work{BatchID: "b1", PrevSlice: domain.ChainToken(3)})
	if r1.UUID == r2.UUID || r1.UUID == fromAPI.UUID {
		t.Fatalf("recovery work messages %s and %s share an ID (chain start %s)", r1.UUID, r2.UUID, fromAPI.UUID)
	}
}

// workFor counts the work messages published for batchID.
func (p *recordingPublisher) workFor(batchID string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, m := range p.msgs[TopicWork] {
		var w Work
		if json.Unmarshal(m.Payload, &w) == nil && w.BatchID == batchID {
			n++
		}
	}
	return n
}

// A batch whose recipients all wait for their quiet hours appends nothing
// while it waits, and is not stalled: recovery hands it no work message (each
// would add a chain, waiting in a handler for the batch's turn, one more every
// stall timeout through the night). Once something comes due and nothing
// happens for a stall timeout, it is recovered.
func TestRecoveryLeavesABatchWaitingForItsQuietHours(t *testing.T) {
	h := newHarness(t, newFakeProvider(0))
	var clock atomic.Pointer[time.Time]
	start := time.Now()
	clock.Store(&start)
	now := func() time.Time { return *clock.Load() }
	q, err := domain.ParseQuietHours(start.UTC().Add(-time.Hour).Format("15:04"), start.UTC().Add(3*time.Hour).Format("15:04"), "UTC")
	if err != nil {
		t.Fatal(err)
	}
	tmpl, _ := domain.NewTemplate("Hello {{name}}", domain.DefaultTemplateLimits)
	res, err := h.cmds.CreateBatch(context.Background(), commands.CreateBatch{ID: "quiet", Tenant: "acme", Template: tmpl,
		AutoStart: true, QuietHours: &q, Recipients: phones(3)})
	if err != nil {
		t.Fatal(err)
	}
	// The chain's first slice finds every recipient in their quiet hours.
	p := h.processor(Config{SliceDuration: 50 * time.Millisecond})
	if _, err := p.RunSlice(context.Background(), Work{BatchID: "quiet", PrevSlice: res.Batch.LastSlice()}); err != nil {
		t.Fatal(err)
	}
	if b, _ := h.cmds.Repository().Load(context.Background(), "quiet"); b.Waiting() != 3 {
		t.Fatalf("%d recipients waiting, want 3", b.Waiting())
	}

	pub := &recordingPublisher{}
	fwd, err := NewForwarder(h.store, pub, h.cmds, Config{StallTimeout: 100 * time.Millisecond, RecoveryInterval: 10 * time.Millisecond, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fwd.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	<-fwd.Ready()
	for range 20 { // 20 stall timeouts of the night
		later := now().Add(100 * time.Millisecond)
		clock.Store(&later)
		time.Sleep(15 * time.Millisecond)
	}
	if n := pub.workFor("quiet"); n != 0 {
		t.Fatalf("recovery published %d work messages for a batch waiting for its quiet hours", n)
	}
	// Morning: the window has opened and no chain sends.
	morning := start.Add(3*time.Hour + time.Minute)
	clock.Store(&morning)
	deadline := time.Now().Add(5 * time.Second)
	for pub.workFor("quiet") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the batch was not recovered once its recipients came due")
		}
		later := now().Add(50 * time.Millisecond)
		clock.Store(&later)
		time.Sleep(10 * time.Millisecond)
	}
}
