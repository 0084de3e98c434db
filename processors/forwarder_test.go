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
