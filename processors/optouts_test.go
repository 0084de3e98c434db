package processors

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/memory"
)

// optOutOnDispatch is an event store whose recipient at index opts out the
// moment the dispatch naming it is appended: a STOP arriving in the lead
// between a send's decision and its start.
type optOutOnDispatch struct {
	eventstore.Store
	index int
	phone string

	mu  sync.Mutex
	out bool
}

func (s *optOutOnDispatch) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	res, err := s.Store.Append(ctx, stream, expected, events)
	if err != nil {
		return res, err
	}
	for _, e := range events {
		if e.Type != domain.TypeMessagesDispatched {
			continue
		}
		de, err := domain.DecodeEvent(e.Type, e.Data)
		if err != nil {
			return res, err
		}
		for _, d := range de.(domain.MessagesDispatched).Messages {
			if d.Index == s.index {
				s.mu.Lock()
				s.out = true
				s.mu.Unlock()
			}
		}
	}
	return res, nil
}

func (s *optOutOnDispatch) suppressed(_ context.Context, _, phone string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out && phone == s.phone, nil
}

// A recipient who opts out after their message's dispatch is recorded, and
// before its send starts (a lead ahead, 250 ms at low priority), is never
// handed to the provider: the message ends skipped as opted out.
func TestAnOptOutRecordedBeforeTheSendStartsStopsIt(t *testing.T) {
	store := &optOutOnDispatch{Store: memory.New(), index: 1, phone: "+14155550001"}
	t.Cleanup(func() { store.Close() })
	h := newHarnessOn(t, store, newFakeProvider(0))
	p := h.processor(Config{Suppressed: store.suppressed})
	drive(t, p, h.create("b1", 3, domain.PriorityLow))
	h.prov.mu.Lock()
	n := h.prov.calls["b1:1"]
	h.prov.mu.Unlock()
	if n != 0 {
		t.Errorf("the opted-out recipient was handed to the provider %d time(s) after the opt-out", n)
	}
	b, err := h.cmds.Repository().Load(context.Background(), "b1")
	if err != nil {
		t.Fatal(err)
	}
	if b.Status() != domain.StatusCompleted || b.Sent() != 2 || b.Skipped() != 1 {
		t.Fatalf("batch %s: sent %d, skipped %d; want the other two sent and the opted-out one skipped", b.Status(), b.Sent(), b.Skipped())
	}
}

// While a tenant's opt-out list cannot be read, its batches send nothing and
// their slices wait between looks, as after a failed commit, rather than ask
// the store again thousands of times a second.
func TestAnUnreadableOptOutListHoldsTheBatchWithoutSpinning(t *testing.T) {
	h := newHarness(t, newFakeProvider(0))
	var asked atomic.Int64
	p := h.processor(Config{SliceDuration: 300 * time.Millisecond, Suppressed: func(context.Context, string, string) (bool, error) {
		asked.Add(1)
		return false, errors.New("opt-out list unreadable")
	}})
	w := h.create("b1", 3, domain.PriorityNormal)
	next, err := p.RunSlice(context.Background(), w)
	if err != nil {
		t.Fatal(err)
	}
	if next == nil {
		t.Fatal("the slice ended the chain: the batch would stand still for good once the list is readable")
	}
	if n := asked.Load(); n > 10 {
		t.Errorf("one 300 ms slice asked the unreadable list %d times", n)
	}
	h.prov.mu.Lock()
	calls := len(h.prov.calls)
	h.prov.mu.Unlock()
	if calls != 0 {
		t.Errorf("%d recipients sent while their opt-out list could not be read", calls)
	}
}

// The opt-out list asked again between a send's rate slot and its provider
// call can take its time (its tenant lock is held across a stream read at
// Run start or on a gap, a list unloaded after a failed read reads its
// stream): the send must not then go out after its dispatch's deadline, when
// another instance may already have sent the message again.
func TestASlowOptOutLookupBeforeTheSendNeverSendsTwice(t *testing.T) {
	h := newHarness(t, newFakeProvider(0))
	var asked atomic.Int64
	cfg := Config{
		SendTimeout: 200 * time.Millisecond, DeadlineMargin: 100 * time.Millisecond,
		Suppressed: func(ctx context.Context, _, phone string) (bool, error) {
			if asked.Add(1) == 2 { // instance A's send, after its slot: the lookup is slow
				time.Sleep(2500 * time.Millisecond)
			}
			return false, nil
		}}
	a, b := h.processor(cfg), h.processor(cfg)
	w := h.create("b1", 1, domain.PriorityHigh)
	done := make(chan struct{})
	go func() { // instance A: dispatches b1:0, its send waits on the list
		defer close(done)
		_, _ = a.RunSlice(context.Background(), w)
	}()
	time.Sleep(1600 * time.Millisecond) // past the dispatch's deadline (1.3 s)
	// Instance B: recovery hands it the batch; the message is in doubt.
	cur, err := h.cmds.Repository().Load(context.Background(), "b1")
	if err != nil {
		t.Fatal(err)
	}
	drive(t, b, Work{BatchID: "b1", PrevSlice: cur.LastSlice()})
	<-done
	time.Sleep(500 * time.Millisecond)
	h.prov.mu.Lock()
	n := h.prov.calls["b1:0"]
	h.prov.mu.Unlock()
	if n != 1 {
		for _, e := range h.events("b1") {
			t.Log(e.Type, string(e.Data))
		}
		t.Fatalf("message b1:0 handed to the provider %d times: A's send went out after its dispatch's deadline, after B had sent it again", n)
	}
}

// A dispatch whose lookup fails part way (here the opt-out list, for one
// number, once) must record nothing: the commit appended the skip decided
// before the failure, whose cursor passes over the recipient chosen to send
// before it, and that recipient never gets an outcome.
func TestALookupFailingMidDispatchLosesNoRecipient(t *testing.T) {
	h := newHarness(t, newFakeProvider(0))
	var failed atomic.Bool
	p := h.processor(Config{Unlimited: true, Suppressed: func(_ context.Context, _, phone string) (bool, error) {
		switch phone {
		case "+14155550001":
			return true, nil // opted out
		case "+14155550002":
			if failed.CompareAndSwap(false, true) {
				return false, errors.New("opt-out list unreadable for a moment")
			}
		}
		return false, nil
	}})
	drive(t, p, h.create("b1", 4, domain.PriorityNormal))
	b, err := h.cmds.Repository().Load(context.Background(), "b1")
	if err != nil {
		t.Fatal(err)
	}
	if got := b.Sent() + b.Failed() + b.Skipped(); got != 4 || b.Status() != domain.StatusCompleted {
		t.Fatalf("batch %s with %d sent, %d failed, %d skipped of 4 (outcomes %v): a recipient was lost",
			b.Status(), b.Sent(), b.Failed(), b.Skipped(), h.outcomes("b1"))
	}
}
