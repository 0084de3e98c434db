package processors

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/memory"
)

// The embedded default (GoChannel, RecoverAtStart): the one instance is
// killed after a cancel, with messages of the cancelled batch at the
// provider. Its work messages die with it. At restart recovery hands work only
// to processing batches, so nothing ever runs settleStopped for the cancelled
// one: its messages stay pending for good, the case the change meant to end.
func TestMessagesInFlightAtACrashAfterACancelEndAfterRestart(t *testing.T) {
	const n = 3
	release := make(chan struct{})
	prov := newFakeProvider(0)
	prov.fail = func(string, int) error { <-release; return nil } // killed: never answered
	h := newHarness(t, prov)
	t.Cleanup(func() { close(release) })
	w := h.create("b1", n, domain.PriorityNormal)
	cfg := Config{Unlimited: true, SendTimeout: 200 * time.Millisecond, RecoverAtStart: true, RecoveryInterval: 20 * time.Millisecond}
	dying := h.processor(cfg)
	if _, err := dying.RunSlice(context.Background(), w); err != nil {
		t.Fatal(err)
	}
	h.eventually(t, "every message in flight", func(b *domain.Batch) bool { return b.OutstandingCount() == n }, "b1")
	if _, err := h.cmds.CancelBatch(context.Background(), commands.Act{Tenant: "acme", BatchID: "b1", By: "test"}); err != nil {
		t.Fatal(err)
	}
	// SIGKILL: the in-process work message is gone. The restarted instance's
	// forwarder recovers what it recovers; its work goes to a new processor.
	pub := &recordingPublisher{}
	fwd, err := NewForwarder(h.store, pub, h.cmds, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fwd.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-fwd.Ready()
	time.Sleep(2 * time.Second) // well past every deadline, many recovery ticks
	restarted := h.processor(cfg)
	pub.mu.Lock()
	msgs := pub.msgs[TopicWork]
	pub.mu.Unlock()
	for _, m := range msgs {
		var work Work
		if json.Unmarshal(m.Payload, &work) == nil && work.BatchID == "b1" {
			drive(t, restarted, work)
		}
	}
	b, err := h.cmds.Repository().Load(context.Background(), "b1")
	if err != nil {
		t.Fatal(err)
	}
	if b.OutstandingCount() != 0 {
		t.Fatalf("cancelled batch after the restart: %d messages pending for good (%d work messages published for it)", b.OutstandingCount(), len(msgs))
	}
}

// skipFails fails the appends of MessageSkipped while failing is set.
type skipFails struct {
	eventstore.Store
	failing atomic.Bool
}

func (s *skipFails) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	for _, e := range events {
		if s.failing.Load() && e.Type == domain.TypeMessageSkipped {
			return eventstore.AppendResult{}, fmt.Errorf("append %s: %w", stream, eventstore.ErrUnavailable)
		}
	}
	return s.Store.Append(ctx, stream, expected, events)
}

// Over the router (any transport): the store fails for 10 s (a PostgreSQL
// failover) just as the settling chain ends the unanswered messages of a
// cancelled batch. The handler's error is retried three times (some 5 s with
// the repository's own retries), then the message is dropped (dropFailed),
// trusting stall recovery, which looks only at processing batches: the chain
// is gone and the messages stay pending for good, though the store came back.
func TestASettlingChainSurvivesAStoreFailover(t *testing.T) {
	const n = 3
	release := make(chan struct{})
	prov := newFakeProvider(0)
	prov.fail = func(string, int) error { <-release; return nil }
	store := &skipFails{Store: memory.New()}
	h := newHarnessOn(t, store, prov)
	t.Cleanup(func() { close(release) })
	w := h.create("b1", n, domain.PriorityNormal)
	cfg := Config{Unlimited: true, SendTimeout: 200 * time.Millisecond}
	dying := h.processor(cfg)
	next, err := dying.RunSlice(context.Background(), w)
	if err != nil || next == nil {
		t.Fatal(next, err)
	}
	h.eventually(t, "every message in flight", func(b *domain.Batch) bool { return b.OutstandingCount() == n }, "b1")
	if _, err := h.cmds.CancelBatch(context.Background(), commands.Act{Tenant: "acme", BatchID: "b1", By: "test"}); err != nil {
		t.Fatal(err)
	}
	store.failing.Store(true)
	time.AfterFunc(10*time.Second, func() { store.failing.Store(false) })

	logger := slog.New(slog.DiscardHandler)
	pubsub := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 64}, watermill.NewSlogLogger(logger))
	other := h.processor(cfg)
	router, err := NewRouter(other, pubsub, pubsub, logger)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go router.Run(ctx)
	defer func() { cancel(); <-router.Running(); router.Close() }()
	<-router.Running()
	msg, _ := workMessage(*next)
	if err := pubsub.Publish(TopicWork, msg); err != nil {
		t.Fatal(err)
	}
	time.Sleep(12 * time.Second) // the store is back
	h.eventually(t, "the unanswered messages ended once the store is back", func(b *domain.Batch) bool { return b.OutstandingCount() == 0 }, "b1")
}

// A batch paused while an instance had its messages at the provider, that
// instance then dying, and the batch cancelled: no chain ran for it (paused),
// so none was there to end those messages once their deadline passed. The
// cancel's lifecycle message starts one, which ends them (and ends at once for
// a batch with nothing in flight).
func TestACancelWhilePausedEndsWhatADeadInstanceLeftInFlight(t *testing.T) {
	const n = 3
	release := make(chan struct{})
	prov := newFakeProvider(0)
	prov.fail = func(string, int) error { <-release; return nil } // the dying instance's calls never answer
	h := newHarness(t, prov)
	t.Cleanup(func() { close(release) })
	w := h.create("b1", n, domain.PriorityNormal)
	cfg := Config{Unlimited: true, SendTimeout: 200 * time.Millisecond}
	dying := h.processor(cfg)
	if _, err := dying.RunSlice(context.Background(), w); err != nil {
		t.Fatal(err)
	}
	h.eventually(t, "every message in flight", func(b *domain.Batch) bool { return b.OutstandingCount() == n }, "b1")
	act := commands.Act{Tenant: "acme", BatchID: "b1", By: "test"}
	if _, err := h.cmds.PauseBatch(context.Background(), act); err != nil {
		t.Fatal(err)
	}
	res, err := h.cmds.CancelBatch(context.Background(), act)
	if err != nil {
		t.Fatal(err)
	}
	// The instance is gone, with the chain (it ended at the pause). Another
	// gets the cancel's lifecycle message.
	other := h.processor(cfg)
	msg, err := lifecycleMessage(Lifecycle{BatchID: "b1", Type: domain.TypeBatchCancelled, Revision: res.Batch.Version() - 1})
	if err != nil {
		t.Fatal(err)
	}
	out, err := other.handleLifecycle(msg)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range out {
		var work Work
		if err := json.Unmarshal(m.Payload, &work); err != nil {
			t.Fatal(err)
		}
		drive(t, other, work)
	}
	b, err := h.cmds.Repository().Load(context.Background(), "b1")
	if err != nil {
		t.Fatal(err)
	}
	if b.OutstandingCount() != 0 || b.Skipped() != n {
		t.Fatalf("cancelled batch: %d outstanding, %d skipped (%d work messages from the cancel), want 0 and %d", b.OutstandingCount(), b.Skipped(), len(out), n)
	}
}

// chanSubscriber hands the router the messages put in work, and nothing on
// the lifecycle topic.
type chanSubscriber struct{ work chan *message.Message }

func (s *chanSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if topic == TopicWork {
		return s.work, nil
	}
	return make(chan *message.Message), nil
}

func (s *chanSubscriber) Close() error { return nil }

// An instance stopping (SIGTERM) cancels the context of every work message it
// holds, so that their slices hand the work on (natspull.go). A message the
// router had taken but whose handler had not started yet meets the Retry
// middleware with its context already ended: Retry returns the context's
// error without running the handler, and dropFailed acknowledges the message
// and drops it. Nothing is handed on: a processing batch stands still until
// stall recovery, and the chain of a stopped batch settling its messages in
// flight (which recovery never looks at) is gone for good.
func TestWorkWhoseContextEndedBeforeItsHandlerRanIsNotDropped(t *testing.T) {
	h := newHarness(t, newFakeProvider(0))
	w := h.create("b1", 3, domain.PriorityNormal)
	p := h.processor(Config{})
	pub := &recordingPublisher{}
	sub := &chanSubscriber{work: make(chan *message.Message, 1)}
	router, err := NewRouter(p, pub, sub, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	go router.Run(context.Background())
	t.Cleanup(func() { router.Close() })
	<-router.Running()

	msg, err := workMessage(w)
	if err != nil {
		t.Fatal(err)
	}
	stopping, stop := context.WithCancel(context.Background())
	stop() // the subscriber closed after handing the message over
	msg.SetContext(stopping)
	sub.work <- msg
	select {
	case <-msg.Acked():
		if pub.workFor("b1") == 0 {
			t.Fatal("the work message was acknowledged without its handler running, and nothing was handed on: the batch's chain is gone")
		}
	case <-msg.Nacked(): // given back, to be delivered again
	case <-time.After(10 * time.Second):
		t.Fatal("the message was neither acknowledged nor refused")
	}
}
