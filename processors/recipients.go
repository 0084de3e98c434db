package processors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
)

// errRecipientsBroken: the recipients stream does not hold what BatchCreated
// promised. Retrying cannot help; the batch fails.
var errRecipientsBroken = errors.New("recipients missing or unreadable")

// recipientPages reads recipients a page at a time and keeps the most recently
// used pages of every batch this instance sends for, up to a number of
// recipients, so that memory does not grow with the number of batches and a
// batch whose slices hop between instances reads each page about once per
// instance. The bound counts recipients, not pages: a thousand small batches
// sending at once each need their one short page at hand, and a bound of 256
// pages made every one of their dispatches read and decode its page again.
type recipientPages struct {
	store eventstore.Store
	max   int

	mu    sync.Mutex
	pages *simplelru.LRU[pageKey, []domain.Recipient]
	held  int // recipients in pages
}

type pageKey struct {
	batchID string
	page    int
}

// maxCachedPages bounds the pages cached, however short: the cache's own
// bookkeeping per page.
const maxCachedPages = 1 << 16

func newRecipientPages(store eventstore.Store, maxRecipients int) *recipientPages {
	r := &recipientPages{store: store, max: maxRecipients}
	pages, err := simplelru.NewLRU(maxCachedPages, func(_ pageKey, recipients []domain.Recipient) {
		r.held -= len(recipients)
	})
	if err != nil {
		panic(fmt.Sprintf("recipient page cache: %v", err)) // only for a size <= 0
	}
	r.pages = pages
	return r
}

// get returns recipient index of batchID.
func (r *recipientPages) get(ctx context.Context, batchID string, index int) (domain.Recipient, error) {
	page := index / domain.RecipientPageSize
	key := pageKey{batchID, page}
	r.mu.Lock()
	recipients, ok := r.pages.Get(key)
	r.mu.Unlock()
	if !ok {
		var err error
		if recipients, err = r.read(ctx, batchID, page); err != nil {
			return domain.Recipient{}, err
		}
		r.add(key, recipients)
	}
	i := index - page*domain.RecipientPageSize
	if i < 0 || i >= len(recipients) {
		return domain.Recipient{}, fmt.Errorf("recipient %d: %w", index, errRecipientsBroken)
	}
	return recipients[i], nil
}

// add caches a page, dropping the least recently used ones while more than max
// recipients are held.
func (r *recipientPages) add(key pageKey, recipients []domain.Recipient) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pages.Contains(key) {
		return // read at the same time by another send
	}
	r.pages.Add(key, recipients)
	r.held += len(recipients)
	for r.held > r.max && r.pages.Len() > 1 {
		r.pages.RemoveOldest()
	}
}

// recipients is how many recipients the cached pages hold.
func (r *recipientPages) recipients() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.held
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
	r.mu.Lock()
	defer r.mu.Unlock()
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
