package processors

import (
	"context"
	"fmt"
	"testing"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/memory"
)

// pageReadCounter counts the reads of recipients pages.
type pageReadCounter struct {
	eventstore.Store
	reads int
}

func (c *pageReadCounter) ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.Event, error) {
	c.reads++
	return c.Store.ReadStream(ctx, stream, from, limit)
}

// The page cache is bounded by recipients, not pages: a thousand small batches
// sending at once each keep their page at hand (a bound of 256 pages made every
// dispatch of theirs read and decode its page again), and the recipients held
// never pass the bound.
func TestRecipientCacheHoldsManySmallBatchesWithinItsBound(t *testing.T) {
	ctx := context.Background()
	store := &pageReadCounter{Store: memory.New()}
	const batches, each = 1000, 25
	for b := range batches {
		id := fmt.Sprintf("b%d", b)
		page := domain.RecipientsPageAdded{EventHeader: domain.EventHeader{BatchID: id, Tenant: "t"}}
		for i := range each {
			page.Recipients = append(page.Recipients, domain.Recipient{Phone: fmt.Sprintf("+1415555%04d", i)})
		}
		typ, data, err := domain.EncodeEvent(page)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := store.Append(ctx, domain.RecipientsStream(id), eventstore.NoStream(), []eventstore.EventData{{ID: fmt.Sprintf("e%d", b), Type: typ, Data: data}}); err != nil {
			t.Fatal(err)
		}
	}
	r := newRecipientPages(store, batches*each)
	for round := range 3 {
		for i := range each {
			for b := range batches {
				got, err := r.get(ctx, fmt.Sprintf("b%d", b), i)
				if err != nil {
					t.Fatal(err)
				}
				if want := fmt.Sprintf("+1415555%04d", i); got.Phone != want {
					t.Fatalf("round %d: recipient %d of b%d is %s, want %s", round, i, b, got.Phone, want)
				}
			}
		}
	}
	if store.reads != batches {
		t.Fatalf("%d page reads for %d batches of one page sent round-robin three times, want one each", store.reads, batches)
	}

	small := newRecipientPages(store, 10*each)
	for b := range batches {
		if _, err := small.get(ctx, fmt.Sprintf("b%d", b), 0); err != nil {
			t.Fatal(err)
		}
		if n := small.recipients(); n > 10*each {
			t.Fatalf("%d recipients cached, bound %d", n, 10*each)
		}
	}
	if n := small.recipients(); n != 10*each {
		t.Fatalf("%d recipients cached after reading many pages, want the bound's %d", n, 10*each)
	}
}
