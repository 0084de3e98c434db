package projectionstest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/projections"
)

// t0 is the time histories in the suite start at.
var t0 = time.Date(2025, 6, 2, 9, 0, 0, 0, time.UTC)

// Run runs the contract suite against stores made by newStore, which must return
// an empty store for every call.
func Run(t *testing.T, newStore func(t *testing.T) projections.Store) {
	t.Run("Checkpoint", func(t *testing.T) { testCheckpoint(t, newStore(t)) })
	t.Run("ServesWhatTheEventsSay", func(t *testing.T) { testServesProjection(t, newStore(t)) })
	t.Run("ReplayChangesNothing", func(t *testing.T) { testReplay(t, newStore(t)) })
	t.Run("RebuildIsIdentical", func(t *testing.T) { testRebuild(t, newStore(t), newStore(t)) })
	t.Run("SkipsWhatItDoesNotProject", func(t *testing.T) { testSkips(t, newStore(t), newStore(t)) })
	t.Run("MalformedEventChangesNothing", func(t *testing.T) { testMalformed(t, newStore(t)) })
	t.Run("NotFound", func(t *testing.T) { testNotFound(t, newStore(t)) })
	t.Run("TenantIsolation", func(t *testing.T) { testTenants(t, newStore(t)) })
	t.Run("ListNewestFirst", func(t *testing.T) { testList(t, newStore(t)) })
	t.Run("ErrorPages", func(t *testing.T) { testErrors(t, newStore(t)) })
	t.Run("InvalidQueries", func(t *testing.T) { testInvalid(t, newStore(t)) })
	t.Run("ConcurrentReads", func(t *testing.T) { testConcurrent(t, newStore(t)) })
	t.Run("Unfinished", func(t *testing.T) { testUnfinished(t, newStore(t)) })
	t.Run("ListFilters", func(t *testing.T) { testListFilters(t, newStore(t)) })
	t.Run("NamesAndSchedule", func(t *testing.T) { testNamesAndSchedule(t, newStore(t)) })
	t.Run("Recipients", func(t *testing.T) { testRecipients(t, newStore(t)) })
	t.Run("RecipientsRebuildIsIdentical", func(t *testing.T) { testRecipientsRebuild(t, newStore(t), newStore(t)) })
	t.Run("RetryLinks", func(t *testing.T) { testRetryLinks(t, newStore(t)) })
	t.Run("CursorsPastTheEnd", func(t *testing.T) { testCursorsPastTheEnd(t, newStore(t)) })
	t.Run("ListPagesWhileCreating", func(t *testing.T) { testListPagesWhileCreating(t, newStore(t)) })
}

func ctx(t testing.TB) context.Context { return t.Context() }

// Apply applies events to s in pages of n, as a runner would, failing the test
// on an error.
func Apply(t testing.TB, s projections.Store, events []eventstore.Event, n int) {
	t.Helper()
	for page := range slices.Chunk(events, n) {
		if err := s.Apply(ctx(t), page); err != nil {
			t.Fatalf("apply events %s..%s: %v", page[0].Position, page[len(page)-1].Position, err)
		}
	}
}

func checkpoint(t testing.TB, s projections.Store) eventstore.Position {
	t.Helper()
	pos, err := s.Checkpoint(ctx(t))
	if err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	return pos
}

func wantCode(t *testing.T, what string, err error, code string) {
	t.Helper()
	if got := domain.ErrorCode(err); err == nil || got != code {
		t.Errorf("%s: got error %v (code %s), want code %s", what, err, got, code)
	}
}

// twoTenants is a history of a few batches of two tenants in every state.
func twoTenants() *Events {
	h := NewEvents()
	done := h.Campaign("acme", "acme-done", t0, 60)
	h.Campaign("globex", "globex-done", t0.Add(time.Minute), 35)
	// Delivery receipts come after the batch completed.
	done.Advance(2*time.Second).Delivered(0, 3*time.Second)
	done.Advance(time.Second).Delivered(1, 5*time.Second)
	done.Advance(time.Second).Undelivered(2, 5*time.Second)
	paused := h.Batch("acme", "acme-paused", t0.Add(2*time.Minute))
	paused.Created(10)
	paused.Advance(time.Second).Started()
	paused.Advance(time.Second).Dispatched(0, 1, 2)
	paused.Advance(time.Second).Sent(0, 1, 80*time.Millisecond)
	paused.Advance(time.Second).Paused()
	paused.Advance(time.Second).Failed(1, 1, domain.CategoryUnroutable)
	h.Batch("acme", "acme-pending", t0.Add(3*time.Minute)).Created(5)
	cancelled := h.Batch("globex", "globex-cancelled", t0.Add(4*time.Minute))
	cancelled.Created(3)
	cancelled.Advance(time.Second).Cancelled()
	return h
}

var tenants = []string{"acme", "globex"}

// snapshot is everything the store shows of the suite's tenants.
func snapshot(t *testing.T, s projections.Store) string {
	t.Helper()
	return Snapshot(t, s, tenants...)
}

// Snapshot is everything s shows of tenants, as indented JSON, for comparing
// stores (see SameSnapshot): the checkpoint, every tenant's list read in
// pages, and the status, analytics and errors of every batch listed.
func Snapshot(t testing.TB, s projections.Store, tenants ...string) string {
	t.Helper()
	view := map[string]any{"checkpoint": checkpoint(t, s)}
	for _, tenant := range tenants {
		var list []projections.BatchStatus
		cursor := ""
		for {
			page, next, err := s.Batches(ctx(t), projections.ListQuery{Tenant: tenant, Limit: 2, Cursor: cursor})
			if err != nil {
				t.Fatalf("list %s: %v", tenant, err)
			}
			list = append(list, page...)
			if next == "" {
				break
			}
			cursor = next
		}
		view[tenant+"/list"] = list
		for _, b := range list {
			key := tenant + "/" + b.ID
			if b.Tenant != tenant {
				t.Errorf("batch %s listed for %s has tenant %q", b.ID, tenant, b.Tenant)
			}
			status, err := s.Batch(ctx(t), tenant, b.ID)
			if err != nil {
				t.Fatalf("batch %s: %v", key, err)
			}
			analytics, err := s.Analytics(ctx(t), tenant, b.ID)
			if err != nil {
				t.Fatalf("analytics %s: %v", key, err)
			}
			view[key+"/status"] = status
			view[key+"/analytics"] = analytics
			view[key+"/errors"] = allErrors(t, s, projections.ErrorQuery{Tenant: tenant, BatchID: b.ID, Limit: 3})
			view[key+"/recipients"] = AllRecipients(t, s, projections.RecipientQuery{Tenant: tenant, BatchID: b.ID, Limit: projections.MaxRecipientLimit})
		}
	}
	out, err := json.MarshalIndent(view, "", " ")
	if err != nil {
		t.Fatalf("encode snapshot: %v", err)
	}
	return string(out)
}

func allErrors(t testing.TB, s projections.Store, q projections.ErrorQuery) []projections.ErrorEntry {
	t.Helper()
	all := []projections.ErrorEntry{}
	for pages := 0; ; pages++ {
		page, next, err := s.Errors(ctx(t), q)
		if err != nil {
			t.Fatalf("errors of %s (%+v): %v", q.BatchID, q, err)
		}
		if q.Limit > 0 && len(page) > q.Limit {
			t.Fatalf("errors of %s: page of %d, limit %d", q.BatchID, len(page), q.Limit)
		}
		all = append(all, page...)
		if next == "" {
			return all
		}
		if len(page) == 0 || pages > 100000 {
			t.Fatalf("errors of %s: empty page or endless cursor chain", q.BatchID)
		}
		q.Cursor = next
	}
}

// SameSnapshot fails the test at the first line where two snapshots differ.
func SameSnapshot(t testing.TB, what, got, want string) {
	t.Helper()
	if got == want {
		return
	}
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := range min(len(g), len(w)) {
		if g[i] != w[i] {
			t.Fatalf("%s: read models differ at line %d:\n got: %s\nwant: %s", what, i+1, g[i], w[i])
		}
	}
	t.Fatalf("%s: read models differ in length: %d lines, want %d", what, len(g), len(w))
}

func testCheckpoint(t *testing.T, s projections.Store) {
	if got := checkpoint(t, s); got != eventstore.Start {
		t.Fatalf("empty store's checkpoint is %s, want %s", got, eventstore.Start)
	}
	if err := s.Apply(ctx(t), nil); err != nil {
		t.Fatalf("apply no events: %v", err)
	}
	events := twoTenants().List()
	Apply(t, s, events[:10], 4)
	if got := checkpoint(t, s); got != events[9].Position {
		t.Errorf("checkpoint after 10 events is %s, want %s", got, events[9].Position)
	}
	Apply(t, s, events[10:], 1000)
	if got, want := checkpoint(t, s), events[len(events)-1].Position; got != want {
		t.Errorf("checkpoint after all events is %s, want %s", got, want)
	}
	// A page entirely at or before the checkpoint does not move it back.
	Apply(t, s, events[:5], 5)
	if got, want := checkpoint(t, s), events[len(events)-1].Position; got != want {
		t.Errorf("checkpoint after replaying old events is %s, want %s", got, want)
	}
}

// testServesProjection checks that the store shows what the projection functions
// compute from the same events, so that a store cannot drift from them.
func testServesProjection(t *testing.T, s projections.Store) {
	h := twoTenants()
	events := h.List()
	Apply(t, s, events, 17)

	states := map[string]*projections.BatchState{}
	errs := map[string][]projections.ErrorEntry{}
	for _, e := range events {
		if strings.HasPrefix(e.Stream, domain.RecipientsStreamPrefix) {
			continue // the recipients read model has tests of its own
		}
		id, payload, ok, err := projections.Decode(e)
		if err != nil || !ok {
			t.Fatalf("decode %s: ok %v, %v", e.Type, ok, err)
		}
		if states[id] == nil {
			states[id] = &projections.BatchState{}
		}
		states[id].Apply(e, payload)
		if entry, ok := projections.ErrorEntryOf(payload); ok {
			errs[id] = append(errs[id], entry)
		}
	}
	for id, st := range states {
		status, err := s.Batch(ctx(t), st.Tenant, id)
		if err != nil {
			t.Fatalf("batch %s: %v", id, err)
		}
		sameJSON(t, "status of "+id, status, st.StatusView())
		if status.Tenant != st.Tenant {
			t.Errorf("batch %s has tenant %q, want %q", id, status.Tenant, st.Tenant)
		}
		analytics, err := s.Analytics(ctx(t), st.Tenant, id)
		if err != nil {
			t.Fatalf("analytics %s: %v", id, err)
		}
		sameJSON(t, "analytics of "+id, analytics, st.AnalyticsView())
		want := errs[id]
		slices.SortFunc(want, func(a, b projections.ErrorEntry) int { return a.Index - b.Index })
		if want == nil {
			want = []projections.ErrorEntry{}
		}
		sameJSON(t, "errors of "+id, allErrors(t, s, projections.ErrorQuery{Tenant: st.Tenant, BatchID: id}), want)
	}

	// And what the events say, spelled out for two batches.
	done, err := s.Batch(ctx(t), "acme", "acme-done")
	if err != nil {
		t.Fatal(err)
	}
	if done.Status != "completed" || done.Progress.Delivered != 2 || done.Progress.Undelivered != 1 {
		t.Errorf("completed batch with receipts: %s %+v; want 2 delivered and 1 undelivered", done.Status, done.Progress)
	}
	a, err := s.Analytics(ctx(t), "acme", "acme-done")
	if err != nil {
		t.Fatal(err)
	}
	if a.Totals.Delivered != 2 || a.Totals.Undelivered != 1 || a.DeliveryRate != 2/float64(a.Totals.Sent) ||
		a.DeliveryLatencyMs.P50 < 3000 || a.DeliveryLatencyMs.P99 > 5000 {
		t.Errorf("analytics with receipts: totals %+v, delivery rate %v, latency %+v; want 2 of %d delivered in 3 to 5 s",
			a.Totals, a.DeliveryRate, a.DeliveryLatencyMs, a.Totals.Sent)
	}

	st, err := s.Batch(ctx(t), "acme", "acme-paused")
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != "paused" || st.Progress != (projections.Progress{Total: 10, Pending: 1, Completed: 1, Failed: 1}) {
		t.Errorf("paused batch: status %s, progress %+v; want paused, 10 total, 1 pending, 1 sent, 1 failed", st.Status, st.Progress)
	}
	if st.PauseInfo == nil || !st.PauseInfo.PauseTime.Equal(t0.Add(2*time.Minute+4*time.Second)) || st.PauseInfo.ResumeTime != nil {
		t.Errorf("paused batch: pause info %+v, want paused at %s, not resumed", st.PauseInfo, t0.Add(2*time.Minute+4*time.Second))
	}
}

func sameJSON(t *testing.T, what string, got, want any) {
	t.Helper()
	g, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	w, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if string(g) != string(w) {
		t.Errorf("%s:\n got %s\nwant %s", what, g, w)
	}
}

func testReplay(t *testing.T, s projections.Store) {
	events := twoTenants().List()
	Apply(t, s, events, 7)
	want := snapshot(t, s)

	Apply(t, s, events, 5)
	SameSnapshot(t, "after applying every event again", snapshot(t, s), want)
	Apply(t, s, events[len(events)/3:len(events)/2], 3)
	SameSnapshot(t, "after applying a stretch again", snapshot(t, s), want)
	Apply(t, s, events[len(events)-1:], 1)
	SameSnapshot(t, "after applying the last event again", snapshot(t, s), want)
}

func testRebuild(t *testing.T, live, rebuilt projections.Store) {
	events := twoTenants().List()
	// The live store follows the events one at a time, read between pages.
	for i, e := range events {
		Apply(t, live, []eventstore.Event{e}, 1)
		if i%50 == 0 {
			snapshot(t, live)
		}
	}
	Apply(t, rebuilt, events, len(events))
	SameSnapshot(t, "rebuilt from position 0", snapshot(t, rebuilt), snapshot(t, live))
}

func testSkips(t *testing.T, noisy, clean projections.Store) {
	h := NewEvents()
	b := h.Batch("acme", "b1", t0)
	var pure []eventstore.Event
	pure = append(pure, b.Created(3))
	h.AppendRaw(domain.RecipientsStream("b1"), domain.TypeRecipientsPageAdded,
		[]byte(`{"batchId":"b1","tenant":"acme","page":0,"first":0,"recipients":[{"p":"+15005550006"}]}`), t0)
	pure = append(pure, b.Advance(time.Second).Started())
	h.AppendRaw(domain.BatchStream("b1"), "BatchArchived", []byte(`{"whatever":true}`), b.Now)
	h.AppendRaw("invoice-7", "InvoiceSent", []byte(`not json at all`), b.Now)
	pure = append(pure, b.Advance(time.Second).Dispatched(0))
	// Events of a batch whose creation the store never saw change nothing.
	ghost := h.Batch("acme", "ghost", t0)
	ghost.Started()
	ghost.Sent(0, 1, time.Millisecond)
	pure = append(pure, b.Advance(time.Second).Sent(0, 1, 90*time.Millisecond))
	last := h.AppendRaw("invoice-7", "InvoicePaid", []byte(`{}`), b.Now)

	Apply(t, noisy, h.List(), 100)
	if got := checkpoint(t, noisy); got != last.Position {
		t.Errorf("checkpoint after a page ending with another stream's event is %s, want %s", got, last.Position)
	}
	Apply(t, clean, pure, 100)
	for _, query := range []func(projections.Store) (any, error){
		func(s projections.Store) (any, error) { return s.Batch(ctx(t), "acme", "b1") },
		func(s projections.Store) (any, error) { return s.Analytics(ctx(t), "acme", "b1") },
		func(s projections.Store) (any, error) {
			page, _, err := s.Batches(ctx(t), projections.ListQuery{Tenant: "acme"})
			return page, err
		},
	} {
		got, err := query(noisy)
		if err != nil {
			t.Fatal(err)
		}
		want, err := query(clean)
		if err != nil {
			t.Fatal(err)
		}
		sameJSON(t, "with events the read models do not use", got, want)
	}
	_, err := noisy.Batch(ctx(t), "acme", "ghost")
	wantCode(t, "batch whose creation was never applied", err, domain.ENOTFOUND)
}

func testMalformed(t *testing.T, s projections.Store) {
	h := NewEvents()
	b := h.Batch("acme", "b1", t0)
	b.Created(3)
	Apply(t, s, h.List(), 10)
	before := snapshot(t, s)

	b.Advance(time.Second).Started()
	h.AppendRaw(domain.BatchStream("b1"), domain.TypeMessagesDispatched, []byte(`{"messages":"not a list"}`), b.Now)
	b.Advance(time.Second).Paused()
	if err := s.Apply(ctx(t), h.List()[1:]); err == nil {
		t.Fatal("apply a page holding a malformed event: no error")
	}
	SameSnapshot(t, "after a page holding a malformed event failed", snapshot(t, s), before)
}

func testNotFound(t *testing.T, s projections.Store) {
	Apply(t, s, twoTenants().List(), 100)
	_, err := s.Batch(ctx(t), "acme", "nope")
	wantCode(t, "batch that does not exist", err, domain.ENOTFOUND)
	_, err = s.Analytics(ctx(t), "acme", "nope")
	wantCode(t, "analytics of a batch that does not exist", err, domain.ENOTFOUND)
	_, _, err = s.Errors(ctx(t), projections.ErrorQuery{Tenant: "acme", BatchID: "nope"})
	wantCode(t, "errors of a batch that does not exist", err, domain.ENOTFOUND)
}

func testTenants(t *testing.T, s projections.Store) {
	Apply(t, s, twoTenants().List(), 100)
	for _, c := range []struct{ tenant, other string }{{"acme", "globex-done"}, {"globex", "acme-done"}, {"", "acme-done"}} {
		_, err := s.Batch(ctx(t), c.tenant, c.other)
		wantCode(t, fmt.Sprintf("tenant %q reads %s", c.tenant, c.other), err, domain.ENOTFOUND)
		_, err = s.Analytics(ctx(t), c.tenant, c.other)
		wantCode(t, fmt.Sprintf("tenant %q reads analytics of %s", c.tenant, c.other), err, domain.ENOTFOUND)
		_, _, err = s.Errors(ctx(t), projections.ErrorQuery{Tenant: c.tenant, BatchID: c.other})
		wantCode(t, fmt.Sprintf("tenant %q reads errors of %s", c.tenant, c.other), err, domain.ENOTFOUND)
	}
	for tenant, want := range map[string][]string{
		"acme":    {"acme-pending", "acme-paused", "acme-done"},
		"globex":  {"globex-cancelled", "globex-done"},
		"initech": {},
	} {
		page, next, err := s.Batches(ctx(t), projections.ListQuery{Tenant: tenant})
		if err != nil {
			t.Fatalf("list %s: %v", tenant, err)
		}
		if got := ids(page); !slices.Equal(got, want) || next != "" {
			t.Errorf("list of %s: %v (next %q), want %v and no next page", tenant, got, next, want)
		}
	}
}

func ids(list []projections.BatchStatus) []string {
	out := make([]string, len(list))
	for i, b := range list {
		out[i] = b.ID
	}
	return out
}

func testList(t *testing.T, s projections.Store) {
	// 23 batches, three created in each minute, appended out of order.
	const n = 23
	h := NewEvents()
	var want []projections.ListKey
	for _, i := range rand.New(rand.NewPCG(1, 2)).Perm(n) {
		id := fmt.Sprintf("batch-%02d", i)
		created := t0.Add(time.Duration(i/3) * time.Minute)
		h.Batch("acme", id, created).Created(1)
		want = append(want, projections.ListKey{CreatedAt: created, ID: id})
	}
	h.Batch("globex", "batch-99", t0.Add(time.Hour)).Created(1)
	slices.SortFunc(want, projections.ListKey.Compare)
	wantIDs := make([]string, len(want))
	for i, k := range want {
		wantIDs[i] = k.ID
	}
	Apply(t, s, h.List(), 100)

	list := func(limit int, cursor string) ([]string, string) {
		t.Helper()
		page, next, err := s.Batches(ctx(t), projections.ListQuery{Tenant: "acme", Limit: limit, Cursor: cursor})
		if err != nil {
			t.Fatalf("list (limit %d, cursor %q): %v", limit, cursor, err)
		}
		return ids(page), next
	}

	var got []string
	pages := 0
	for cursor := ""; ; pages++ {
		page, next := list(5, cursor)
		if len(page) > 5 {
			t.Fatalf("page of %d batches, limit 5", len(page))
		}
		got = append(got, page...)
		if next == "" {
			break
		}
		if pages > n {
			t.Fatal("endless cursor chain")
		}
		cursor = next
	}
	if !slices.Equal(got, wantIDs) || pages != 4 {
		t.Errorf("paging by 5: %v in %d pages, want %v in 5", got, pages+1, wantIDs)
	}
	if page, next := list(0, ""); len(page) != projections.DefaultListLimit || next == "" {
		t.Errorf("default limit: %d batches, next %q; want %d and a next page", len(page), next, projections.DefaultListLimit)
	}
	if page, next := list(n, ""); len(page) != n || next != "" {
		t.Errorf("limit %d: %d batches, next %q; want all and no next page", n, len(page), next)
	}

	// A batch created between two pages does not shift the pages that follow.
	first, next := list(10, "")
	h.Batch("acme", "batch-new", t0.Add(2*time.Hour)).Created(1)
	Apply(t, s, h.List()[n+1:], 10)
	second, _ := list(10, next)
	if got := append(first, second...); !slices.Equal(got, wantIDs[:20]) {
		t.Errorf("pages around a new batch: %v, want %v", got, wantIDs[:20])
	}
	if page, _ := list(1, ""); !slices.Equal(page, []string{"batch-new"}) {
		t.Errorf("first page after the new batch: %v, want [batch-new]", page)
	}
}

func testErrors(t *testing.T, s projections.Store) {
	categories := []domain.ErrorCategory{domain.CategoryInvalidNumber, domain.CategoryBlocked, domain.CategoryUnroutable}
	h := NewEvents()
	b := h.Batch("acme", "b1", t0)
	b.Created(60)
	b.Advance(time.Second).Started()
	// Outcomes arrive out of recipient order, as they do with five in flight.
	for _, group := range slices.Collect(slices.Chunk(rand.New(rand.NewPCG(3, 4)).Perm(60), 5)) {
		b.Advance(time.Second).Dispatched(group...)
		for _, i := range group {
			b.Advance(100 * time.Millisecond)
			if i%2 == 0 {
				b.Failed(i, 1, categories[i/2%3])
			} else {
				b.Sent(i, 1, 50*time.Millisecond)
			}
		}
	}
	Apply(t, s, h.List(), 13)

	all := allErrors(t, s, projections.ErrorQuery{Tenant: "acme", BatchID: "b1", Limit: 7})
	if len(all) != 30 {
		t.Fatalf("%d errors, want 30", len(all))
	}
	for k, e := range all {
		i := 2 * k
		if e.Index != i || e.Category != string(categories[i/2%3]) || e.PhoneNumber != Phone(i) ||
			e.Attempts != 1 || e.Code == "" || e.Message == "" || e.Time.IsZero() {
			t.Errorf("error %d: %+v, want recipient %d, %s, %s, 1 attempt, code, message and time", k, e, i, categories[i/2%3], Phone(i))
		}
	}

	blocked := allErrors(t, s, projections.ErrorQuery{Tenant: "acme", BatchID: "b1", Category: "blocked", Limit: 4})
	var want []int
	for i := 0; i < 60; i += 2 {
		if categories[i/2%3] == domain.CategoryBlocked {
			want = append(want, i)
		}
	}
	var got []int
	for _, e := range blocked {
		got = append(got, e.Index)
	}
	if !slices.Equal(got, want) {
		t.Errorf("blocked errors by 4: %v, want %v", got, want)
	}

	page, next, err := s.Errors(ctx(t), projections.ErrorQuery{Tenant: "acme", BatchID: "b1", Category: "timeout"})
	if err != nil || len(page) != 0 || next != "" || page == nil {
		t.Errorf("errors of a category with none: %v, next %q, %v; want an empty page and no next", page, next, err)
	}
	page, next, err = s.Errors(ctx(t), projections.ErrorQuery{Tenant: "acme", BatchID: "b1", Limit: 30})
	if err != nil || len(page) != 30 || next != "" {
		t.Errorf("errors with limit 30: %d, next %q, %v; want 30 and no next page", len(page), next, err)
	}
}

func testInvalid(t *testing.T, s projections.Store) {
	Apply(t, s, twoTenants().List(), 100)
	_, listNext, err := s.Batches(ctx(t), projections.ListQuery{Tenant: "acme", Limit: 1})
	if err != nil || listNext == "" {
		t.Fatalf("list one: next %q, %v", listNext, err)
	}
	_, errorsNext, err := s.Errors(ctx(t), projections.ErrorQuery{Tenant: "acme", BatchID: "acme-done", Limit: 1})
	if err != nil || errorsNext == "" {
		t.Fatalf("errors one: next %q, %v", errorsNext, err)
	}
	b64 := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, cursor := range []string{"garbage!!", "%%%", b64("hello"), b64("b1:notanumber:x"), b64("b1:12"), errorsNext} {
		_, _, err := s.Batches(ctx(t), projections.ListQuery{Tenant: "acme", Cursor: cursor})
		wantCode(t, fmt.Sprintf("list with cursor %q", cursor), err, domain.EINVALID)
	}
	for _, cursor := range []string{"garbage!!", b64("e1:-3"), b64("e1:x"), listNext} {
		_, _, err := s.Errors(ctx(t), projections.ErrorQuery{Tenant: "acme", BatchID: "acme-done", Cursor: cursor})
		wantCode(t, fmt.Sprintf("errors with cursor %q", cursor), err, domain.EINVALID)
	}
	_, _, err = s.Errors(ctx(t), projections.ErrorQuery{Tenant: "acme", BatchID: "acme-done", Category: "nope"})
	wantCode(t, "errors of an unknown category", err, domain.EINVALID)
	for _, limit := range []int{-1, projections.MaxListLimit + 1} {
		_, _, err := s.Batches(ctx(t), projections.ListQuery{Tenant: "acme", Limit: limit})
		wantCode(t, fmt.Sprintf("list with limit %d", limit), err, domain.EINVALID)
	}
	for _, limit := range []int{-1, projections.MaxErrorLimit + 1} {
		_, _, err := s.Errors(ctx(t), projections.ErrorQuery{Tenant: "acme", BatchID: "acme-done", Limit: limit})
		wantCode(t, fmt.Sprintf("errors with limit %d", limit), err, domain.EINVALID)
	}
}

func testConcurrent(t *testing.T, s projections.Store) {
	h := NewEvents()
	h.Campaign("acme", "b1", t0, 200)
	events := h.List()
	var wg sync.WaitGroup
	done := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				_, err := s.Batch(ctx(t), "acme", "b1")
				if err != nil && domain.ErrorCode(err) != domain.ENOTFOUND {
					t.Errorf("batch while applying: %v", err)
					return
				}
				if err == nil {
					if _, err := s.Analytics(ctx(t), "acme", "b1"); err != nil {
						t.Errorf("analytics while applying: %v", err)
						return
					}
					if _, _, err := s.Errors(ctx(t), projections.ErrorQuery{Tenant: "acme", BatchID: "b1", Limit: 5}); err != nil {
						t.Errorf("errors while applying: %v", err)
						return
					}
				}
				if _, _, err := s.Batches(ctx(t), projections.ListQuery{Tenant: "acme"}); err != nil {
					t.Errorf("list while applying: %v", err)
					return
				}
			}
		})
	}
	Apply(t, s, events, 3)
	close(done)
	wg.Wait()
	st, err := s.Batch(ctx(t), "acme", "b1")
	if err != nil || st.Status != "completed" || st.Progress.Completed+st.Progress.Failed != 200 {
		t.Errorf("after concurrent reads: %+v, %v; want completed with 200 outcomes", st, err)
	}
}

// testUnfinished: every tenant's batches not final, at the checkpoint they are
// read at, as the send processor starts from them.
func testUnfinished(t *testing.T, s projections.Store) {
	h := twoTenants()
	running := h.Batch("globex", "globex-running", t0.Add(5*time.Minute))
	running.Created(4)
	running.Advance(time.Second).Started()
	running.Advance(time.Second).Dispatched(0)
	events := h.List()
	Apply(t, s, events[:len(events)-1], 7)
	got, at, err := s.Unfinished(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if at != events[len(events)-2].Position {
		t.Fatalf("unfinished read at %s, want the checkpoint %s", at, events[len(events)-2].Position)
	}
	want := map[string]string{"acme-paused": "paused", "acme-pending": "pending", "globex-running": "processing"}
	if len(got) != len(want) {
		t.Fatalf("unfinished %v, want %v", ids(got), want)
	}
	for _, b := range got {
		if want[b.ID] != b.Status {
			t.Fatalf("unfinished %s is %s, want %q", b.ID, b.Status, want[b.ID])
		}
		if b.ID == "globex-running" && !b.UpdatedAt.Equal(running.Now.Add(-time.Second)) {
			t.Fatalf("unfinished %s updated at %v, want its last event's time", b.ID, b.UpdatedAt)
		}
	}
	// A batch that finishes, its last message ended, leaves the set.
	Apply(t, s, events[len(events)-1:], 1)
	done := h.Batch("acme", "acme-paused", t0)
	done.Now = t0.Add(10 * time.Minute)
	Apply(t, s, []eventstore.Event{done.Cancelled(), done.Skipped(2, domain.CategoryCancelled)}, 2)
	got, _, err = s.Unfinished(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range got {
		if b.ID == "acme-paused" {
			t.Fatal("a cancelled batch is still unfinished")
		}
	}
	if len(got) != 2 {
		t.Fatalf("unfinished %v after a cancel, want acme-pending and globex-running", ids(got))
	}
	// A batch stopped with a message in flight stays until the message ends:
	// its instance may have died with it, and the processor ends it.
	running.Advance(time.Second)
	Apply(t, s, []eventstore.Event{running.Cancelled()}, 1)
	got, _, err = s.Unfinished(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(got, func(b projections.BatchStatus) bool { return b.ID == "globex-running" && b.Status == "cancelled" }) {
		t.Fatalf("unfinished %v: a batch cancelled with a message in flight left the set", ids(got))
	}
	Apply(t, s, []eventstore.Event{running.Advance(time.Second).Skipped(0, domain.CategoryCancelled)}, 1)
	got, _, err = s.Unfinished(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(got, func(b projections.BatchStatus) bool { return b.ID == "globex-running" }) {
		t.Fatalf("unfinished %v: a cancelled batch whose last message ended is still there", ids(got))
	}
}

// A cursor no list returned, far past any batch's end (a crafted one), is
// refused, or answers an empty last page, on every filter: it overflowed the
// scans from the index after it (a panic, or a walk from the most negative
// index holding the store's read lock, the read models' applies waiting
// behind it) and PostgreSQL's integer columns (a 500).
func testCursorsPastTheEnd(t *testing.T, s projections.Store) {
	h, _ := recipientsHistory()
	Apply(t, s, h.List(), 11)
	b64 := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	try := func(what string, f func() (int, string, error)) {
		t.Helper()
		type result struct {
			n    int
			next string
			err  error
		}
		done := make(chan result, 1)
		go func() {
			defer func() {
				if v := recover(); v != nil {
					done <- result{err: fmt.Errorf("panic: %v", v)}
				}
			}()
			n, next, err := f()
			done <- result{n, next, err}
		}()
		var r result
		select {
		case r = <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no answer after 5 s: the query spins", what)
		}
		switch {
		case r.err != nil && domain.ErrorCode(r.err) != domain.EINVALID:
			t.Errorf("%s: %v (code %s), want invalid or an empty last page", what, r.err, domain.ErrorCode(r.err))
		case r.err == nil && (r.n != 0 || r.next != ""):
			t.Errorf("%s: %d recipients, next %q; want none after the end", what, r.n, r.next)
		}
	}
	for _, idx := range []string{"2147483646", "2147483648", "9223372036854775807"} {
		for _, q := range []projections.RecipientQuery{{}, {Status: "sent"}, {Status: "failed"}, {Status: "unsent"}, {Status: "pending"}, {Category: "blocked"}, {Phone: "+1415"}} {
			q.Tenant, q.BatchID, q.Cursor = "acme", "r1", b64("r1:"+idx)
			try(fmt.Sprintf("recipients %+v after %s", q, idx), func() (int, string, error) {
				page, next, err := s.Recipients(ctx(t), q)
				return len(page), next, err
			})
		}
		try("errors after "+idx, func() (int, string, error) {
			page, next, err := s.Errors(ctx(t), projections.ErrorQuery{Tenant: "acme", BatchID: "r1", Cursor: b64("e1:" + idx)})
			return len(page), next, err
		})
	}
}

// Paging through a tenant's list while batches are created (some at the very
// instant of listed ones, some newer) and others change status: every batch
// that existed before the first page is listed exactly once.
func testListPagesWhileCreating(t *testing.T, s projections.Store) {
	h := NewEvents()
	var before []string
	for i := range 120 {
		// Three batches per instant: ties are broken by ID.
		b := h.Batch("acme", fmt.Sprintf("b-%03d", i), t0.Add(time.Duration(i/3)*time.Millisecond))
		b.Created(1)
		before = append(before, b.ID)
	}
	if err := s.Apply(ctx(t), h.List()); err != nil {
		t.Fatal(err)
	}
	applied := h.Len()
	seen := map[string]int{}
	cursor := ""
	for page := 0; ; page++ {
		// Between pages: new batches, at instants already listed and newer,
		// and status changes of listed ones.
		for j := range 5 {
			n := page*5 + j
			at := t0.Add(time.Duration(n%40) * time.Millisecond)
			if j == 4 {
				at = t0.Add(time.Hour + time.Duration(n)*time.Millisecond)
			}
			h.Batch("acme", fmt.Sprintf("b-%03d-new-%d", n%40*3, n), at).Created(1)
		}
		h.Batch("acme", before[(page*7)%len(before)], t0.Add(time.Hour)).Started()
		if err := s.Apply(ctx(t), h.List()[applied:]); err != nil {
			t.Fatal(err)
		}
		applied = h.Len()
		list, next, err := s.Batches(ctx(t), projections.ListQuery{Tenant: "acme", Limit: 7, Cursor: cursor})
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
}
