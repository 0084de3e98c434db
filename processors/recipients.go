package processors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
)

// errRecipientsBroken: the recipients stream does not hold what BatchCreated
// promised. Retrying cannot help; the batch fails.
var errRecipientsBroken = errors.New("recipients missing or unreadable")

// recipientPages reads recipients a page at a time and keeps the most recently
// used pages of every batch this instance sends for, up to a bound, so that
// memory does not grow with the number of batches and a batch whose slices hop
// between instances reads each page about once per instance.
type recipientPages struct {
	store eventstore.Store
	pages *lru.Cache[pageKey, []domain.Recipient]
}

type pageKey struct {
	batchID string
	page    int
}

func newRecipientPages(store eventstore.Store, maxPages int) *recipientPages {
	pages, err := lru.New[pageKey, []domain.Recipient](maxPages)
	if err != nil {
		panic(fmt.Sprintf("recipient page cache of %d pages: %v", maxPages, err)) // only for a size <= 0
	}
	return &recipientPages{store: store, pages: pages}
}

// get returns recipient index of batchID.
func (r *recipientPages) get(ctx context.Context, batchID string, index int) (domain.Recipient, error) {
	page := index / domain.RecipientPageSize
	key := pageKey{batchID, page}
	recipients, ok := r.pages.Get(key)
	if !ok {
		var err error
		if recipients, err = r.read(ctx, batchID, page); err != nil {
			return domain.Recipient{}, err
		}
		r.pages.Add(key, recipients)
	}
	i := index - page*domain.RecipientPageSize
	if i < 0 || i >= len(recipients) {
		return domain.Recipient{}, fmt.Errorf("recipient %d: %w", index, errRecipientsBroken)
	}
	return recipients[i], nil
}

func (r *recipientPages) read(ctx context.Context, batchID string, page int) ([]domain.Recipient, error) {
	events, err := r.store.ReadStream(ctx, domain.RecipientsStream(batchID), uint64(page), 1)
	if err != nil {
		return nil, fmt.Errorf("read recipients page %d: %w", page, err)
	}
	if len(events) == 0 {
		return nil, fmt.Errorf("page %d: %w", page, errRecipientsBroken)
	}
	e, err := domain.DecodeEvent(events[0].Type, events[0].Data)
	if err != nil {
		return nil, fmt.Errorf("page %d: %w: %w", page, errRecipientsBroken, err)
	}
	rp, ok := e.(domain.RecipientsPageAdded)
	if !ok {
		return nil, fmt.Errorf("page %d is a %s: %w", page, e.EventType(), errRecipientsBroken)
	}
	slog.InfoContext(ctx, "recipients page read", "batch", batchID, "page", page, "count", len(rp.Recipients))
	return rp.Recipients, nil
}

// forget drops the pages of a batch that will send no more.
func (r *recipientPages) forget(batchID string, pages int) {
	for page := range pages {
		r.pages.Remove(pageKey{batchID, page})
	}
}

// recipientInfo tells Dispatch about batch b's recipients: their numbers (for
// quiet hours and skips) and whether they opted out. Nil when nothing depends
// on them: the batch has no quiet hours nor validity and no opt-out list is
// configured.
func (p *Processor) recipientInfo(ctx context.Context, b *domain.Batch) func(int) (domain.RecipientInfo, error) {
	_, quiet := b.QuietHours()
	if !quiet && b.ValidUntil().IsZero() && p.cfg.Suppressed == nil {
		return nil
	}
	id, tenant := b.ID(), b.Tenant()
	return func(index int) (domain.RecipientInfo, error) {
		r, err := p.recipients.get(ctx, id, index)
		if err != nil {
			return domain.RecipientInfo{}, err
		}
		info := domain.RecipientInfo{Phone: r.Phone}
		if p.cfg.Suppressed != nil {
			out, err := p.cfg.Suppressed(ctx, tenant, r.Phone)
			if err != nil {
				return domain.RecipientInfo{}, fmt.Errorf("opt-out list: %w", err)
			}
			if out {
				info.Skip, info.Message = domain.CategoryOptedOut, "the recipient opted out of messages from this sender"
			}
		}
		return info, nil
	}
}
