package commands

import (
	"context"
	"fmt"

	"github.com/smsbatch/smsbatch/domain"
)

// RecipientsPage returns page p of a batch's recipients as the create stored
// them (numbers and the template's variable values), or none when the batch
// has no such page. The tenant's right to the batch is the caller's check.
func (h *Handlers) RecipientsPage(ctx context.Context, batchID string, page int) ([]domain.Recipient, error) {
	events, err := h.store.ReadStream(ctx, domain.RecipientsStream(batchID), uint64(page), 1)
	if err != nil {
		return nil, fmt.Errorf("read recipients page %d of %s: %w", page, batchID, err)
	}
	if len(events) == 0 {
		return nil, nil
	}
	e, err := domain.DecodeEvent(events[0].Type, events[0].Data)
	if err != nil {
		return nil, fmt.Errorf("recipients page %d of %s: %w", page, batchID, err)
	}
	p, ok := e.(domain.RecipientsPageAdded)
	if !ok {
		return nil, fmt.Errorf("recipients page %d of %s is a %s", page, batchID, e.EventType())
	}
	return p.Recipients, nil
}
