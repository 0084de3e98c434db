package api

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	esmemory "github.com/smsbatch/smsbatch/eventstore/memory"
	"github.com/smsbatch/smsbatch/projections"
	rmbolt "github.com/smsbatch/smsbatch/projections/bolt"
)

// BenchmarkExport streams the CSV export of a completed batch of 1,000,000
// recipients (100,000 without SMSBATCH_BENCH_BIG=1) from the embedded read
// models (bolt) and an event store holding its recipient pages, through the
// HTTP handler, to a writer that counts and drops the bytes. It reports rows/s
// and the most live heap (as each GC marks it) above the start while
// exporting: constant, not growing with the batch.
func BenchmarkExport(b *testing.B) {
	n := 100_000
	if os.Getenv("SMSBATCH_BENCH_BIG") == "1" {
		n = 1_000_000
	}
	env := exportBatch(b, n)
	req, err := http.NewRequest("GET", "/api/batch/"+exportBatchID+"/export.csv", nil)
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testKey)
	req.RemoteAddr = testAddr

	runtime.GC()
	base := heapInUse()
	peak := base
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
				peak = max(peak, heapInUse())
			}
		}
	})
	b.ResetTimer()
	var w countingWriter
	for b.Loop() {
		w = countingWriter{header: http.Header{}}
		env.ServeHTTP(&w, req)
		if w.status != 0 && w.status != http.StatusOK {
			b.Fatalf("export: %d", w.status)
		}
	}
	b.StopTimer()
	close(stop)
	wg.Wait()
	if w.lines != n+1 {
		b.Fatalf("export wrote %d lines, want %d", w.lines, n+1)
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(float64(peak-base)/(1<<20), "peak-live-heap-MiB")
	b.ReportMetric(float64(w.bytes)/float64(n), "bytes/row")
}

func heapInUse() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// countingWriter is a ResponseWriter that keeps nothing but counts.
type countingWriter struct {
	header       http.Header
	status       int
	bytes, lines int
}

func (w *countingWriter) Header() http.Header { return w.header }
func (w *countingWriter) WriteHeader(s int)   { w.status = s }
func (w *countingWriter) Write(p []byte) (int, error) {
	w.bytes += len(p)
	for _, c := range p {
		if c == '\n' {
			w.lines++
		}
	}
	return len(p), nil
}

const exportBatchID = "01900000-0000-7000-8000-000000000001"

// exportBatch builds the API over a completed batch of n recipients, 1% of
// them failed: its pages and BatchCreated in an event store, every event in a
// bolt read model, applied a page of 5,000 events at a time as the runner does.
func exportBatch(b *testing.B, n int) http.Handler {
	b.Helper()
	ctx := context.Background()
	es := esmemory.New()
	rm, err := rmbolt.Open(filepath.Join(b.TempDir(), "readmodels.db"), rmbolt.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { rm.Close(); es.Close() })

	at := time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC)
	header := func() domain.EventHeader {
		at = at.Add(time.Millisecond)
		return domain.EventHeader{BatchID: exportBatchID, Tenant: "acme", At: at}
	}
	var (
		page []eventstore.Event
		pos  uint64
	)
	apply := func(stream string, e domain.Event, force bool) {
		if e != nil {
			typ, data, err := domain.EncodeEvent(e)
			if err != nil {
				b.Fatal(err)
			}
			pos++
			page = append(page, eventstore.Event{ID: strconv.FormatUint(pos, 10), Stream: stream, Type: typ, Data: data,
				Position: eventstore.Position{Commit: pos}, Time: at})
			if stream == domain.RecipientsStream(exportBatchID) || typ == domain.TypeBatchCreated {
				if _, err := es.Append(ctx, stream, eventstore.Any(), []eventstore.EventData{{ID: page[len(page)-1].ID, Type: typ, Data: data}}); err != nil {
					b.Fatal(err)
				}
			}
		}
		if len(page) >= 5000 || force && len(page) > 0 {
			if err := rm.Apply(ctx, page); err != nil {
				b.Fatal(err)
			}
			page = page[:0]
		}
	}
	began := time.Now()
	for first := 0; first < n; first += domain.RecipientPageSize {
		p := domain.RecipientsPageAdded{EventHeader: header(), Page: first / domain.RecipientPageSize, First: first}
		for i := first; i < min(n, first+domain.RecipientPageSize); i++ {
			p.Recipients = append(p.Recipients, domain.Recipient{Phone: fmt.Sprintf("+1415%07d", i), Values: []string{fmt.Sprint("Ada ", i), fmt.Sprint("A-", i)}})
		}
		apply(domain.RecipientsStream(exportBatchID), p, false)
	}
	tmpl, err := domain.NewTemplate("Hi {{name}}, order {{order}} has shipped", domain.TemplateLimits{})
	if err != nil {
		b.Fatal(err)
	}
	created, err := domain.NewBatch(domain.NewBatchParams{ID: exportBatchID, Tenant: "acme", Template: tmpl, AutoStart: true,
		Total: n, Pages: (n + domain.RecipientPageSize - 1) / domain.RecipientPageSize, Name: "export benchmark"}, at)
	if err != nil {
		b.Fatal(err)
	}
	for _, e := range created.Changes() {
		apply(domain.BatchStream(exportBatchID), e, false)
	}
	stream := domain.BatchStream(exportBatchID)
	for first := 0; first < n; first += domain.RecipientPageSize {
		d := domain.MessagesDispatched{EventHeader: header(), Slice: "s", Deadline: at.Add(time.Minute)}
		for i := first; i < min(n, first+domain.RecipientPageSize); i++ {
			d.Messages = append(d.Messages, domain.Dispatch{Index: i, Attempt: 1})
		}
		apply(stream, d, false)
		for i := first; i < min(n, first+domain.RecipientPageSize); i++ {
			if i%100 == 42 {
				apply(stream, domain.MessageFailed{EventHeader: header(), Index: i, Attempt: 1, Phone: fmt.Sprintf("+1415%07d", i),
					Category: domain.CategoryBlocked, Code: "21610", Message: "blocked"}, false)
				continue
			}
			apply(stream, domain.MessageSent{EventHeader: header(), Index: i, Attempt: 1, ProviderID: fmt.Sprint("SM", i), Segments: 1, LatencyMs: 80}, false)
		}
	}
	apply(stream, nil, true)
	b.Logf("a batch of %d recipients projected into bolt in %s", n, time.Since(began).Round(time.Millisecond))

	keys, err := ParseKeys("acme:" + testKey)
	if err != nil {
		b.Fatal(err)
	}
	repo, err := commands.NewRepository(es, 10)
	if err != nil {
		b.Fatal(err)
	}
	cmds, err := commands.New(es, repo, nil)
	if err != nil {
		b.Fatal(err)
	}
	h, err := NewHandler(Config{Commands: cmds, ReadModels: rm, Projections: noWait{}, Keys: keys, RateLimit: RateLimit{Requests: -1}})
	if err != nil {
		b.Fatal(err)
	}
	var _ projections.Store = rm
	return h
}

// noWait is a Waiter for read models that are already up to date.
type noWait struct{}

func (noWait) WaitFor(context.Context, eventstore.Position) error { return nil }
