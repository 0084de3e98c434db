// Package migrations holds smsbatch's PostgreSQL schema as ordered SQL files
// embedded in the binary, and applies them: each file once, in name order, in its
// own transaction, recorded in schema_migrations. Running them twice is harmless,
// and instances starting together serialise on an advisory lock.
package migrations

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"sort"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed *.sql
var files embed.FS

// lockID is the advisory lock key that serialises migrations ("smsbatch" in ASCII).
const lockID = 0x736d7362617463

// Names lists the migration files in the order they apply.
func Names() []string {
	names, _ := fs.Glob(files, "*.sql")
	sort.Strings(names)
	return names
}

// Apply applies every migration not yet recorded and returns the names applied.
func Apply(ctx context.Context, pool *pgxpool.Pool) ([]string, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockID); err != nil {
		return nil, fmt.Errorf("migrate: lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", lockID)
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		name text PRIMARY KEY,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	var applied []string
	for _, name := range Names() {
		sql, err := files.ReadFile(name)
		if err != nil {
			return applied, fmt.Errorf("migrate %s: %w", name, err)
		}
		did, err := applyOne(ctx, conn.Conn(), name, string(sql))
		if err != nil {
			return applied, err
		}
		if did {
			applied = append(applied, name)
		}
	}
	return applied, nil
}

func applyOne(ctx context.Context, conn *pgx.Conn, name, sql string) (bool, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("migrate %s: %w", name, err)
	}
	defer tx.Rollback(ctx)
	tag, err := tx.Exec(ctx, "INSERT INTO schema_migrations (name) VALUES ($1) ON CONFLICT DO NOTHING", name)
	if err != nil {
		return false, fmt.Errorf("migrate %s: %w", name, err)
	}
	if tag.RowsAffected() == 0 {
		return false, nil // applied before
	}
	if _, err := tx.Exec(ctx, sql); err != nil {
		return false, fmt.Errorf("migrate %s: %w", name, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("migrate %s: %w", name, err)
	}
	return true, nil
}
