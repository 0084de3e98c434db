package commands

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
)

// RecordReceipt is a provider's delivery receipt of one message.
type RecordReceipt struct {
	BatchID string
	Index   int
	// Delivered: the message reached the handset; otherwise it could not be
	// delivered, for Code and Message.
	Delivered  bool
	ProviderID string
	// SentAt is when the message was handed to the provider.
	SentAt        time.Time
	Code, Message string
}

// RecordReceipt appends the receipt to the batch's stream, after the batch
// completed too. One receipt counts per message: the event's ID is derived
// from the batch and index (Batch.ReceiptID), so the store refuses
// a second one, repeated or late (recorded is false). A batch that does not
// exist, or has no such index, is an ENOTFOUND error. It returns the batch's
// tenant.
func (h *Handlers) RecordReceipt(ctx context.Context, r RecordReceipt) (recorded bool, tenant string, err error) {
	b, err := h.repo.Load(ctx, r.BatchID)
	if err != nil {
		return false, "", fmt.Errorf("record receipt: %w", err)
	}
	if r.Index < 0 || r.Index >= b.Total() {
		return false, b.Tenant(), domain.Errorf(domain.ENOTFOUND, "batch %s has no message %d", r.BatchID, r.Index)
	}
	e, _, err := receiptEvent(r, b, h.now())
	if err != nil {
		return false, b.Tenant(), err
	}
	// At any revision: a receipt decides nothing, and the batch's writers
	// must not be made to wait for it.
	_, err = h.store.Append(receiptContext(ctx), domain.BatchStream(r.BatchID), eventstore.Any(),
		[]eventstore.EventData{e})
	switch {
	case errors.Is(err, eventstore.ErrConcurrency):
		return false, b.Tenant(), nil
	case err != nil:
		return false, b.Tenant(), fmt.Errorf("record receipt of %s:%d: %w", r.BatchID, r.Index, err)
	}
	return true, b.Tenant(), nil
}

// receiptContext lets a receipt's append share a commit with others
// (eventstore.CommitCompany): nobody waits for it to be stored.
func receiptContext(ctx context.Context) context.Context {
	return eventstore.WithCommitDelay(ctx, eventstore.CommitCompany)
}

// RecordReceipts records many receipts, with one append a batch where it can:
// a provider in the same process hands them over together, many times a
// second, and a webhook request a receipt would double the appends a sent
// message costs. A group the store refuses (a receipt among them recorded
// before) is recorded one by one, as RecordReceipt does. Receipts of a batch
// or index that does not exist are dropped and counted in missing; the other
// batches' are recorded when one batch fails, and the errors returned
// together.
func (h *Handlers) RecordReceipts(ctx context.Context, rs []RecordReceipt) (recorded, missing int, err error) {
	var order []string
	byBatch := make(map[string][]RecordReceipt)
	for _, r := range rs {
		if _, ok := byBatch[r.BatchID]; !ok {
			order = append(order, r.BatchID)
		}
		byBatch[r.BatchID] = append(byBatch[r.BatchID], r)
	}
	var errs []error
	for _, id := range order {
		n, m, err := h.recordBatchReceipts(ctx, id, byBatch[id])
		recorded += n
		missing += m
		if err != nil {
			errs = append(errs, err)
		}
	}
	return recorded, missing, errors.Join(errs...)
}

// recordBatchReceipts records one batch's receipts in one append, or one by
// one when that append is refused.
func (h *Handlers) recordBatchReceipts(ctx context.Context, batchID string, rs []RecordReceipt) (recorded, missing int, err error) {
	b, err := h.repo.Load(ctx, batchID)
	if domain.ErrorCode(err) == domain.ENOTFOUND {
		return 0, len(rs), nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("record receipts: %w", err)
	}
	at := h.now()
	events := make([]eventstore.EventData, 0, len(rs))
	decided := make([]domain.Event, 0, len(rs))
	seen := make(map[int]bool, len(rs))
	for _, r := range rs {
		if r.Index < 0 || r.Index >= b.Total() {
			missing++
			continue
		}
		if seen[r.Index] {
			continue // one counts; the store would refuse the group
		}
		seen[r.Index] = true
		e, de, err := receiptEvent(r, b, at)
		if err != nil {
			return 0, missing, err
		}
		events, decided = append(events, e), append(decided, de)
	}
	if len(events) == 0 {
		return 0, missing, nil
	}
	ctx = receiptContext(ctx)
	res, err := h.store.Append(ctx, domain.BatchStream(batchID), eventstore.Any(), events)
	if err == nil {
		// The batch's writers here decide on the cached batch first: keep it
		// current, or each of their next appends would be refused once.
		h.repo.appended(batchID, res.NextExpected+1-uint64(len(decided)), decided)
		return len(events), missing, nil
	}
	if !errors.Is(err, eventstore.ErrConcurrency) {
		return 0, missing, fmt.Errorf("record receipts of %s: %w", batchID, err)
	}
	var errs []error
	for _, e := range events {
		_, err := h.store.Append(ctx, domain.BatchStream(batchID), eventstore.Any(), []eventstore.EventData{e})
		switch {
		case err == nil:
			recorded++
		case !errors.Is(err, eventstore.ErrConcurrency):
			errs = append(errs, fmt.Errorf("record receipt %s: %w", e.ID, err))
		}
	}
	return recorded, missing, errors.Join(errs...)
}

// receiptEvent is r's event, MessageDelivered or MessageUndelivered, with the
// ID that makes it the message's only one, encoded and as it is.
func receiptEvent(r RecordReceipt, b *domain.Batch, at time.Time) (eventstore.EventData, domain.Event, error) {
	header := domain.EventHeader{BatchID: r.BatchID, Tenant: b.Tenant(), At: at}
	var e domain.Event = domain.MessageDelivered{EventHeader: header, Index: r.Index, ProviderID: r.ProviderID, SentAt: r.SentAt}
	if !r.Delivered {
		e = domain.MessageUndelivered{EventHeader: header, Index: r.Index, ProviderID: r.ProviderID,
			SentAt: r.SentAt, Code: r.Code, Message: r.Message}
	}
	typ, data, err := domain.EncodeEvent(e)
	if err != nil {
		return eventstore.EventData{}, nil, err
	}
	return eventstore.EventData{ID: b.ReceiptID(r.Index), Type: typ, Data: data}, e, nil
}
