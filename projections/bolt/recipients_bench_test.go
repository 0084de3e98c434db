package bolt_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/projections"
	"github.com/smsbatch/smsbatch/projections/bolt"
)

// BenchmarkApplyRecipientPages is what creating a batch of 1,000,000
// recipients costs the read models: its 1,000 RecipientsPageAdded events (and
// BatchCreated) applied in pages of the runner's size, as the runner applies
// them while the create appends. The numbers are stored a page per key, so it
// is a thousand writes, not a million.
func BenchmarkApplyRecipientPages(b *testing.B) {
	const n, batch = 1_000_000, projections.DefaultRunnerBatchSize
	var events []eventstore.Event
	at := time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC)
	id := "01900000-0000-7000-8000-000000000002"
	add := func(stream string, e domain.Event) {
		typ, data, err := domain.EncodeEvent(e)
		if err != nil {
			b.Fatal(err)
		}
		pos := uint64(len(events) + 1)
		events = append(events, eventstore.Event{ID: fmt.Sprint(pos), Stream: stream, Type: typ, Data: data, Position: eventstore.Position{Commit: pos}, Time: at})
	}
	h := domain.EventHeader{BatchID: id, Tenant: "acme", At: at}
	for first := 0; first < n; first += domain.RecipientPageSize {
		p := domain.RecipientsPageAdded{EventHeader: h, Page: first / domain.RecipientPageSize, First: first}
		for i := first; i < first+domain.RecipientPageSize; i++ {
			p.Recipients = append(p.Recipients, domain.Recipient{Phone: fmt.Sprintf("+1415%07d", i), Values: []string{fmt.Sprint("Ada ", i)}})
		}
		add(domain.RecipientsStream(id), p)
	}
	add(domain.BatchStream(id), domain.BatchCreated{EventHeader: h, Text: "Hi {{name}}", Variables: []string{"name"}, Priority: domain.PriorityNormal, Total: n, Pages: n / domain.RecipientPageSize})
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		s, err := bolt.Open(filepath.Join(b.TempDir(), bolt.FileName), bolt.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		for first := 0; first < len(events); first += batch {
			if err := s.Apply(context.Background(), events[first:min(len(events), first+batch)]); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		s.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "recipients/s")
}
