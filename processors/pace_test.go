package processors

import (
	"context"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
)

// A dispatch spends its token at the time the token was due, not when its send
// goes out: the next token is one planned interval after it, however late the
// send turns out to be, so late wake-ups do not add up over a batch.
func TestNextTokenIsPlannedFromTheLastToken(t *testing.T) {
	p := newPace(5)
	interval := time.Duration(float64(time.Second) * headroom / 5)
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	b := &domain.Batch{}
	token := p.tokenAt(t0)
	if !token.Equal(t0) {
		t.Fatalf("first token at %s, want at once", token.Sub(t0))
	}
	for i := 1; i <= 10; i++ {
		p.sent(b, token, 1)
		// Looked at later than planned, as a slice that woke late would.
		now := token.Add(interval / 2)
		next := p.tokenAt(now)
		if got := next.Sub(token); got < interval-time.Millisecond || got > interval+time.Millisecond {
			t.Fatalf("token %d: %s after the one before, want the interval %s", i, got, interval)
		}
		if p.ready(now) {
			t.Fatalf("token %d: ready half an interval after the last token", i)
		}
		token = next
	}
	if got, want := token.Sub(t0), 10*interval; got < want-10*time.Millisecond || got > want+10*time.Millisecond {
		t.Fatalf("ten tokens took %s, want %s: the schedule drifted", got, want)
	}
}

// The sends' real start times hold the rate the provider sees: a send starts an
// interval after the one before it really started, whatever its token says, so
// a late send and the next, on time, never come closer than the rate allows;
// it gives up if that is after it must have started.
func TestSendsStartAnIntervalApart(t *testing.T) {
	p := newPace(5)
	interval := time.Duration(float64(time.Second) * headroom / 5)
	ctx := context.Background()
	due := func(by time.Duration) slot { return p.slot(time.Now(), time.Now().Add(by), time.Now().Add(by)) }
	if ok := p.take(ctx, time.Now, due(time.Second), &batchState{}, &latency{}); !ok {
		t.Fatal("first send refused")
	}
	first := time.Now()
	p.left(first)
	// The next token is due now, as after a late send: it still waits.
	if ok := p.take(ctx, time.Now, due(time.Second), &batchState{}, &latency{}); !ok {
		t.Fatal("second send refused, though it could wait an interval")
	}
	if got := time.Since(first); got < interval-time.Millisecond {
		t.Fatalf("second send started %s after the first, want at least %s", got, interval)
	}
	// Until the second has left for the provider, the next waits however late.
	late := p.slot(time.Now().Add(-time.Second), time.Now().Add(100*time.Millisecond), time.Now().Add(100*time.Millisecond))
	if ok := p.take(ctx, time.Now, late, &batchState{}, &latency{}); ok {
		t.Fatal("a send started while the one before it was still on its way to the provider")
	}
	p.left(time.Now())
	// A third that must start within 50 ms cannot: it gives up.
	if ok := p.take(ctx, time.Now, due(50*time.Millisecond), &batchState{}, &latency{}); ok {
		t.Fatal("third send started within an interval of the second")
	}
}

// A send that would start after its dispatch's SendAt allowed goes only while
// a slice of the batch runs here, which hands the late start on to the next
// slice; without one it gives up, since the next slice may be pacing elsewhere.
// Its start counts from when it left for the provider.
func TestLateSendsStartOnlyWhileTheirSliceRuns(t *testing.T) {
	p := newPace(5)
	ctx := context.Background()
	late := func() slot {
		return p.slot(time.Now().Add(-time.Millisecond), time.Now().Add(-time.Millisecond), time.Now().Add(time.Second))
	}

	idle := &batchState{}
	if ok := p.take(ctx, time.Now, late(), idle, &latency{}); ok {
		t.Fatal("a late send started with no slice of its batch running")
	}

	running := &batchState{}
	running.setActive(true)
	// Not after the last moment it may start at all (the batch's validity, or
	// lateStart past its SendAt), slice or no slice.
	expired := p.slot(time.Now().Add(-time.Second), time.Now().Add(-time.Second), time.Now().Add(-time.Millisecond))
	if ok := p.take(ctx, time.Now, expired, running, &latency{}); ok {
		t.Fatal("a send started after the last moment it could")
	}
	ok := p.take(ctx, time.Now, late(), running, &latency{})
	if !ok {
		t.Fatal("a late send gave up while its slice runs")
	}
	left := time.Now().Add(300 * time.Millisecond) // held up on its way to the provider
	p.left(left)
	handedOn := running.setActive(false)
	if handedOn.IsZero() || time.Since(handedOn) > time.Second {
		t.Fatalf("the slice's end hands on %v as the late start, want the late send's", handedOn)
	}

	// The next slice, elsewhere, paces from the late start.
	next := newPace(5)
	next.notBefore(handedOn)
	if got := next.tokenAt(handedOn).Sub(handedOn); got < 200*time.Millisecond {
		t.Fatalf("next token %s after the late start, want an interval", got)
	}
	// Here, the next send waits an interval after the time the send left, not
	// after the earlier one take noted.
	if ok := p.take(ctx, time.Now, p.slot(time.Now(), time.Now().Add(time.Second), time.Now().Add(time.Second)), idle, &latency{}); !ok {
		t.Fatal("send refused")
	}
	if got, want := time.Since(left), time.Duration(float64(time.Second)*headroom/5); got < want-time.Millisecond {
		t.Fatalf("next send started %s after the late send left, want an interval (%s)", got, want)
	}
}

// A decision made late, by less than an interval, still gets the token the plan
// gave it, so the next keeps to the plan; after a longer pause nothing is owed
// and the token is now.
func TestLateDecisionKeepsThePlan(t *testing.T) {
	p := newPace(5)
	interval := time.Duration(float64(time.Second) * headroom / 5)
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	b := &domain.Batch{}
	p.sent(b, t0, 1)

	late := t0.Add(interval + interval/2)
	if got := p.tokenAt(late); !got.Equal(t0.Add(interval)) {
		t.Fatalf("decided half an interval late: token at %s, want the planned %s", got.Sub(t0), interval)
	}
	p.sent(b, p.tokenAt(late), 1)
	if got := p.tokenAt(late); !got.Equal(t0.Add(2 * interval)) {
		t.Fatalf("next token at %s, want %s: the late decision pushed the plan back", got.Sub(t0), 2*interval)
	}

	idle := t0.Add(10 * interval)
	if got := p.tokenAt(idle); !got.Equal(idle) {
		t.Fatalf("after a pause: token at %s, want now (%s)", got.Sub(t0), idle.Sub(t0))
	}
}

// The work a slice hands on carries the latest late start of its sends, and
// the next slice, wherever it runs, paces from it.
func TestSliceHandsItsLateStartOn(t *testing.T) {
	h := newHarness(t, newFakeProvider(0))
	p := h.processor(Config{})
	w := h.create("b1", 50, domain.PriorityNormal)
	st := p.state(w.BatchID)
	var late time.Time
	go func() {
		// As a send of the running slice would that woke after its SendAt.
		for !st.isActive() {
			time.Sleep(time.Millisecond)
		}
		late = time.Now()
		st.startLate(late)
	}()
	next, err := p.RunSlice(context.Background(), w)
	if err != nil || next == nil {
		t.Fatalf("slice: next %v, err %v", next, err)
	}
	if !next.NotBefore.Equal(late) {
		t.Fatalf("handed on NotBefore %v, want the late start %v", next.NotBefore, late)
	}

	other := h.processor(Config{})
	b, err := h.cmds.Repository().Load(context.Background(), w.BatchID)
	if err != nil {
		t.Fatal(err)
	}
	ost := other.state(w.BatchID)
	if err := other.prepare(ost, b, *next); err != nil {
		t.Fatal(err)
	}
	if got := ost.pace.tokenAt(late).Sub(late); got < 190*time.Millisecond {
		t.Fatalf("the next instance's first token %s after the late start, want an interval", got)
	}
}

// isActive reports whether a slice of the batch runs here.
func (st *batchState) isActive() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.active
}
