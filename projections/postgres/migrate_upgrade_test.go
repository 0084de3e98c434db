package postgres_test

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	esmemory "github.com/smsbatch/smsbatch/eventstore/memory"
	pgevents "github.com/smsbatch/smsbatch/eventstore/postgres"
	"github.com/smsbatch/smsbatch/internal/pgtest"
	"github.com/smsbatch/smsbatch/migrations"
	"github.com/smsbatch/smsbatch/projections"
	"github.com/smsbatch/smsbatch/projections/postgres"
	"github.com/smsbatch/smsbatch/projections/projectionstest"
)

// applyUpTo applies the migration files before stop by hand, as a version that
// knew only them did, and records them.
func applyUpTo(t *testing.T, pool *pgxpool.Pool, stop string) {
	t.Helper()
	if _, err := pool.Exec(t.Context(), `CREATE TABLE schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		t.Fatal(err)
	}
	for _, name := range migrations.Names() {
		if name >= stop {
			return
		}
		sql, err := os.ReadFile("../../migrations/" + name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pool.Exec(t.Context(), string(sql)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := pool.Exec(t.Context(), `INSERT INTO schema_migrations (name) VALUES ($1)`, name); err != nil {
			t.Fatal(err)
		}
	}
}

// Two instances starting together on an empty database both come up: one
// migrates, the other waits for it and finds everything applied.
func TestTwoInstancesStartOnAnEmptyDatabase(t *testing.T) {
	url := pgtest.Database(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			es, err := pgevents.Open(t.Context(), url, pgevents.Options{})
			if err != nil {
				errs[i] = err
				return
			}
			defer es.Close()
			pool, err := pgxpool.New(t.Context(), url)
			if err != nil {
				errs[i] = err
				return
			}
			defer pool.Close()
			if _, err := migrations.Apply(t.Context(), pool); err != nil {
				errs[i] = err
				return
			}
			_, errs[i] = postgres.New(t.Context(), pool, postgres.Options{})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("instance %d: %v", i, err)
		}
	}
}

// A migration that fails half-way (here 0004, whose second statement meets a
// table in the way) leaves nothing of itself; once the cause is gone the next
// start applies it whole.
func TestMigrationFailingHalfWayLeavesNothing(t *testing.T) {
	pool, err := pgxpool.New(t.Context(), pgtest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	applyUpTo(t, pool, "0004")
	if _, err := pool.Exec(t.Context(), `CREATE INDEX batches_tenant_status_created ON readmodels.batches (id)`); err != nil {
		t.Fatal(err)
	}
	if _, err := migrations.Apply(t.Context(), pool); err == nil {
		t.Fatal("0004 applied over an index in its way")
	}
	var cols int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM information_schema.columns WHERE table_schema = 'readmodels' AND column_name = 'name_folded'`).Scan(&cols); err != nil || cols != 0 {
		t.Fatalf("name_folded columns after the failed 0004: %d (%v)", cols, err)
	}
	if _, err := pool.Exec(t.Context(), `DROP INDEX readmodels.batches_tenant_status_created`); err != nil {
		t.Fatal(err)
	}
	applied, err := migrations.Apply(t.Context(), pool)
	if err != nil || len(applied) == 0 || applied[0] != "0004_campaigns.sql" {
		t.Fatalf("second start applied %v (%v), want 0004 and those after it", applied, err)
	}
	if _, err := postgres.New(t.Context(), pool, postgres.Options{}); err != nil {
		t.Fatal(err)
	}
}

// A rebuild interrupted on a version before 0004, then the upgrade, then the
// rebuild the README asks for after that upgrade ("run smsbatch projections
// rebuild once after the upgrade"; "it can be interrupted and run again: it
// carries on where it stopped"): the rebuild must succeed.
func TestRebuildInterruptedBeforeAnUpgradeCompletesAfterIt(t *testing.T) {
	pool, err := pgxpool.New(t.Context(), pgtest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	applyUpTo(t, pool, "0004")
	// The older version's rebuild made its shadow copy of its three tables,
	// and was stopped.
	for _, sql := range []string{
		`CREATE SCHEMA readmodels_rebuild`,
		`CREATE TABLE readmodels_rebuild.batches (LIKE readmodels.batches INCLUDING ALL)`,
		`CREATE TABLE readmodels_rebuild.errors (LIKE readmodels.errors INCLUDING ALL)`,
		`CREATE TABLE readmodels_rebuild.checkpoints (LIKE readmodels.checkpoints INCLUDING ALL)`,
		`INSERT INTO readmodels_rebuild.checkpoints (name) VALUES ('projections')`,
	} {
		if _, err := pool.Exec(t.Context(), sql); err != nil {
			t.Fatal(err)
		}
	}
	// The upgrade.
	if _, err := migrations.Apply(t.Context(), pool); err != nil {
		t.Fatal(err)
	}
	es := esmemory.New()
	defer es.Close()
	h := history(3, 20)
	if _, err := projectionstest.AppendTo(context.Background(), es, h.List()); err != nil {
		t.Fatal(err)
	}
	if err := postgres.Rebuild(t.Context(), pool, es, postgres.RebuildOptions{}); err != nil {
		msg := err.Error()
		if len(msg) > 300 {
			msg = msg[:150] + " ... " + msg[strings.LastIndex(msg, ":"):]
		}
		t.Fatalf("rebuild after the upgrade: %s", msg)
	}
	live := newStore(t, pool)
	if _, err := live.Batch(t.Context(), "tenant-0", "batch-00"); err != nil {
		t.Fatal(err)
	}
	rs, _, err := live.Recipients(t.Context(), projections.RecipientQuery{Tenant: "tenant-0", BatchID: "batch-00"})
	if err != nil || len(rs) == 0 {
		t.Fatalf("recipients after the rebuild: %d (%v)", len(rs), err)
	}
}

// 0005 replaces the unfinished batches' index of 0003, found by its
// definition: read models rebuilt before it hold it under a generated name.
func TestTheUnfinishedIndexIsReplacedWhateverItsName(t *testing.T) {
	pool, err := pgxpool.New(t.Context(), pgtest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	applyUpTo(t, pool, "0005")
	if _, err := pool.Exec(t.Context(), `ALTER INDEX readmodels.batches_unfinished RENAME TO batches_id_idx`); err != nil {
		t.Fatal(err)
	}
	if _, err := migrations.Apply(t.Context(), pool); err != nil {
		t.Fatal(err)
	}
	var old, replaced int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FILTER (WHERE indexname = 'batches_id_idx'),
		count(*) FILTER (WHERE indexname = 'batches_unfinished_or_settling') FROM pg_indexes WHERE schemaname = 'readmodels'`).Scan(&old, &replaced); err != nil {
		t.Fatal(err)
	}
	if old != 0 || replaced != 1 {
		t.Fatalf("after 0005: %d of the old index, %d of the new, want 0 and 1", old, replaced)
	}
}
