package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/projections"
)

// ErrRebuildRunning is returned by Rebuild when another rebuild of the same
// schema holds the rebuild lock.
var ErrRebuildRunning = errors.New("postgres projections: a rebuild is already running")

// RebuildOptions configures Rebuild.
type RebuildOptions struct {
	// Schema is the live schema rebuilt; default DefaultSchema. The shadow copy
	// is Schema + "_rebuild".
	Schema string
	// BatchSize is the most events applied in one transaction; default
	// projections.DefaultReplayBatchSize.
	BatchSize int
	// Progress, if set, is called after every page applied and once caught up.
	Progress func(projections.RebuildProgress)
	// Logger; default discards.
	Logger *slog.Logger
}

func (o *RebuildOptions) setDefaults() {
	if o.Schema == "" {
		o.Schema = DefaultSchema
	}
	if o.BatchSize <= 0 {
		o.BatchSize = projections.DefaultReplayBatchSize
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Rebuild replays every event of events into a shadow copy of the read model
// tables and, once caught up, swaps it in for the live tables in one
// transaction. Live queries and Apply keep working on the live tables
// meanwhile. It can be interrupted (ctx cancelled, process killed) and run
// again: it continues from the shadow copy's checkpoint.
//
// The swap locks the live checkpoint against Apply, replays what was appended
// since the last page, then renames the schemas: the new live tables are at
// least as far as the old ones were, so a runner that carries on from its own
// position skips nothing.
func Rebuild(ctx context.Context, pool *pgxpool.Pool, events eventstore.Store, opts RebuildOptions) error {
	if pool == nil || events == nil {
		return errors.New("postgres projections: rebuild: pool and events are required")
	}
	opts.setDefaults()
	shadowSchema := opts.Schema + "_rebuild"

	// A session advisory lock on a connection held throughout keeps a second
	// rebuild from writing into the same shadow copy.
	lockConn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("postgres projections: rebuild: %w", err)
	}
	defer lockConn.Release()
	var locked bool
	lockKey := "smsbatch readmodels rebuild " + opts.Schema
	if err := lockConn.QueryRow(ctx, "SELECT pg_try_advisory_lock(hashtext($1))", lockKey).Scan(&locked); err != nil {
		return fmt.Errorf("postgres projections: rebuild: lock: %w", err)
	}
	if !locked {
		return ErrRebuildRunning
	}
	defer lockConn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(hashtext($1))", lockKey)

	if err := createShadow(ctx, pool, opts.Schema, shadowSchema); err != nil {
		return err
	}
	shadow, err := New(ctx, pool, Options{Schema: shadowSchema})
	if err != nil {
		return fmt.Errorf("postgres projections: rebuild: %w", err)
	}

	pos, done, err := shadow.progress(ctx)
	if err != nil {
		return err
	}
	opts.Logger.Info("projections: rebuilding", "schema", opts.Schema, "from", pos.String(), "done", done)
	began := time.Now()
	_, done, err = projections.Replay(ctx, events, shadow.Apply, projections.ReplayOptions{
		After: pos, Done: done, BatchSize: opts.BatchSize, Progress: opts.Progress,
	})
	if err != nil {
		return fmt.Errorf("postgres projections: rebuild: %w", err)
	}

	if err := swap(ctx, pool, events, shadow, opts); err != nil {
		return err
	}
	opts.Logger.Info("projections: rebuilt", "schema", opts.Schema, "events", done, "took", time.Since(began).String())
	return nil
}

// createShadow creates the shadow schema with empty copies of the live tables
// and a checkpoint at the start, all or nothing; it leaves one that exists as it
// is, so that an interrupted rebuild resumes.
func createShadow(ctx context.Context, pool *pgxpool.Pool, live, shadow string) error {
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", shadow).Scan(&exists); err != nil {
		return fmt.Errorf("postgres projections: rebuild: %w", err)
	}
	layout, err := schemaLayout(ctx, pool)
	if err != nil {
		return fmt.Errorf("postgres projections: rebuild: %w", err)
	}
	if exists {
		// A rebuild interrupted before migrations changed the live tables
		// left a copy of the tables as they were: resuming into it would
		// fail, or swap in tables without what the migrations added.
		var made *string
		if err := pool.QueryRow(ctx, "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = $1", shadow).Scan(&made); err != nil {
			return fmt.Errorf("postgres projections: rebuild: %w", err)
		}
		if made != nil && *made == layout {
			return nil
		}
		if _, err := pool.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{shadow}.Sanitize()+" CASCADE"); err != nil {
			return fmt.Errorf("postgres projections: rebuild: drop %s made before the last migrations: %w", shadow, err)
		}
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("postgres projections: rebuild: create %s: %w", shadow, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	stmts := []string{"CREATE SCHEMA " + pgx.Identifier{shadow}.Sanitize(),
		"COMMENT ON SCHEMA " + pgx.Identifier{shadow}.Sanitize() + " IS " + quoteLiteral(layout)}
	for _, table := range []string{"batches", "errors", "checkpoints", "recipient_numbers", "recipient_outcomes"} {
		stmts = append(stmts, fmt.Sprintf("CREATE TABLE %s (LIKE %s INCLUDING ALL)",
			pgx.Identifier{shadow, table}.Sanitize(), pgx.Identifier{live, table}.Sanitize()))
	}
	for _, sql := range stmts {
		if _, err := tx.Exec(ctx, sql); err != nil {
			return fmt.Errorf("postgres projections: rebuild: create %s: %w", shadow, err)
		}
	}
	if err := keepIndexNames(ctx, tx, live, shadow); err != nil {
		return fmt.Errorf("postgres projections: rebuild: create %s: %w", shadow, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("postgres projections: rebuild: create %s: %w", shadow, err)
	}
	return nil
}

// keepIndexNames gives the shadow copy's indexes the names of the live ones
// they copy, matched by definition: CREATE TABLE ... LIKE names them anew, and
// a migration that names an index (to drop or change it) must find it in read
// models that were rebuilt.
func keepIndexNames(ctx context.Context, tx pgx.Tx, live, shadow string) error {
	named := func(schema string) (map[string]string, error) {
		rows, err := tx.Query(ctx, `SELECT indexname, regexp_replace(indexdef, '^(CREATE (UNIQUE )?INDEX )\S+ ON [^.]+\.', '\1ON ')
			FROM pg_indexes WHERE schemaname = $1`, schema)
		if err != nil {
			return nil, err
		}
		byDef := make(map[string]string)
		var name, def string
		_, err = pgx.ForEachRow(rows, []any{&name, &def}, func() error {
			byDef[def] = name
			return nil
		})
		return byDef, err
	}
	want, err := named(live)
	if err != nil {
		return fmt.Errorf("read the live indexes: %w", err)
	}
	got, err := named(shadow)
	if err != nil {
		return fmt.Errorf("read the copied indexes: %w", err)
	}
	for def, name := range got {
		if w, ok := want[def]; ok && w != name {
			if _, err := tx.Exec(ctx, "ALTER INDEX "+pgx.Identifier{shadow, name}.Sanitize()+" RENAME TO "+pgx.Identifier{w}.Sanitize()); err != nil {
				return fmt.Errorf("name index %s %s: %w", name, w, err)
			}
		}
	}
	return nil
}

// schemaLayout names the migrations the database has, which made the live
// tables a shadow copy copies.
func schemaLayout(ctx context.Context, pool *pgxpool.Pool) (string, error) {
	var migrated bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL`).Scan(&migrated); err != nil {
		return "", err
	}
	layout := ""
	if migrated {
		if err := pool.QueryRow(ctx, `SELECT COALESCE(string_agg(name, ',' ORDER BY name), '') FROM schema_migrations`).Scan(&layout); err != nil {
			return "", err
		}
	}
	return "smsbatch readmodels after migrations " + layout, nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// progress returns the store's checkpoint and the events applied up to it.
func (s *Store) progress(ctx context.Context) (eventstore.Position, int64, error) {
	var commit, prepare, applied int64
	err := s.pool.QueryRow(ctx, `SELECT commit, prepare, applied FROM `+pgx.Identifier{s.schema, "checkpoints"}.Sanitize()+
		` WHERE name = $1`, checkpointName).Scan(&commit, &prepare, &applied)
	if err != nil {
		return eventstore.Position{}, 0, fmt.Errorf("postgres projections: rebuild: read checkpoint: %w", err)
	}
	return eventstore.Position{Commit: uint64(commit), Prepare: uint64(prepare)}, applied, nil
}

// swap catches the shadow copy up with the last events and renames it live, in
// one transaction. EXCLUSIVE on the live checkpoints table holds off Apply (its
// SELECT ... FOR UPDATE) without blocking readers, and taking it first means no
// Apply holds a lock the drop of the old tables would wait for.
func swap(ctx context.Context, pool *pgxpool.Pool, events eventstore.Store, shadow *Store, opts RebuildOptions) error {
	live, old := opts.Schema, opts.Schema+"_old"
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("postgres projections: rebuild: swap: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, "LOCK TABLE "+pgx.Identifier{live, "checkpoints"}.Sanitize()+" IN EXCLUSIVE MODE"); err != nil {
		return fmt.Errorf("postgres projections: rebuild: swap: lock live checkpoint: %w", err)
	}
	pos, _, err := shadow.progress(ctx)
	if err != nil {
		return err
	}
	_, _, err = projections.Replay(ctx, events, func(ctx context.Context, page []eventstore.Event) error {
		use, err := projections.DecodePage(page)
		if err != nil {
			return err
		}
		shadow.mu.Lock()
		defer shadow.mu.Unlock()
		_, _, err = shadow.applyTx(ctx, tx, page, use)
		return err
	}, projections.ReplayOptions{After: pos, BatchSize: opts.BatchSize})
	if err != nil {
		return fmt.Errorf("postgres projections: rebuild: swap: %w", err)
	}
	// Take the live tables in the order readers use them within one
	// transaction (the checkpoint, then the batches, then a batch's
	// recipients), before the drop below takes them in its own order: a
	// reader holding the checkpoint and asking for the batches (Unfinished)
	// deadlocked with the drop holding the batches and asking for the
	// checkpoint, failing the read or the rebuild.
	lockLive := "LOCK TABLE "
	for i, table := range []string{"checkpoints", "batches", "recipient_numbers", "recipient_outcomes", "errors"} {
		if i > 0 {
			lockLive += ", "
		}
		lockLive += pgx.Identifier{live, table}.Sanitize()
	}
	if _, err := tx.Exec(ctx, lockLive+" IN ACCESS EXCLUSIVE MODE"); err != nil {
		return fmt.Errorf("postgres projections: rebuild: swap: lock live tables: %w", err)
	}
	for _, sql := range []string{
		"DROP SCHEMA IF EXISTS " + pgx.Identifier{old}.Sanitize() + " CASCADE",
		"ALTER SCHEMA " + pgx.Identifier{live}.Sanitize() + " RENAME TO " + pgx.Identifier{old}.Sanitize(),
		"ALTER SCHEMA " + pgx.Identifier{shadow.schema}.Sanitize() + " RENAME TO " + pgx.Identifier{live}.Sanitize(),
		"DROP SCHEMA " + pgx.Identifier{old}.Sanitize() + " CASCADE",
	} {
		if _, err := tx.Exec(ctx, sql); err != nil {
			return fmt.Errorf("postgres projections: rebuild: swap: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("postgres projections: rebuild: swap: commit: %w", err)
	}
	return nil
}
