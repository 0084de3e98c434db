package postgres_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/smsbatch/smsbatch/eventstore"
	esmemory "github.com/smsbatch/smsbatch/eventstore/memory"
	pgevents "github.com/smsbatch/smsbatch/eventstore/postgres"
	"github.com/smsbatch/smsbatch/internal/pgtest"
	"github.com/smsbatch/smsbatch/migrations"
	"github.com/smsbatch/smsbatch/projections"
	"github.com/smsbatch/smsbatch/projections/postgres"
	"github.com/smsbatch/smsbatch/projections/projectionstest"
)

// A rebuild swaps schemas while the service answers reads that take several
// statements in one transaction (a recipients page, the forwarder's
// unfinished batches): neither the readers nor the rebuild fail.
func TestRebuildWhileMultiStatementReadersRun(t *testing.T) {
	events := history(4, 60).List()
	pool, live, es := followed(t, events)

	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	var readErrs, reads atomic.Int64
	var firstErr atomic.Value
	for w := range 6 {
		wg.Go(func() {
			for ctx.Err() == nil {
				var err error
				if w%2 == 0 {
					_, _, err = live.Recipients(ctx, projections.RecipientQuery{Tenant: "tenant-0", BatchID: "batch-00", Limit: 50})
				} else {
					_, _, err = live.Unfinished(ctx)
				}
				if err != nil && ctx.Err() == nil {
					readErrs.Add(1)
					firstErr.CompareAndSwap(nil, err)
					t.Logf("reader %d: %v", w, err)
				}
				reads.Add(1)
			}
		})
	}
	var rebuildErrs []error
	for range 10 {
		if err := postgres.Rebuild(t.Context(), pool, es, postgres.RebuildOptions{BatchSize: 200}); err != nil {
			rebuildErrs = append(rebuildErrs, err)
		}
	}
	time.Sleep(50 * time.Millisecond)
	stop()
	wg.Wait()
	t.Logf("%d reads", reads.Load())
	if n := readErrs.Load(); n > 0 {
		t.Errorf("%d reads failed during rebuilds, first: %v", n, firstErr.Load())
	}
	if len(rebuildErrs) > 0 {
		t.Errorf("%d of 10 rebuilds failed, first: %v", len(rebuildErrs), rebuildErrs[0])
	}
}

// pausing is an instance's store whose applies can be held, as a process that
// stalls (a long GC pause, a stopped VM) in the middle of applying a page.
type pausing struct {
	*postgres.Store
	armed   atomic.Bool
	held    chan struct{} // closed once an apply is held
	release chan struct{}
}

func (p *pausing) Apply(ctx context.Context, events []eventstore.Event) error {
	if p.armed.CompareAndSwap(true, false) {
		close(p.held)
		<-p.release
		// The stalled process wakes with its apply already under way: its
		// cancellation (the lease lost meanwhile) has not reached it.
		ctx = context.WithoutCancel(ctx)
	}
	return p.Store.Apply(ctx, events)
}

// The lease holder stalls in the middle of an apply, its lease connection dies
// and another instance takes the lease and applies on; then the stalled apply
// goes through. Every event still counts once.
func TestAStalledHolderAndTheNewHolderNeverDoubleCount(t *testing.T) {
	h := history(4, 60)
	events := h.List()
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
	a := &pausing{Store: open(), held: make(chan struct{}), release: make(chan struct{})}
	b := open()
	es := esmemory.New()
	defer es.Close()

	run := func(s projections.Store) *projections.Runner {
		r, err := projections.NewRunner(projections.RunnerConfig{Events: es, Store: s, BatchSize: 20, Gather: -1,
			LeaseRetry: 100 * time.Millisecond, WatchEvery: 5 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { defer close(done); _ = r.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		return r
	}
	ra := run(a)
	time.Sleep(300 * time.Millisecond) // a takes the lease first
	rb := run(b)

	half := len(events) / 2
	if _, err := projectionstest.AppendTo(t.Context(), es, events[:half]); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := ra.WaitFor(wctx, events[half-1].Position); err != nil {
		t.Fatal(err)
	}
	a.armed.Store(true)
	if _, err := projectionstest.AppendTo(t.Context(), es, events[half:]); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.held:
	case <-time.After(10 * time.Second):
		t.Fatal("a never applied the second half")
	}
	// a's lease connection dies (a network blip, the server's idle timeout).
	admin, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(t.Context(), `SELECT pg_terminate_backend(pid) FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`); err != nil {
		t.Fatal(err)
	}
	last := events[len(events)-1].Position
	if err := rb.WaitFor(wctx, last); err != nil {
		t.Fatalf("b did not take over: %v", err)
	}
	close(a.release) // the stalled apply goes through now
	time.Sleep(500 * time.Millisecond)
	if err := ra.WaitFor(wctx, last); err != nil {
		t.Fatal(err)
	}

	fresh := database(t)
	projectionstest.Apply(t, newStore(t, fresh), events, 500)
	pool, err := pgxpool.New(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	sameTables(t, "after a stalled holder and a new one both applied", tables(t, pool), tables(t, fresh))
}

// Appends commit out of the order they took their positions in (transactions
// held open for random times, some rolled back) while the runner follows the
// PostgreSQL event store through a Tail, as the service does: the read models
// end as a fresh apply of every stored event.
func TestTheRunnerSkipsNoLateCommit(t *testing.T) {
	url := pgtest.Database(t)
	pool, err := pgxpool.New(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := migrations.Apply(t.Context(), pool); err != nil {
		t.Fatal(err)
	}
	es, err := pgevents.Open(t.Context(), url, pgevents.Options{PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer es.Close()
	store := newStore(t, pool)
	r, err := projections.NewRunner(projections.RunnerConfig{Events: eventstore.NewTail(es, 0), Store: store, BatchSize: 7})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	const writers = 8
	h := history(writers, 40)
	byStream := map[string][]eventstore.Event{}
	for _, e := range h.List() {
		byStream[e.Stream] = append(byStream[e.Stream], e)
	}
	var wg sync.WaitGroup
	var w int
	for stream, evs := range byStream {
		w++
		seed := uint64(w)
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, 7))
			for len(evs) > 0 {
				n := min(len(evs), 1+rng.IntN(4))
				tx, err := pool.Begin(t.Context())
				if err != nil {
					t.Error(err)
					return
				}
				for i, e := range evs[:n] {
					if _, err := tx.Exec(t.Context(), `INSERT INTO events (stream, revision, id, type, data) VALUES ($1, $2, $3, $4, $5)`,
						stream, int64(e.Revision), fmt.Sprintf("%s-%d", e.ID, i), e.Type, e.Data); err != nil {
						t.Error(err)
						tx.Rollback(t.Context())
						return
					}
				}
				time.Sleep(time.Duration(rng.IntN(25)) * time.Millisecond)
				if rng.IntN(10) == 0 {
					tx.Rollback(t.Context()) // written again below
					continue
				}
				if err := tx.Commit(t.Context()); err != nil {
					t.Error(err)
					return
				}
				if _, err := pool.Exec(t.Context(), `SELECT pg_notify($1, '')`, pgevents.Channel); err != nil {
					t.Error(err)
				}
				evs = evs[n:]
			}
		})
	}
	wg.Wait()
	// An event is read once nothing can commit before it: the last ones may
	// wait out a rolled-back position's gap.
	var all []eventstore.Event
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if all, err = es.ReadAll(t.Context(), eventstore.Start, 100000); err != nil {
			t.Fatal(err)
		}
		if len(all) >= h.Len() || time.Now().After(deadline) {
			break
		}
	}
	if len(all) != h.Len() {
		t.Fatalf("%d events stored, %d written", len(all), h.Len())
	}
	wctx, wcancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer wcancel()
	if err := r.WaitFor(wctx, all[len(all)-1].Position); err != nil {
		t.Fatal(err)
	}
	fresh := database(t)
	projectionstest.Apply(t, newStore(t, fresh), all, 500)
	sameTables(t, "followed through late commits", tables(t, pool), tables(t, fresh))
}

// A rebuild keeps the names of the read models' indexes (CREATE TABLE ...
// LIKE named the copies anew): a migration that drops or changes an index by
// its name must find it in read models that were rebuilt.
func TestRebuildKeepsIndexNames(t *testing.T) {
	events := history(2, 10).List()
	pool, _, es := followed(t, events)
	names := func() []string {
		t.Helper()
		rows, err := pool.Query(t.Context(), `SELECT indexname FROM pg_indexes WHERE schemaname = 'readmodels' ORDER BY indexname`)
		if err != nil {
			t.Fatal(err)
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	before := names()
	if !slices.Contains(before, "batches_tenant_created") {
		t.Fatalf("indexes before the rebuild: %v", before)
	}
	if err := postgres.Rebuild(t.Context(), pool, es, postgres.RebuildOptions{}); err != nil {
		t.Fatal(err)
	}
	if after := names(); !slices.Equal(after, before) {
		t.Fatalf("indexes after the rebuild: %v, want %v", after, before)
	}
}
