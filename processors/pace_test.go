package processors

import (
	"context"
	"slices"
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

// The sends' real start times hold the rate the provider sees: a send starts
// at least a window (a second and windowMargin at 5/s) after the fifth send
// before it and half an interval after the one before, whatever its token says,
// so no second at the provider holds more than the rate; it gives up if that is
// after it must have started. A late send does not push the next, on time, a
// whole interval back.
func TestSendsKeepToTheRateInEverySecond(t *testing.T) {
	p := newPace(5)
	interval := time.Duration(float64(time.Second) * headroom / 5)
	window := time.Second + windowMargin
	ctx := context.Background()
	due := func(at time.Time, by time.Duration) slot {
		return p.slot(at, time.Now().Add(by), time.Now().Add(by))
	}
	// Every token already due, as after a stall: the sends catch up, half an
	// interval apart, five to a window.
	var starts []time.Time
	for i := range 6 {
		if ok := p.take(ctx, time.Now, due(time.Now().Add(-time.Second), 2*time.Second), &batchState{}, &latency{}); !ok {
			t.Fatalf("send %d refused", i)
		}
		starts = append(starts, time.Now())
		p.left(starts[i])
	}
	for i := 1; i < len(starts); i++ {
		if got := starts[i].Sub(starts[i-1]); got < interval/2-time.Millisecond {
			t.Fatalf("send %d started %s after the one before, want at least %s", i, got, interval/2)
		}
	}
	if got := starts[5].Sub(starts[0]); got < window-time.Millisecond {
		t.Fatalf("six sends within %s, want the sixth at least %s after the first", got, window)
	}
	if got := starts[4].Sub(starts[0]); got > window-interval/2 {
		t.Fatalf("five sends took %s: the late ones did not catch up with the plan", got)
	}

	// At a rate that is not whole, as while a throttled batch climbs back, a
	// second still holds no more sends than a send every interval would put
	// there: at 4.9/s, five.
	r := newPace(4.9)
	var rs []time.Time
	for i := range 6 {
		if ok := r.take(ctx, time.Now, r.slot(time.Now().Add(-time.Second), time.Now().Add(2*time.Second), time.Now().Add(2*time.Second)), &batchState{}, &latency{}); !ok {
			t.Fatalf("send %d at 4.9/s refused", i)
		}
		rs = append(rs, time.Now())
		r.left(rs[i])
	}
	if got := rs[5].Sub(rs[0]); got < time.Second {
		t.Fatalf("at 4.9/s six sends within %s", got)
	}

	// A send that went out late does not hold the next, due an interval after
	// its token, a whole interval back.
	q := newPace(5)
	token := time.Now()
	if ok := q.take(ctx, time.Now, q.slot(token, token.Add(time.Second), token.Add(time.Second)), &batchState{}, &latency{}); !ok {
		t.Fatal("send refused")
	}
	lateBy := 80 * time.Millisecond
	q.left(token.Add(lateBy)) // held up on its way to the provider
	if ok := q.take(ctx, time.Now, q.slot(token.Add(interval), token.Add(time.Second), token.Add(time.Second)), &batchState{}, &latency{}); !ok {
		t.Fatal("next send refused")
	}
	if got := time.Since(token); got < interval-time.Millisecond || got > interval+lateBy/2 {
		t.Fatalf("next send started %s after the last token, want at its own token (%s)", got, interval)
	}

	// Until a send has left for the provider, the next waits however late.
	if ok := q.take(ctx, time.Now, q.slot(time.Now().Add(-time.Second), time.Now().Add(100*time.Millisecond), time.Now().Add(100*time.Millisecond)), &batchState{}, &latency{}); ok {
		t.Fatal("a send started while the one before it was still on its way to the provider")
	}
	q.left(time.Now())
	// One that must start within 20 ms, less than half an interval, cannot:
	// it gives up.
	if ok := q.take(ctx, time.Now, q.slot(time.Now(), time.Now().Add(20*time.Millisecond), time.Now().Add(20*time.Millisecond)), &batchState{}, &latency{}); ok {
		t.Fatal("a send started within half an interval of the one before")
	}
	if len(q.pending) != 0 {
		t.Fatalf("%d sends still pending after taking or giving up their slots", len(q.pending))
	}
}

// The start times a slice hands on hold its sends that started and the bounds
// of those that had not; the next slice elsewhere paces from them, so a window
// still holds at most the rate when the batch moves, even to an instance
// whose clock is up to clockSkew ahead. Without them (a new chain), it waits a
// window after the last send's bound.
func TestNextSliceElsewherePacesFromTheStartsHandedOn(t *testing.T) {
	p := newPace(5)
	window := time.Second + windowMargin // the window rule at 5/s
	elsewhere := window + clockSkew      // from start times read on another clock
	ctx := context.Background()
	for range 4 {
		if ok := p.take(ctx, time.Now, p.slot(time.Now().Add(-time.Second), time.Now().Add(time.Second), time.Now().Add(time.Second)), &batchState{}, &latency{}); !ok {
			t.Fatal("send refused")
		}
		p.left(time.Now())
	}
	// Dispatched, not started: its token and bound are ahead.
	by := time.Now().Add(300 * time.Millisecond)
	waiting := p.slot(time.Now().Add(250*time.Millisecond), by, by)
	recent := p.handOn()
	if len(recent) != 5 || !recent[4].Equal(by) {
		t.Fatalf("handed on %v, want the four starts and the waiting send's bound %v", recent, by)
	}

	next := newPace(5)
	next.adopt(recent, by)
	if ok := next.take(ctx, time.Now, next.slot(time.Now().Add(-time.Second), time.Now().Add(2*time.Second), time.Now().Add(2*time.Second)), &batchState{}, &latency{}); !ok {
		t.Fatal("send refused on the next instance")
	}
	if got := time.Since(recent[0]); got < elsewhere-time.Millisecond {
		t.Fatalf("the next instance's first send started %s after the first handed on, want a window and the clocks' skew (%s)", got, elsewhere)
	}
	p.giveUp(waiting)

	fresh := newPace(5)
	bound := time.Now().Add(-100 * time.Millisecond)
	fresh.adopt(nil, bound)
	if ok := fresh.take(ctx, time.Now, fresh.slot(time.Now(), time.Now().Add(2*time.Second), time.Now().Add(2*time.Second)), &batchState{}, &latency{}); !ok {
		t.Fatal("send refused after a new chain")
	}
	if got := time.Since(bound); got < window-time.Millisecond {
		t.Fatalf("a new chain's first send started %s after the last send's bound, want a window (%s)", got, window)
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
	// Here, the next send waits half an interval after the time the send
	// left, not after the earlier one take noted.
	if ok := p.take(ctx, time.Now, p.slot(time.Now(), time.Now().Add(time.Second), time.Now().Add(time.Second)), idle, &latency{}); !ok {
		t.Fatal("send refused")
	}
	if got, want := time.Since(left), time.Duration(float64(time.Second)*headroom/5/2); got < want-time.Millisecond {
		t.Fatalf("next send started %s after the late send left, want half an interval (%s)", got, want)
	}
}

// A decision made late, by up to a second's worth of sends, still gets the
// token the plan gave it, so the next ones catch up with the plan; after a
// longer pause nothing is owed and the token is now.
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

	// Three intervals late, as after a commit that took long: still the plan.
	stalled := t0.Add(5 * interval)
	if got := p.tokenAt(stalled); !got.Equal(t0.Add(2 * interval)) {
		t.Fatalf("decided three intervals late: token at %s, want the planned %s", got.Sub(t0), 2*interval)
	}

	idle := t0.Add(10 * interval)
	if got := p.tokenAt(idle); !got.Equal(idle) {
		t.Fatalf("after a pause: token at %s, want now (%s)", got.Sub(t0), idle.Sub(t0))
	}
}

// The work a slice hands on carries the latest late start of its sends and the
// start times of its latest sends, and the next slice, wherever it runs, paces
// from them.
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
	// With the start times of the sends before, which it paces from, each
	// allowing for the clocks' skew.
	var want []time.Time
	for _, at := range next.Recent {
		want = append(want, at.Add(clockSkew))
	}
	if len(next.Recent) == 0 || !slices.Equal(ost.pace.recent, want) {
		t.Fatalf("the next instance paces from %v, want the starts handed on %v, %s later", ost.pace.recent, next.Recent, clockSkew)
	}
}

// A send dispatched near a slice's end and due after it may start late while
// the slice hands on, as any send of a running slice may: the slice waits for
// it before ending. Before, the slice ended at its deadline, the send could
// then start only by its SendAt plus handoverMargin, and on a saturated
// instance (a thousand batches on two cores, whose first slices all end
// together) about one batch in fifty had such a send wake later than that and
// give its token up, losing an interval. Here the instance stalls (the clock
// jumps 150 ms) between the slice's deadline and that send's token.
func TestASendDueAfterItsSliceEndsMayStillStartLate(t *testing.T) {
	h := newHarness(t, newFakeProvider(0))
	clock := &offsetClock{}
	// 1/s: tokens 1.01 s apart, each dispatch decided half an interval ahead.
	// The third (at 2.02 s) is decided at about 1.52 s, before the deadline.
	p := h.processor(Config{SliceDuration: 1800 * time.Millisecond, Rates: domain.Rates{High: 1, Normal: 1, Low: 1}, Now: clock.Now})
	w := h.create("b1", 10, domain.PriorityNormal)
	go func() {
		time.Sleep(1900 * time.Millisecond)
		clock.advance(150 * time.Millisecond)
	}()
	next, err := p.RunSlice(context.Background(), w)
	if err != nil || next == nil {
		t.Fatalf("slice: next %v, err %v", next, err)
	}
	drained(t, p)
	b, err := h.cmds.Repository().Load(context.Background(), "b1")
	if err != nil {
		t.Fatal(err)
	}
	if b.Cursor() != 3 {
		t.Skipf("the slice dispatched %d messages, not 3: it woke too late for the third", b.Cursor())
	}
	h.prov.mu.Lock()
	calls := len(h.prov.times)
	h.prov.mu.Unlock()
	if calls != 3 {
		t.Fatalf("the provider got %d of the slice's 3 sends: the one due after its end gave up", calls)
	}
	if next.NotBefore.IsZero() {
		t.Fatal("the late start was not handed on")
	}
}

// A late start handed on moves the next slice's plan only where that slice
// runs on another instance, which knows the batch's sends from the work alone.
// Here the pace saw the send start and holds the sends a window after it to
// it; reseeding from it pushed every later send of the batch back by its
// lateness.
func TestALateStartDoesNotPushThePlanBackHere(t *testing.T) {
	h := newHarness(t, newFakeProvider(0))
	p := h.processor(Config{})
	w := h.create("b1", 50, domain.PriorityNormal)
	st := p.state(w.BatchID)
	late := time.Now().Add(time.Second) // later than anything the slice plans
	go func() {
		for !st.isActive() {
			time.Sleep(time.Millisecond)
		}
		st.startLate(late)
	}()
	next, err := p.RunSlice(context.Background(), w)
	if err != nil || next == nil || !next.NotBefore.Equal(late) {
		t.Fatalf("slice: next %v, err %v; want the late start handed on", next, err)
	}
	b, err := h.cmds.Repository().Load(context.Background(), w.BatchID)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	plan := st.pace.tokenAt(now)
	if err := p.prepare(st, b, *next); err != nil {
		t.Fatal(err)
	}
	if got := st.pace.tokenAt(now); got.Sub(plan) > time.Millisecond {
		t.Fatalf("the next slice here plans its first token at %s, %s after the plan; want the plan",
			got.Format(time.StampMilli), got.Sub(plan))
	}
}

// isActive reports whether a slice of the batch runs here.
func (st *batchState) isActive() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.active
}

// A send the provider says left later than the pace noted (it was held up on
// its way there) counts from when it left: the send a window after it waits
// for that, so the provider still sees no more than the rate in a second.
func TestSendsArePacedFromWhenTheProviderSaysTheyLeft(t *testing.T) {
	p := newPace(5)
	window := time.Second + windowMargin
	ctx := context.Background()
	var first time.Time
	for i := range 6 {
		if ok := p.take(ctx, time.Now, p.slot(time.Now().Add(-time.Second), time.Now().Add(2*time.Second), time.Now().Add(2*time.Second)), &batchState{}, &latency{}); !ok {
			t.Fatalf("send %d refused", i)
		}
		begin := time.Now()
		p.left(begin)
		if i == 0 {
			first = begin.Add(40 * time.Millisecond)
			p.departed(begin, first) // it reached the provider 40 ms after the pace's note
		}
	}
	if got := time.Since(first); got < window-time.Millisecond {
		t.Fatalf("the sixth send started %s after the first left, want a window (%s)", got, window)
	}
}

// A send is decided for when it can start, not for its token alone: when the
// sends a window before it started late, or a send dispatched here is still
// due, the dispatch waits until just before the send may go, and records that
// as when it goes. Decided at its token, it would wait past the bound its
// dispatch recorded, give up, and cost the batch a token and a new dispatch.
func TestDecisionWaitsUntilTheSendCanStart(t *testing.T) {
	p := newPace(5)
	interval := time.Duration(float64(time.Second) * headroom / 5)
	window := time.Second + windowMargin // the window rule at 5/s
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	b := &domain.Batch{}
	// Five sends planned an interval apart; the first left 300 ms late.
	for i := range 5 {
		p.sent(b, t0.Add(time.Duration(i)*interval), 1)
	}
	p.recent = []time.Time{t0.Add(300 * time.Millisecond), t0.Add(interval + 300*time.Millisecond), t0.Add(2*interval + 100*time.Millisecond), t0.Add(3 * interval), t0.Add(4 * interval)}
	token := t0.Add(5 * interval)
	if got := p.tokenAt(token); !got.Equal(token) {
		t.Fatalf("token at %s, want the plan's %s", got.Sub(t0), token.Sub(t0))
	}
	can := p.recent[0].Add(window)
	if p.ready(token) {
		t.Fatalf("ready at the token, %s before the send may start", can.Sub(token))
	}
	if got := p.wakeAt(token, 30*time.Millisecond); !got.Equal(can.Add(-30 * time.Millisecond)) {
		t.Fatalf("wakes at %s, want a lead before the send may start (%s)", got.Sub(t0), can.Sub(t0))
	}
	if !p.ready(can) {
		t.Fatal("not ready once the send may start")
	}
	if got := p.startAt(token); !got.Equal(can) {
		t.Fatalf("decided to start at %s, want %s, a window after the fifth send before", got.Sub(t0), can.Sub(t0))
	}

	// Dispatched and still due here, it counts as starting then: the next
	// send is due half an interval after it, and a window after the second
	// send before, which also left late.
	p.slot(can, can.Add(time.Second), can.Add(time.Second))
	next := p.recent[1].Add(window)
	if got := p.startAt(token.Add(interval)); !got.Equal(next) {
		t.Fatalf("the send after: due at %s, want %s", got.Sub(t0), next.Sub(t0))
	}
	p.slot(next, next.Add(time.Second), next.Add(time.Second))
	if got, want := p.startAt(token.Add(2*interval)), next.Add(interval/2); !got.Equal(want) {
		t.Fatalf("the third: due at %s, want %s, half an interval after the one before", got.Sub(t0), want.Sub(t0))
	}
}

// A send that left a little late passes none of its lateness to the send a
// window after it: the plan's headroom takes it (8 ms at 5/s), and only what is
// over goes on. With the window as long as the plan's five intervals, every
// millisecond went on to the sends a window, two, three windows later, to the
// end of the batch: at 1,000 batches on two cores, tens of batches a run kept
// under 98% of their rate.
func TestALittleLatenessStopsAtTheWindowAfter(t *testing.T) {
	interval := time.Duration(float64(time.Second) * headroom / 5)
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	token := t0.Add(5 * interval)
	for _, tc := range []struct {
		late, want time.Duration
	}{
		{late: 0, want: 0},
		{late: 6 * time.Millisecond, want: 0},
		{late: 5*interval - time.Second - windowMargin, want: 0},
		{late: 20 * time.Millisecond, want: 20*time.Millisecond - (5*interval - time.Second - windowMargin)},
	} {
		p := newPace(5)
		b := &domain.Batch{}
		for i := range 5 {
			p.sent(b, t0.Add(time.Duration(i)*interval), 1)
		}
		for i := range 5 {
			p.recent = append(p.recent, t0.Add(time.Duration(i)*interval))
		}
		p.recent[0] = p.recent[0].Add(tc.late)
		if got := p.startAt(p.tokenAt(token)).Sub(token); got != tc.want {
			t.Errorf("the fifth send before left %s late: the sixth starts %s after its token, want %s", tc.late, got, tc.want)
		}
	}
}

// A 429 slows a batch down from the rate it was allowed: one its tenant's cap
// holds below its priority's rate resumes below its share, not at it (halving
// the priority's 20/s gave 10/s, above its share of 4: the 429 changed nothing).
func TestARateLimitAnswerSlowsACappedBatch(t *testing.T) {
	now := time.Now()
	p := newPace(20)
	p.capTo(4)
	th := domain.Throttle{Until: now, Rate: slowedRate(p.target, p.share, now, domain.Throttle{})}
	if got := p.rateAt(now, th); got >= 4 {
		t.Fatalf("after a 429 the capped batch resumes at %v/s, its full share of 4/s", got)
	}
	// Uncapped, it halves its own rate.
	q := newPace(20)
	th = domain.Throttle{Until: now, Rate: slowedRate(q.target, q.target, now, domain.Throttle{})}
	if got := q.rateAt(now, th); got != 10 {
		t.Fatalf("after a 429 an uncapped batch of 20/s resumes at %v/s, want 10", got)
	}
}
