package projectionstest

import (
	"time"

	"github.com/smsbatch/smsbatch/domain"
)

// Campaign appends the whole life of a batch of n recipients the way the send
// processor writes it: its recipients pages, created, started, dispatched five at a time at about five
// messages a second, with retried attempts, permanent failures of several
// categories, a one-minute pause halfway, and the completion. It is
// deterministic: the same arguments give the same events.
//
// Recipient i's first attempt fails for good when i%17 == 5 (invalid number) or
// i%23 == 7 (blocked); otherwise it fails and is retried once, successfully, when
// i%10 == 3 (timeout); every other message is sent at once.
func (h *Events) Campaign(tenant, id string, at time.Time, n int) *Batch {
	b := h.Batch(tenant, id, at)
	b.Pages(n)
	b.Created(n)
	b.Advance(time.Second).Started()
	sent, failed := 0, 0
	for first := 0; first < n; first += 5 {
		if first >= n/2 && first-5 < n/2 && first > 0 {
			b.Advance(100 * time.Millisecond).Paused()
			b.Advance(time.Minute).Resumed()
		}
		last := min(first+5, n)
		indexes := make([]int, 0, 5)
		for i := first; i < last; i++ {
			indexes = append(indexes, i)
		}
		b.Advance(10 * time.Millisecond).Dispatched(indexes...)
		var retry []domain.Dispatch
		for _, i := range indexes {
			b.Advance(200 * time.Millisecond)
			switch {
			case i%17 == 5:
				b.Failed(i, 1, domain.CategoryInvalidNumber)
				failed++
			case i%23 == 7:
				b.Failed(i, 1, domain.CategoryBlocked)
				failed++
			case i%10 == 3:
				b.AttemptFailed(i, 1, domain.CategoryTimeout)
				retry = append(retry, domain.Dispatch{Index: i, Attempt: 2})
			default:
				b.SentSegments(i, 1, 1+i%3, time.Duration(50+(i*37)%400)*time.Millisecond)
				sent++
			}
		}
		if len(retry) > 0 {
			b.Advance(time.Second).DispatchedAt(retry...)
			for _, d := range retry {
				b.Advance(150*time.Millisecond).Sent(d.Index, d.Attempt, 120*time.Millisecond)
				sent++
			}
		}
	}
	b.Advance(10*time.Millisecond).Completed(sent, failed)
	return b
}
