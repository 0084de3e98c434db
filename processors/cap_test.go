package processors

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
)

// cappedInstances are two instances sending at rate for every priority, each
// with its own forwarder for the shares of the tenant's cap of limit; they
// stop when the test ends.
func cappedInstances(t *testing.T, h *harness, rate, limit float64) []*Processor {
	t.Helper()
	rates := domain.Rates{High: rate, Normal: rate, Low: rate}
	ctx, cancel := context.WithCancel(context.Background())
	var ps []*Processor
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for range 2 {
		fwd, err := NewForwarder(h.store, &recordingPublisher{}, h.cmds, Config{Rates: rates, TenantMaxRate: limit})
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { _ = fwd.Run(ctx) })
		ps = append(ps, h.processor(Config{Rates: rates, TenantMaxRate: limit, Shares: fwd, CapWarmup: 300 * time.Millisecond}))
	}
	return ps
}

// A tenant's batches together never exceed its cap in any second, also while
// the shares change: one batch pauses, resumes and completes while the other
// keeps sending. A batch that stops still counts for the second its last
// sends fall in, so the others' shares rise only after it.
func TestTheCapHoldsWhileSharesChange(t *testing.T) {
	h := newHarness(t, newFakeProvider(5*time.Millisecond))
	const limit = 20.0
	ps := cappedInstances(t, h, 20, limit)
	a := driveAsync(ps[0], h.create("b1", 120, domain.PriorityNormal))
	b := driveAsync(ps[1], h.create("b2", 60, domain.PriorityNormal))
	h.eventually(t, "b2 sent some", func(b *domain.Batch) bool { return b.Sent() >= 5 }, "b2")
	act := commands.Act{Tenant: "acme", BatchID: "b2", By: "test"}
	if _, err := h.cmds.PauseBatch(context.Background(), act); err != nil {
		t.Fatal(err)
	}
	wait(t, b)
	time.Sleep(1500 * time.Millisecond) // b1 alone: the whole cap
	res, err := h.cmds.ResumeBatch(context.Background(), act)
	if err != nil {
		t.Fatal(err)
	}
	b = driveAsync(ps[1], Work{BatchID: "b2", PrevSlice: res.Batch.LastSlice()})
	wait(t, a, b)
	drained(t, ps...)
	h.prov.mu.Lock()
	times := append([]time.Time(nil), h.prov.times...)
	h.prov.mu.Unlock()
	worst := 0
	for i := range times {
		in := 0
		for j := i; j < len(times) && times[j].Sub(times[i]) < time.Second-20*time.Millisecond; j++ {
			in++
		}
		worst = max(worst, in)
	}
	if worst > int(limit) {
		t.Fatalf("%d of the tenant's sends within one second, over its cap of %v", worst, limit)
	}
}
