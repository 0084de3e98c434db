package bolt_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/bolt"
)

// BenchmarkAppendReceipts: delivery receipts appended by 40 writers at once
// (one batch each, one event an append, as the webhook records them) to a
// store already holding a million events of batches that sent before, a
// third of them receipts: with the hashed IDs of batches created before
// domain.ReceiptIDsOrdered, and with the time-ordered IDs of batches created
// since. Each iteration is one receipt from every writer.
func BenchmarkAppendReceipts(b *testing.B) {
	ids := map[string]func(batch string, i int) string{
		"hashed":  domain.DeliveryReceiptID,
		"ordered": domain.OrderedReceiptID,
	}
	for _, kind := range []string{"hashed", "ordered"} {
		b.Run("ids="+kind, func(b *testing.B) {
			id := ids[kind]
			s, err := bolt.Open(filepath.Join(b.TempDir(), "events.db"), bolt.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			for k := range 1000 {
				batch := uuid.Must(uuid.NewV7()).String()
				evs := make([]eventstore.EventData, 1000)
				for i := range evs {
					evs[i] = eventstore.EventData{ID: uuid.Must(uuid.NewV7()).String(), Type: "MessageSent", Data: benchData}
					if i%3 == 0 {
						evs[i] = eventstore.EventData{ID: id(batch, i), Type: "MessageDelivered", Data: benchData}
					}
				}
				if _, err := s.Append(ctx, fmt.Sprintf("batch-old-%d", k), eventstore.Any(), evs); err != nil {
					b.Fatal(err)
				}
			}
			batches := make([]string, 40)
			for w := range batches {
				batches[w] = uuid.Must(uuid.NewV7()).String()
			}
			n := 0
			for b.Loop() {
				var wg sync.WaitGroup
				for w, batch := range batches {
					wg.Go(func() {
						e := eventstore.EventData{ID: id(batch, n), Type: "MessageDelivered", Data: benchData}
						if _, err := s.Append(ctx, fmt.Sprintf("batch-%d", w), eventstore.Any(), []eventstore.EventData{e}); err != nil {
							b.Error(err)
						}
					})
				}
				wg.Wait()
				n++
			}
			b.ReportMetric(float64(n*len(batches))/b.Elapsed().Seconds(), "receipts/s")
		})
	}
}
