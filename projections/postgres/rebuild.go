package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/smsbatch/smsbatch/eventstore"
)

// DefaultRebuildBatchSize is how many events a rebuild applies at a time when
// RebuildOptions.BatchSize is not set.
const DefaultRebuildBatchSize = 2000

// ErrRebuildRunning is returned by Rebuild when another rebuild of the same
// schema holds the rebuild lock.
var ErrRebuildRunning = errors.New("postgres projections: a rebuild is already running")

// RebuildOptions configures Rebuild.
type RebuildOptions struct {
	// Schema is the live schema rebuilt; default DefaultSchema. The shadow copy
	// is Schema + "_rebuild".
	Schema string
	// BatchSize is the most events applied in one transaction; default
	// DefaultRebuildBatchSize.
	BatchSize int
	// Progress, if set, is called after every page applied and once caught up.
	Progress func(Progress)
	// Logger; default discards.
	Logger *slog.Logger
}

func (o *RebuildOptions) setDefaults() {
	if o.Schema == "" {
		o.Schema = DefaultSchema
	}
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultRebuildBatchSize
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Progress of a rebuild.
type Progress struct {
	// Done counts the events replayed into the shadow copy, earlier interrupted
	// runs included.
	Done int64
	// Total is the number of events in the store when the rebuild began; 0 when
	// the event store cannot count them (see Counter).
	Total int64
	// Rate is events per second replayed by this run.
	Rate float64
	// Remaining estimates the time left; 0 when Total is unknown.
	Remaining time.Duration
}

// Counter is implemented by event stores that can count their events cheaply;
// Rebuild uses it, when the store has it, to report Progress.Total.
type Counter interface {
	// Count returns the number of events stored.
	Count(ctx context.Context) (int64, error)
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

	var total int64
	if c, ok := events.(Counter); ok {
		if total, err = c.Count(ctx); err != nil {
			return fmt.Errorf("postgres projections: rebuild: count events: %w", err)
		}
	}
	pos, done, err := shadow.progress(ctx)
	if err != nil {
		return err
	}
	opts.Logger.Info("projections: rebuilding", "schema", opts.Schema, "from", pos.String(), "done", done, "total", total)
	began, startDone := time.Now(), done
	report := func() {
		if opts.Progress == nil {
			return
		}
		p := Progress{Done: done, Total: total}
		if elapsed := time.Since(began).Seconds(); elapsed > 0 {
			p.Rate = float64(done-startDone) / elapsed
		}
		if p.Rate > 0 && total > done {
			p.Remaining = time.Duration(float64(total-done) / p.Rate * float64(time.Second))
		}
		opts.Progress(p)
	}

	for {
		page, err := events.ReadAll(ctx, pos, opts.BatchSize)
		if err != nil {
			return fmt.Errorf("postgres projections: rebuild: read events after %s: %w", pos, err)
		}
		if len(page) == 0 {
			break
		}
		if err := shadow.Apply(ctx, page); err != nil {
			return fmt.Errorf("postgres projections: rebuild: %w", err)
		}
		pos = page[len(page)-1].Position
		done += int64(len(page))
		report()
	}
	report()

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
	if exists {
		return nil
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("postgres projections: rebuild: create %s: %w", shadow, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	stmts := []string{"CREATE SCHEMA " + pgx.Identifier{shadow}.Sanitize()}
	for _, table := range []string{"batches", "errors", "checkpoints"} {
		stmts = append(stmts, fmt.Sprintf("CREATE TABLE %s (LIKE %s INCLUDING ALL)",
			pgx.Identifier{shadow, table}.Sanitize(), pgx.Identifier{live, table}.Sanitize()))
	}
	for _, sql := range stmts {
		if _, err := tx.Exec(ctx, sql); err != nil {
			return fmt.Errorf("postgres projections: rebuild: create %s: %w", shadow, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("postgres projections: rebuild: create %s: %w", shadow, err)
	}
	return nil
}

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
	for {
		page, err := events.ReadAll(ctx, pos, opts.BatchSize)
		if err != nil {
			return fmt.Errorf("postgres projections: rebuild: swap: read events after %s: %w", pos, err)
		}
		if len(page) == 0 {
			break
		}
		use, err := decodeAll(page)
		if err != nil {
			return fmt.Errorf("postgres projections: rebuild: swap: %w", err)
		}
		if err := shadow.applyTx(ctx, tx, page, use); err != nil {
			return fmt.Errorf("postgres projections: rebuild: swap: %w", err)
		}
		pos = page[len(page)-1].Position
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
