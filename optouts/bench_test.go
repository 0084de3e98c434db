package optouts

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/bolt"
)

// benchListSize is the numbers of the tenant the benchmarks load: 100,000, or
// 1,000,000 with SMSBATCH_BENCH_BIG=1 (make bench).
func benchListSize() int {
	if os.Getenv("SMSBATCH_BENCH_BIG") == "1" {
		return 1_000_000
	}
	return 100_000
}

// fillBolt writes n opt-outs of one tenant to a bolt store, 1,000 an append.
func fillBolt(b *testing.B, n int) eventstore.Store {
	b.Helper()
	s, err := bolt.Open(filepath.Join(b.TempDir(), "events.db"), bolt.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	page := make([]eventstore.EventData, 0, 1000)
	for i := range n {
		c := domain.OptOutChange{OptedOut: true, Tenant: "acme", Phone: fmt.Sprintf("+1415%07d", i*7%10_000_000),
			Source: domain.OptOutByKeyword, Keyword: "STOP", At: t0}
		data, _ := json.Marshal(c)
		page = append(page, eventstore.EventData{ID: uuid.NewString(), Type: c.EventType(), Data: data})
		if len(page) == cap(page) || i == n-1 {
			if _, err := s.Append(context.Background(), domain.OptOutStream("acme"), eventstore.After(uint64(i+1-len(page))), page); err != nil {
				b.Fatal(err)
			}
			page = page[:0]
		}
	}
	return s
}

// BenchmarkLoadList reads a tenant's list of benchListSize numbers from bolt,
// as the first Suppressed for the tenant does, and reports the heap it holds.
func BenchmarkLoadList(b *testing.B) {
	n := benchListSize()
	s := fillBolt(b, n)
	b.ResetTimer()
	for range b.N {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		l := newList(b, s)
		start := time.Now()
		if _, err := l.Suppressed(context.Background(), "acme", "+14150000000"); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/load")
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(n), "B/number")
		runtime.KeepAlive(l)
	}
}

// BenchmarkSuppressed asks about numbers of a loaded list of benchListSize,
// from every core at once, as the sends of many batches do.
func BenchmarkSuppressed(b *testing.B) {
	n := benchListSize()
	s := fillBolt(b, n)
	l := newList(b, s)
	if _, err := l.Suppressed(context.Background(), "acme", "+14150000000"); err != nil {
		b.Fatal(err)
	}
	phones := make([]string, 4096)
	for i := range phones {
		phones[i] = fmt.Sprintf("+1415%07d", i*1009%10_000_000)
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			if _, err := l.Suppressed(context.Background(), "acme", phones[i%len(phones)]); err != nil {
				b.Fatal(err)
			}
		}
	})
}
