package bolt_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/bolt"
)

// benchData is about the size of a MessageSent event.
var benchData = []byte(`{"batchId":"0196a3c4-5b7e-7c1d-9e2f-3a4b5c6d7e8f","index":123456,"to":"+15005550006","providerMessageId":"SM0123456789abcdef0123456789abcdef","attempt":1}`)

func benchStore(b *testing.B) *bolt.Store {
	b.Helper()
	s, err := bolt.Open(filepath.Join(b.TempDir(), "events.db"), bolt.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

func benchEvents(prefix string, n int) []eventstore.EventData {
	evs := make([]eventstore.EventData, n)
	for i := range evs {
		evs[i] = eventstore.EventData{
			ID:       prefix + "-" + strconv.Itoa(i),
			Type:     "MessageSent",
			Data:     benchData,
			Metadata: []byte(`{"tenant":"acme"}`),
		}
	}
	return evs
}

func reportEventsPerSecond(b *testing.B, events int) {
	b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkAppendSingle: one caller appending one event at a time to one stream,
// each append fsynced before the next starts.
func BenchmarkAppendSingle(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	evs := benchEvents("single", b.N)
	expected := eventstore.NoStream()
	b.ResetTimer()
	for i := range b.N {
		res, err := s.Append(ctx, "batch-1", expected, evs[i:i+1])
		if err != nil {
			b.Fatal(err)
		}
		expected = eventstore.Exact(res.NextExpected)
	}
	reportEventsPerSecond(b, b.N)
}

// BenchmarkAppendSingleParallel: many callers appending one event at a time, each
// to its own stream, as many batches sending at once do; their appends share commits.
func BenchmarkAppendSingleParallel(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	var streams atomic.Int64
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		stream := "batch-" + strconv.FormatInt(streams.Add(1), 10)
		expected := eventstore.NoStream()
		for i := 0; pb.Next(); i++ {
			ev := benchEvents(fmt.Sprintf("%s-%d", stream, i), 1)
			res, err := s.Append(ctx, stream, expected, ev)
			if err != nil {
				b.Fatal(err)
			}
			expected = eventstore.Exact(res.NextExpected)
		}
	})
	reportEventsPerSecond(b, b.N)
}

// BenchmarkAppendBatch100: one caller appending 100 events per append.
func BenchmarkAppendBatch100(b *testing.B) {
	const batch = 100
	s := benchStore(b)
	ctx := context.Background()
	evs := benchEvents("batch", b.N*batch)
	expected := eventstore.NoStream()
	b.ResetTimer()
	for i := range b.N {
		res, err := s.Append(ctx, "batch-1", expected, evs[i*batch:(i+1)*batch])
		if err != nil {
			b.Fatal(err)
		}
		expected = eventstore.Exact(res.NextExpected)
	}
	reportEventsPerSecond(b, b.N*batch)
}

// BenchmarkReadAll: reading the global order in pages of 512, as a projection
// rebuild does; one op reads one page.
func BenchmarkReadAll(b *testing.B) {
	const total, page = 100_000, 512
	s := benchStore(b)
	ctx := context.Background()
	for i := range total / 1000 {
		stream := "batch-" + strconv.Itoa(i%10)
		if _, err := s.Append(ctx, stream, eventstore.Any(), benchEvents(strconv.Itoa(i), 1000)); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	read := 0
	pos := eventstore.Start
	for range b.N {
		evs, err := s.ReadAll(ctx, pos, page)
		if err != nil {
			b.Fatal(err)
		}
		if len(evs) == 0 {
			pos = eventstore.Start
			continue
		}
		read += len(evs)
		pos = evs[len(evs)-1].Position
	}
	reportEventsPerSecond(b, read)
}
