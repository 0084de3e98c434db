package projectionstest

import (
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/projections"
)

// AllRecipients pages through a batch's recipients with q and returns them
// all, failing the test on an error or a page over the limit.
func AllRecipients(t testing.TB, s projections.Store, q projections.RecipientQuery) []projections.Recipient {
	t.Helper()
	all := []projections.Recipient{}
	for pages := 0; ; pages++ {
		page, next, err := s.Recipients(ctx(t), q)
		if err != nil {
			t.Fatalf("recipients of %s (%+v): %v", q.BatchID, q, err)
		}
		if q.Limit > 0 && len(page) > q.Limit {
			t.Fatalf("recipients of %s: page of %d, limit %d", q.BatchID, len(page), q.Limit)
		}
		all = append(all, page...)
		if next == "" {
			return all
		}
		if len(page) == 0 || pages > 100000 {
			t.Fatalf("recipients of %s: empty page or endless cursor chain", q.BatchID)
		}
		q.Cursor = next
	}
}

// named is a history of named batches of two tenants in several states.
func named() *Events {
	h := NewEvents()
	for i, name := range []string{"Spring Sale", "spring reminders", "Summer SALE", "", "Autumn"} {
		b := h.Batch("acme", fmt.Sprintf("0193-%02d", i), t0.Add(time.Duration(i)*time.Minute))
		b.CreatedWith(domain.BatchCreated{Name: name, Total: 2})
		switch i {
		case 0, 2:
			b.Advance(time.Second).Started()
		case 4:
			b.Advance(time.Second).Cancelled()
		}
	}
	h.Batch("globex", "0193-99", t0).CreatedWith(domain.BatchCreated{Name: "Spring Sale", Total: 1})
	return h
}

func testListFilters(t *testing.T, s projections.Store) {
	Apply(t, s, named().List(), 4)
	for _, c := range []struct {
		status, q string
		want      []string
	}{
		{"", "", []string{"0193-04", "0193-03", "0193-02", "0193-01", "0193-00"}},
		{"processing", "", []string{"0193-02", "0193-00"}},
		{"pending", "", []string{"0193-03", "0193-01"}},
		{"cancelled", "", []string{"0193-04"}},
		{"completed", "", nil},
		{"", "spring", []string{"0193-01", "0193-00"}},
		{"", "SPRING S", []string{"0193-00"}},
		{"", "sale", nil}, // a prefix of the name, not a word in it
		{"", "0193-0", []string{"0193-04", "0193-03", "0193-02", "0193-01", "0193-00"}},
		{"", "0193-03", []string{"0193-03"}},
		{"processing", "s", []string{"0193-02", "0193-00"}},
		{"pending", "spring", []string{"0193-01"}},
	} {
		// Every page size: the filters and the cursor work together.
		for _, limit := range []int{1, 2, 100} {
			var got []string
			cursor := ""
			for range 20 {
				page, next, err := s.Batches(ctx(t), projections.ListQuery{Tenant: "acme", Status: c.status, Q: c.q, Limit: limit, Cursor: cursor})
				if err != nil {
					t.Fatalf("list status %q q %q: %v", c.status, c.q, err)
				}
				got = append(got, ids(page)...)
				if next == "" {
					break
				}
				cursor = next
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("list status %q q %q limit %d: %v, want %v", c.status, c.q, limit, got, c.want)
			}
		}
	}
	for _, q := range []projections.ListQuery{
		{Tenant: "acme", Status: "done"},
		{Tenant: "acme", Q: "bad\x00"},
		{Tenant: "acme", Q: strings.Repeat("x", projections.MaxListQueryLength+1)},
	} {
		_, _, err := s.Batches(ctx(t), q)
		wantCode(t, fmt.Sprintf("list with %+v", q), err, domain.EINVALID)
	}
}

func testNamesAndSchedule(t *testing.T, s projections.Store) {
	h := NewEvents()
	b := h.Batch("acme", "b1", t0)
	at := t0.Add(time.Hour)
	b.CreatedWith(domain.BatchCreated{Name: "Spring — ünïcode", Text: "Hi {{first}}", Variables: []string{"first"}, Total: 3, AutoStart: false})
	later := at.Add(30 * time.Minute)
	b.Advance(time.Second).Rescheduled(later)
	Apply(t, s, h.List(), 1)
	st, err := s.Batch(ctx(t), "acme", "b1")
	if err != nil {
		t.Fatal(err)
	}
	if st.Name != "Spring — ünïcode" || st.Text != "Hi {{first}}" {
		t.Errorf("name %q text %q", st.Name, st.Text)
	}
	if st.ScheduleTime == nil || !st.ScheduleTime.Equal(later) || !st.AutoStart || st.Status != "pending" {
		t.Errorf("after a reschedule: schedule %v autoStart %v status %s; want %s, true, pending", st.ScheduleTime, st.AutoStart, st.Status, later)
	}
	unfinished, _, err := s.Unfinished(ctx(t))
	if err != nil || len(unfinished) != 1 || unfinished[0].ScheduleTime == nil || !unfinished[0].ScheduleTime.Equal(later) || !unfinished[0].AutoStart {
		t.Errorf("unfinished after a reschedule: %+v, %v", unfinished, err)
	}
}

// recipientsHistory is one batch of 2,500 recipients (three pages) in the
// middle of sending: 0-4 sent (0 delivered, 1 undelivered), 5 failed, 6
// waiting for a retry, 7-9 in flight, 10 skipped, 11 on unsent; and a batch of
// another tenant with the same numbers.
func recipientsHistory() (*Events, *Batch) {
	h := NewEvents()
	b := h.Batch("acme", "r1", t0)
	b.Pages(2500)
	b.Created(2500)
	b.Advance(time.Second).Started()
	b.Advance(time.Second).Dispatched(0, 1, 2, 3, 4)
	for i := range 5 {
		b.Advance(100*time.Millisecond).Sent(i, 1, 90*time.Millisecond)
	}
	b.Advance(time.Second).Dispatched(5, 6, 7, 8, 9)
	b.Advance(100*time.Millisecond).Failed(5, 1, domain.CategoryBlocked)
	b.Advance(100*time.Millisecond).AttemptFailed(6, 1, domain.CategoryTimeout)
	b.Advance(time.Second).Skipped(10, domain.CategoryOptedOut)
	b.Advance(time.Minute).Delivered(0, time.Minute)
	b.Advance(time.Second).Undelivered(1, time.Minute)
	other := h.Batch("globex", "g1", t0)
	other.Pages(3)
	other.Created(3)
	return h, b
}

// wantRecipients computes a batch's recipients from the events with the
// projection's functions, as a store must show them.
func wantRecipients(events []eventstore.Event, batchID string, total int) []projections.Recipient {
	recs := map[int]*projections.RecipientOutcome{}
	for _, e := range events {
		if e.Stream != domain.BatchStream(batchID) {
			continue
		}
		_, payload, ok, err := projections.Decode(e)
		if err != nil || !ok {
			continue
		}
		for _, i := range projections.OutcomeIndexes(payload) {
			if recs[i] == nil {
				r := projections.NewOutcome(i)
				recs[i] = &r
			}
			recs[i].Apply(i, payload)
		}
	}
	out := make([]projections.Recipient, total)
	for i := range out {
		out[i] = projections.RecipientOf(i, Number(i), recs[i])
	}
	return out
}

func testRecipients(t *testing.T, s projections.Store) {
	h, b := recipientsHistory()
	events := h.List()
	Apply(t, s, events, 11)
	all := wantRecipients(events, "r1", 2500)

	// Spelled out: what a user asks about one recipient.
	byIndex := func(q projections.RecipientQuery) projections.Recipient {
		t.Helper()
		q.Tenant, q.BatchID = "acme", "r1"
		page, _, err := s.Recipients(ctx(t), q)
		if err != nil || len(page) != 1 {
			t.Fatalf("recipients %+v: %v, %v; want one", q, page, err)
		}
		return page[0]
	}
	if r := byIndex(projections.RecipientQuery{Phone: Number(0)}); r.Index != 0 || r.Status != "sent" || r.Attempts != 1 ||
		r.ProviderMessageID != "SM0-1" || r.DispatchedAt == nil || r.OutcomeAt == nil || r.Delivery != "delivered" || r.DeliveredAt == nil {
		t.Errorf("recipient 0: %+v", r)
	}
	// Why it was not delivered, as the provider's console shows it.
	if r := byIndex(projections.RecipientQuery{Phone: Number(1)}); r.Delivery != "undelivered" || r.Code != "30003" {
		t.Errorf("recipient 1: %+v, want undelivered with the receipt's code 30003", r)
	}
	if r := byIndex(projections.RecipientQuery{Status: "failed"}); r.Index != 5 || r.Category != "blocked" || r.OutcomeAt == nil || r.Delivery != "" {
		t.Errorf("failed recipient: %+v", r)
	}
	if r := byIndex(projections.RecipientQuery{Status: "skipped"}); r.Index != 10 || r.Category != "opted_out" || r.DispatchedAt != nil {
		t.Errorf("skipped recipient: %+v", r)
	}
	if r := byIndex(projections.RecipientQuery{Phone: Number(2001)}); r.Index != 2001 || r.Status != "unsent" || r.Attempts != 0 || r.DispatchedAt != nil {
		t.Errorf("recipient 2001: %+v", r)
	}
	if r := byIndex(projections.RecipientQuery{Status: "pending", Category: "timeout"}); r.Index != 6 || r.OutcomeAt != nil {
		t.Errorf("pending recipient waiting for its retry: %+v", r)
	}

	// Every filter and page size agrees with the events, page by page.
	for _, q := range []projections.RecipientQuery{
		{}, {Status: "sent"}, {Status: "failed"}, {Status: "skipped"}, {Status: "pending"}, {Status: "unsent"},
		{Category: "timeout"}, {Category: "blocked"}, {Status: "unsent", Category: "blocked"},
		{Phone: "+141520000"}, {Phone: "+1415200100"}, {Phone: Number(2499)}, {Phone: "+1999"}, {Phone: "+1"},
		{Phone: "+141520000", Status: "pending"}, {Phone: "+14152001", Status: "unsent"},
	} {
		var want []projections.Recipient
		for _, r := range all {
			if (q.Status == "" || r.Status == q.Status) && (q.Category == "" || r.Category == q.Category) && strings.HasPrefix(r.PhoneNumber, q.Phone) {
				want = append(want, r)
			}
		}
		if want == nil {
			want = []projections.Recipient{}
		}
		for _, limit := range []int{1, 7, 0, projections.MaxRecipientLimit} {
			if limit == 1 && len(want) > 50 {
				continue // a page at a time through thousands says nothing more
			}
			q.Tenant, q.BatchID, q.Limit = "acme", "r1", limit
			sameJSON(t, fmt.Sprintf("recipients %+v", q), AllRecipients(t, s, q), want)
		}
	}

	// Sending goes on: the next page of events moves recipients on.
	b.Advance(time.Second).Sent(7, 1, 90*time.Millisecond)
	b.Advance(time.Second).Dispatched(11)
	Apply(t, s, h.List()[len(events):], 10)
	if r := byIndex(projections.RecipientQuery{Phone: Number(7)}); r.Status != "sent" {
		t.Errorf("recipient 7 after its answer: %+v", r)
	}
	unsent, _, err := s.Recipients(ctx(t), projections.RecipientQuery{Tenant: "acme", BatchID: "r1", Status: "unsent", Limit: 1})
	if err != nil || len(unsent) != 1 || unsent[0].Index != 12 {
		t.Errorf("first unsent after 11 was dispatched: %+v, %v", unsent, err)
	}

	// Quiet hours: recipient 0 waits for its morning while 1 is dispatched,
	// so an unsent recipient lies below the cursor; the unsent filter lists it
	// as the whole list does (it started at the cursor and left it out).
	before := len(h.List())
	q := h.Batch("acme", "q1", t0)
	q.Pages(3)
	q.Created(3)
	q.Started()
	h.Append(domain.RecipientsDeferred{EventHeader: domain.EventHeader{BatchID: "q1", Tenant: "acme", At: q.Now}, Cursor: 1,
		Ranges: []domain.DeferredRange{{Group: "America/Los_Angeles", From: 0, To: 1, Waiting: 1, OpensAt: q.Now.Add(time.Hour)}}})
	q.Dispatched(1)
	Apply(t, s, h.List()[before:], 2)
	for _, limit := range []int{1, 0} {
		got := AllRecipients(t, s, projections.RecipientQuery{Tenant: "acme", BatchID: "q1", Status: "unsent", Limit: limit})
		if idx := indexesOf(got); !slices.Equal(idx, []int{0, 2}) {
			t.Errorf("unsent recipients of a batch with one waiting for its quiet hours, %d a page: %v, want [0 2]", limit, idx)
		}
	}

	// Another tenant's batch does not exist; bad queries are EINVALID.
	_, _, err = s.Recipients(ctx(t), projections.RecipientQuery{Tenant: "globex", BatchID: "r1"})
	wantCode(t, "recipients of another tenant's batch", err, domain.ENOTFOUND)
	_, _, err = s.Recipients(ctx(t), projections.RecipientQuery{Tenant: "acme", BatchID: "nope"})
	wantCode(t, "recipients of a batch that does not exist", err, domain.ENOTFOUND)
	b64 := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, q := range []projections.RecipientQuery{
		{Status: "delivered"}, {Category: "nope"}, {Phone: "1415"}, {Phone: "+1415x"}, {Phone: "+" + strings.Repeat("1", 16)},
		{Limit: -1}, {Limit: projections.MaxRecipientLimit + 1}, {Cursor: "garbage!!"}, {Cursor: b64("r1:-1")}, {Cursor: b64("e1:3")},
	} {
		q.Tenant, q.BatchID = "acme", "r1"
		_, _, err := s.Recipients(ctx(t), q)
		wantCode(t, fmt.Sprintf("recipients with %+v", q), err, domain.EINVALID)
	}
}

func testRecipientsRebuild(t *testing.T, live, rebuilt projections.Store) {
	h, _ := recipientsHistory()
	events := h.List()
	for _, e := range events {
		Apply(t, live, []eventstore.Event{e}, 1)
	}
	Apply(t, rebuilt, events, len(events))
	Apply(t, rebuilt, events, 3) // and replayed: nothing changes
	SameSnapshot(t, "recipients rebuilt from position 0", Snapshot(t, rebuilt, "acme", "globex"), Snapshot(t, live, "acme", "globex"))
}

func testRetryLinks(t *testing.T, s projections.Store) {
	h := NewEvents()
	h.Campaign("acme", "first", t0, 40)
	retry := h.Batch("acme", "second", t0.Add(time.Hour))
	retry.CreatedWith(domain.BatchCreated{Name: "Retry of first", RetryOf: "first", Total: 4})
	again := h.Batch("acme", "third", t0.Add(2*time.Hour))
	again.CreatedWith(domain.BatchCreated{RetryOf: "first", Total: 4})
	// A link to another tenant's batch is not made.
	h.Batch("globex", "stranger", t0.Add(3*time.Hour)).CreatedWith(domain.BatchCreated{RetryOf: "first", Total: 1})
	events := h.List()
	Apply(t, s, events, 13)
	first, err := s.Batch(ctx(t), "acme", "first")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(first.Retries, []string{"second", "third"}) || first.RetryOf != "" {
		t.Errorf("original: retries %v retryOf %q; want [second third] and none", first.Retries, first.RetryOf)
	}
	second, err := s.Batch(ctx(t), "acme", "second")
	if err != nil || second.RetryOf != "first" || len(second.Retries) != 0 {
		t.Errorf("retry: %+v, %v; want retryOf first", second, err)
	}
	want := Snapshot(t, s, "acme", "globex")
	Apply(t, s, events, 5)
	SameSnapshot(t, "links after replaying every event", Snapshot(t, s, "acme", "globex"), want)
}

func indexesOf(rs []projections.Recipient) []int {
	out := []int{}
	for _, r := range rs {
		out = append(out, r.Index)
	}
	return out
}
