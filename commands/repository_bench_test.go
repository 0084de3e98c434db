package commands

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore/memory"
)

// BenchmarkLoadBatch: loading a batch whose stream holds 100,000 outcomes (and
// their dispatches), cold (a repository that never saw it, as after a restart or
// on another instance) and cached (caught up from its last revision after one
// more event, as on the send processor's hot path).
func BenchmarkLoadBatch(b *testing.B) {
	const n = 100_000
	store := memory.New()
	defer store.Close()
	repo, _ := NewRepository(store, 0)
	tmpl, _ := domain.NewTemplate("Hi {{name}}", domain.DefaultTemplateLimits)
	now := time.Now()
	batch, err := domain.NewBatch(domain.NewBatchParams{ID: "big", Tenant: "t", Template: tmpl, AutoStart: true, Total: n + 1, Pages: 101}, now)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := repo.Add(context.Background(), batch); err != nil {
		b.Fatal(err)
	}
	prev := batch.LastSlice()
	for done := 0; done < n; {
		_, err := repo.Update(context.Background(), "big", func(bt *domain.Batch) error {
			for range 100 {
				ds, err := bt.Dispatch(now, domain.DispatchRequest{Slice: "s", PrevSlice: prev, Max: 5, MaxInFlight: 5})
				if err != nil {
					return err
				}
				for _, d := range ds {
					if err := bt.RecordSent(now, domain.SentParams{Index: d.Index, Attempt: d.Attempt, Segments: 1}); err != nil {
						return err
					}
				}
				done += len(ds)
				prev = "s"
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.Run("cold", func(b *testing.B) {
		for range b.N {
			fresh, _ := NewRepository(store, 0)
			got, err := fresh.Load(context.Background(), "big")
			if err != nil || got.Sent() != n {
				b.Fatalf("load: %v, sent %d", err, got.Sent())
			}
		}
		b.ReportMetric(float64(n), "outcomes")
	})
	b.Run("cached", func(b *testing.B) {
		for range b.N {
			// One more event, as a pause from another instance would add.
			_, err := repo.Update(context.Background(), "big", func(bt *domain.Batch) error {
				if bt.Status() == domain.StatusPaused {
					return bt.Resume(now, "bench")
				}
				return bt.Pause(now, "bench")
			})
			if err != nil {
				b.Fatal(fmt.Errorf("update: %w", err))
			}
		}
	})
}
