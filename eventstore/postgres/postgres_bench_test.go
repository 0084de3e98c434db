package postgres_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

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
			Metadata: benchMeta,
		}
	}
	return evs
}

// opEvents returns the events of op i of a benchmark run: benchEvents with IDs as
// long as a UUID, made cheaply from the run, the op and the event's place.
func opEvents(run int64, op, n int) []eventstore.EventData {
	evs := make([]eventstore.EventData, n)
	for i := range evs {
		id := fmt.Appendf(make([]byte, 0, 36), "%016x-%010x-%08x", run, op, i)
		evs[i] = eventstore.EventData{
			ID:       string(id),
			Type:     "MessageSent",
			Data:     benchData,
			Metadata: benchMeta,
		}
	}
	return evs
}

var benchMeta = []byte(`{"tenant":"acme"}`)

// BenchmarkAppend: appends of 1 and 100 events by 1 and 8 writers, each writer to
// its own stream at an exact revision; one op is one append. Each row also reports
// the raw insert rate of the same server (raw-events/s, see rawInserter) and the
// store's share of it (x-raw). The machine is shared and its disk's speed changes
// from second to second, so the two are measured in turns: a sixteenth of the
// appends, then the raw inserts for as long, sixteen times.
//
// Commit rates mean something only on a server that syncs its commits: run it on
// the machine's server with TEST_DATABASE_URL (the throwaway cluster runs with
// fsync off). The server's settings are logged.
func BenchmarkAppend(b *testing.B) {
	for _, size := range []int{1, 100} {
		for _, writers := range []int{1, 8} {
			b.Run("events="+strconv.Itoa(size)+"/writers="+strconv.Itoa(writers), func(b *testing.B) {
				url := pgtest.Database(b)
				s := open(b, url, postgres.Options{})
				raw := newRawInserter(b, url, size, writers)
				ctx := context.Background()
				// Events are made as they are appended, as a sender makes them: made
				// up front for all appends they would fill the heap, and the garbage
				// collector would charge scanning them to the store.
				run := time.Now().UnixNano()
				expected := make([]eventstore.ExpectedRevision, writers)
				for w := range expected {
					expected[w] = eventstore.NoStream()
				}
				// appendRange has writer w append ops from..to-1 that are its own
				// (op i belongs to writer i % writers).
				appendRange := func(from, to int) {
					var wg sync.WaitGroup
					for w := range writers {
						wg.Go(func() {
							stream := "batch-" + strconv.Itoa(w)
							for i := from + (w-from%writers+writers)%writers; i < to; i += writers {
								res, err := s.Append(ctx, stream, expected[w], opEvents(run, i, size))
								if err != nil {
									b.Error(err)
									return
								}
								expected[w] = eventstore.Exact(res.NextExpected)
							}
						})
					}
					wg.Wait()
				}
				const turns = 16
				var rawEvents int64
				var rawTime time.Duration
				b.ResetTimer()
				for t := range turns {
					b.StartTimer()
					began := time.Now()
					appendRange(t*b.N/turns, (t+1)*b.N/turns)
					took := time.Since(began)
					b.StopTimer()
					n, rawTook := raw.run(took)
					rawEvents += n
					rawTime += rawTook
				}
				rate := float64(b.N*size) / b.Elapsed().Seconds()
				rawRate := float64(rawEvents) / rawTime.Seconds()
				b.ReportMetric(rate, "events/s")
				b.ReportMetric(rawRate, "raw-events/s")
				b.ReportMetric(rate/rawRate, "x-raw")
			})
		}
	}
}

// rawTable is the events table of /work/shared/bench/pgraw.sh: the store's shape
// (migrations/0001_eventstore.sql) without the streams table, and a sequence for
// the revisions.
const rawTable = `CREATE TABLE raw_events (
	global_id bigserial NOT NULL, xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
	stream text NOT NULL, revision bigint NOT NULL, id text NOT NULL, type text NOT NULL,
	data bytea NOT NULL, metadata bytea, created_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (stream, revision), CONSTRAINT raw_events_id_key UNIQUE (id));
CREATE UNIQUE INDEX raw_events_global_order ON raw_events (xid, global_id);
CREATE SEQUENCE raw_rev;`

// rawInsert1 and rawInsert100 are pgraw.sh's transactions: one INSERT of 1 or 100
// rows made on the server, each statement its own transaction.
const (
	rawInsert1 = `INSERT INTO raw_events (stream, revision, id, type, data, metadata)
		VALUES ('batch-' || $1::int, nextval('raw_rev'), gen_random_uuid()::text, 'MessageSent',
		convert_to(repeat('x', 150), 'UTF8'), convert_to('{"tenant":"acme"}', 'UTF8'))`
	rawInsert100 = `INSERT INTO raw_events (stream, revision, id, type, data, metadata)
		SELECT 'batch-' || $1::int, nextval('raw_rev'), gen_random_uuid()::text, 'MessageSent',
		convert_to(repeat('x', 150), 'UTF8'), convert_to('{"tenant":"acme"}', 'UTF8')
		FROM generate_series(1, 100)`
)

var logSettings sync.Once

// rawInserter measures what /work/shared/bench/pgraw.sh measures with pgbench:
// events a second that writers connections insert into the store's table shape,
// size rows a transaction, with none of the store's logic. It works in the
// store's database, beside the store's tables. Through pgx its statements are
// prepared once, where pgbench parses each: it measures somewhat more than
// pgraw.sh, so the store's share of it is if anything understated.
type rawInserter struct {
	b       *testing.B
	pool    *pgxpool.Pool
	insert  string
	size    int
	writers int
}

func newRawInserter(b *testing.B, url string, size, writers int) *rawInserter {
	b.Helper()
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		b.Fatal(err)
	}
	// One connection a writer, as pgbench has.
	cfg.MaxConns = int32(writers)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	logSettings.Do(func() {
		var fsync, syncCommit, method, delay string
		err := pool.QueryRow(ctx, `SELECT current_setting('fsync'), current_setting('synchronous_commit'),
			current_setting('wal_sync_method'), current_setting('commit_delay')`).Scan(&fsync, &syncCommit, &method, &delay)
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("server settings: fsync=%s synchronous_commit=%s wal_sync_method=%s commit_delay=%s",
			fsync, syncCommit, method, delay)
	})
	if _, err := pool.Exec(ctx, rawTable); err != nil {
		b.Fatal(err)
	}
	r := &rawInserter{b: b, pool: pool, insert: rawInsert1, size: size, writers: writers}
	switch size {
	case 1:
	case 100:
		r.insert = rawInsert100
	default:
		b.Fatalf("pgraw.sh measures 1 and 100 rows a transaction, not %d", size)
	}
	return r
}

// run inserts for about d and returns the events inserted and the time taken.
func (r *rawInserter) run(d time.Duration) (int64, time.Duration) {
	var (
		txns atomic.Int64
		wg   sync.WaitGroup
	)
	start := time.Now()
	for w := range r.writers {
		wg.Go(func() {
			for time.Since(start) < d {
				if _, err := r.pool.Exec(context.Background(), r.insert, w); err != nil {
					r.b.Error(err)
					return
				}
				txns.Add(1)
			}
		})
	}
	wg.Wait()
	return txns.Load() * int64(r.size), time.Since(start)
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
