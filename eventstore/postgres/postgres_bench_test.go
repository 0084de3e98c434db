package postgres_test

import (
	"context"
	"os"
	"strconv"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/postgres"
	"github.com/smsbatch/smsbatch/internal/pgtest"
)

// benchData is about the size of a MessageSent event.
var benchData = []byte(`{"batchId":"0196a3c4-5b7e-7c1d-9e2f-3a4b5c6d7e8f","index":123456,"to":"+15005550006","providerMessageId":"SM0123456789abcdef0123456789abcdef","attempt":1}`)

func benchEvents(n int) []eventstore.EventData {
	evs := make([]eventstore.EventData, n)
	for i := range evs {
		evs[i] = eventstore.EventData{
			ID:       uuid.NewString(),
			Type:     "MessageSent",
			Data:     benchData,
			Metadata: []byte(`{"tenant":"acme"}`),
		}
	}
	return evs
}

// BenchmarkAppend: appends of 1 and 100 events by 1 and 8 writers, each writer to
// its own stream at an exact revision; one op is one append.
func BenchmarkAppend(b *testing.B) {
	for _, size := range []int{1, 100} {
		for _, writers := range []int{1, 8} {
			b.Run("events="+strconv.Itoa(size)+"/writers="+strconv.Itoa(writers), func(b *testing.B) {
				s := open(b, pgtest.Database(b), postgres.Options{})
				ctx := context.Background()
				// Event IDs are made up front so that the timer measures the store.
				perWriter := (b.N + writers - 1) / writers
				batches := make([][][]eventstore.EventData, writers)
				for w := range batches {
					batches[w] = make([][]eventstore.EventData, perWriter)
					for i := range batches[w] {
						batches[w][i] = benchEvents(size)
					}
				}
				b.ResetTimer()
				var wg sync.WaitGroup
				for w := range writers {
					wg.Go(func() {
						stream := "batch-" + strconv.Itoa(w)
						expected := eventstore.NoStream()
						for i := w; i < b.N; i += writers {
							res, err := s.Append(ctx, stream, expected, batches[w][i/writers])
							if err != nil {
								b.Error(err)
								return
							}
							expected = eventstore.Exact(res.NextExpected)
						}
					})
				}
				wg.Wait()
				b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "events/s")
			})
		}
	}
}

// BenchmarkCatchUp: a subscription catching up from the start over N events
// (100,000; 1,000,000 with SMSBATCH_BENCH_BIG=1) in pages of
// eventstore.DefaultBatchSize, as a projection rebuild does; one op reads them all.
func BenchmarkCatchUp(b *testing.B) {
	total := 100_000
	if os.Getenv("SMSBATCH_BENCH_BIG") == "1" {
		total = 1_000_000
	}
	s := open(b, pgtest.Database(b), postgres.Options{})
	ctx := context.Background()
	const perAppend = 1000
	for i := range total / perAppend {
		if _, err := s.Append(ctx, "batch-"+strconv.Itoa(i%10), eventstore.Any(), benchEvents(perAppend)); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for range b.N {
		read := 0
		for pos := eventstore.Start; ; {
			evs, err := s.ReadAll(ctx, pos, eventstore.DefaultBatchSize)
			if err != nil {
				b.Fatal(err)
			}
			if len(evs) == 0 {
				break
			}
			read += len(evs)
			pos = evs[len(evs)-1].Position
		}
		if read != total {
			b.Fatalf("read %d events, appended %d", read, total)
		}
	}
	b.ReportMetric(float64(b.N*total)/b.Elapsed().Seconds(), "events/s")
}
