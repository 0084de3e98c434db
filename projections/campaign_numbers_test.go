package projections_test

import (
	"testing"
	"time"

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
