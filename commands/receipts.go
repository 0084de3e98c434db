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
// from the batch and index (domain.DeliveryReceiptID), so the store refuses
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
	header := domain.EventHeader{BatchID: r.BatchID, Tenant: b.Tenant(), At: h.now()}
	var e domain.Event = domain.MessageDelivered{EventHeader: header, Index: r.Index, ProviderID: r.ProviderID, SentAt: r.SentAt}
	if !r.Delivered {
		e = domain.MessageUndelivered{EventHeader: header, Index: r.Index, ProviderID: r.ProviderID,
			SentAt: r.SentAt, Code: r.Code, Message: r.Message}
	}
	typ, data, err := domain.EncodeEvent(e)
	if err != nil {
		return false, b.Tenant(), err
	}
	// At any revision: a receipt decides nothing, and the batch's writers
	// must not be made to wait for it.
	_, err = h.store.Append(ctx, domain.BatchStream(r.BatchID), eventstore.Any(),
		[]eventstore.EventData{{ID: domain.DeliveryReceiptID(r.BatchID, r.Index), Type: typ, Data: data}})
	switch {
	case errors.Is(err, eventstore.ErrConcurrency):
		return false, b.Tenant(), nil
	case err != nil:
		return false, b.Tenant(), fmt.Errorf("record receipt of %s:%d: %w", r.BatchID, r.Index, err)
	}
	return true, b.Tenant(), nil
}
