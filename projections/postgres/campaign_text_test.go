package postgres_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/projections"
	"github.com/smsbatch/smsbatch/projections/projectionstest"
)

// A provider's refusal whose text holds U+0000 (its JSON said "\u0000"; the
// HTTP provider keeps the provider's words, sanitised of whitespace and the
// token only) becomes a recipient's final MessageFailed. The PostgreSQL read
// models must apply it like any other failure: a page they cannot apply stops
// every campaign's numbers for good.
func TestProviderMessageWithNULIsApplied(t *testing.T) {
	s := newStore(t, database(t))
	h := projectionstest.NewEvents()
	b := h.Batch("acme", "batch-nul", t0)
	b.Created(2)
	b.Started()
	b.Dispatched(0, 1)
	b.Sent(0, 1, 100*time.Millisecond)
	h.Append(domain.MessageFailed{
		EventHeader: domain.EventHeader{BatchID: b.ID, Tenant: b.Tenant, At: b.Now},
		Index:       1, Attempt: 1, Phone: projectionstest.Phone(1), Category: domain.CategoryUnknown,
		Code: "30099", Message: "the provider refused the message (HTTP 400): bad\x00thing",
	})
	// Another tenant's batch after it: it must not wait behind the failure.
	o := h.Batch("other", "batch-after", t0.Add(time.Second))
	o.Created(1)

	if err := s.Apply(t.Context(), h.List()); err != nil {
		t.Fatalf("apply: %v", err)
	}
	st, err := s.Batch(t.Context(), "acme", "batch-nul")
	if err != nil {
		t.Fatal(err)
	}
	if st.Progress.Failed != 1 || st.Progress.Completed != 1 {
		t.Fatalf("progress %+v, want 1 sent and 1 failed", st.Progress)
	}
	errs, _, err := s.Errors(t.Context(), projections.ErrorQuery{Tenant: "acme", BatchID: "batch-nul"})
	if err != nil || len(errs) != 1 {
		t.Fatalf("errors %+v (%v), want the one failure", errs, err)
	}
	if _, err := s.Batch(t.Context(), "other", "batch-after"); err != nil {
		t.Fatalf("the other tenant's batch: %v", err)
	}
}

// Names come back byte for byte, and ?q= finds them case-insensitively, from
// PostgreSQL as from Go.
func TestUnicodeNamesRoundTrip(t *testing.T) {
	s := newStore(t, database(t))
	names := []string{
		"Été 2026 — soldes 🎉", "  spaces around  ", "tab\tand\nnewline", "\u202eRTL override",
		"zero\u200bwidth", "\ufeffBOM", "line\u2028sep", "nonchar\uffff", "İstanbul", "ΣΟΦΙΑ", "日本語のキャンペーン",
		strings.Repeat("ü", domain.MaxNameLength), "e\u0301 combining", "\\u0000 literal backslash", `quote " and <&>`,
	}
	h := projectionstest.NewEvents()
	for i, n := range names {
		h.Batch("acme", fmt.Sprintf("n-%02d", i), t0.Add(time.Duration(i)*time.Second)).
			CreatedWith(domain.BatchCreated{Name: n, Total: 1, Text: n + " {{name}}", Variables: []string{"name"}})
	}
	if err := s.Apply(t.Context(), h.List()); err != nil {
		t.Fatal(err)
	}
	for i, n := range names {
		id := fmt.Sprintf("n-%02d", i)
		st, err := s.Batch(t.Context(), "acme", id)
		if err != nil {
			t.Fatal(err)
		}
		if st.Name != n || st.Text != n+" {{name}}" {
			t.Errorf("%s: name %q text %q, want %q", id, st.Name, st.Text, n)
		}
		q := strings.ToUpper(n)
		if len([]rune(q)) > domain.MaxNameLength || domain.CheckName(q) != nil {
			q = n
		}
		list, _, err := s.Batches(t.Context(), projections.ListQuery{Tenant: "acme", Q: q, Limit: 100})
		if err != nil {
			t.Fatalf("q=%q: %v", q, err)
		}
		found := false
		for _, b := range list {
			found = found || b.ID == id
		}
		if !found && strings.EqualFold(q, n) {
			t.Errorf("q=%q does not find %s named %q", q, id, n)
		}
	}
}

// The same for a provider's message ID: a sid the provider answered, or a
// receipt's, with U+0000 in it is kept in the recipient's outcome.
func TestProviderIDWithNULIsApplied(t *testing.T) {
	s := newStore(t, database(t))
	h := projectionstest.NewEvents()
	b := h.Batch("acme", "batch-nul-id", t0)
	b.Created(2)
	b.Started()
	b.Dispatched(0, 1)
	h.Append(domain.MessageSent{EventHeader: domain.EventHeader{BatchID: b.ID, Tenant: b.Tenant, At: b.Now},
		Index: 0, Attempt: 1, ProviderID: "SM\x00one", Segments: 1})
	h.Append(domain.MessageSent{EventHeader: domain.EventHeader{BatchID: b.ID, Tenant: b.Tenant, At: b.Now},
		Index: 1, Attempt: 1, ProviderID: "SMtwo", Segments: 1})
	h.Append(domain.MessageDelivered{EventHeader: domain.EventHeader{BatchID: b.ID, Tenant: b.Tenant, At: b.Now},
		Index: 1, ProviderID: "SM\x00two"})
	o := h.Batch("other", "batch-after-id", t0.Add(time.Second))
	o.Created(1)
	if err := s.Apply(t.Context(), h.List()); err != nil {
		t.Fatalf("apply: %v", err)
	}
	rs, _, err := s.Recipients(t.Context(), projections.RecipientQuery{Tenant: "acme", BatchID: b.ID})
	if err != nil || len(rs) != 2 {
		t.Fatalf("recipients %+v (%v)", rs, err)
	}
	if _, err := s.Batch(t.Context(), "other", "batch-after-id"); err != nil {
		t.Fatalf("the other tenant's batch: %v", err)
	}
}
