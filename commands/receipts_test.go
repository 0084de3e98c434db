package commands

import (
	"context"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/memory"
	"github.com/smsbatch/smsbatch/internal/storetest"
)

// receipts returns the receipt events of a batch's stream.
func receipts(t *testing.T, store eventstore.Store, batchID string) []domain.Event {
	t.Helper()
	events, err := store.ReadStream(context.Background(), domain.BatchStream(batchID), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []domain.Event
	for _, e := range events {
		if e.Type == domain.TypeMessageDelivered || e.Type == domain.TypeMessageUndelivered {
			p, err := domain.DecodeEvent(e.Type, e.Data)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, p)
		}
	}
	return out
}

func TestOneReceiptCountsPerMessageAfterCompletion(t *testing.T) {
	storetest.Each(t, func(t *testing.T, store eventstore.Store) {
		h := handlers(t, store)
		ctx := context.Background()
		create(t, h, "b1", 3, false)
		if _, err := h.CancelBatch(ctx, Act{Tenant: "acme", BatchID: "b1", By: "test"}); err != nil {
			t.Fatal(err) // a finished batch: receipts come after the end
		}
		sent := time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC)
		delivered := RecordReceipt{BatchID: "b1", Index: 1, Delivered: true, ProviderID: "SM1", SentAt: sent}
		for i := range 3 { // the same callback three times
			ok, tenant, err := h.RecordReceipt(ctx, delivered)
			if err != nil || tenant != "acme" || ok != (i == 0) {
				t.Fatalf("receipt %d: recorded %v, tenant %q, %v; want recorded only the first time", i, ok, tenant, err)
			}
		}
		undelivered := RecordReceipt{BatchID: "b1", Index: 2, Code: "30003", Message: "Unreachable destination handset", SentAt: sent}
		if ok, _, err := h.RecordReceipt(ctx, undelivered); !ok || err != nil {
			t.Fatalf("undelivered: %v %v", ok, err)
		}
		late := undelivered
		late.Delivered = true // a delivered after an undelivered
		if ok, _, err := h.RecordReceipt(ctx, late); ok || err != nil {
			t.Fatalf("a second receipt of message 2: recorded %v, %v", ok, err)
		}
		got := receipts(t, store, "b1")
		if len(got) != 2 {
			t.Fatalf("%d receipt events, want 2", len(got))
		}
		d, ok := got[0].(domain.MessageDelivered)
		if !ok || d.Index != 1 || d.Tenant != "acme" || !d.SentAt.Equal(sent) || d.ProviderID != "SM1" {
			t.Errorf("first receipt %+v", got[0])
		}
		u, ok := got[1].(domain.MessageUndelivered)
		if !ok || u.Index != 2 || u.Code != "30003" {
			t.Errorf("second receipt %+v", got[1])
		}
		// The aggregate still loads, and the receipts decided nothing.
		b, err := h.Repository().Load(ctx, "b1")
		if err != nil || b.Status() != domain.StatusCancelled {
			t.Fatalf("batch after receipts: %v %v", b, err)
		}
	})
}

func TestReceiptOfAnUnknownMessageIsNotFound(t *testing.T) {
	store, h := setup(t)
	create(t, h, "b1", 2, false)
	ctx := context.Background()
	for _, r := range []RecordReceipt{{BatchID: "nope", Delivered: true}, {BatchID: "b1", Index: 2, Delivered: true}, {BatchID: "b1", Index: -1}} {
		if _, _, err := h.RecordReceipt(ctx, r); domain.ErrorCode(err) != domain.ENOTFOUND {
			t.Errorf("receipt %+v: %v, want not found", r, err)
		}
	}
	if got := receipts(t, store, "b1"); len(got) != 0 {
		t.Fatalf("%d receipts stored", len(got))
	}
}

func TestReceiptsTogetherCostOneAppendABatch(t *testing.T) {
	storetest.Each(t, func(t *testing.T, base eventstore.Store) {
		store := newCountingStore(base)
		h := handlers(t, store)
		ctx := context.Background()
		create(t, h, "b1", 4, false)
		create(t, h, "b2", 3, false)
		sent := time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC)
		// Message 3 of b2 was reported by a webhook before: its group is
		// refused and recorded one by one.
		if ok, _, err := h.RecordReceipt(ctx, RecordReceipt{BatchID: "b2", Index: 2, Delivered: true, SentAt: sent}); !ok || err != nil {
			t.Fatal(ok, err)
		}
		store.mu.Lock()
		clear(store.appends)
		store.mu.Unlock()
		recorded, missing, err := h.RecordReceipts(ctx, []RecordReceipt{
			{BatchID: "b1", Index: 0, Delivered: true, ProviderID: "SM0", SentAt: sent},
			{BatchID: "b2", Index: 0, Delivered: true, SentAt: sent},
			{BatchID: "b1", Index: 1, Code: "30003", Message: "Unreachable destination handset", SentAt: sent},
			{BatchID: "b1", Index: 1, Delivered: true, SentAt: sent}, // the same message twice: the first counts
			{BatchID: "b1", Index: 9, Delivered: true},               // no such message
			{BatchID: "nope", Index: 0, Delivered: true},             // no such batch
			{BatchID: "b2", Index: 2, Code: "30005", SentAt: sent},   // recorded before
			{BatchID: "b1", Index: 3, Delivered: true, SentAt: sent},
		})
		if err != nil || recorded != 4 || missing != 2 {
			t.Fatalf("recorded %d, missing %d, %v; want 4 recorded (3 of b1, 1 new of b2), 2 missing", recorded, missing, err)
		}
		store.mu.Lock()
		b1, b2 := store.appends[domain.BatchStream("b1")], store.appends[domain.BatchStream("b2")]
		store.mu.Unlock()
		if b1 != 1 {
			t.Errorf("b1's receipts took %d appends, want 1", b1)
		}
		if b2 != 3 { // the refused group, then one each
			t.Errorf("b2's receipts took %d appends, want 3", b2)
		}
		got := map[int]domain.Event{}
		for _, e := range receipts(t, store, "b1") {
			switch e := e.(type) {
			case domain.MessageDelivered:
				got[e.Index] = e
			case domain.MessageUndelivered:
				got[e.Index] = e
			}
		}
		if len(got) != 3 {
			t.Fatalf("b1 holds receipts of %v, want 0, 1, 3", got)
		}
		if u, ok := got[1].(domain.MessageUndelivered); !ok || u.Code != "30003" || u.Tenant != "acme" {
			t.Errorf("b1's message 1: %+v, want the first receipt, undelivered 30003", got[1])
		}
		if d, ok := got[0].(domain.MessageDelivered); !ok || d.ProviderID != "SM0" || !d.SentAt.Equal(sent) {
			t.Errorf("b1's message 0: %+v", got[0])
		}
		if n := len(receipts(t, store, "b2")); n != 2 {
			t.Errorf("b2 holds %d receipts, want 2 (one each for messages 0 and 2)", n)
		}
		// Nobody waits for a receipt to be stored: each append of them,
		// together or one by one, may share a commit with others.
		store.mu.Lock()
		defer store.mu.Unlock()
		asked := append(store.delays[domain.TypeMessageDelivered], store.delays[domain.TypeMessageUndelivered]...)
		if len(asked) != 5 {
			t.Fatalf("%d receipt appends noted, want 5", len(asked))
		}
		for _, d := range asked {
			if d != eventstore.CommitCompany {
				t.Fatalf("a receipt append asked for a commit delay of %s, want %s", d, eventstore.CommitCompany)
			}
		}
		// The batch's own decisions did not.
		for _, d := range store.delays[domain.TypeBatchCreated] {
			if d != 0 {
				t.Fatalf("a create asked for a commit delay of %s", d)
			}
		}
	})
}

// Receipts recorded together keep the cached batch current: the batch's next
// update, decided on the cache, is not refused for them.
func TestReceiptsKeepTheCachedBatchCurrent(t *testing.T) {
	store := newCountingStore(memory.New())
	h := handlers(t, store)
	ctx := context.Background()
	create(t, h, "b1", 4, false)
	sent := time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC)
	if recorded, _, err := h.RecordReceipts(ctx, []RecordReceipt{
		{BatchID: "b1", Index: 0, Delivered: true, SentAt: sent},
		{BatchID: "b1", Index: 1, Code: "30003", SentAt: sent},
	}); err != nil || recorded != 2 {
		t.Fatalf("recorded %d: %v", recorded, err)
	}
	store.mu.Lock()
	clear(store.appends)
	clear(store.readCalls)
	store.mu.Unlock()
	b, err := h.Repository().Update(ctx, "b1", func(b *domain.Batch) error { return b.Cancel(time.Now(), "u", nil) })
	if err != nil || b.Status() != domain.StatusCancelled {
		t.Fatalf("cancel: %v", err)
	}
	store.mu.Lock()
	appends, reads := store.appends[domain.BatchStream("b1")], store.readCalls[domain.BatchStream("b1")]
	store.mu.Unlock()
	if appends != 1 || reads != 0 {
		t.Fatalf("the update after the receipts took %d appends and %d reads, want one append and no read", appends, reads)
	}
}

// A batch created now takes receipt IDs that begin with its own ID's time, so
// that its receipts land beside the newest events in a store's index of IDs;
// a batch created before that keeps hashed IDs, and a receipt it got before an
// upgrade is still the one that counts.
func TestReceiptIDsFollowTheBatchesCreation(t *testing.T) {
	storetest.Each(t, func(t *testing.T, store eventstore.Store) {
		h := handlers(t, store)
		ctx := context.Background()
		sent := time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC)

		const fresh = "01a2300b-4799-75e2-b164-b472a65e02aa" // a UUIDv7, as the API makes
		create(t, h, fresh, 3, false)
		if ok, _, err := h.RecordReceipt(ctx, RecordReceipt{BatchID: fresh, Index: 1, Delivered: true, SentAt: sent}); !ok || err != nil {
			t.Fatalf("receipt: %v %v", ok, err)
		}
		events, err := store.ReadStream(ctx, domain.BatchStream(fresh), 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		id := events[len(events)-1].ID
		if id != domain.OrderedReceiptID(fresh, 1) || id[:13] != fresh[:13] || id[14] != '8' {
			t.Errorf("receipt ID %s: want it to begin with the batch's time %s and be version 8", id, fresh[:13])
		}

		// A batch from before: its BatchCreated has no receiptIds, and one of
		// its receipts was recorded with a hashed ID.
		const old = "01a22fff-0000-7000-8000-000000000001"
		typ, data, err := domain.EncodeEvent(domain.BatchCreated{
			EventHeader: domain.EventHeader{BatchID: old, Tenant: "acme", At: sent},
			Text:        "Hi", Variables: []string{}, Priority: domain.PriorityNormal, Total: 3, Pages: 1,
		})
		if err != nil {
			t.Fatal(err)
		}
		rtyp, rdata, err := domain.EncodeEvent(domain.MessageDelivered{EventHeader: domain.EventHeader{BatchID: old, Tenant: "acme", At: sent}, Index: 2})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := store.Append(ctx, domain.BatchStream(old), eventstore.NoStream(), []eventstore.EventData{
			{ID: "0196a3c4-5b7e-7c1d-9e2f-3a4b5c6d7e8f", Type: typ, Data: data},
			{ID: domain.DeliveryReceiptID(old, 2), Type: rtyp, Data: rdata},
		}); err != nil {
			t.Fatal(err)
		}
		if ok, _, err := h.RecordReceipt(ctx, RecordReceipt{BatchID: old, Index: 2, Delivered: true, SentAt: sent}); ok || err != nil {
			t.Fatalf("the old batch's message 2 again: recorded %v, %v; want refused as recorded before", ok, err)
		}
		if n, _, err := h.RecordReceipts(ctx, []RecordReceipt{{BatchID: old, Index: 2, Delivered: true}, {BatchID: old, Index: 0, Delivered: true}}); n != 1 || err != nil {
			t.Fatalf("the old batch's receipts together: %d recorded, %v; want only message 0's", n, err)
		}
		if got := receipts(t, store, old); len(got) != 2 {
			t.Fatalf("the old batch has %d receipts, want 2", len(got))
		}
	})
}
