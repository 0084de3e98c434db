package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	esmemory "github.com/smsbatch/smsbatch/eventstore/memory"
	"github.com/smsbatch/smsbatch/internal/pgtest"
	"github.com/smsbatch/smsbatch/migrations"
	"github.com/smsbatch/smsbatch/projections"
	"github.com/smsbatch/smsbatch/projections/postgres"
	"github.com/smsbatch/smsbatch/projections/projectionstest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

var t0 = time.Date(2025, 6, 2, 9, 0, 0, 0, time.UTC)

// database returns a pool on a fresh, migrated database.
func database(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), pgtest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := migrations.Apply(t.Context(), pool); err != nil {
		t.Fatal(err)
	}
	return pool
}

func newStore(t testing.TB, pool *pgxpool.Pool) *postgres.Store {
	t.Helper()
	s, err := postgres.New(t.Context(), pool, postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestContract(t *testing.T) {
	projectionstest.Run(t, func(t *testing.T) projections.Store { return newStore(t, database(t)) })
}

func TestNewFailsOnMissingTables(t *testing.T) {
	pool := database(t)
	if _, err := postgres.New(t.Context(), pool, postgres.Options{Schema: "nope"}); err == nil {
		t.Fatal("store over a schema without the tables: no error")
	}
}

// history is a few campaigns of two tenants, errors included.
func history(batches, recipients int) *projectionstest.Events {
	h := projectionstest.NewEvents()
	for i := range batches {
		h.Campaign(fmt.Sprintf("tenant-%d", i%2), fmt.Sprintf("batch-%02d", i), t0.Add(time.Duration(i)*time.Minute), recipients)
	}
	return h
}

// tables dumps every row of the live read model tables, in key order.
func tables(t testing.TB, pool *pgxpool.Pool) string {
	t.Helper()
	var out strings.Builder
	for _, q := range []string{
		"SELECT r::text FROM readmodels.batches r ORDER BY id",
		"SELECT r::text FROM readmodels.errors r ORDER BY batch_id, idx",
		"SELECT r::text FROM readmodels.checkpoints r ORDER BY name",
	} {
		rows, err := pool.Query(t.Context(), q)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var row string
			if err := rows.Scan(&row); err != nil {
				t.Fatal(err)
			}
			out.WriteString(row + "\n")
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return out.String()
}

func sameTables(t *testing.T, what, got, want string) {
	t.Helper()
	if got != want {
		t.Errorf("%s: tables differ\n got %d bytes\nwant %d bytes\nfirst difference at line %d",
			what, len(got), len(want), firstDiff(got, want))
	}
}

func firstDiff(a, b string) int {
	la, lb := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := range min(len(la), len(lb)) {
		if la[i] != lb[i] {
			return i + 1
		}
	}
	return min(len(la), len(lb)) + 1
}

func TestApplyTwiceChangesNothing(t *testing.T) {
	pool := database(t)
	s := newStore(t, pool)
	events := history(4, 80).List()
	projectionstest.Apply(t, s, events, 50)
	want := tables(t, pool)
	if !strings.Contains(want, "invalid_number") {
		t.Fatalf("no error rows after a history with failures:\n%s", want)
	}
	projectionstest.Apply(t, s, events, 37)
	sameTables(t, "after applying every event again", tables(t, pool), want)
	projectionstest.Apply(t, s, events[len(events)/2:], 1000)
	sameTables(t, "after applying the second half again", tables(t, pool), want)
}

// counting is an event store that can count its events, as the postgres one can.
type counting struct {
	*esmemory.Store
	n int64
}

func (c *counting) Count(context.Context) (int64, error) { return c.n, nil }

// followed returns an event store holding events and a live store that has
// applied them in small pages, as the runner would.
func followed(t *testing.T, events []eventstore.Event) (*pgxpool.Pool, *postgres.Store, *counting) {
	t.Helper()
	es := &counting{Store: esmemory.New(), n: int64(len(events))}
	t.Cleanup(func() { es.Close() })
	if _, err := projectionstest.AppendTo(t.Context(), es, events); err != nil {
		t.Fatal(err)
	}
	pool := database(t)
	live := newStore(t, pool)
	projectionstest.Apply(t, live, events, 7)
	return pool, live, es
}

func TestRebuildGivesTheLiveTables(t *testing.T) {
	events := history(6, 60).List()
	pool, live, es := followed(t, events)
	want := tables(t, pool)

	// A read model damaged by hand (or by a since-fixed bug) is what a rebuild is for.
	if _, err := pool.Exec(t.Context(), "DELETE FROM readmodels.errors WHERE batch_id = 'batch-01'"); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(t.Context(), "UPDATE readmodels.batches SET state = jsonb_set(state, '{sent}', '0') WHERE id = 'batch-02'"); err != nil {
		t.Fatal(err)
	}
	var reports []projections.RebuildProgress
	err := postgres.Rebuild(t.Context(), pool, es, postgres.RebuildOptions{
		BatchSize: 100,
		Progress:  func(p projections.RebuildProgress) { reports = append(reports, p) },
	})
	if err != nil {
		t.Fatal(err)
	}
	sameTables(t, "rebuilt", tables(t, pool), want)
	st, err := live.Batch(t.Context(), "tenant-0", "batch-02")
	if err != nil || st.Progress.Completed == 0 {
		t.Errorf("repaired batch through the live store: %+v, %v", st, err)
	}

	if len(reports) < len(events)/100 {
		t.Fatalf("%d progress reports for %d events in pages of 100", len(reports), len(events))
	}
	last := reports[len(reports)-1]
	if last.Done != int64(len(events)) || last.Total != int64(len(events)) || last.Remaining != 0 || last.Rate <= 0 {
		t.Errorf("last progress %+v, want %d done of %d, a rate and nothing remaining", last, len(events), len(events))
	}
	if first := reports[0]; first.Done != 100 || first.Remaining <= 0 {
		t.Errorf("first progress %+v, want 100 done and time remaining", first)
	}
	var shadows int
	if err := pool.QueryRow(t.Context(), "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'readmodels_%'").Scan(&shadows); err != nil || shadows != 0 {
		t.Errorf("%d shadow schemas left after the rebuild (%v)", shadows, err)
	}
}

// TestRebuildWhileLive rebuilds while events keep coming, a runner applies them
// to the live tables and readers query: no reader sees an error, and afterwards
// the tables are those of the events applied once from the start.
func TestRebuildWhileLive(t *testing.T) {
	h := history(6, 60)
	first := h.List()
	pool, live, es := followed(t, first)
	more := projectionstest.NewEvents()
	for _, e := range first {
		more.AppendRaw(e.Stream, e.Type, e.Data, e.Time)
	}
	for i := range 3 {
		more.Campaign("tenant-0", fmt.Sprintf("later-%d", i), t0.Add(time.Hour+time.Duration(i)*time.Minute), 40)
	}
	later := more.List()[len(first):]

	runner, err := projections.NewRunner(projections.RunnerConfig{Events: es, Store: live, BatchSize: 20})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := runner.Run(ctx); err != nil {
			t.Errorf("runner: %v", err)
		}
	})

	var queries atomic.Int64
	for range 3 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := query(ctx, live); err != nil && ctx.Err() == nil {
					t.Errorf("query during the rebuild: %v", err)
					return
				}
				queries.Add(1)
			}
		})
	}
	wg.Go(func() {
		for page := range slices.Chunk(later, 10) {
			if _, err := projectionstest.AppendTo(ctx, es, page); err != nil {
				t.Errorf("append: %v", err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	})

	if err := postgres.Rebuild(t.Context(), pool, es, postgres.RebuildOptions{BatchSize: 50}); err != nil {
		t.Fatal(err)
	}
	es.n = int64(len(first) + len(later)) // read by the next rebuild only
	last := more.Last()
	waitCtx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// Appends may still be going on: wait for the runner to reach the last one.
	for {
		if err := runner.WaitFor(waitCtx, last); err == nil {
			break
		} else if waitCtx.Err() != nil {
			t.Fatalf("runner did not reach %s: %v", last, err)
		}
	}
	stop()
	wg.Wait()
	if queries.Load() == 0 {
		t.Fatal("no query ran during the rebuild")
	}

	got := tables(t, pool)
	fresh := database(t)
	projectionstest.Apply(t, newStore(t, fresh), more.List(), 500)
	sameTables(t, "rebuilt while live, then followed", got, tables(t, fresh))
}

// TestRebuildTwice rebuilds, applies more events to the live store, and
// rebuilds again on the same pool: statements its connections prepared for the
// first swap's tables must not write into the wrong schema the second time.
func TestRebuildTwice(t *testing.T) {
	h := history(3, 40)
	first := h.List()
	pool, live, es := followed(t, first)
	if err := postgres.Rebuild(t.Context(), pool, es, postgres.RebuildOptions{BatchSize: 30}); err != nil {
		t.Fatal(err)
	}
	h.Campaign("tenant-1", "second", t0.Add(time.Hour), 30)
	second := h.List()[len(first):]
	if _, err := projectionstest.AppendTo(t.Context(), es, second); err != nil {
		t.Fatal(err)
	}
	projectionstest.Apply(t, live, second, 9)
	want := tables(t, pool)
	if err := postgres.Rebuild(t.Context(), pool, es, postgres.RebuildOptions{BatchSize: 30}); err != nil {
		t.Fatal(err)
	}
	sameTables(t, "rebuilt twice", tables(t, pool), want)
	fresh := database(t)
	projectionstest.Apply(t, newStore(t, fresh), h.List(), 500)
	sameTables(t, "rebuilt twice, against applied once", tables(t, pool), tables(t, fresh))
}

// query asks the live store everything a user can.
func query(ctx context.Context, s projections.Store) error {
	page, _, err := s.Batches(ctx, projections.ListQuery{Tenant: "tenant-0", Limit: 5})
	if err != nil {
		return err
	}
	if len(page) == 0 {
		return errors.New("tenant-0 has no batches")
	}
	id := page[len(page)-1].ID
	if _, err := s.Batch(ctx, "tenant-0", id); err != nil {
		return err
	}
	if _, err := s.Analytics(ctx, "tenant-0", id); err != nil {
		return err
	}
	if _, _, err := s.Errors(ctx, projections.ErrorQuery{Tenant: "tenant-0", BatchID: id, Limit: 3}); err != nil {
		return err
	}
	_, err = s.Checkpoint(ctx)
	return err
}

func TestRebuildResumesAfterInterruption(t *testing.T) {
	events := history(6, 60).List()
	pool, _, es := followed(t, events)
	want := tables(t, pool)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var interruptedAt int64
	err := postgres.Rebuild(ctx, pool, es, postgres.RebuildOptions{
		BatchSize: 100,
		Progress: func(p projections.RebuildProgress) {
			if p.Done >= 300 && interruptedAt == 0 {
				interruptedAt = p.Done
				cancel()
			}
		},
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted rebuild: %v, want context.Canceled", err)
	}
	sameTables(t, "live tables after an interrupted rebuild", tables(t, pool), want)

	var resumedAt int64 = -1
	err = postgres.Rebuild(t.Context(), pool, es, postgres.RebuildOptions{
		BatchSize: 100,
		Progress: func(p projections.RebuildProgress) {
			if resumedAt < 0 {
				resumedAt = p.Done - 100
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if resumedAt < interruptedAt {
		t.Errorf("second run started at %d events, the first had done %d", resumedAt, interruptedAt)
	}
	sameTables(t, "rebuilt in two runs", tables(t, pool), want)
}

func TestRebuildRunsOnce(t *testing.T) {
	pool, _, es := followed(t, history(1, 10).List())
	conn, err := pool.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(t.Context(), "SELECT pg_advisory_lock(hashtext('smsbatch readmodels rebuild readmodels'))"); err != nil {
		t.Fatal(err)
	}
	err = postgres.Rebuild(t.Context(), pool, es, postgres.RebuildOptions{})
	if !errors.Is(err, postgres.ErrRebuildRunning) {
		t.Errorf("rebuild while another runs: %v, want ErrRebuildRunning", err)
	}
}

func TestOtherTenantIsNotFound(t *testing.T) {
	pool := database(t)
	s := newStore(t, pool)
	projectionstest.Apply(t, s, history(2, 20).List(), 100)
	_, err := s.Batch(t.Context(), "tenant-1", "batch-00")
	if domain.ErrorCode(err) != domain.ENOTFOUND {
		t.Errorf("another tenant's batch: %v, want ENOTFOUND", err)
	}
}

// BenchmarkApplyPostgres measures how fast the read models follow the events: a
// store fed the events of many campaigns in the runner's page size.
func BenchmarkApplyPostgres(b *testing.B) {
	events := history(20, 1000).List()
	pool := database(b)
	s := newStore(b, pool)
	const page = projections.DefaultRunnerBatchSize
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if _, err := pool.Exec(b.Context(), "TRUNCATE readmodels.batches, readmodels.errors; UPDATE readmodels.checkpoints SET commit = 0, prepare = 0, applied = 0"); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		projectionstest.Apply(b, s, events, page)
	}
	b.ReportMetric(float64(b.N*len(events))/b.Elapsed().Seconds(), "events/s")
}

// timing is a store that records, for every event it applies, the time from the
// event's store time to the end of its Apply.
type timing struct {
	projections.Store
	mu   sync.Mutex
	lags []time.Duration
}

func (s *timing) Apply(ctx context.Context, events []eventstore.Event) error {
	if err := s.Store.Apply(ctx, events); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range events {
		s.lags = append(s.lags, time.Since(e.Time))
	}
	return nil
}

// BenchmarkLagPostgres measures how far behind the read models are at a steady
// 500 events/s: a runner follows an event store appended to at that rate, and
// p50/p99 are from an event's store time to the commit that applied it.
func BenchmarkLagPostgres(b *testing.B) {
	const rate, n = 500, 1000
	events := history(2, 400).List()[:n]
	for b.Loop() {
		es := esmemory.New()
		store := &timing{Store: newStore(b, database(b))}
		runner, err := projections.NewRunner(projections.RunnerConfig{Events: es, Store: store})
		if err != nil {
			b.Fatal(err)
		}
		ctx, stop := context.WithCancel(b.Context())
		var wg sync.WaitGroup
		wg.Go(func() { runner.Run(ctx) })
		tick := time.NewTicker(time.Second / rate)
		for _, e := range events {
			<-tick.C
			if _, err := projectionstest.AppendTo(ctx, es, []eventstore.Event{e}); err != nil {
				b.Fatal(err)
			}
		}
		tick.Stop()
		if err := runner.WaitFor(ctx, eventstore.Position{Commit: n}); err != nil {
			b.Fatal(err)
		}
		stop()
		wg.Wait()
		es.Close()
		slices.Sort(store.lags)
		b.ReportMetric(float64(store.lags[len(store.lags)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(store.lags[len(store.lags)*99/100].Microseconds())/1000, "p99-ms")
	}
}

// One process at a time holds the read models' lease: another gets it once
// the holder releases it, or once the holder's connection is gone (a process
// that dies).
func TestLeaseIsHeldByOneAtATime(t *testing.T) {
	url := pgtest.Database(t)
	open := func() *postgres.Store {
		pool, err := pgxpool.New(t.Context(), url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		if _, err := migrations.Apply(t.Context(), pool); err != nil {
			t.Fatal(err)
		}
		return newStore(t, pool)
	}
	a, b := open(), open()
	held, err := a.TryLease(t.Context())
	if err != nil || held == nil {
		t.Fatalf("first lease: %v %v", held, err)
	}
	if l, err := b.TryLease(t.Context()); err != nil || l != nil {
		t.Fatalf("second process got the lease while it was held: %v %v", l, err)
	}
	held.Release()
	select {
	case <-held.Lost:
	case <-time.After(5 * time.Second):
		t.Fatal("Lost not closed by Release")
	}
	l, err := b.TryLease(t.Context())
	if err != nil || l == nil {
		t.Fatalf("lease after release: %v %v", l, err)
	}

	// The holder's connection is killed: Lost is closed, and the lease is free.
	admin, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(t.Context(), `SELECT pg_terminate_backend(pid) FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Lost:
	case <-time.After(10 * time.Second):
		t.Fatal("Lost not closed when the holder's connection died")
	}
	l.Release()
	if l, err := a.TryLease(t.Context()); err != nil || l == nil {
		t.Fatalf("lease after the holder died: %v %v", l, err)
	} else {
		l.Release()
	}
}

// A store keeps the states it last committed for its next apply, and drops
// them when another instance applied in between (kept, the second part fails),
// or when its own apply failed after changing them: the tables are those one
// store applying every event once would write. (A state skips events at or
// before its position, so the third part holds even with states kept after a
// failed apply; they are dropped anyway, as nothing uncommitted should be
// trusted.)
func TestKeptStatesNeverOutliveTheirCommit(t *testing.T) {
	events := history(4, 80).List()
	const page = 7
	pages := func(yield func(int, []eventstore.Event) bool) {
		for i := 0; i*page < len(events); i++ {
			if !yield(i, events[i*page:min((i+1)*page, len(events))]) {
				return
			}
		}
	}
	wantPool := database(t)
	one := newStore(t, wantPool)
	for _, p := range pages {
		if err := one.Apply(t.Context(), p); err != nil {
			t.Fatal(err)
		}
	}
	want := tables(t, wantPool)

	// Two instances take turns, as after the read models' lease moved.
	pool := database(t)
	a, b := newStore(t, pool), newStore(t, pool)
	for i, p := range pages {
		s := a
		if i%3 == 1 {
			s = b
		}
		if err := s.Apply(t.Context(), p); err != nil {
			t.Fatal(err)
		}
	}
	sameTables(t, "two instances taking turns", tables(t, pool), want)

	// An apply that fails once its states are changed, then succeeds.
	pool = database(t)
	s := newStore(t, pool)
	for i, p := range pages {
		if i%4 == 2 {
			postgres.SetBeforeWrite(s, func() error { return errors.New("the connection broke") })
			if err := s.Apply(t.Context(), p); err == nil {
				t.Fatal("apply with a failing write succeeded")
			}
			postgres.SetBeforeWrite(s, nil)
		}
		if err := s.Apply(t.Context(), p); err != nil {
			t.Fatal(err)
		}
	}
	sameTables(t, "applies that failed and were made again", tables(t, pool), want)
}
