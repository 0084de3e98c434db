package processors

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/memory"
	"github.com/smsbatch/smsbatch/processors/sms"
)

// These tests hold the rule that a message is sent again only when no earlier
// send of it can still be running, against a provider that records every call
// and deduplicates nothing: every call counted there is an SMS a customer gets.

// driveAsync runs a work chain like drive, in the background.
func driveAsync(p *Processor, w Work) <-chan error {
	done := make(chan error, 1)
	go func() {
		next := &w
		for i := 0; next != nil; i++ {
			if i > 1000 {
				done <- errors.New("work chain did not end")
				return
			}
			var err error
			if next, err = p.RunSlice(context.Background(), *next); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	return done
}

func wait(t *testing.T, chains ...<-chan error) {
	t.Helper()
	for _, c := range chains {
		select {
		case err := <-c:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a work chain did not end within 30s")
		}
	}
}

// assertNoDuplicateCalls fails when the provider was called twice for one key
// or had more than five calls in flight at once.
func (f *fakeProvider) assertNoDuplicateCalls(t *testing.T, n int) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) != n {
		t.Fatalf("%d keys reached the provider, want %d", len(f.calls), n)
	}
	for key, c := range f.calls {
		if c != 1 {
			t.Fatalf("%s reached the provider %d times: a duplicate SMS", key, c)
		}
	}
	if f.maxInFlight > 5 {
		t.Fatalf("%d calls of one batch in flight at once, want at most 5", f.maxInFlight)
	}
}

// drained lets every send of the processors finish and be recorded.
func drained(t *testing.T, ps ...*Processor) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, p := range ps {
		if err := p.Drain(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// Cause 1: an instance that starts hands every processing batch a work message
// continuing from the batch's last slice. If another instance is still inside
// that slice, the newcomer must not send what the live slice has in flight.
func TestJoiningInstanceDoesNotResendLiveWork(t *testing.T) {
	onEveryStore(t, func() *fakeProvider { return newFakeProvider(400 * time.Millisecond) }, func(t *testing.T, h *harness) {
		const n = 30
		w := h.create("b1", n, domain.PriorityNormal)
		live := h.processor(Config{Unlimited: true, SliceDuration: 2 * time.Second})
		a := driveAsync(live, w)
		// Wait until the live slice has five sends in flight.
		h.eventually(t, "five messages in flight", func(b *domain.Batch) bool { return len(b.Outstanding()) == 5 }, "b1")
		b, _ := h.cmds.Repository().Load(context.Background(), "b1")
		joiner := h.processor(Config{Unlimited: true})
		j := driveAsync(joiner, Work{BatchID: "b1", PrevSlice: b.LastSlice()})
		wait(t, a, j)
		drained(t, live, joiner)
		h.prov.assertNoDuplicateCalls(t, n)
		assertOneOutcomeEach(t, h.outcomes("b1"), n)
	})
}

// Cause 2: a batch paused while its slice waits for answers, then resumed at
// once on another instance, must not have those messages sent again.
func TestResumeElsewhereDoesNotResendWhatThePauseLeftInFlight(t *testing.T) {
	onEveryStore(t, func() *fakeProvider { return newFakeProvider(500 * time.Millisecond) }, func(t *testing.T, h *harness) {
		const n = 20
		ctx := context.Background()
		w := h.create("b1", n, domain.PriorityNormal)
		first := h.processor(Config{Unlimited: true, SliceDuration: 2 * time.Second})
		a := driveAsync(first, w)
		h.eventually(t, "five messages in flight", func(b *domain.Batch) bool { return len(b.Outstanding()) == 5 }, "b1")
		act := commands.Act{Tenant: "acme", BatchID: "b1", By: "test"}
		if _, err := h.cmds.PauseBatch(ctx, act); err != nil {
			t.Fatal(err)
		}
		res, err := h.cmds.ResumeBatch(ctx, act)
		if err != nil {
			t.Fatal(err)
		}
		second := h.processor(Config{Unlimited: true})
		b := driveAsync(second, Work{BatchID: "b1", PrevSlice: res.Batch.LastSlice()})
		wait(t, a, b)
		drained(t, first, second)
		h.prov.assertNoDuplicateCalls(t, n)
		assertOneOutcomeEach(t, h.outcomes("b1"), n)
	})
}

// lossyStore stores appends but answers the first lose of them that dispatch
// with an error, as a connection dropping after the commit would.
type lossyStore struct {
	eventstore.Store
	lose atomic.Int32
}

func (l *lossyStore) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	res, err := l.Store.Append(ctx, stream, expected, events)
	if err != nil {
		return res, err
	}
	for _, e := range events {
		if e.Type == domain.TypeMessagesDispatched && l.lose.Add(-1) >= 0 {
			return eventstore.AppendResult{}, fmt.Errorf("connection lost after commit: %w", eventstore.ErrUnavailable)
		}
	}
	return res, nil
}

// Cause 3: a dispatch that was stored but whose answer was lost must not end
// the work chain: the batch goes on at once, not after stall recovery, and its
// messages still reach the provider once each.
func TestLostAnswerToADispatchDoesNotEndTheChain(t *testing.T) {
	for _, lose := range []int32{1, 20} {
		t.Run(fmt.Sprintf("%d answers lost", lose), func(t *testing.T) {
			store := &lossyStore{Store: memory.New()}
			t.Cleanup(func() { store.Close() })
			h := newHarnessOn(t, store, newFakeProvider(5*time.Millisecond))
			const n = 12
			w := h.create("b1", n, domain.PriorityNormal)
			store.lose.Store(lose)
			p := h.processor(Config{Unlimited: true})
			drive(t, p, w)
			drained(t, p)
			b, _ := h.cmds.Repository().Load(context.Background(), "b1")
			if b.Status() != domain.StatusCompleted {
				t.Fatalf("the work chain ended with the batch %s and %d sent: it waits for stall recovery", b.Status(), b.Sent())
			}
			h.prov.assertNoDuplicateCalls(t, n)
			assertOneOutcomeEach(t, h.outcomes("b1"), n)
		})
	}
}

// slowDispatchStore calls slow once, when the first append that dispatches
// has been stored and before its answer: a test moves its clock on there, as
// if the append had taken that long (the repository sends an append again
// after the store went away, 50, 200 and 800 ms later), or the recipient page
// read before the send.
type slowDispatchStore struct {
	eventstore.Store
	slow func()
	once sync.Once
}

func (s *slowDispatchStore) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	res, err := s.Store.Append(ctx, stream, expected, events)
	if err == nil && slices.ContainsFunc(events, func(e eventstore.EventData) bool { return e.Type == domain.TypeMessagesDispatched }) {
		s.once.Do(s.slow)
	}
	return res, err
}

// Cause 8: a send that starts late. A dispatch's deadline counts on its sends
// starting within a second of the decision (maxStartDelay); one that cannot
// gives up before reaching the provider, and its message goes again under a
// new attempt. With the rate lifted a send waited for no token and had no such
// bound: when its dispatch's append took 3.5 s it started then, the provider
// took 4.6 s (under the 5 s send timeout), and at the deadline, that call
// still running, the message was in doubt and went again: two SMS.
func TestASendThatCannotStartInItsWindowIsNotSentTwice(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  Config
	}{
		{"rate lifted", Config{Unlimited: true}},
		{"5/s", Config{Rates: domain.Rates{High: 5, Normal: 5, Low: 5}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clock := &offsetClock{}
			store := &slowDispatchStore{Store: memory.New(), slow: func() { clock.advance(3500 * time.Millisecond) }}
			t.Cleanup(func() { store.Close() })
			prov := newFakeProvider(0)
			var reached atomic.Bool
			again := make(chan struct{})
			prov.fail = func(key string, n int) error {
				if n > 1 {
					close(again)
					return nil
				}
				// 4.6 s at the provider by the clock, and on the line
				// while the slices look again (until a second call).
				clock.advance(4600 * time.Millisecond)
				reached.Store(true)
				select {
				case <-again:
				case <-time.After(time.Second):
				}
				return nil
			}
			h := newHarnessOn(t, store, prov)
			w := h.create("b1", 1, domain.PriorityNormal)
			cfg := tt.cfg
			cfg.Now = clock.Now
			p := h.processor(cfg)
			next, err := p.RunSlice(context.Background(), w) // dispatches b1:0, 3.5 s late
			if err != nil || next == nil {
				t.Fatalf("first slice: next %v, err %v; want work to hand on", next, err)
			}
			// The next slice looks once that send has reached the provider or
			// given up.
			st := p.state("b1")
			h.eventually(t, "the first send reached the provider or gave up", func(*domain.Batch) bool {
				return reached.Load() || !st.sending(0, 1)
			}, "b1")
			drive(t, p, *next)
			drained(t, p)
			prov.assertNoDuplicateCalls(t, 1)
			assertOneOutcomeEach(t, h.outcomes("b1"), 1)
		})
	}
}

// With the rate lifted a send's start bound is the one its deadline counts on,
// a second after the decision, not its SendAt's: held to SendAt and its
// margins (75 ms to 275 ms after the decision here), a send whose append took
// 300 ms gave up and its message went under a second dispatch, and when the
// chain had moved to another instance meanwhile, the message waited out the
// deadline there (three instances on PostgreSQL sent half as fast).
func TestASendWithTheRateLiftedStartsWithinItsWindow(t *testing.T) {
	clock := &offsetClock{}
	store := &slowDispatchStore{Store: memory.New(), slow: func() { clock.advance(300 * time.Millisecond) }}
	t.Cleanup(func() { store.Close() })
	h := newHarnessOn(t, store, newFakeProvider(0))
	w := h.create("b1", 1, domain.PriorityNormal)
	p := h.processor(Config{Unlimited: true, Now: clock.Now})
	drive(t, p, w)
	drained(t, p)
	h.prov.assertNoDuplicateCalls(t, 1)
	dispatches := 0
	for _, e := range h.events("b1") {
		if e.Type == domain.TypeMessagesDispatched {
			dispatches++
		}
	}
	if dispatches != 1 {
		t.Fatalf("b1:0 was dispatched %d times; want once, its send starting 300 ms after the decision", dispatches)
	}
}

// With the rate lifted too, a send never starts after the batch's validity:
// one whose dispatch's append ended past it gives up, and its message is
// skipped as expired.
func TestASendWithTheRateLiftedNeverStartsAfterTheValidity(t *testing.T) {
	clock := &offsetClock{}
	validUntil := time.Now().Add(time.Minute)
	// The dispatch is decided 200 ms before the validity ends, and its append
	// ends just after: within the start window the send would otherwise have.
	store := &slowDispatchStore{Store: memory.New(), slow: func() { clock.set(validUntil.Add(time.Millisecond)) }}
	t.Cleanup(func() { store.Close() })
	h := newHarnessOn(t, store, newFakeProvider(0))
	tmpl, _ := domain.NewTemplate("Hello {{name}}", domain.DefaultTemplateLimits)
	res, err := h.cmds.CreateBatch(context.Background(), commands.CreateBatch{
		ID: "b1", Tenant: "acme", Template: tmpl, AutoStart: true, ValidUntil: &validUntil, Recipients: phones(1),
	})
	if err != nil {
		t.Fatal(err)
	}
	clock.set(validUntil.Add(-200 * time.Millisecond))
	p := h.processor(Config{Unlimited: true, Now: clock.Now})
	drive(t, p, Work{BatchID: "b1", PrevSlice: res.Batch.LastSlice()})
	drained(t, p)
	h.prov.mu.Lock()
	calls := h.prov.calls["b1:0"]
	h.prov.mu.Unlock()
	if calls > 0 {
		t.Fatalf("b1:0 reached the provider %d times after the batch's validity", calls)
	}
	b, _ := h.cmds.Repository().Load(context.Background(), "b1")
	if b.Status() != domain.StatusCompleted || b.Skipped() != 1 {
		t.Fatalf("status %s, %d skipped; want b1:0 skipped as expired", b.Status(), b.Skipped())
	}
}

// Cause 5: a 429's hold and reduced rate must be kept by whichever instance
// works the batch next.
func TestThrottleIsKeptAcrossInstances(t *testing.T) {
	prov := newFakeProvider(5 * time.Millisecond)
	var limitedAt atomic.Int64
	prov.fail = func(key string, n int) error {
		if key == "b1:8" && n == 1 {
			limitedAt.Store(time.Now().UnixNano())
			return &sms.Error{Category: domain.CategoryRateLimited, Code: "429", Message: "slow down", RetryAfter: time.Second}
		}
		return nil
	}
	h := newHarness(t, prov)
	const rate = 20.0
	cfg := Config{Rates: domain.Rates{High: rate, Normal: rate, Low: rate}, SliceDuration: 150 * time.Millisecond}
	instances := []*Processor{h.processor(cfg), h.processor(cfg)}
	const n = 60
	next := new(h.create("b1", n, domain.PriorityNormal))
	for i := 0; next != nil; i++ {
		var err error
		if next, err = instances[i%2].RunSlice(context.Background(), *next); err != nil {
			t.Fatal(err)
		}
	}
	drained(t, instances...)
	assertOneOutcomeEach(t, h.outcomes("b1"), n)
	at := time.Unix(0, limitedAt.Load())
	holdEnd := at.Add(time.Second)
	during, firstSecond := 0, 0
	for _, s := range prov.times {
		switch {
		case s.After(at.Add(20*time.Millisecond)) && s.Before(holdEnd.Add(-20*time.Millisecond)):
			during++
		case !s.Before(holdEnd) && s.Before(holdEnd.Add(time.Second)):
			firstSecond++
		}
	}
	if during > 0 {
		t.Fatalf("%d sends during the provider's 1s Retry-After", during)
	}
	// Halved to 10/s, climbing back by 2/s each second: about 11 in the first
	// second after the hold, far below the 20 of the full rate.
	if firstSecond > 13 {
		t.Fatalf("%d sends in the second after the hold, want the rate reduced (about 11)", firstSecond)
	}
}

// Cause 6: slices hand over without losing a provider latency: the batch
// reaches its rate whatever the provider's latency, up to what five messages
// in flight allow.
func TestRateReachedAtProviderLatencies(t *testing.T) {
	if testing.Short() {
		t.Skip("sends for a few seconds at each latency")
	}
	tests := []struct {
		latency  time.Duration
		priority domain.Priority
		rate     float64
	}{
		{50 * time.Millisecond, domain.PriorityHigh, 8},
		{400 * time.Millisecond, domain.PriorityHigh, 8},
		// Five in flight at 1s each allow 5/s at most: normal priority's rate.
		{time.Second, domain.PriorityNormal, 5},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.latency), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, newFakeProvider(tt.latency))
			// Short slices: many handovers, each of which used to cost a latency.
			p := h.processor(Config{SliceDuration: 500 * time.Millisecond})
			n := int(tt.rate*4) + 1
			drive(t, p, h.create("b1", n, tt.priority))
			drained(t, p)
			times := h.prov.times
			if len(times) != n {
				t.Fatalf("%d sends, want %d", len(times), n)
			}
			assertRate(t, times, tt.rate)
			achieved := float64(n-1) / times[n-1].Sub(times[0]).Seconds()
			t.Logf("latency %s: %.3f msg/s, %.1f%% of %v", tt.latency, achieved, 100*achieved/tt.rate, tt.rate)
			if achieved < 0.95*tt.rate {
				t.Fatalf("achieved %.2f/s at %s latency, want at least 95%% of %v", achieved, tt.latency, tt.rate)
			}
		})
	}
}

// Cause 7: what an instance holds for a batch is freed once nobody sends for it
// there, whichever instance finished, paused or cancelled it.
func TestBatchStateIsFreedWhoeverEndedTheBatch(t *testing.T) {
	h := newHarness(t, newFakeProvider(2*time.Millisecond))
	cfg := Config{Unlimited: true, SliceDuration: 50 * time.Millisecond, StateIdle: 50 * time.Millisecond}
	ps := []*Processor{h.processor(cfg), h.processor(cfg), h.processor(cfg)}
	ctx := context.Background()
	batches := 10_000
	if testing.Short() {
		batches = 30
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range batches {
		id := fmt.Sprintf("b%d", i)
		next := new(h.create(id, 3, domain.PriorityNormal))
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			// The slices of each batch hop from instance to instance.
			for j := i; next != nil; j++ {
				var err error
				if next, err = ps[j%3].RunSlice(ctx, *next); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	// One batch paused for good and one cancelled while paused, each after one
	// instance sent for it.
	for _, id := range []string{"paused", "cancelled"} {
		w := h.create(id, 2000, domain.PriorityNormal)
		if _, err := ps[0].RunSlice(ctx, w); err != nil {
			t.Fatal(err)
		}
		act := commands.Act{Tenant: "acme", BatchID: id, By: "test"}
		if _, err := h.cmds.PauseBatch(ctx, act); err != nil {
			t.Fatal(err)
		}
		if id == "cancelled" {
			if _, err := h.cmds.CancelBatch(ctx, act); err != nil {
				t.Fatal(err)
			}
		}
	}
	drained(t, ps...)
	time.Sleep(cfg.StateIdle + 10*time.Millisecond)
	for i, p := range ps {
		p.sweep(time.Now())
		if n := p.States(); n != 0 {
			t.Fatalf("instance %d holds state for %d batches nobody sends for", i, n)
		}
		if n := p.recipients.recipients(); n > p.cfg.CachedRecipients {
			t.Fatalf("instance %d caches %d recipients, bound %d", i, n, p.cfg.CachedRecipients)
		}
	}
	t.Logf("%d batches finished across 3 instances; none holds state for any", batches)
}

// A provider outage holds the batch instead of failing its recipients: the
// breaker opens after a few failures, the batch is marked held, a probe goes out
// now and then, and once the provider answers the batch completes with no
// recipient failed for the outage.
func TestProviderOutageHoldsTheBatchAndFailsNobody(t *testing.T) {
	prov := newFakeProvider(5 * time.Millisecond)
	var outageFrom, outageTo atomic.Int64
	prov.fail = func(key string, n int) error {
		now := time.Now().UnixNano()
		if from := outageFrom.Load(); from != 0 && now >= from && now < outageTo.Load() {
			return &sms.Error{Category: domain.CategoryProviderUnavailable, Code: "503", Message: "down"}
		}
		return nil
	}
	h := newHarness(t, prov)
	p := h.processor(Config{
		Rates: domain.Rates{High: 40, Normal: 40, Low: 40}, MaxAttempts: 2,
		BreakerThreshold: 3, BreakerProbeAfter: 200 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
	})
	const n = 60
	w := h.create("b1", n, domain.PriorityNormal)
	done := driveAsync(p, w)
	h.eventually(t, "ten sent", func(b *domain.Batch) bool { return b.Sent() >= 10 }, "b1")
	start := time.Now()
	outageFrom.Store(start.UnixNano())
	outageTo.Store(start.Add(1500 * time.Millisecond).UnixNano())
	held := h.eventually(t, "the batch held", func(b *domain.Batch) bool { return b.Hold().Reason != "" }, "b1")
	if held.Hold().Reason != domain.HoldReasonProviderOutage || held.Status() != domain.StatusProcessing {
		t.Fatalf("held batch: %s %+v", held.Status(), held.Hold())
	}
	wait(t, done)
	drained(t, p)

	b, _ := h.cmds.Repository().Load(context.Background(), "b1")
	if b.Status() != domain.StatusCompleted || b.Failed() != 0 || b.Sent() != n {
		t.Fatalf("after the outage: %s, %d sent, %d failed; want every recipient sent", b.Status(), b.Sent(), b.Failed())
	}
	if b.Hold().Reason != "" {
		t.Fatalf("still held after completing: %+v", b.Hold())
	}
	assertOneOutcomeEach(t, h.outcomes("b1"), n)
	// While the provider was down the breaker let through the sends that tripped
	// it and a probe every 200 ms, not a send per token (40/s).
	calls := 0
	for _, at := range prov.times {
		if !at.Before(start) && at.Before(start.Add(1500*time.Millisecond)) {
			calls++
		}
	}
	if calls > 3+5+1500/200+2 {
		t.Fatalf("%d calls during a 1.5 s outage: the breaker did not hold sending", calls)
	}
	t.Logf("%d calls during the outage", calls)
	unheld := false
	for _, e := range h.events("b1") {
		if e.Type == domain.TypeBatchUnheld {
			unheld = true
		}
	}
	if !unheld {
		t.Fatal("no BatchUnheld: the status would show the batch held")
	}
}

// countingStore counts appends to batch streams, and notes the commit delay
// each append of a dispatch asked for (eventstore.WithCommitDelay).
type countingStore struct {
	eventstore.Store
	appends atomic.Int64

	mu     sync.Mutex
	delays []time.Duration
}

func (c *countingStore) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	if strings.HasPrefix(stream, domain.BatchStreamPrefix) {
		c.appends.Add(1)
	}
	if slices.ContainsFunc(events, func(e eventstore.EventData) bool { return e.Type == domain.TypeMessagesDispatched }) {
		c.mu.Lock()
		c.delays = append(c.delays, eventstore.CommitDelay(ctx))
		c.mu.Unlock()
	}
	return c.Store.Append(ctx, stream, expected, events)
}

// At a limited rate a message costs at most one append (its dispatch carries an
// earlier message's answer); with the rate lifted, well under one.
func TestAppendsPerMessage(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		latency time.Duration
		max     float64
	}{
		// One per message, and one for the last answers, which no dispatch
		// follows; and two more for a loaded machine: a send whose goroutine
		// waits past its start-by bound for a core gives up and is dispatched
		// again, and an answer whose dispatch came that late is recorded
		// alone. Under CI's load 63 appends for 60 messages came once in 27
		// runs; unloaded it is 61 every time.
		{"rate 20/s, 30 ms provider", Config{Rates: domain.Rates{High: 20, Normal: 20, Low: 20}}, 30 * time.Millisecond, 1 + 3.5/60},
		{"rate 20/s, 300 ms provider", Config{Rates: domain.Rates{High: 20, Normal: 20, Low: 20}}, 300 * time.Millisecond, 1 + 3.5/60},
		{"rate lifted, no latency", Config{Unlimited: true}, 0, 0.5},
		{"rate lifted, 20 ms provider", Config{Unlimited: true}, 20 * time.Millisecond, 0.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := &countingStore{Store: memory.New()}
			t.Cleanup(func() { store.Close() })
			h := newHarnessOn(t, store, newFakeProvider(tt.latency))
			const n = 60
			w := h.create("b1", n, domain.PriorityNormal)
			before := store.appends.Load()
			p := h.processor(tt.cfg)
			drive(t, p, w)
			drained(t, p)
			assertOneOutcomeEach(t, h.outcomes("b1"), n)
			per := float64(store.appends.Load()-before) / n
			t.Logf("%.2f appends per message", per)
			if per > tt.max {
				t.Fatalf("%.2f appends per message, want at most %.2f", per, tt.max)
			}
		})
	}
}

// offsetClock is the real clock moved by an offset the test sets.
type offsetClock struct{ offset atomic.Int64 }

func (c *offsetClock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *offsetClock) set(at time.Time)        { c.offset.Store(int64(time.Until(at))) }
func (c *offsetClock) advance(d time.Duration) { c.offset.Add(int64(d)) }

// A fake clock drives quiet hours: recipients in two zones; the one in its night
// is sent once its morning comes, the other is not held up.
func TestQuietHoursHoldOneZoneNotTheOther(t *testing.T) {
	clock := &offsetClock{}
	ny, _ := time.LoadLocation("America/New_York")
	clock.set(time.Date(2026, 12, 1, 9, 0, 0, 0, ny)) // 06:00 in Los Angeles
	h := newHarness(t, newFakeProvider(0))
	tmpl, _ := domain.NewTemplate("Hi", domain.DefaultTemplateLimits)
	q, _ := domain.ParseQuietHours("21:00", "08:00", "")
	numbers := func(yield func(domain.Recipient, error) bool) {
		for i := range 6 {
			phone := fmt.Sprintf("+1212555%04d", i) // New York
			if i%2 == 1 {
				phone = fmt.Sprintf("+1213555%04d", i) // Los Angeles
			}
			if !yield(domain.Recipient{Phone: phone}, nil) {
				return
			}
		}
	}
	cmds, _ := commands.New(h.store, h.cmds.Repository(), clock.Now)
	res, err := cmds.CreateBatch(context.Background(), commands.CreateBatch{
		ID: "b1", Tenant: "acme", Template: tmpl, AutoStart: true, QuietHours: &q, Recipients: numbers,
	})
	if err != nil {
		t.Fatal(err)
	}
	p := h.processor(Config{Rates: domain.Rates{High: 50, Normal: 50, Low: 50}, Now: clock.Now})
	done := driveAsync(p, Work{BatchID: "b1", PrevSlice: res.Batch.LastSlice()})
	b := h.eventually(t, "New York sent", func(b *domain.Batch) bool { return b.Sent() == 3 }, "b1")
	if b.Waiting() != 3 || b.Status() != domain.StatusProcessing {
		t.Fatalf("after New York's sends: waiting %d, status %s; want Los Angeles waiting", b.Waiting(), b.Status())
	}
	time.Sleep(300 * time.Millisecond)
	for key := range h.prov.calls {
		if i := key[len(key)-1] - '0'; i%2 == 1 {
			t.Fatalf("%s sent in Los Angeles' night", key)
		}
	}
	clock.advance(2 * time.Hour) // 08:00 in Los Angeles
	wait(t, done)
	drained(t, p)
	b, _ = h.cmds.Repository().Load(context.Background(), "b1")
	if b.Status() != domain.StatusCompleted || b.Sent() != 6 {
		t.Fatalf("status %s, %d sent; want all 6", b.Status(), b.Sent())
	}
	h.prov.assertNoDuplicateCalls(t, 6)
}

// The tenant's rate cap is shared among its running batches: two batches of one
// tenant, worked by two instances with their own forwarders, never send more
// than the cap together in any second, and each gets its share.
func TestTenantRateCapIsSharedAcrossInstances(t *testing.T) {
	h := newHarness(t, newFakeProvider(5*time.Millisecond))
	const limit = 20.0
	ps := cappedInstances(t, h, 20, limit)
	const n = 40
	a := driveAsync(ps[0], h.create("b1", n, domain.PriorityNormal))
	b := driveAsync(ps[1], h.create("b2", n, domain.PriorityNormal))
	mid := h.eventually(t, "b1 capped", func(b *domain.Batch) bool { return b.CappedRate() > 0 }, "b1")
	if mid.CappedRate() != limit/2 {
		t.Fatalf("b1 capped at %v/s, want half the tenant's %v", mid.CappedRate(), limit)
	}
	wait(t, a, b)
	drained(t, ps...)
	assertRate(t, h.prov.times, limit)
	per := map[string][]time.Time{}
	h.prov.mu.Lock()
	for key := range h.prov.calls {
		batch, _, _ := strings.Cut(key, ":")
		per[batch] = append(per[batch], time.Time{})
	}
	h.prov.mu.Unlock()
	if len(per["b1"]) != n || len(per["b2"]) != n {
		t.Fatalf("sent %d and %d, want %d each", len(per["b1"]), len(per["b2"]), n)
	}
	end, _ := h.cmds.Repository().Load(context.Background(), "b2")
	if end.Status() != domain.StatusCompleted {
		t.Fatalf("b2 %s", end.Status())
	}
}

// Quiet hours keep every guarantee across a pause, a resume on a restarted
// instance and a crash: the recipients waiting for their window are known from
// the stream alone, none goes out in its night, and each is sent once.
func TestQuietHoursSurvivePauseResumeAndACrash(t *testing.T) {
	clock := &offsetClock{}
	ny, _ := time.LoadLocation("America/New_York")
	clock.set(time.Date(2026, 12, 1, 9, 0, 0, 0, ny)) // 06:00 in Los Angeles
	h := newHarness(t, newFakeProvider(20*time.Millisecond))
	tmpl, _ := domain.NewTemplate("Hi", domain.DefaultTemplateLimits)
	q, _ := domain.ParseQuietHours("21:00", "08:00", "")
	const n = 20
	phone := func(i int) string {
		if i%2 == 1 {
			return fmt.Sprintf("+1213555%04d", i) // Los Angeles
		}
		return fmt.Sprintf("+1212555%04d", i) // New York
	}
	numbers := func(yield func(domain.Recipient, error) bool) {
		for i := range n {
			if !yield(domain.Recipient{Phone: phone(i)}, nil) {
				return
			}
		}
	}
	ctx := context.Background()
	cmds, _ := commands.New(h.store, h.cmds.Repository(), clock.Now)
	res, err := cmds.CreateBatch(ctx, commands.CreateBatch{
		ID: "b1", Tenant: "acme", Template: tmpl, AutoStart: true, QuietHours: &q, Recipients: numbers,
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Rates: domain.Rates{High: 20, Normal: 20, Low: 20}, Now: clock.Now}
	losAngelesCalls := func() int {
		h.prov.mu.Lock()
		defer h.prov.mu.Unlock()
		c := 0
		for i := 1; i < n; i += 2 {
			c += h.prov.calls[fmt.Sprintf("b1:%d", i)]
		}
		return c
	}

	// Paused once New York is sent: Los Angeles is still waiting, in the stream.
	first := h.processor(cfg)
	a := driveAsync(first, Work{BatchID: "b1", PrevSlice: res.Batch.LastSlice()})
	h.eventually(t, "New York sent", func(b *domain.Batch) bool { return b.Sent() == n/2 }, "b1")
	act := commands.Act{Tenant: "acme", BatchID: "b1", By: "test"}
	if _, err := cmds.PauseBatch(ctx, act); err != nil {
		t.Fatal(err)
	}
	wait(t, a)
	drained(t, first)
	b, _ := h.cmds.Repository().Load(ctx, "b1")
	if b.Status() != domain.StatusPaused || b.Waiting() != n/2 {
		t.Fatalf("paused: status %s, %d waiting; want paused with Los Angeles's %d waiting", b.Status(), b.Waiting(), n/2)
	}

	// Resumed on a restarted instance, still in Los Angeles's night: it knows
	// who waits from the stream and sends none of them.
	res, err = cmds.ResumeBatch(ctx, act)
	if err != nil {
		t.Fatal(err)
	}
	restarted := h.processor(cfg)
	rctx, stop := context.WithCancel(ctx)
	r := make(chan error, 1)
	go func() {
		next := &Work{BatchID: "b1", PrevSlice: res.Batch.LastSlice()}
		for next != nil && rctx.Err() == nil {
			var err error
			if next, err = restarted.RunSlice(rctx, *next); err != nil {
				r <- err
				return
			}
		}
		r <- nil
	}()
	time.Sleep(300 * time.Millisecond)
	if c := losAngelesCalls(); c != 0 {
		t.Fatalf("%d sends in Los Angeles's night after the resume", c)
	}
	if b, _ := h.cmds.Repository().Load(ctx, "b1"); b.Waiting() != n/2 || b.Status() != domain.StatusProcessing {
		t.Fatalf("resumed: status %s, %d waiting; want processing with %d waiting", b.Status(), b.Waiting(), n/2)
	}

	// That instance stops; morning comes in Los Angeles, and the instance that
	// took the batch over crashes: it dispatched three of the waiting and died
	// before sending them. Recovery continues from its slice, sends those three
	// once, and the rest.
	stop()
	wait(t, r)
	drained(t, restarted)
	clock.advance(2 * time.Hour)
	b, err = h.cmds.Repository().Update(ctx, "b1", func(b *domain.Batch) error {
		_, err := b.Dispatch(clock.Now(), domain.DispatchRequest{Slice: "dead", PrevSlice: b.LastSlice(), Max: 3, MaxInFlight: 5,
			Recipient: func(i int) (domain.RecipientInfo, error) { return domain.RecipientInfo{Phone: phone(i)}, nil }})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := len(b.Outstanding()); got != 3 {
		t.Fatalf("the crashed instance dispatched %d, want 3", got)
	}
	recovered := h.processor(cfg)
	wait(t, driveAsync(recovered, Work{BatchID: "b1", PrevSlice: "dead"}))
	drained(t, recovered)
	b, _ = h.cmds.Repository().Load(ctx, "b1")
	if b.Status() != domain.StatusCompleted || b.Sent() != n || b.Waiting() != 0 {
		t.Fatalf("status %s, %d sent, %d waiting; want all %d sent", b.Status(), b.Sent(), b.Waiting(), n)
	}
	h.prov.assertNoDuplicateCalls(t, n)
	assertOneOutcomeEach(t, h.outcomes("b1"), n)
}

// slowStore takes delay over every append, as a store under load does.
type slowStore struct {
	eventstore.Store
	delay time.Duration
}

func (s *slowStore) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	time.Sleep(s.delay)
	return s.Store.Append(ctx, stream, expected, events)
}

// A send goes out by its recorded SendAt plus handoverMargin or not at all. When
// appends take longer than that margin, as they do with a thousand batches on
// one instance, a SendAt decided before the append made every send give up once
// the append returned, and the batch dispatched the same message again and again
// without sending it. The lead follows the commit time, so sends go out, at the
// rate, once each.
func TestSlowAppendsStillSend(t *testing.T) {
	store := &slowStore{Store: memory.New(), delay: 150 * time.Millisecond}
	t.Cleanup(func() { store.Close() })
	h := newHarnessOn(t, store, newFakeProvider(10*time.Millisecond))
	const n = 12
	w := h.create("b1", n, domain.PriorityNormal)
	p := h.processor(Config{Rates: domain.Rates{High: 5, Normal: 5, Low: 5}})
	start := time.Now()
	done := driveAsync(p, w)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		h.prov.mu.Lock()
		sent := len(h.prov.calls)
		h.prov.mu.Unlock()
		t.Fatalf("after 20 s, %d of %d sent: the sends keep giving up after their slow appends", sent, n)
	}
	drained(t, p)
	elapsed := time.Since(start)
	h.prov.assertNoDuplicateCalls(t, n)
	assertOneOutcomeEach(t, h.outcomes("b1"), n)
	assertRate(t, h.prov.times, 5)
	// 11 intervals at 5/s is 2.2 s; slow appends may cost some rate, not most of it.
	if elapsed > 6*time.Second {
		t.Fatalf("%d messages at 5/s took %s with 150 ms appends", n, elapsed)
	}
}

// delayStore delays every append by delay, which a test may change.
type delayStore struct {
	eventstore.Store
	delay atomic.Int64
}

func (s *delayStore) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	time.Sleep(time.Duration(s.delay.Load()))
	return s.Store.Append(ctx, stream, expected, events)
}

// A slice that ends with sends in flight leaves their answers to a recorder.
// The next slice here once loaded the batch while the recorder's append ran,
// saw those messages still in flight, and, with no room for more, waited out
// its whole slice for answers that had gone to the recorder: batches stood
// still for a slice now and then (40 batches with the rate lifted lost 1.5 s of
// 7). One message in flight makes the recorder's append hold every answer.
func TestNextSliceSeesTheAnswersARecorderStores(t *testing.T) {
	store := &delayStore{Store: memory.New()}
	t.Cleanup(func() { store.Close() })
	gate := make(chan struct{})
	prov := newFakeProvider(0)
	prov.fail = func(key string, n int) error {
		if strings.HasSuffix(key, ":0") {
			<-gate // out until the first slice has ended
		}
		return nil
	}
	h := newHarnessOn(t, store, prov)
	const n = 3
	w := h.create("b1", n, domain.PriorityNormal)
	p := h.processor(Config{Unlimited: true, MaxInFlight: 1, SliceDuration: 10 * time.Second})

	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for {
			prov.mu.Lock()
			out := len(prov.calls)
			prov.mu.Unlock()
			if out > 0 {
				cancel() // the first slice ends with its send out
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	next, err := p.RunSlice(ctx, w)
	if err != nil || next == nil {
		t.Fatalf("first slice: next %v, err %v; want work to hand on", next, err)
	}
	store.delay.Store(int64(300 * time.Millisecond))
	close(gate) // the answer comes while no slice runs: a recorder stores it
	st := p.state("b1")
	for !recorderHasAll(prov, st, 1) {
		time.Sleep(time.Millisecond)
	}

	start := time.Now()
	wait(t, driveAsync(p, *next))
	// Five appends of 300 ms: the recorder's, then a dispatch and an answer for
	// each of the other two (one rides with the next dispatch).
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the last %d messages took %s once the first was answered; a slice lasts 10 s", n-1, took)
	}
	drained(t, p)
	prov.assertNoDuplicateCalls(t, n)
	assertOneOutcomeEach(t, h.outcomes("b1"), n)
}

// recorderHasAll reports whether the provider answered n calls and a recorder
// runs with every answer taken.
func recorderHasAll(prov *fakeProvider, st *batchState, n int) bool {
	prov.mu.Lock()
	answered := len(prov.calls) >= n && prov.inFlight == 0
	prov.mu.Unlock()
	st.mu.Lock()
	defer st.mu.Unlock()
	return answered && st.recorder != nil && len(st.answers) == 0
}

// spikyStore delays every every-th append that dispatches by spike, as a
// collection or a slow fsync does now and then on a loaded instance: the
// recent commit time, an average with a margin, does not foresee it.
type spikyStore struct {
	eventstore.Store
	every int64
	spike time.Duration
	n     atomic.Int64
}

func (s *spikyStore) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	for _, e := range events {
		if e.Type == domain.TypeMessagesDispatched {
			if s.n.Add(1)%s.every == 0 {
				time.Sleep(s.spike)
			}
			break
		}
	}
	return s.Store.Append(ctx, stream, expected, events)
}

// A dispatch that is appended after its send's token makes the send late, and
// no second may hold more than the rate, so every send a window after it is
// late as well, to the end of the batch. A batch at 5/s decides each dispatch
// half an interval ahead: an append that now and then takes 90 ms (the fifth
// send's, then the tenth's, all of one window's line) costs it nothing, 4.95/s.
// With the lead the commit time alone asked for, the batch kept 4.85/s.
func TestRareSlowAppendsDoNotDelayTheBatch(t *testing.T) {
	store := &spikyStore{Store: memory.New(), every: 5, spike: 90 * time.Millisecond}
	t.Cleanup(func() { store.Close() })
	h := newHarnessOn(t, store, newFakeProvider(5*time.Millisecond))
	const n = 25
	p := h.processor(Config{})
	drive(t, p, h.create("b1", n, domain.PriorityNormal))
	drained(t, p)
	times := h.prov.times
	if len(times) != n {
		t.Fatalf("%d sends, want %d", len(times), n)
	}
	assertRate(t, times, 5)
	achieved := float64(n-1) / times[n-1].Sub(times[0]).Seconds()
	t.Logf("%.3f msg/s, %.1f%% of 5/s", achieved, 100*achieved/5)
	// 97.5%: the lateness the spikes caused cost 3%; this leaves 70 ms for a
	// loaded machine's own.
	if achieved < 0.975*5 {
		t.Fatalf("achieved %.3f/s, want at least 97.5%% of 5/s: slow appends made sends late", achieved)
	}
}

// A batch cancelled while an instance has its messages at the provider, that
// instance then dying without their answers: no slice dispatches for a
// stopped batch, and nothing ended them, so they stayed pending on the
// cancelled batch for good. The chain now lives on while messages are in
// flight; once their deadline has passed no send of them can still be running,
// and they end (skipped, cancelled), each called once.
func TestMessagesInFlightOnAnInstanceThatDiesAfterACancelEnd(t *testing.T) {
	const n = 3
	release := make(chan struct{})
	prov := newFakeProvider(0)
	prov.fail = func(string, int) error { <-release; return nil } // the dying instance's calls never answer
	h := newHarness(t, prov)
	t.Cleanup(func() { close(release) })
	w := h.create("b1", n, domain.PriorityNormal)
	cfg := Config{Unlimited: true, SendTimeout: 200 * time.Millisecond}
	dying := h.processor(cfg)
	next, err := dying.RunSlice(context.Background(), w)
	if err != nil {
		t.Fatal(err)
	}
	h.eventually(t, "every message in flight", func(b *domain.Batch) bool { return b.OutstandingCount() == n }, "b1")
	if _, err := h.cmds.CancelBatch(context.Background(), commands.Act{Tenant: "acme", BatchID: "b1", By: "test"}); err != nil {
		t.Fatal(err)
	}
	// The instance is gone; the work it handed on is another's now, as a
	// broker delivers it again.
	if next == nil {
		t.Fatal("the chain ended with the batch's messages in flight")
	}
	other := h.processor(cfg)
	drive(t, other, *next)
	b, err := h.cmds.Repository().Load(context.Background(), "b1")
	if err != nil {
		t.Fatal(err)
	}
	if b.Status() != domain.StatusCancelled || b.OutstandingCount() != 0 || b.Skipped() != n {
		t.Fatalf("cancelled batch: %s, %d outstanding, %d skipped, want cancelled, 0 and %d", b.Status(), b.OutstandingCount(), b.Skipped(), n)
	}
	prov.mu.Lock()
	defer prov.mu.Unlock()
	for key, c := range prov.calls {
		if c != 1 {
			t.Errorf("%s reached the provider %d times", key, c)
		}
	}
}
