package commands

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"sync"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/memory"
	"github.com/smsbatch/smsbatch/internal/storetest"
)

func setup(t *testing.T) (eventstore.Store, *Handlers) {
	t.Helper()
	store := memory.New()
	t.Cleanup(func() { store.Close() })
	return store, handlers(t, store)
}

// handlers returns command handlers with their own repository and cache, as a
// second instance sharing the store would have.
func handlers(t *testing.T, store eventstore.Store) *Handlers {
	t.Helper()
	repo, err := NewRepository(store, 0)
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(store, repo, nil)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func recipients(n int, failAt int) iter.Seq2[domain.Recipient, error] {
	return func(yield func(domain.Recipient, error) bool) {
		for i := range n {
			if i == failAt {
				yield(domain.Recipient{}, errors.New("upload broke"))
				return
			}
			if !yield(domain.Recipient{Phone: fmt.Sprintf("+1415555%04d", i), Values: []string{"x"}}, nil) {
				return
			}
		}
	}
}

func create(t *testing.T, h *Handlers, id string, n int, autoStart bool) Result {
	t.Helper()
	tmpl, _ := domain.NewTemplate("Hi {{name}}", domain.DefaultTemplateLimits)
	res, err := h.CreateBatch(context.Background(), CreateBatch{
		ID: id, Tenant: "acme", Template: tmpl, AutoStart: autoStart, Recipients: recipients(n, -1),
	})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestCreateWritesPagesThenTheBatch(t *testing.T) {
	store, h := setup(t)
	res := create(t, h, "b1", 2500, true)
	if res.Batch.Total() != 2500 || res.Batch.Pages() != 3 || res.Batch.Status() != domain.StatusProcessing {
		t.Fatalf("batch total %d pages %d status %s", res.Batch.Total(), res.Batch.Pages(), res.Batch.Status())
	}
	pages, _ := store.ReadStream(context.Background(), domain.RecipientsStream("b1"), 0, 10)
	if len(pages) != 3 {
		t.Fatalf("%d recipient pages, want 3", len(pages))
	}
	e, _ := domain.DecodeEvent(pages[2].Type, pages[2].Data)
	if p := e.(domain.RecipientsPageAdded); p.First != 2000 || len(p.Recipients) != 500 || p.Recipients[0].Phone != "+14155552000" {
		t.Fatalf("last page first %d with %d recipients", p.First, len(p.Recipients))
	}
	all, _ := store.ReadAll(context.Background(), eventstore.Start, 100)
	if last := all[len(all)-1]; last.Type != domain.TypeBatchStarted || all[len(all)-2].Type != domain.TypeBatchCreated {
		t.Fatalf("the batch events do not come after every page: last is %s", last.Type)
	}
}

// countingAppends counts the appends that reach a store.
type countingAppends struct {
	eventstore.Store
	appends int
}

func (c *countingAppends) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	c.appends++
	return c.Store.Append(ctx, stream, expected, events)
}

// A large batch's pages go to the store several per append, since each append
// waits for its commit, and every store holds them all, in order, each at its
// revision.
func TestCreateAppendsPagesSeveralAtATime(t *testing.T) {
	storetest.Each(t, func(t *testing.T, store eventstore.Store) {
		counted := &countingAppends{Store: store}
		h := handlers(t, counted)
		const n = 60_500
		res := create(t, h, "b1", n, false)
		if res.Batch.Total() != n || res.Batch.Pages() != 61 {
			t.Fatalf("batch total %d pages %d", res.Batch.Total(), res.Batch.Pages())
		}
		pages, err := store.ReadStream(context.Background(), domain.RecipientsStream("b1"), 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(pages) != 61 {
			t.Fatalf("%d recipient pages, want 61", len(pages))
		}
		for i, se := range pages {
			e, err := domain.DecodeEvent(se.Type, se.Data)
			if err != nil {
				t.Fatal(err)
			}
			p := e.(domain.RecipientsPageAdded)
			want := min(1000, n-1000*i)
			if se.Revision != uint64(i) || p.Page != i || p.First != 1000*i || len(p.Recipients) != want ||
				p.Recipients[0].Phone != fmt.Sprintf("+1415555%04d", 1000*i) {
				t.Fatalf("event %d: revision %d, page %d from %d with %d recipients, the first %s", i, se.Revision, p.Page, p.First, len(p.Recipients), p.Recipients[0].Phone)
			}
		}
		// The pages, at least four at a time, and BatchCreated.
		if counted.appends > 61/4+1 {
			t.Fatalf("%d appends for 61 pages", counted.appends)
		}
		t.Logf("%d appends for 61 pages", counted.appends)
	})
}

func TestFailedUploadCreatesNoBatch(t *testing.T) {
	_, h := setup(t)
	tmpl, _ := domain.NewTemplate("Hi", domain.DefaultTemplateLimits)
	_, err := h.CreateBatch(context.Background(), CreateBatch{
		ID: "b1", Tenant: "acme", Template: tmpl, AutoStart: true, Recipients: recipients(1500, 1200),
	})
	if err == nil {
		t.Fatal("a broken upload was accepted")
	}
	if _, err := h.Repository().Load(context.Background(), "b1"); domain.ErrorCode(err) != domain.ENOTFOUND {
		t.Fatalf("after a broken upload the batch loads: %v", err)
	}
}

func TestOtherTenantsBatchIsNotFound(t *testing.T) {
	_, h := setup(t)
	create(t, h, "b1", 1, true)
	_, err := h.PauseBatch(context.Background(), Act{Tenant: "intruder", BatchID: "b1"})
	if domain.ErrorCode(err) != domain.ENOTFOUND {
		t.Fatalf("pause by another tenant: %v, want not found", err)
	}
	if _, err := h.PauseBatch(context.Background(), Act{Tenant: "acme", BatchID: "nope"}); domain.ErrorCode(err) != domain.ENOTFOUND {
		t.Fatalf("pause of a missing batch: %v", err)
	}
}

// Two instances act on one batch through their own caches: each catches up with
// the other's events and none of their decisions is lost.
func TestConcurrentWritersLoseNothing(t *testing.T) {
	store, a := setup(t)
	b := handlers(t, store)
	create(t, a, "b1", 1, false)
	ctx := context.Background()
	if _, err := b.StartBatch(ctx, Act{Tenant: "acme", BatchID: "b1"}); err != nil {
		t.Fatal(err)
	}
	// a's cache is behind: its pause must see the start.
	if _, err := a.PauseBatch(ctx, Act{Tenant: "acme", BatchID: "b1"}); err != nil {
		t.Fatalf("pause on a stale cache: %v", err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := map[string]int{}
	for i := range 20 {
		h := a
		if i%2 == 1 {
			h = b
		}
		wg.Go(func() {
			// Only one resume and one pause can win from any state; the rest conflict.
			for _, step := range []struct {
				name string
				run  func(context.Context, Act) (Result, error)
			}{{"resume", h.ResumeBatch}, {"pause", h.PauseBatch}} {
				if _, err := step.run(ctx, Act{Tenant: "acme", BatchID: "b1"}); err == nil {
					mu.Lock()
					ok[step.name]++
					mu.Unlock()
				} else if domain.ErrorCode(err) != domain.ECONFLICT {
					t.Errorf("%s: %v", step.name, err)
				}
			}
		})
	}
	wg.Wait()
	events, _ := store.ReadStream(ctx, domain.BatchStream("b1"), 0, 1000)
	resumes, pauses := 0, 0
	for _, e := range events {
		switch e.Type {
		case domain.TypeBatchResumed:
			resumes++
		case domain.TypeBatchPaused:
			pauses++
		}
	}
	if resumes != ok["resume"] || pauses != ok["pause"]+1 {
		t.Fatalf("stored %d resumes and %d pauses, callers were told %v", resumes, pauses, ok)
	}
	final, _ := a.Repository().Load(ctx, "b1")
	if final.Version() != uint64(len(events)) {
		t.Fatalf("cached batch at version %d, stream has %d events", final.Version(), len(events))
	}
}

func TestRepositoryCacheEvictsAndReloads(t *testing.T) {
	store := memory.New()
	defer store.Close()
	repo, _ := NewRepository(store, 4)
	h, _ := New(store, repo, nil)
	for i := range 10 {
		create(t, h, fmt.Sprint("b", i), 1, true)
	}
	if n := len(repo.cache); n > 4 {
		t.Fatalf("cache holds %d batches, limit 4", n)
	}
	for i := range 10 {
		b, err := repo.Load(context.Background(), fmt.Sprint("b", i))
		if err != nil || b.Status() != domain.StatusProcessing {
			t.Fatalf("reload b%d: %v", i, err)
		}
	}
}

// A cancel ends the messages waiting for a retry skipped (cancelled), with
// their numbers, so the errors list says whom they were for.
func TestCancelEndsTheRetriesWithTheirNumbers(t *testing.T) {
	store, h := setup(t)
	create(t, h, "b1", 5, true)
	now := time.Now()
	if _, err := h.Repository().Update(context.Background(), "b1", func(b *domain.Batch) error {
		if _, err := b.Dispatch(now, domain.DispatchRequest{Slice: "s1", PrevSlice: b.LastSlice(), Instance: "i1",
			Deadline: now.Add(10 * time.Second), Max: 5, MaxInFlight: 5}); err != nil {
			return err
		}
		return b.RecordAttemptFailed(now, domain.FailureParams{Index: 3, Attempt: 1, Category: domain.CategoryTimeout}, now.Add(time.Minute))
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.CancelBatch(context.Background(), Act{Tenant: "acme", BatchID: "b1", By: "t"}); err != nil {
		t.Fatal(err)
	}
	events, err := store.ReadStream(context.Background(), domain.BatchStream("b1"), 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var skips []domain.MessageSkipped
	for _, e := range events {
		if e.Type == domain.TypeMessageSkipped {
			d, err := domain.DecodeEvent(e.Type, e.Data)
			if err != nil {
				t.Fatal(err)
			}
			skips = append(skips, d.(domain.MessageSkipped))
		}
	}
	if len(skips) != 1 || skips[0].Index != 3 || skips[0].Phone != "+14155550003" || skips[0].Category != domain.CategoryCancelled {
		t.Fatalf("skips recorded by the cancel: %+v, want index 3's, with its number", skips)
	}
}

// A create whose key's retry took over (AbandonCreate) stores no batch, on
// every store: the fenced-off ID loads as not found, the create still running
// is refused as a conflict, and a batch already stored cannot be fenced off.
func TestAnAbandonedCreateStoresNoBatch(t *testing.T) {
	storetest.Each(t, func(t *testing.T, store eventstore.Store) {
		ctx := context.Background()
		h := handlers(t, store)
		if err := h.AbandonCreate(ctx, "b1", "acme"); err != nil {
			t.Fatalf("abandon b1: %v", err)
		}
		if _, err := h.Repository().Load(ctx, "b1"); domain.ErrorCode(err) != domain.ENOTFOUND {
			t.Fatalf("load of an abandoned create: %v, want not found", err)
		}
		tmpl, _ := domain.NewTemplate("Hi", domain.DefaultTemplateLimits)
		_, err := h.CreateBatch(ctx, CreateBatch{ID: "b1", Tenant: "acme", Template: tmpl, Recipients: recipients(3, -1)})
		if domain.ErrorCode(err) != domain.ECONFLICT {
			t.Fatalf("the abandoned create going on: %v, want a conflict", err)
		}
		if _, err := h.Repository().Load(ctx, "b1"); domain.ErrorCode(err) != domain.ENOTFOUND {
			t.Fatalf("load after the abandoned create went on: %v, want not found", err)
		}
		if err := h.AbandonCreate(ctx, "b1", "acme"); !errors.Is(err, eventstore.ErrConcurrency) {
			t.Fatalf("abandon b1 again: %v, want a concurrency error", err)
		}
		create(t, h, "b2", 3, false)
		if err := h.AbandonCreate(ctx, "b2", "acme"); !errors.Is(err, eventstore.ErrConcurrency) {
			t.Fatalf("abandon a stored batch: %v, want a concurrency error", err)
		}
		if b, err := h.Repository().Load(ctx, "b2"); err != nil || b.Total() != 3 {
			t.Fatalf("the stored batch after an abandon: %v", err)
		}
	})
}
