package processors

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/memory"
	"github.com/smsbatch/smsbatch/internal/storetest"
	"github.com/smsbatch/smsbatch/processors/sms"
)

// fakeProvider records every send, measures concurrency and can fail on demand.
// Unlike the simulator it does not honour idempotency keys, so a test sees every
// time a message was handed over.
type fakeProvider struct {
	latency time.Duration
	// fail decides the answer to a key's n-th call (from 1); nil error succeeds.
	fail func(key string, n int) error

	mu          sync.Mutex
	calls       map[string]int
	accepted    map[string]int
	times       []time.Time
	inFlight    int
	maxInFlight int
}

func newFakeProvider(latency time.Duration) *fakeProvider {
	return &fakeProvider{latency: latency, calls: map[string]int{}, accepted: map[string]int{}}
}

func (f *fakeProvider) Send(ctx context.Context, msg sms.Message) (sms.Receipt, error) {
	f.mu.Lock()
	f.calls[msg.IdempotencyKey]++
	n := f.calls[msg.IdempotencyKey]
	f.times = append(f.times, time.Now())
	f.inFlight++
	f.maxInFlight = max(f.maxInFlight, f.inFlight)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inFlight--
		f.mu.Unlock()
	}()
	select {
	case <-time.After(f.latency):
	case <-ctx.Done():
		return sms.Receipt{}, ctx.Err()
	}
	if f.fail != nil {
		if err := f.fail(msg.IdempotencyKey, n); err != nil {
			return sms.Receipt{}, err
		}
	}
	f.mu.Lock()
	f.accepted[msg.IdempotencyKey]++
	f.mu.Unlock()
	return sms.Receipt{ProviderID: "p-" + msg.IdempotencyKey}, nil
}

type harness struct {
	t     *testing.T
	store eventstore.Store
	cmds  *commands.Handlers
	prov  *fakeProvider
}

func newHarness(t *testing.T, prov *fakeProvider) *harness {
	t.Helper()
	store := memory.New()
	t.Cleanup(func() { store.Close() })
	return newHarnessOn(t, store, prov)
}

// onEveryStore runs a guarantee's test against every event store adapter that
// can run here: memory, bolt and PostgreSQL.
func onEveryStore(t *testing.T, prov func() *fakeProvider, test func(t *testing.T, h *harness)) {
	storetest.Each(t, func(t *testing.T, store eventstore.Store) { test(t, newHarnessOn(t, store, prov())) })
}

func newHarnessOn(t *testing.T, store eventstore.Store, prov *fakeProvider) *harness {
	t.Helper()
	repo, err := commands.NewRepository(store, 0)
	if err != nil {
		t.Fatal(err)
	}
	cmds, err := commands.New(store, repo, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, store: store, cmds: cmds, prov: prov}
}

// processor returns a processor with its own repository, as another instance
// sharing the event store would have.
func (h *harness) processor(cfg Config) *Processor {
	h.t.Helper()
	repo, _ := commands.NewRepository(h.store, 0)
	cmds, _ := commands.New(h.store, repo, nil)
	cfg.Commands, cfg.Store, cfg.Provider = cmds, h.store, h.prov
	if cfg.SliceDuration == 0 {
		cfg.SliceDuration = 300 * time.Millisecond
	}
	if cfg.BackoffInitial == 0 {
		cfg.BackoffInitial = 20 * time.Millisecond
	}
	p, err := NewProcessor(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	return p
}

func phones(n int) iter.Seq2[domain.Recipient, error] {
	return func(yield func(domain.Recipient, error) bool) {
		for i := range n {
			if !yield(domain.Recipient{Phone: fmt.Sprintf("+1415555%04d", i), Values: []string{fmt.Sprint("n", i)}}, nil) {
				return
			}
		}
	}
}

func (h *harness) create(id string, n int, p domain.Priority) Work {
	h.t.Helper()
	tmpl, _ := domain.NewTemplate("Hello {{name}}", domain.DefaultTemplateLimits)
	res, err := h.cmds.CreateBatch(context.Background(), commands.CreateBatch{
		ID: id, Tenant: "acme", Template: tmpl, Priority: p, AutoStart: true, Recipients: phones(n),
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return Work{BatchID: id, PrevSlice: res.Batch.LastSlice()}
}

// drive runs work messages one after another, as the router would, until the
// chain ends.
func drive(t *testing.T, p *Processor, w Work) {
	t.Helper()
	next := &w
	for i := 0; next != nil; i++ {
		if i > 1000 {
			t.Fatal("work chain did not end")
		}
		var err error
		if next, err = p.RunSlice(context.Background(), *next); err != nil {
			t.Fatal(err)
		}
	}
}

func (h *harness) events(id string) []eventstore.Event {
	h.t.Helper()
	events, err := h.store.ReadStream(context.Background(), domain.BatchStream(id), 0, 1_000_000)
	if err != nil {
		h.t.Fatal(err)
	}
	return events
}

// eventually polls batch id until ok holds, failing after 10s.
func (h *harness) eventually(t *testing.T, what string, ok func(b *domain.Batch) bool, id string) *domain.Batch {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := h.cmds.Repository().Load(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if ok(b) {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s (status %s, %d outstanding)", what, b.Status(), len(b.Outstanding()))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// outcomes counts final outcome events per recipient index.
func (h *harness) outcomes(id string) map[int]int {
	h.t.Helper()
	out := map[int]int{}
	for _, se := range h.events(id) {
		e, err := domain.DecodeEvent(se.Type, se.Data)
		if err != nil {
			h.t.Fatal(err)
		}
		switch e := e.(type) {
		case domain.MessageSent:
			out[e.Index]++
		case domain.MessageFailed:
			out[e.Index]++
		}
	}
	return out
}

func assertOneOutcomeEach(t *testing.T, outcomes map[int]int, n int) {
	t.Helper()
	if len(outcomes) != n {
		t.Fatalf("%d recipients have an outcome, want %d", len(outcomes), n)
	}
	for i, c := range outcomes {
		if c != 1 {
			t.Fatalf("recipient %d has %d outcomes", i, c)
		}
	}
}

func TestEveryRecipientSentOnceAcrossPages(t *testing.T) {
	onEveryStore(t, func() *fakeProvider { return newFakeProvider(0) }, func(t *testing.T, h *harness) {
		if testing.Short() {
			t.Skip("sends 1,203 messages")
		}
		p := h.processor(Config{Unlimited: true})
		const n = 2*domain.RecipientPageSize + 203
		drive(t, p, h.create("b1", n, domain.PriorityNormal))
		assertOneOutcomeEach(t, h.outcomes("b1"), n)
		for key, c := range h.prov.calls {
			if c != 1 {
				t.Fatalf("%s handed to the provider %d times", key, c)
			}
		}
		b, _ := h.cmds.Repository().Load(context.Background(), "b1")
		if b.Status() != domain.StatusCompleted || b.Sent() != n {
			t.Fatalf("status %s sent %d", b.Status(), b.Sent())
		}
	})
}

func TestAtMostFiveInFlight(t *testing.T) {
	h := newHarness(t, newFakeProvider(60*time.Millisecond))
	p := h.processor(Config{Unlimited: true})
	drive(t, p, h.create("b1", 40, domain.PriorityNormal))
	if h.prov.maxInFlight != 5 {
		t.Fatalf("max in flight %d, want exactly 5 (never more, and reached)", h.prov.maxInFlight)
	}
	assertOneOutcomeEach(t, h.outcomes("b1"), 40)
}

func TestRateIsKeptAndReached(t *testing.T) {
	h := newHarness(t, newFakeProvider(5*time.Millisecond))
	const rate = 20.0
	p := h.processor(Config{Rates: domain.Rates{High: rate, Normal: rate, Low: rate}})
	const n = 41
	drive(t, p, h.create("b1", n, domain.PriorityNormal))
	times := h.prov.times
	if len(times) != n {
		t.Fatalf("%d sends, want %d", len(times), n)
	}
	assertRate(t, times, rate)
	achieved := float64(n-1) / times[n-1].Sub(times[0]).Seconds()
	if achieved < 0.9*rate {
		t.Fatalf("achieved %.2f/s, want at least 90%% of %v", achieved, rate)
	}
	t.Logf("achieved %.2f msg/s at a rate of %v", achieved, rate)
}

func TestRacingInstancesNeverSendTwice(t *testing.T) {
	onEveryStore(t, func() *fakeProvider { return newFakeProvider(10 * time.Millisecond) }, func(t *testing.T, h *harness) {
		w := h.create("b1", 60, domain.PriorityNormal)
		var wg sync.WaitGroup
		// Three instances get the same work message (a duplicate delivery) and each
		// hands its successors on.
		for range 3 {
			p := h.processor(Config{Unlimited: true})
			wg.Go(func() { drive(t, p, w) })
		}
		wg.Wait()
		assertOneOutcomeEach(t, h.outcomes("b1"), 60)
		for key, c := range h.prov.calls {
			if c != 1 {
				t.Fatalf("%s handed to the provider %d times", key, c)
			}
		}
		if h.prov.maxInFlight > 5 {
			t.Fatalf("max in flight %d across instances, want at most 5", h.prov.maxInFlight)
		}
	})
}

func TestPauseBarrierAndResume(t *testing.T) {
	onEveryStore(t, func() *fakeProvider { return newFakeProvider(30 * time.Millisecond) }, func(t *testing.T, h *harness) {
		p := h.processor(Config{Rates: domain.Rates{High: 50, Normal: 50, Low: 50}})
		w := h.create("b1", 30, domain.PriorityNormal)
		ctx := context.Background()
		done := make(chan struct{})
		go func() {
			defer close(done)
			drive(t, p, w)
		}()
		time.Sleep(150 * time.Millisecond)
		if _, err := h.cmds.PauseBatch(ctx, commands.Act{Tenant: "acme", BatchID: "b1", By: "test"}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the work chain did not stop after the pause")
		}
		// The messages in flight at the pause finish and are recorded while paused.
		b := h.eventually(t, "in-flight messages recorded while paused", func(b *domain.Batch) bool {
			return len(b.Outstanding()) == 0
		}, "b1")
		if b.Status() != domain.StatusPaused {
			t.Fatalf("after pause: status %s, want paused", b.Status())
		}
		if b.Sent() == 0 || b.Sent() == 30 {
			t.Fatalf("sent %d before the pause, want some but not all", b.Sent())
		}
		paused := false
		for _, e := range h.events("b1") {
			switch e.Type {
			case domain.TypeBatchPaused:
				paused = true
			case domain.TypeMessagesDispatched:
				if paused {
					t.Fatal("MessagesDispatched after BatchPaused")
				}
			}
		}
		res, err := h.cmds.ResumeBatch(ctx, commands.Act{Tenant: "acme", BatchID: "b1", By: "test"})
		if err != nil {
			t.Fatal(err)
		}
		drive(t, p, Work{BatchID: "b1", PrevSlice: res.Batch.LastSlice()})
		assertOneOutcomeEach(t, h.outcomes("b1"), 30)
	})
}

// A message dispatched before a pause and still waiting for its token when
// the slice learns of the pause is in flight: it goes out and is recorded
// while paused, even when the instance stalls just then. The slice that ended
// on the pause used to leave it the 50 ms margin alone: woken later, it gave
// up and stayed outstanding until a resume (CI caught one on a loaded
// machine). At 1/s: the second message is dispatched at about 0.61 s (its
// token at 1.01 s less the 400 ms lead); the pause comes at 0.7 s; the first
// message's answer, a permanent failure at 0.8 s, is recorded at once, so the
// slice learns of the pause then and ends; the clock jumps 150 ms at 0.9 s, so
// the second wakes 150 ms after its token.
func TestASendInFlightAtAPauseStartsLateRatherThanStayOutstanding(t *testing.T) {
	clock := &offsetClock{}
	prov := newFakeProvider(800 * time.Millisecond)
	prov.fail = func(key string, n int) error {
		if key == "b1:0" {
			return &sms.Error{Category: domain.CategoryInvalidNumber, Code: "21211", Message: "invalid"}
		}
		return nil
	}
	h := newHarness(t, prov)
	p := h.processor(Config{Rates: domain.Rates{High: 1, Normal: 1, Low: 1}, Now: clock.Now})
	w := h.create("b1", 10, domain.PriorityNormal)
	done := make(chan struct{})
	go func() {
		defer close(done)
		drive(t, p, w)
	}()
	time.Sleep(700 * time.Millisecond)
	if _, err := h.cmds.PauseBatch(context.Background(), commands.Act{Tenant: "acme", BatchID: "b1", By: "test"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	clock.advance(150 * time.Millisecond)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the work chain did not stop after the pause")
	}
	b := h.eventually(t, "the messages dispatched before the pause recorded while paused", func(b *domain.Batch) bool {
		return len(b.Outstanding()) == 0
	}, "b1")
	if b.Cursor() != 2 {
		t.Skipf("the slice dispatched %d messages before the pause, not 2", b.Cursor())
	}
	h.prov.mu.Lock()
	calls := len(h.prov.times)
	h.prov.mu.Unlock()
	if b.Status() != domain.StatusPaused || calls != 2 || b.Sent() != 1 || b.Failed() != 1 {
		t.Fatalf("status %s, provider calls %d, sent %d, failed %d; want paused, both messages sent, one failed",
			b.Status(), calls, b.Sent(), b.Failed())
	}
}

func TestRetryableFailuresAreRetried(t *testing.T) {
	prov := newFakeProvider(0)
	prov.fail = func(key string, n int) error {
		if n == 1 {
			return &sms.Error{Category: domain.CategoryProviderUnavailable, Code: "503", Message: "busy"}
		}
		return nil
	}
	h := newHarness(t, prov)
	p := h.processor(Config{Unlimited: true})
	drive(t, p, h.create("b1", 8, domain.PriorityNormal))
	assertOneOutcomeEach(t, h.outcomes("b1"), 8)
	retries := 0
	for _, e := range h.events("b1") {
		if e.Type == domain.TypeMessageAttemptFailed {
			retries++
		}
	}
	b, _ := h.cmds.Repository().Load(context.Background(), "b1")
	if retries != 8 || b.Sent() != 8 {
		t.Fatalf("%d retries and %d sent, want 8 and 8", retries, b.Sent())
	}
}

func TestPermanentFailuresFailAtOnceAndRetriesAreBounded(t *testing.T) {
	prov := newFakeProvider(0)
	prov.fail = func(key string, n int) error {
		switch {
		case strings.HasSuffix(key, ":0"):
			return &sms.Error{Category: domain.CategoryBlocked, Code: "21610", Message: "blocked"}
		case strings.HasSuffix(key, ":1"):
			return errors.New("connection reset") // unknown: retried, then failed
		}
		return nil
	}
	h := newHarness(t, prov)
	p := h.processor(Config{Unlimited: true, MaxAttempts: 3})
	drive(t, p, h.create("b1", 4, domain.PriorityNormal))
	assertOneOutcomeEach(t, h.outcomes("b1"), 4)
	if c := prov.calls["b1:0"]; c != 1 {
		t.Fatalf("blocked number tried %d times, want 1", c)
	}
	if c := prov.calls["b1:1"]; c != 3 {
		t.Fatalf("unknown failure tried %d times, want 3 (MaxAttempts)", c)
	}
	b, _ := h.cmds.Repository().Load(context.Background(), "b1")
	if b.Sent() != 2 || b.Failed() != 2 || b.Status() != domain.StatusCompleted {
		t.Fatalf("sent %d failed %d status %s", b.Sent(), b.Failed(), b.Status())
	}
}

func TestRateLimitAnswerSlowsTheBatch(t *testing.T) {
	prov := newFakeProvider(0)
	var mu sync.Mutex
	limited := 0
	prov.fail = func(key string, n int) error {
		mu.Lock()
		defer mu.Unlock()
		if limited < 3 && n == 1 {
			limited++
			return &sms.Error{Category: domain.CategoryRateLimited, Code: "429", Message: "slow down", RetryAfter: 200 * time.Millisecond}
		}
		return nil
	}
	h := newHarness(t, prov)
	metrics := NewMetrics(nil)
	p := h.processor(Config{Rates: domain.Rates{High: 40, Normal: 40, Low: 40}, Metrics: metrics})
	start := time.Now()
	drive(t, p, h.create("b1", 20, domain.PriorityNormal))
	assertOneOutcomeEach(t, h.outcomes("b1"), 20)
	// 20 messages at 40/s take ~0.5s; the 429s hold the batch at least 200ms and
	// halve its rate before it recovers.
	if took := time.Since(start); took < 600*time.Millisecond {
		t.Fatalf("took %s: the rate-limit answers did not slow the batch", took)
	}
	b, _ := h.cmds.Repository().Load(context.Background(), "b1")
	if b.Sent() != 20 {
		t.Fatalf("sent %d, want 20", b.Sent())
	}
}

func TestInDoubtMessagesAreResentWithTheSameKey(t *testing.T) {
	onEveryStore(t, func() *fakeProvider { return newFakeProvider(0) }, func(t *testing.T, h *harness) {
		w := h.create("b1", 6, domain.PriorityNormal)
		ctx := context.Background()
		// A crashed instance dispatched three messages and never recorded answers.
		_, err := h.cmds.Repository().Update(ctx, "b1", func(b *domain.Batch) error {
			_, err := b.Dispatch(time.Now(), domain.DispatchRequest{Slice: "dead", PrevSlice: w.PrevSlice, Max: 3, MaxInFlight: 5})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		// Recovery hands the batch a work message continuing from the dead slice.
		p := h.processor(Config{Unlimited: true})
		drive(t, p, Work{BatchID: "b1", PrevSlice: "dead"})
		assertOneOutcomeEach(t, h.outcomes("b1"), 6)
		for i := range 6 {
			if c := h.prov.calls[fmt.Sprintf("b1:%d", i)]; c != 1 {
				t.Fatalf("b1:%d sent %d times", i, c)
			}
		}
	})
}

func TestShutdownFinishesInFlightSends(t *testing.T) {
	h := newHarness(t, newFakeProvider(200*time.Millisecond))
	p := h.processor(Config{Unlimited: true, SliceDuration: 5 * time.Second})
	w := h.create("b1", 50, domain.PriorityNormal)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	next, err := p.RunSlice(ctx, w)
	if err != nil {
		t.Fatal(err)
	}
	if next == nil {
		t.Fatal("no work handed on after shutdown; the batch would wait for recovery")
	}
	drain, cancelDrain := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelDrain()
	if err := p.Drain(drain); err != nil {
		t.Fatal(err)
	}
	b, _ := h.cmds.Repository().Load(context.Background(), "b1")
	if len(b.Outstanding()) != 0 || b.Sent() != 5 {
		t.Fatalf("after shutdown: %d outstanding, %d sent; want the 5 in flight finished and recorded", len(b.Outstanding()), b.Sent())
	}
}

// Work that arrives as the instance stops is handed on as it came, whatever
// the slice was doing: loading its batch included, which a stopped context
// cuts short. Failing instead made the router log an error at every shutdown
// and left the work to the transport's redelivery.
func TestWorkIsHandedOnWhenStoppedBeforeTheBatchLoads(t *testing.T) {
	h := newHarness(t, newFakeProvider(time.Millisecond))
	w := h.create("b1", 5, domain.PriorityNormal)
	stopped, cancel := context.WithCancel(context.Background())
	cancel()
	for range 20 { // the turn and the stop are both ready: either may be taken
		p := h.processor(Config{})
		next, err := p.RunSlice(stopped, w)
		if err != nil {
			t.Fatalf("stopped: %v, want the work handed on", err)
		}
		if next == nil || next.BatchID != w.BatchID || next.PrevSlice != w.PrevSlice {
			t.Fatalf("stopped: handed on %+v, want %+v as it came", next, w)
		}
	}
	h.prov.mu.Lock()
	defer h.prov.mu.Unlock()
	if calls := len(h.prov.times); calls != 0 {
		t.Fatalf("%d sends after the stop", calls)
	}
}

// A batch's first work message comes twice (the API publishes it, and so does
// the lifecycle handler when the event arrives). The copy that gets the turn
// after a slice of the chain has dispatched ends at once: its slice could
// never dispatch, and running it held the turn from the chain's next slice.
func TestWorkOfAChainThatMovedOnEndsAtOnce(t *testing.T) {
	h := newHarness(t, newFakeProvider(0))
	p := h.processor(Config{})
	w := h.create("b1", 50, domain.PriorityNormal)
	next, err := p.RunSlice(context.Background(), w)
	if err != nil || next == nil || next.PrevSlice == w.PrevSlice {
		t.Fatalf("first slice: next %+v, err %v; want it to lead the chain", next, err)
	}
	drained(t, p) // its answers recorded
	before, _ := h.cmds.Repository().Load(context.Background(), "b1")
	looks := p.looks.Load()
	again, err := p.RunSlice(context.Background(), w) // the second copy
	if err != nil || again != nil {
		t.Fatalf("second copy: next %+v, err %v; want the chain it began to end here", again, err)
	}
	if n := p.looks.Load() - looks; n != 0 {
		t.Fatalf("the second copy ran a slice that looked at the batch %d times", n)
	}
	after, _ := h.cmds.Repository().Load(context.Background(), "b1")
	if after.Version() != before.Version() {
		t.Fatalf("the second copy appended to the batch (version %d, was %d)", after.Version(), before.Version())
	}
	// The chain goes on from the first copy's successor.
	if next, err = p.RunSlice(context.Background(), *next); err != nil || next == nil {
		t.Fatalf("the chain's next slice: next %+v, err %v", next, err)
	}
	drained(t, p)
	if b, _ := h.cmds.Repository().Load(context.Background(), "b1"); b.Cursor() <= before.Cursor() {
		t.Fatalf("the chain's next slice dispatched nothing (cursor %d)", b.Cursor())
	}
}

// Over a broker, consecutive slices of a batch may run on different instances,
// each with its own limiter: the batch's rate must hold across the hops.
func TestRateHeldWhenSlicesMoveBetweenInstances(t *testing.T) {
	h := newHarness(t, newFakeProvider(5*time.Millisecond))
	const rate = 20.0
	cfg := Config{Rates: domain.Rates{High: rate, Normal: rate, Low: rate}, SliceDuration: 150 * time.Millisecond}
	instances := []*Processor{h.processor(cfg), h.processor(cfg)}
	const n = 41
	next := new(h.create("b1", n, domain.PriorityNormal))
	for i := 0; next != nil; i++ {
		var err error
		if next, err = instances[i%2].RunSlice(context.Background(), *next); err != nil {
			t.Fatal(err)
		}
	}
	times := h.prov.times
	if len(times) != n {
		t.Fatalf("%d sends, want %d", len(times), n)
	}
	assertRate(t, times, rate)
}

func TestBatchWithMissingRecipientsFails(t *testing.T) {
	h := newHarness(t, newFakeProvider(0))
	tmpl, _ := domain.NewTemplate("Hi", domain.DefaultTemplateLimits)
	// BatchCreated promises 5 recipients, but their page was never stored.
	b, err := domain.NewBatch(domain.NewBatchParams{ID: "b1", Tenant: "acme", Template: tmpl, AutoStart: true, Total: 5, Pages: 1}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.cmds.Repository().Add(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	drive(t, h.processor(Config{Unlimited: true}), Work{BatchID: "b1", PrevSlice: b.LastSlice()})
	got, _ := h.cmds.Repository().Load(context.Background(), "b1")
	if got.Status() != domain.StatusFailed {
		t.Fatalf("status %s, want failed: retrying cannot bring the recipients back", got.Status())
	}
	if len(h.prov.calls) != 0 {
		t.Fatalf("%d sends for a batch without recipients", len(h.prov.calls))
	}
}

// assertRate fails if more than rate sends fall within any one-second window
// (burst 1). Sends are timestamped inside the provider, after goroutine
// scheduling: on a loaded 2-core machine one send can start late by several
// milliseconds while the next is on time, so the window is shortened by that much.
func assertRate(t *testing.T, times []time.Time, rate float64) {
	t.Helper()
	for i := range times {
		in := 0
		for j := i; j < len(times) && times[j].Sub(times[i]) < time.Second-20*time.Millisecond; j++ {
			in++
		}
		if in > int(rate) {
			t.Fatalf("%d sends within one second from send %d, rate is %v", in, i, rate)
		}
	}
}

// flakyStore refuses appends while broken is set, as a database going away would.
type flakyStore struct {
	eventstore.Store
	broken atomic.Bool
}

func (f *flakyStore) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	if f.broken.Load() {
		return eventstore.AppendResult{}, fmt.Errorf("store down: %w", eventstore.ErrUnavailable)
	}
	return f.Store.Append(ctx, stream, expected, events)
}

func TestSliceGivesUpOnAStoreThatKeepsFailingAndNothingIsLost(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the slice's recording retries")
	}
	store := &flakyStore{Store: memory.New()}
	t.Cleanup(func() { store.Close() })
	h := newHarnessOn(t, store, newFakeProvider(100*time.Millisecond))
	w := h.create("b1", 8, domain.PriorityNormal)
	p := h.processor(Config{Unlimited: true, SliceDuration: 50 * time.Millisecond})
	time.AfterFunc(30*time.Millisecond, func() { store.broken.Store(true) })
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.RunSlice(context.Background(), w)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the slice hangs on a store that keeps failing")
	}
	store.broken.Store(false)
	// Recovery would hand the batch a new work message; the answers the slice
	// could not record are in doubt and go out again under the same key.
	b, _ := h.cmds.Repository().Load(context.Background(), "b1")
	drive(t, h.processor(Config{Unlimited: true}), Work{BatchID: "b1", PrevSlice: b.LastSlice()})
	assertOneOutcomeEach(t, h.outcomes("b1"), 8)
}

// While a batch whose rate is lifted gathers answers before its next dispatch,
// its slice sleeps until the gathering ends or another answer comes: it looks
// at the batch a handful of times a message, not thousands (it once spun on a
// zero timer for the whole gathering, most of an instance's CPU).
func TestSlicesDoNotSpinWhileAnswersGather(t *testing.T) {
	h := newHarness(t, newFakeProvider(20*time.Millisecond))
	p := h.processor(Config{Unlimited: true})
	const n = 200
	drive(t, p, h.create("b1", n, domain.PriorityNormal))
	assertOneOutcomeEach(t, h.outcomes("b1"), n)
	if looks := p.looks.Load(); looks > 10*n {
		t.Fatalf("the slices looked at the batch %d times for %d messages, want at most %d", looks, n, 10*n)
	} else {
		t.Logf("%d looks for %d messages", looks, n)
	}
}

// A retry is due when Batch.Dispatch says so, at the time it decides. A slice
// that took one due within its lead (it decides that long before its token)
// for due, whenever an answer woke it with no room for a new recipient,
// appended nothing, reloaded the batch and looked again at once, until the
// retry was due. Here the second of two messages answers 200 ms before the
// first's retry, within the 400 ms lead of a batch at 1/s: 33,000 to 48,000
// looks before, 11 now that the slice sleeps until the retry is due.
func TestSlicesDoNotSpinWhileARetryComesDueWithinTheLead(t *testing.T) {
	answer := make(chan struct{})
	prov := newFakeProvider(0)
	prov.fail = func(key string, n int) error {
		switch {
		case key == "b1:0" && n == 1:
			// Tried again 2 s after, as the provider asks.
			return &sms.Error{Category: domain.CategoryUnknown, Code: "30008", Message: "try again", RetryAfter: 2 * time.Second}
		case key == "b1:1":
			<-answer
		}
		return nil
	}
	h := newHarness(t, prov)
	p := h.processor(Config{Rates: domain.Rates{High: 1, Normal: 1, Low: 1}, MaxInFlight: 2, SliceDuration: 10 * time.Second,
		BackoffInitial: 10 * time.Millisecond, BackoffMax: 10 * time.Millisecond})
	if lead := p.lead(newPace(1)); lead != maxLead {
		t.Fatalf("lead %s at 1/s, want %s", lead, maxLead)
	}
	done := driveAsync(p, h.create("b1", 2, domain.PriorityNormal))
	b := h.eventually(t, "b1:0 waiting for its retry, b1:1 at the provider", func(b *domain.Batch) bool {
		o, ok := b.OutstandingAt(0)
		prov.mu.Lock()
		defer prov.mu.Unlock()
		return ok && !o.InFlight() && prov.calls["b1:1"] == 1
	}, "b1")
	o, _ := b.OutstandingAt(0)
	time.Sleep(time.Until(o.RetryAt.Add(-200 * time.Millisecond)))
	close(answer)
	wait(t, done)
	drained(t, p)
	assertOneOutcomeEach(t, h.outcomes("b1"), 2)
	// A dozen looks, each for an answer, a token or the retry; thousands when
	// the slice spun.
	if looks := p.looks.Load(); looks > 40 {
		t.Fatalf("the slices looked at the batch %d times for 2 messages and a retry, want at most 40", looks)
	} else {
		t.Logf("%d looks", looks)
	}
}

// An in-flight message whose dispatch's deadline comes within the lead is not
// in doubt before it, and the slice sleeps until then, as for a retry
// (TestSlicesDoNotSpinWhileARetryComesDueWithinTheLead). Here another instance
// dispatched the first of two messages and died (not known gone); the second
// answers 200 ms before that dispatch's deadline: 42,000 to 52,000 looks
// before, 8 now.
func TestSlicesDoNotSpinWhileADeadlineComesWithinTheLead(t *testing.T) {
	answer := make(chan struct{})
	prov := newFakeProvider(0)
	prov.fail = func(key string, n int) error {
		if key == "b1:1" {
			<-answer
		}
		return nil
	}
	h := newHarness(t, prov)
	ctx := context.Background()
	w := h.create("b1", 2, domain.PriorityNormal)
	deadline := time.Now().Add(2300 * time.Millisecond)
	if _, err := h.cmds.Repository().Update(ctx, "b1", func(b *domain.Batch) error {
		_, err := b.Dispatch(time.Now(), domain.DispatchRequest{Slice: "elsewhere-1", PrevSlice: w.PrevSlice,
			Instance: "elsewhere", Deadline: deadline, SendAt: time.Now(), Max: 1, MaxInFlight: 2})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	p := h.processor(Config{Rates: domain.Rates{High: 1, Normal: 1, Low: 1}, MaxInFlight: 2, SliceDuration: 10 * time.Second})
	if lead := p.lead(newPace(1)); lead != maxLead {
		t.Fatalf("lead %s at 1/s, want %s", lead, maxLead)
	}
	// b1:1 goes out a second after the dispatch elsewhere, b1:0 again once
	// its deadline has passed, in the second after.
	done := driveAsync(p, Work{BatchID: "b1", PrevSlice: "elsewhere-1"})
	h.eventually(t, "b1:1 at the provider", func(*domain.Batch) bool {
		prov.mu.Lock()
		defer prov.mu.Unlock()
		return prov.calls["b1:1"] == 1
	}, "b1")
	time.Sleep(time.Until(deadline.Add(-200 * time.Millisecond)))
	close(answer)
	wait(t, done)
	drained(t, p)
	prov.assertNoDuplicateCalls(t, 2)
	assertOneOutcomeEach(t, h.outcomes("b1"), 2)
	if looks := p.looks.Load(); looks > 40 {
		t.Fatalf("the slices looked at the batch %d times for 2 messages, want at most 40", looks)
	} else {
		t.Logf("%d looks", looks)
	}
}

// A paced batch's dispatches, decided a lead ahead of their token, let the store
// hold their commit for others to share; a batch whose rate is lifted, whose
// next dispatch waits for this one, does not.
func TestPacedDispatchesMayShareCommits(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want time.Duration
	}{
		{"paced", Config{Rates: domain.Rates{High: 50, Normal: 50, Low: 50}}, eventstore.CommitCompany},
		{"rate lifted", Config{Unlimited: true}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := &countingStore{Store: memory.New()}
			t.Cleanup(func() { store.Close() })
			h := newHarnessOn(t, store, newFakeProvider(0))
			w := h.create("b1", 10, domain.PriorityNormal)
			p := h.processor(tt.cfg)
			drive(t, p, w)
			drained(t, p)
			assertOneOutcomeEach(t, h.outcomes("b1"), 10)
			store.mu.Lock()
			defer store.mu.Unlock()
			if len(store.delays) == 0 {
				t.Fatal("no dispatch appended")
			}
			for i, d := range store.delays {
				if d != tt.want {
					t.Fatalf("dispatch %d of %d asked for a commit delay of %s, want %s", i+1, len(store.delays), d, tt.want)
				}
			}
		})
	}
}
