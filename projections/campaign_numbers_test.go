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

// messagesPerSecond is the rate the batch sent at: outcomes a second apart
// are one a second. Counted as outcomes over the time from the start to the
// last outcome, two messages of a batch at 8/s showed 18 a second, and a
// batch paused and resumed six times half again its rate (a pause's last
// outcome to the resume's first counted no interval, its outcome did).
func TestMessagesPerSecondIsTheRateSentAt(t *testing.T) {
	for _, tt := range []struct {
		name    string
		n       int
		pauseAt int // pause and resume after every pauseAt messages; 0: never
	}{
		{"2 messages", 2, 0},
		{"40 messages", 40, 0},
		{"40 messages paused every 6", 40, 6},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := projectionstest.NewEvents()
			b := h.Batch("acme", "b1", t0)
			b.Created(tt.n)
			b.Started()
			const every = 125 * time.Millisecond // 8 a second
			b.Advance(300 * time.Millisecond)    // the first send's lead and latency
			for i := range tt.n {
				b.Dispatched(i)
				b.Sent(i, 1, 40*time.Millisecond)
				if tt.pauseAt > 0 && (i+1)%tt.pauseAt == 0 && i+1 < tt.n {
					b.Advance(50 * time.Millisecond).Paused()
					b.Advance(3 * time.Second).Resumed()
					b.Advance(300 * time.Millisecond)
					continue
				}
				b.Advance(every)
			}
			st, _ := project(t, h.List())
			got := st.StatusView().Metrics.MessagesPerSecond
			if got < 7.5 || got > 8.5 {
				t.Fatalf("messagesPerSecond %.2f for a batch sending 8 a second", got)
			}
		})
	}
}
