package migrations

import (
	"context"
	"os"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/smsbatch/smsbatch/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func TestApplyOnceInOrderAndAgainHarmlessly(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	// Instances starting together: every migration is applied once in all.
	var mu sync.Mutex
	applied := map[string]int{}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			names, err := Apply(ctx, pool)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			for _, n := range names {
				applied[n]++
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, n := range Names() {
		if applied[n] != 1 {
			t.Fatalf("%s applied %d times, want once", n, applied[n])
		}
	}
	again, err := Apply(ctx, pool)
	if err != nil || len(again) != 0 {
		t.Fatalf("second run applied %v (%v), want nothing", again, err)
	}
	var recorded int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM schema_migrations").Scan(&recorded); err != nil {
		t.Fatal(err)
	}
	if recorded != len(Names()) {
		t.Fatalf("%d migrations recorded, %d known", recorded, len(Names()))
	}
	for _, table := range []string{"events", "streams", "readmodels.batches", "readmodels.errors", "readmodels.checkpoints"} {
		if _, err := pool.Exec(ctx, "SELECT 1 FROM "+table+" LIMIT 1"); err != nil {
			t.Fatalf("table %s: %v", table, err)
		}
	}
}
