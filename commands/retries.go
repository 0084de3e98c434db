package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
)

// Retries is what the retries stream of a batch says: the retries claimed so
// far, oldest first, and where the next claim goes.
type Retries struct {
	BatchID string
	Claims  []domain.RetryClaimed
	next    eventstore.ExpectedRevision
}

// RetriesOf reads the retries claimed of batch id. The tenant's right to the
// batch is the caller's check.
func (h *Handlers) RetriesOf(ctx context.Context, id string) (Retries, error) {
	stream := domain.RetriesStream(id)
	r := Retries{BatchID: id}
	var n uint64
	for {
		events, err := h.store.ReadStream(ctx, stream, n, readPage)
		if err != nil {
			return Retries{}, fmt.Errorf("read the retries of %s: %w", id, err)
		}
		for _, e := range events {
			n = e.Revision + 1
			if e.Type != domain.TypeRetryClaimed {
				continue // a newer writer's: it claims nothing this build knows of
			}
			var c domain.RetryClaimed
			if err := json.Unmarshal(e.Data, &c); err != nil {
				return Retries{}, fmt.Errorf("retries of %s, revision %d: %w", id, e.Revision, err)
			}
			r.Claims = append(r.Claims, c)
		}
		if len(events) < readPage {
			break
		}
	}
	r.next = eventstore.After(n)
	return r, nil
}

// ClaimRetry claims retryID as the next retry of r.BatchID, before the retry
// stores anything. It fails with an error wrapping eventstore.ErrConcurrency
// when another retry was claimed since r was read: read the retries again, and
// leave out the recipients that one takes.
func (h *Handlers) ClaimRetry(ctx context.Context, r Retries, retryID, tenant string) error {
	data, err := json.Marshal(domain.RetryClaimed{RetryID: retryID, Tenant: tenant, At: h.now()})
	if err != nil {
		return err
	}
	_, err = h.store.Append(ctx, domain.RetriesStream(r.BatchID), r.next,
		[]eventstore.EventData{{ID: uuid.NewString(), Type: domain.TypeRetryClaimed, Data: data}})
	if err != nil {
		return fmt.Errorf("claim retry %s of batch %s: %w", retryID, r.BatchID, err)
	}
	return nil
}

// RetryCreateLease is how long a claimed retry may stay neither stored nor
// fenced off: past it, the request that claimed it is taken for dead (a
// crash), and the next retry fences its batch off. Like an Idempotency-Key's
// lease, it is longer than any create takes.
const RetryCreateLease = 2 * time.Minute

// TakenByRetries returns the numbers that the stored retries among r took,
// read from their recipients streams, and those retries' IDs. A claim whose
// batch is not stored yet is waited for, up to wait: its recipients are known
// only once all are stored. One older than RetryCreateLease is fenced off
// (AbandonCreate), and then took no one: its batch can never be stored. A
// claim still pending after wait is EUNAVAILABLE: the retry may still take
// anyone.
//
// listed are retries known from elsewhere (the read models' list of the
// batch's retries): those made before retries were claimed have no claim, and
// their numbers are taken all the same.
func (h *Handlers) TakenByRetries(ctx context.Context, r Retries, listed []string, wait time.Duration) (map[string]bool, []string, error) {
	taken := make(map[string]bool)
	var stored []string
	claimed := make(map[string]bool, len(r.Claims))
	deadline := time.Now().Add(wait)
	for _, c := range r.Claims {
		claimed[c.RetryID] = true
		created, err := h.settledRetry(ctx, c, deadline)
		if err != nil {
			return nil, nil, err
		}
		if created == nil {
			continue
		}
		stored = append(stored, c.RetryID)
		if err := h.numbersOf(ctx, *created, taken); err != nil {
			return nil, nil, err
		}
	}
	for _, id := range listed {
		if claimed[id] {
			continue
		}
		created, err := h.Creation(ctx, id)
		if err != nil {
			return nil, nil, fmt.Errorf("retry %s: %w", id, err)
		}
		stored = append(stored, id)
		if err := h.numbersOf(ctx, created, taken); err != nil {
			return nil, nil, err
		}
	}
	return taken, stored, nil
}

// settledRetry waits until the retry claimed by c is stored (its BatchCreated)
// or fenced off (nil), up to deadline, fencing it off once past its lease.
func (h *Handlers) settledRetry(ctx context.Context, c domain.RetryClaimed, deadline time.Time) (*domain.BatchCreated, error) {
	for {
		events, err := h.store.ReadStream(ctx, domain.BatchStream(c.RetryID), 0, 1)
		if err != nil {
			return nil, fmt.Errorf("retry %s: %w", c.RetryID, err)
		}
		if len(events) > 0 {
			if events[0].Type == domain.TypeBatchCreateAbandoned {
				return nil, nil
			}
			e, err := domain.DecodeEvent(events[0].Type, events[0].Data)
			if err != nil {
				return nil, fmt.Errorf("retry %s: %w", c.RetryID, err)
			}
			created, ok := e.(domain.BatchCreated)
			if !ok {
				return nil, fmt.Errorf("retry %s: the stream begins with %s", c.RetryID, events[0].Type)
			}
			return &created, nil
		}
		if h.now().Sub(c.At) >= RetryCreateLease {
			err := h.AbandonCreate(ctx, c.RetryID, c.Tenant)
			if err == nil {
				return nil, nil
			}
			if !errors.Is(err, eventstore.ErrConcurrency) {
				return nil, err
			}
			continue // stored, or fenced off by another, just now: look again
		}
		if !time.Now().Before(deadline) {
			return nil, domain.Errorf(domain.EUNAVAILABLE,
				"an earlier retry of this batch (%s) is still being created; try again shortly", c.RetryID)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// numbersOf adds the numbers of batch created's recipients to taken.
func (h *Handlers) numbersOf(ctx context.Context, created domain.BatchCreated, taken map[string]bool) error {
	// A few pages a read: a page holds up to RecipientPageSize recipients
	// with their values.
	const pagesARead = 16
	stream := domain.RecipientsStream(created.BatchID)
	for next := 0; next < created.Pages; {
		events, err := h.store.ReadStream(ctx, stream, uint64(next), min(pagesARead, created.Pages-next))
		if err != nil {
			return fmt.Errorf("recipients of %s: %w", created.BatchID, err)
		}
		if len(events) == 0 {
			return fmt.Errorf("recipients of %s: page %d of %d is not stored", created.BatchID, next, created.Pages)
		}
		for _, e := range events {
			p, err := domain.DecodeEvent(e.Type, e.Data)
			if err != nil {
				return fmt.Errorf("recipients of %s: %w", created.BatchID, err)
			}
			page, ok := p.(domain.RecipientsPageAdded)
			if !ok {
				return fmt.Errorf("recipients of %s, revision %d, is a %s", created.BatchID, e.Revision, e.Type)
			}
			for _, r := range page.Recipients {
				taken[r.Phone] = true
			}
		}
		next += len(events)
	}
	return nil
}
