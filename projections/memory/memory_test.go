package memory_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/projections"
	"github.com/smsbatch/smsbatch/projections/memory"
	"github.com/smsbatch/smsbatch/projections/projectionstest"
)

func TestContract(t *testing.T) {
	projectionstest.Run(t, func(*testing.T) projections.Store { return memory.New() })
}

// BenchmarkApply measures how fast a rebuild goes: a store fed the events of
// many batches in the runner's page size.
func BenchmarkApply(b *testing.B) {
	h := projectionstest.NewEvents()
	start := time.Date(2025, 6, 2, 9, 0, 0, 0, time.UTC)
	for i := range 20 {
		h.Campaign(fmt.Sprintf("tenant-%d", i%3), fmt.Sprintf("batch-%02d", i), start.Add(time.Duration(i)*time.Minute), 1000)
	}
	events := h.List()
	const page = 500
	b.ResetTimer()
	for b.Loop() {
		s := memory.New()
		for i := 0; i < len(events); i += page {
			if err := s.Apply(b.Context(), events[i:min(i+page, len(events))]); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N*len(events))/b.Elapsed().Seconds(), "events/s")
}
