// Package memory owns the in-memory projections store: the status, analytics and
// errors read models kept in maps behind one lock. It is the embedded default,
// rebuilt from the events at every start, and passes the same contract suite
// (projections/projectionstest) as every other store.
package memory

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/projections"
)

// Store is an in-memory projections.Store, safe for concurrent use.
type Store struct {
	mu         sync.RWMutex
	checkpoint eventstore.Position
	batches    map[string]*batch
	// byTenant lists each tenant's batches oldest first (the reverse of the
	// list's order), so that the usual creation appends at the end.
	byTenant map[string][]*batch
	// numbers holds the recipients' numbers by batch and page. Pages come
	// before their batch's BatchCreated, so they are kept apart from it.
	numbers map[string]map[int][]string
}

type batch struct {
	state projections.BatchState
	// errors are the failed recipients sorted by index.
	errors []projections.ErrorEntry
	// outcomes are the records of the recipients dispatched or skipped.
	outcomes map[int]*projections.RecipientOutcome
}

var _ projections.Store = (*Store)(nil)

// New returns an empty store.
func New() *Store {
	return &Store{
		batches:  make(map[string]*batch),
		byTenant: make(map[string][]*batch),
		numbers:  make(map[string]map[int][]string),
	}
}

// Apply implements projections.Store. Every event is decoded before anything
// changes, so a malformed one leaves the store and its checkpoint as they were.
func (s *Store) Apply(ctx context.Context, events []eventstore.Event) error {
	if len(events) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memory projections: apply: %w", err)
	}
	use, err := projections.DecodePage(events)
	if err != nil {
		return fmt.Errorf("memory projections: apply: %w", err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range use {
		if s.checkpoint.Less(d.Event.Position) {
			s.apply(d)
		}
	}
	if last := events[len(events)-1].Position; s.checkpoint.Less(last) {
		s.checkpoint = last
	}
	return nil
}

func (s *Store) apply(d projections.Decoded) {
	if p, ok := d.Payload.(domain.RecipientsPageAdded); ok {
		if s.numbers[d.BatchID] == nil {
			s.numbers[d.BatchID] = make(map[int][]string)
		}
		s.numbers[d.BatchID][p.Page] = projections.RecipientNumbers(p)
		return
	}
	b := s.batches[d.BatchID]
	if b == nil {
		if _, created := d.Payload.(domain.BatchCreated); !created {
			return // events of a batch whose creation we never saw
		}
		b = &batch{outcomes: make(map[int]*projections.RecipientOutcome)}
	}
	b.state.Apply(d.Event, d.Payload)
	_ = b.state.FoldOutcomes(d.Payload, func(i int) (projections.RecipientOutcome, error) {
		if o := b.outcomes[i]; o != nil {
			return *o, nil
		}
		return projections.NewOutcome(i), nil
	}, func(rec projections.RecipientOutcome) { b.outcomes[rec.Index] = &rec }) // stored never fails here
	if original, ok := projections.RetryLink(d.Payload); ok {
		if old := s.batches[original]; old != nil {
			old.state.AddRetry(d.Event, d.Payload)
		}
	}
	if s.batches[d.BatchID] == nil {
		s.batches[d.BatchID] = b
		s.index(b)
	}
	if entry, ok := projections.ErrorEntryOf(d.Payload); ok {
		i, found := slices.BinarySearchFunc(b.errors, entry.Index, func(e projections.ErrorEntry, index int) int {
			return e.Index - index
		})
		if found {
			b.errors[i] = entry
		} else {
			b.errors = slices.Insert(b.errors, i, entry)
		}
	}
}

// index adds a new batch to its tenant's list, keeping the list oldest first.
func (s *Store) index(b *batch) {
	list := s.byTenant[b.state.Tenant]
	key := listKey(b)
	i := len(list)
	for i > 0 && listKey(list[i-1]).Compare(key) < 0 {
		i-- // rarely more than a step: batches are mostly created in order
	}
	s.byTenant[b.state.Tenant] = slices.Insert(list, i, b)
}

func listKey(b *batch) projections.ListKey {
	return projections.ListKey{CreatedAt: b.state.CreatedAt, ID: b.state.ID}
}

// Checkpoint implements projections.Store.
func (s *Store) Checkpoint(ctx context.Context) (eventstore.Position, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.checkpoint, nil
}

// Unfinished implements projections.Store.
func (s *Store) Unfinished(ctx context.Context) ([]projections.BatchStatus, eventstore.Position, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []projections.BatchStatus
	for _, b := range s.batches {
		if b.state.Unfinished() {
			out = append(out, b.state.StatusView())
		}
	}
	return out, s.checkpoint, nil
}

// Batch implements projections.Store.
func (s *Store) Batch(ctx context.Context, tenant, id string) (projections.BatchStatus, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	b, err := s.lookup(tenant, id)
	if err != nil {
		return projections.BatchStatus{}, err
	}
	return b.state.StatusView(), nil
}

// Batches implements projections.Store.
func (s *Store) Batches(ctx context.Context, q projections.ListQuery) ([]projections.BatchStatus, string, error) {
	page, err := q.Page()
	if err != nil {
		return nil, "", err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	list := s.byTenant[q.Tenant]
	// The list is oldest first: the page starts at the newest batch listed after
	// the cursor's and walks towards the front.
	end := len(list)
	if page.After != nil {
		end, _ = slices.BinarySearchFunc(list, *page.After, func(b *batch, k projections.ListKey) int {
			return k.Compare(listKey(b)) // ascending order is the list's order reversed
		})
	}
	out := make([]projections.BatchStatus, 0, min(page.Limit, end))
	more := false
	for i := end - 1; i >= 0 && !more; i-- {
		st := &list[i].state
		if !page.Matches(string(st.Status), projections.FoldName(st.Name), st.ID) {
			continue
		}
		if len(out) == page.Limit {
			more = true // another batch matches: the page is not the last
			break
		}
		out = append(out, st.StatusView())
	}
	next := ""
	if more {
		next = projections.KeyOf(out[len(out)-1]).Cursor()
	}
	return out, next, nil
}

// Analytics implements projections.Store.
func (s *Store) Analytics(ctx context.Context, tenant, id string) (projections.Analytics, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	b, err := s.lookup(tenant, id)
	if err != nil {
		return projections.Analytics{}, err
	}
	return b.state.AnalyticsView(), nil
}

// Errors implements projections.Store.
func (s *Store) Errors(ctx context.Context, q projections.ErrorQuery) ([]projections.ErrorEntry, string, error) {
	page, err := q.Page()
	if err != nil {
		return nil, "", err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	b, err := s.lookup(q.Tenant, q.BatchID)
	if err != nil {
		return nil, "", err
	}
	i, found := slices.BinarySearchFunc(b.errors, page.AfterIndex, func(e projections.ErrorEntry, index int) int {
		return e.Index - index
	})
	if found {
		i++
	}
	out := make([]projections.ErrorEntry, 0, min(page.Limit, len(b.errors)-i))
	for ; i < len(b.errors); i++ {
		e := b.errors[i]
		if page.Category != "" && e.Category != page.Category {
			continue
		}
		if len(out) == page.Limit {
			// Another entry matches: the page is not the last.
			return out, projections.ErrorCursor(out[len(out)-1]), nil
		}
		out = append(out, e)
	}
	return out, "", nil
}

// Recipients implements projections.Store.
func (s *Store) Recipients(ctx context.Context, q projections.RecipientQuery) ([]projections.Recipient, string, error) {
	page, err := q.Page()
	if err != nil {
		return nil, "", err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	b, err := s.lookup(q.Tenant, q.BatchID)
	if err != nil {
		return nil, "", err
	}
	return projections.QueryRecipients(&b.state, page, source{b: b, numbers: s.numbers[q.BatchID]})
}

// source reads a batch's recipients for projections.QueryRecipients.
type source struct {
	b       *batch
	numbers map[int][]string
}

func (src source) Numbers(page int) ([]string, error) { return src.numbers[page], nil }

func (src source) Outcomes(from, to int, status, category string, limit int) ([]projections.RecipientOutcome, error) {
	var out []projections.RecipientOutcome
	// Walking the indexes is fine for a store that serves tests.
	for i := from; i < to && (limit <= 0 || len(out) < limit); i++ {
		o := src.b.outcomes[i]
		if o == nil || status != "" && o.Status != status || category != "" && o.Category != category {
			continue
		}
		out = append(out, *o)
	}
	return out, nil
}

func (s *Store) lookup(tenant, id string) (*batch, error) {
	b := s.batches[id]
	if b == nil || b.state.Tenant != tenant {
		return nil, domain.Errorf(domain.ENOTFOUND, "batch not found")
	}
	return b, nil
}
