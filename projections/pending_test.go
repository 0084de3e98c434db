package projections

import (
	"reflect"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
)

// A recipient's record stays in the state while its message is pending and is
// handed to the store to write once: when it is final, and again when a
// receipt changes it.
func TestARecordIsWrittenOnceFinal(t *testing.T) {
	at := time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)
	h := func(s int) domain.EventHeader {
		return domain.EventHeader{BatchID: "b", Tenant: "t", At: at.Add(time.Duration(s) * time.Second)}
	}
	st := &BatchState{}
	stored := map[int]RecipientOutcome{} // what the store wrote
	reads := 0
	fold := func(i int, e domain.Event) bool {
		t.Helper()
		write := false
		err := st.FoldOutcomes(e, func(i int) (RecipientOutcome, error) {
			reads++
			if r, ok := stored[i]; ok {
				return r, nil
			}
			return NewOutcome(i), nil
		}, func(rec RecipientOutcome) {
			if rec.Index != i {
				t.Fatalf("record %d written, want %d", rec.Index, i)
			}
			stored[i], write = rec, true
		})
		if err != nil {
			t.Fatal(err)
		}
		return write
	}
	if fold(7, domain.MessagesDispatched{EventHeader: h(1), Messages: []domain.Dispatch{{Index: 7, Attempt: 1}}}) {
		t.Fatal("a dispatched record was to be written")
	}
	if fold(7, domain.MessageAttemptFailed{EventHeader: h(2), Index: 7, Attempt: 1, Category: domain.CategoryProviderUnavailable, Code: "503"}) ||
		fold(7, domain.MessagesDispatched{EventHeader: h(3), Messages: []domain.Dispatch{{Index: 7, Attempt: 2}}}) {
		t.Fatal("a pending record was to be written")
	}
	want := RecipientOutcome{Index: 7, Status: RecipientPending, Category: string(domain.CategoryProviderUnavailable), Code: "503", Attempts: 2, DispatchedAt: at.Add(3 * time.Second)}
	if !reflect.DeepEqual(st.PendingRecords, []RecipientOutcome{want}) {
		t.Fatalf("pending records %+v, want %+v", st.PendingRecords, want)
	}
	if !fold(7, domain.MessageSent{EventHeader: h(4), Index: 7, Attempt: 2, ProviderID: "SM7"}) {
		t.Fatal("a sent record was not to be written")
	}
	want = RecipientOutcome{Index: 7, Status: RecipientSent, Attempts: 2, ProviderID: "SM7", DispatchedAt: at.Add(3 * time.Second), OutcomeAt: at.Add(4 * time.Second)}
	if !reflect.DeepEqual(stored[7], want) || len(st.PendingRecords) != 0 {
		t.Fatalf("written %+v with %d pending left, want %+v", stored[7], len(st.PendingRecords), want)
	}
	if reads != 0 {
		t.Fatalf("the store's record was read %d times while the state held it", reads)
	}
	if !fold(7, domain.MessageDelivered{EventHeader: h(9), Index: 7}) || stored[7].Delivery != DeliveryDelivered || stored[7].ProviderID != "SM7" || reads != 1 {
		t.Fatalf("after a receipt: %+v, %d reads", stored[7], reads)
	}
}

// A pending record written by a store before the state kept them is folded
// into, not started again: its dispatch time survives the outcome.
func TestAPendingRecordStoredEarlierIsFoldedInto(t *testing.T) {
	at := time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)
	legacy := RecipientOutcome{Index: 3, Status: RecipientPending, Attempts: 1, DispatchedAt: at}
	st := &BatchState{}
	sent := domain.MessageSent{EventHeader: domain.EventHeader{BatchID: "b", Tenant: "t", At: at.Add(time.Second)}, Index: 3, Attempt: 1}
	if !st.NeedsStored(3, sent) {
		t.Fatal("the stored record is not asked for")
	}
	var rec RecipientOutcome
	write := false
	err := st.FoldOutcomes(sent, func(int) (RecipientOutcome, error) { return legacy, nil },
		func(r RecipientOutcome) { rec, write = r, true })
	if err != nil || !write || rec.Status != RecipientSent || !rec.DispatchedAt.Equal(at) {
		t.Fatalf("folded %+v, write %v, %v", rec, write, err)
	}
	first := domain.MessagesDispatched{Messages: []domain.Dispatch{{Index: 4, Attempt: 1}}}
	if st.NeedsStored(4, first) {
		t.Fatal("a first dispatch asks for a stored record")
	}
}

// sourceOf serves records as a store would.
type sourceOf []RecipientOutcome

func (s sourceOf) Numbers(int) ([]string, error) { return nil, nil }

func (s sourceOf) Outcomes(from, to int, status, category string, limit int) ([]RecipientOutcome, error) {
	var out []RecipientOutcome
	for _, r := range s {
		if r.Index >= from && r.Index < to && (status == "" || r.Status == status) && (category == "" || r.Category == category) &&
			(limit <= 0 || len(out) < limit) {
			out = append(out, r)
		}
	}
	return out, nil
}

// The state's pending records join the store's in index order, replace the
// store's older records of the same recipients, and count towards the limit
// as the store's do.
func TestPendingRecordsJoinTheStoredOnes(t *testing.T) {
	st := &BatchState{PendingRecords: []RecipientOutcome{
		{Index: 2, Status: RecipientPending, Category: "rate_limited"},
		{Index: 5, Status: RecipientPending},
	}}
	src := sourceOf{
		{Index: 1, Status: RecipientSent},
		{Index: 2, Status: RecipientPending, Category: "unknown"}, // written before the state kept it
		{Index: 3, Status: RecipientFailed, Category: "rate_limited"},
		{Index: 4, Status: RecipientSent},
		{Index: 6, Status: RecipientSent},
	}
	w := withPending{src: src, st: st}
	indexes := func(recs []RecipientOutcome) (out []int) {
		for _, r := range recs {
			out = append(out, r.Index)
		}
		return out
	}
	for _, tt := range []struct {
		status, category string
		limit            int
		want             []int
	}{
		{"", "", 0, []int{1, 2, 3, 4, 5, 6}},
		{"", "", 3, []int{1, 2, 3}},
		{"", "rate_limited", 0, []int{2, 3}},
		{"", "unknown", 0, nil},
		{RecipientPending, "", 1, []int{2}},
		{RecipientSent, "", 2, []int{1, 4}},
	} {
		recs, err := w.Outcomes(0, 10, tt.status, tt.category, tt.limit)
		if err != nil {
			t.Fatal(err)
		}
		if got := indexes(recs); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("status %q category %q limit %d: %v, want %v", tt.status, tt.category, tt.limit, got, tt.want)
		}
		for _, r := range recs {
			if r.Index == 2 && r.Category != "rate_limited" {
				t.Errorf("recipient 2 read from the store (%+v), not from the state", r)
			}
		}
	}
}
