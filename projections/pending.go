package projections

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/smsbatch/smsbatch/domain"
)

// A recipient's outcome record changes at every dispatch of its message, at a
// failed attempt and at its final outcome (and again with a delivery
// receipt). Written at each, a recipient cost its store two writes or more:
// on PostgreSQL, where a page's dispatches and their outcomes mostly fall in
// different pages, rewriting the records was over a third of the server's
// statement time sending. So the records of the recipients not final yet stay
// in the batch's state (BatchState.PendingRecords, at most the batch's
// outstanding set), and a store writes a record when it becomes final or a
// receipt changes it; QueryRecipients reads the pending ones from the state.

// FoldOutcomes folds payload into the outcome record of every recipient
// OutcomeIndexes names in it, and hands write the records the store must
// write: a final record (sent, failed, skipped), or one a receipt changed,
// leaves the state and is written; a pending one is kept in the state. The
// record folded into is the state's pending one, a new one for a message's
// first dispatch, or else what stored returns: the store's record of the
// recipient (which this page may have written already), or NewOutcome when
// it has none.
func (s *BatchState) FoldOutcomes(payload domain.Event, stored func(i int) (RecipientOutcome, error), write func(RecipientOutcome)) error {
	for _, i := range OutcomeIndexes(payload) {
		rec, ok := s.pendingRecord(i)
		if !ok {
			if firstDispatch(i, payload) {
				rec = NewOutcome(i)
			} else {
				var err error
				if rec, err = stored(i); err != nil {
					return fmt.Errorf("read outcome %d: %w", i, err)
				}
			}
		}
		rec.Apply(i, payload)
		if rec.Status == RecipientPending {
			s.setPending(rec)
			continue
		}
		s.dropPending(i)
		write(rec)
	}
	return nil
}

// NeedsStored reports whether FoldOutcomes, given payload as the first event
// of a page touching recipient i, may ask for the store's record of i: a
// store reads those records before it applies the page.
func (s *BatchState) NeedsStored(i int, payload domain.Event) bool {
	_, pending := s.pendingRecord(i)
	return !pending && !firstDispatch(i, payload)
}

// firstDispatch reports whether payload dispatches recipient i's message for
// the first time: it has no record before.
func firstDispatch(i int, payload domain.Event) bool {
	p, ok := payload.(domain.MessagesDispatched)
	return ok && slices.ContainsFunc(p.Messages, func(d domain.Dispatch) bool { return d.Index == i && d.Attempt == 1 })
}

func (s *BatchState) pendingAt(i int) (int, bool) {
	return slices.BinarySearchFunc(s.PendingRecords, i, func(r RecipientOutcome, i int) int { return cmp.Compare(r.Index, i) })
}

func (s *BatchState) pendingRecord(i int) (RecipientOutcome, bool) {
	if at, ok := s.pendingAt(i); ok {
		return s.PendingRecords[at], true
	}
	return RecipientOutcome{}, false
}

func (s *BatchState) setPending(rec RecipientOutcome) {
	if at, ok := s.pendingAt(rec.Index); ok {
		s.PendingRecords[at] = rec
	} else {
		s.PendingRecords = slices.Insert(s.PendingRecords, at, rec)
	}
}

func (s *BatchState) dropPending(i int) {
	if at, ok := s.pendingAt(i); ok {
		s.PendingRecords = slices.Delete(s.PendingRecords, at, at+1)
	}
}

// withPending is a store's RecipientSource with the state's pending records
// over it: the state's record of a recipient replaces any the store holds (a
// pending record written before the state kept them).
type withPending struct {
	src RecipientSource
	st  *BatchState
}

func (w withPending) Numbers(page int) ([]string, error) { return w.src.Numbers(page) }

func (w withPending) Outcomes(from, to int, status, category string, limit int) ([]RecipientOutcome, error) {
	var mine []RecipientOutcome
	for _, r := range w.st.PendingRecords {
		if r.Index >= from && r.Index < to && (status == "" || r.Status == status) && (category == "" || r.Category == category) {
			mine = append(mine, r)
		}
	}
	more := limit
	if limit > 0 {
		more += len(w.st.PendingRecords) // as many as the state may hide
	}
	recs, err := w.src.Outcomes(from, to, status, category, more)
	if err != nil || len(w.st.PendingRecords) == 0 {
		return recs, err
	}
	recs = slices.DeleteFunc(recs, func(r RecipientOutcome) bool {
		_, pending := w.st.pendingAt(r.Index)
		return pending
	})
	recs = append(recs, mine...)
	slices.SortFunc(recs, func(a, b RecipientOutcome) int { return cmp.Compare(a.Index, b.Index) })
	if limit > 0 && len(recs) > limit {
		recs = recs[:limit]
	}
	return recs, nil
}
