package projections_test

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/projections"
	projbolt "github.com/smsbatch/smsbatch/projections/bolt"
	"github.com/smsbatch/smsbatch/projections/memory"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/projections/projectionstest"
)

// A message whose attempt timed out on our side may still reach the handset
// (the API's retry-failed leaves such recipients out for that reason): its
// receipt comes after the recipient ended failed, or skipped when the batch
// was cancelled while it waited for its retry. The analytics' deliveryRate is
// documented as delivered / sent, between 0 and 1 (openapi.json: maximum 1).
func TestDeliveryRateNeverAboveOne(t *testing.T) {
	h := projectionstest.NewEvents()
	b := h.Batch("acme", "batch-1", t0)
	b.Created(3)
	b.Started()
	b.Dispatched(0, 1, 2)
	b.Sent(0, 1, 100*time.Millisecond)
	b.AttemptFailed(1, 1, domain.CategoryTimeout) // went out after all
	b.AttemptFailed(2, 1, domain.CategoryTimeout) // went out after all
	b.Advance(time.Second)
	b.Cancelled()
	// The cancel ends the messages waiting for their retry, skipped.
	h.Append(domain.MessageSkipped{EventHeader: domain.EventHeader{BatchID: b.ID, Tenant: b.Tenant, At: b.Now},
		Index: 1, Attempt: 1, Phone: projectionstest.Number(1), Category: domain.CategoryCancelled, Message: "cancelled"})
	h.Append(domain.MessageSkipped{EventHeader: domain.EventHeader{BatchID: b.ID, Tenant: b.Tenant, At: b.Now},
		Index: 2, Attempt: 1, Phone: projectionstest.Number(2), Category: domain.CategoryCancelled, Message: "cancelled"})
	b.Advance(5 * time.Second)
	b.Delivered(0, 5*time.Second)
	b.Delivered(1, 6*time.Second)
	b.Delivered(2, 6*time.Second)

	st, _ := project(t, h.List())
	a := st.AnalyticsView()
	if a.DeliveryRate < 0 || a.DeliveryRate > 1 {
		t.Fatalf("deliveryRate = %v with totals %+v: a rate above 100%%", a.DeliveryRate, a.Totals)
	}
}

// The list's pages, on the memory and bolt stores, while batches are created
// (at instants already listed and newer) and listed ones change status: every
// batch that existed before the first page is listed exactly once.
func TestListPagesWhileCreatingMemoryAndBolt(t *testing.T) {
	for name, open := range map[string]func(t *testing.T) projections.Store{
		"memory": func(t *testing.T) projections.Store { return memory.New() },
		"bolt": func(t *testing.T) projections.Store {
			s, err := projbolt.Open(filepath.Join(t.TempDir(), "rm.db"), projbolt.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
	} {
		t.Run(name, func(t *testing.T) {
			s := open(t)
			h := projectionstest.NewEvents()
			var before []string
			for i := range 120 {
				b := h.Batch("acme", fmt.Sprintf("b-%03d", i), t0.Add(time.Duration(i/3)*time.Millisecond))
				b.Created(1)
				before = append(before, b.ID)
			}
			if err := s.Apply(t.Context(), h.List()); err != nil {
				t.Fatal(err)
			}
			applied := h.Len()
			seen := map[string]int{}
			cursor := ""
			for page := 0; ; page++ {
				for j := range 5 {
					n := page*5 + j
					at := t0.Add(time.Duration(n%40) * time.Millisecond)
					if j == 4 {
						at = t0.Add(time.Hour + time.Duration(n)*time.Millisecond)
					}
					h.Batch("acme", fmt.Sprintf("b-%03d-new-%d", n%40*3, n), at).Created(1)
				}
				h.Batch("acme", before[(page*7)%len(before)], t0.Add(time.Hour)).Started()
				if err := s.Apply(t.Context(), h.List()[applied:]); err != nil {
					t.Fatal(err)
				}
				applied = h.Len()
				list, next, err := s.Batches(t.Context(), projections.ListQuery{Tenant: "acme", Limit: 7, Cursor: cursor})
				if err != nil {
					t.Fatal(err)
				}
				for _, b := range list {
					seen[b.ID]++
				}
				if next == "" {
					break
				}
				cursor = next
			}
			for _, id := range before {
				if seen[id] != 1 {
					t.Errorf("%s listed %d times, want once", id, seen[id])
				}
			}
			for id, n := range seen {
				if n != 1 {
					t.Errorf("%s listed %d times", id, n)
				}
			}
		})
	}
}
