package bolt_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

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
// each append fsynced before the next starts. It reports the raw rate of bbolt on
// the same disk beside it (see measureAgainstRaw).
func BenchmarkAppendSingle(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	expected := eventstore.NoStream()
	measureAgainstRaw(b, 1, func(i int) {
		res, err := s.Append(ctx, "batch-1", expected, benchEvents("single-"+strconv.Itoa(i), 1))
		if err != nil {
			b.Fatal(err)
		}
		expected = eventstore.Exact(res.NextExpected)
	})
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

// BenchmarkAppendAcrossStreams: 16 callers appending one event at a time, each
// to the next of its share of the streams in turn: 16 streams that grow long, or
// 1,000 that stay short, as 1,000 batches sending at once keep them. With a bucket
// for each stream (layout 2) every append rewrote its stream's page: 3,900-4,600
// events/s and 37 KB allocated an event for 16 streams, 4,100-6,600 and 20-22 KB
// for 1,000. Chained through the log (layout 3) 5,000-7,000 and 25 KB, and
// 6,000-6,800 and 21 KB (two cores, side by side).
func BenchmarkAppendAcrossStreams(b *testing.B) {
	for _, streams := range []int{16, 1000} {
		b.Run(fmt.Sprintf("streams=%d", streams), func(b *testing.B) {
			// RunParallel runs parallelism x GOMAXPROCS callers: at least
			// 16 (exactly on 1, 2, 4, 8 or 16 processors), each with at
			// least one stream of its own.
			procs := runtime.GOMAXPROCS(0)
			parallelism := (16 + procs - 1) / procs
			callers := parallelism * procs
			streams := max(streams, callers)
			s := benchStore(b)
			ctx := context.Background()
			var next atomic.Int64
			b.SetParallelism(parallelism)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				caller := int(next.Add(1)) - 1
				var mine []string
				for k := caller; k < streams; k += callers {
					mine = append(mine, "batch-"+strconv.Itoa(k))
				}
				expected := make([]eventstore.ExpectedRevision, len(mine))
				for i := range expected {
					expected[i] = eventstore.NoStream()
				}
				for i := 0; pb.Next(); i++ {
					k := i % len(mine)
					res, err := s.Append(ctx, mine[k], expected[k], benchEvents(fmt.Sprintf("%s-%d", mine[k], i), 1))
					if err != nil {
						b.Fatal(err)
					}
					expected[k] = eventstore.Exact(res.NextExpected)
				}
			})
			reportEventsPerSecond(b, b.N)
		})
	}
}

// BenchmarkAppendBatch100: one caller appending 100 events per append, beside the
// raw rate of bbolt on the same disk (see measureAgainstRaw).
func BenchmarkAppendBatch100(b *testing.B) {
	const batch = 100
	s := benchStore(b)
	ctx := context.Background()
	expected := eventstore.NoStream()
	measureAgainstRaw(b, batch, func(i int) {
		res, err := s.Append(ctx, "batch-1", expected, benchEvents("batch-"+strconv.Itoa(i), batch))
		if err != nil {
			b.Fatal(err)
		}
		expected = eventstore.Exact(res.NextExpected)
	})
}

// measureAgainstRaw times appendOp(0..b.N-1), appends of size events each (made
// by appendOp as it goes: made up front for all of them they would fill the heap,
// and the garbage collector would charge scanning them to the store), and
// in turns with it measures what /work/shared/bench/boltraw measures: fsync'd bbolt
// transactions of size puts of an event's bytes under sequential keys, in a file
// of their own on the same disk. The disk's speed changes from second to second
// on a shared machine, so a sixteenth of the appends and the raw transactions for
// as long alternate. It reports events/s, raw-events/s and the share (x-raw).
func measureAgainstRaw(b *testing.B, size int, appendOp func(i int)) {
	db, err := bbolt.Open(filepath.Join(b.TempDir(), "raw.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	var seq uint64
	rawTxn := func() error {
		return db.Update(func(tx *bbolt.Tx) error {
			bk, err := tx.CreateBucketIfNotExists([]byte("events"))
			if err != nil {
				return err
			}
			for range size {
				seq++
				if err := bk.Put(binary.BigEndian.AppendUint64(nil, seq), benchData); err != nil {
					return err
				}
			}
			return nil
		})
	}
	const turns = 16
	var rawEvents int
	var rawTime time.Duration
	b.ResetTimer()
	for t := range turns {
		b.StartTimer()
		began := time.Now()
		for i := t * b.N / turns; i < (t+1)*b.N/turns; i++ {
			appendOp(i)
		}
		took := time.Since(began)
		b.StopTimer()
		began = time.Now()
		for time.Since(began) < took {
			if err := rawTxn(); err != nil {
				b.Fatal(err)
			}
			rawEvents += size
		}
		rawTime += time.Since(began)
	}
	rate := float64(b.N*size) / b.Elapsed().Seconds()
	raw := float64(rawEvents) / rawTime.Seconds()
	b.ReportMetric(rate, "events/s")
	b.ReportMetric(raw, "raw-events/s")
	b.ReportMetric(rate/raw, "x-raw")
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
