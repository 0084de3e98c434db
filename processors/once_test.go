package processors

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// published returns the IDs of the work messages published so far.
func (p *recordingPublisher) published() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ids []string
	for _, m := range p.msgs[TopicWork] {
		ids = append(ids, m.UUID)
	}
	return ids
}

// TestOncePublisherPublishesADerivedIDOnceWithinTheWindow: the copies of a chain
// start and of a lifecycle message reach the transport once within the
// duplicate window, and again after it; messages with random IDs (hand-ons)
// always do.
func TestOncePublisherPublishesADerivedIDOnceWithinTheWindow(t *testing.T) {
	rec := &recordingPublisher{}
	p := NewOncePublisher(rec)
	now := time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	p.now = func() time.Time { return now }

	start := func(rev uint64) *message.Message {
		t.Helper()
		m, err := chainStart("b1", rev)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	life, err := lifecycleMessage(Lifecycle{BatchID: "b1", Type: "BatchStarted", Revision: 3})
	if err != nil {
		t.Fatal(err)
	}
	handOn := func() *message.Message {
		t.Helper()
		m, err := workMessage(Work{BatchID: "b1", PrevSlice: "s1"})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	h1, h2 := handOn(), handOn()
	for _, msgs := range [][]*message.Message{{start(3)}, {start(3), start(7)}, {life, h1}, {life}, {start(7), h2}} {
		if err := p.Publish(TopicWork, msgs...); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{start(3).UUID, start(7).UUID, life.UUID, h1.UUID, h2.UUID}
	if got := rec.published(); !slices.Equal(got, want) {
		t.Fatalf("published %v, want %v: each derived ID once, every random one", got, want)
	}

	now = now.Add(DuplicateWindow - time.Millisecond)
	if err := p.Publish(TopicWork, start(3)); err != nil {
		t.Fatal(err)
	}
	if got := rec.published(); len(got) != len(want) {
		t.Fatalf("a copy within the window was published: %v", got)
	}
	now = now.Add(time.Millisecond)
	if err := p.Publish(TopicWork, start(3), message.NewMessage(watermill.NewUUID(), nil)); err != nil {
		t.Fatal(err)
	}
	if got := rec.published(); len(got) != len(want)+2 || got[len(want)] != start(3).UUID {
		t.Fatalf("after the window: %v; want the chain start published again", got)
	}
	if len(p.seen) != 1 || len(p.order)-p.head != 1 {
		t.Errorf("%d IDs remembered (%d in order) after the window; want only the one published since", len(p.seen), len(p.order)-p.head)
	}
}

// TestOncePublisherForgetsTheOldestPastItsBound: past onceMaxIDs the oldest IDs
// are forgotten, so memory stays bounded however many batches start.
func TestOncePublisherForgetsTheOldestPastItsBound(t *testing.T) {
	rec := &recordingPublisher{}
	p := NewOncePublisher(rec)
	for rev := range uint64(onceMaxIDs + 10) {
		m, err := chainStart("b1", rev)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Publish(TopicWork, m); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(p.seen); n > onceMaxIDs+1 {
		t.Fatalf("%d IDs remembered, want at most %d", n, onceMaxIDs+1)
	}
	first, _ := chainStart("b1", 0)
	last, _ := chainStart("b1", onceMaxIDs+9)
	if err := p.Publish(TopicWork, first, last); err != nil {
		t.Fatal(err)
	}
	got := rec.published()
	if n := len(got); n != onceMaxIDs+11 || got[n-1] != first.UUID {
		t.Fatalf("%d published, the last %s; want the forgotten first again and not the remembered last", n, got[n-1])
	}
}

// failingOncePublisher fails its first Publish, then counts what it publishes.
type failingOncePublisher struct {
	failed bool
	n      int
}

func (f *failingOncePublisher) Publish(topic string, msgs ...*message.Message) error {
	if !f.failed {
		f.failed = true
		return errors.New("publish failed")
	}
	f.n += len(msgs)
	return nil
}

func (f *failingOncePublisher) Close() error { return nil }

// TestOncePublisherForgetsWhatItFailedToPublish: a chain start whose publish
// failed is published by the next copy (the API counts on the lifecycle
// handler's when its own fails), not taken for a duplicate.
func TestOncePublisherForgetsWhatItFailedToPublish(t *testing.T) {
	under := &failingOncePublisher{}
	p := NewOncePublisher(under)
	if err := PublishWork(p, "b1", 3); err == nil {
		t.Fatal("the first publish succeeded; want the transport's failure")
	}
	if err := PublishWork(p, "b1", 3); err != nil {
		t.Fatal(err)
	}
	if err := PublishWork(p, "b1", 3); err != nil {
		t.Fatal(err)
	}
	if under.n != 1 {
		t.Fatalf("after a failed publish the chain start reached the transport %d times, want once", under.n)
	}
}
