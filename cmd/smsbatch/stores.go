package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/bolt"
	"github.com/smsbatch/smsbatch/eventstore/kurrent"
	pgevents "github.com/smsbatch/smsbatch/eventstore/postgres"
	"github.com/smsbatch/smsbatch/migrations"
	"github.com/smsbatch/smsbatch/projections"
	projbolt "github.com/smsbatch/smsbatch/projections/bolt"
	projmemory "github.com/smsbatch/smsbatch/projections/memory"
	projpg "github.com/smsbatch/smsbatch/projections/postgres"
)

// openEventStore opens the configured event store.
func openEventStore(ctx context.Context, cfg Config, logger *slog.Logger) (eventstore.Store, error) {
	switch cfg.EventStore {
	case "kurrent":
		// The opt-out lists follow their streams through the global order too.
		prefixes := append(slices.Clone(kurrent.DefaultStreamPrefixes), domain.OptOutStreamPrefix)
		store, err := kurrent.Open(cfg.EventStoreURL, kurrent.Options{StreamPrefixes: prefixes})
		if err != nil {
			return nil, fmt.Errorf("open KurrentDB event store: %w", err)
		}
		return store, nil
	case "postgres":
		store, err := pgevents.Open(ctx, cfg.EventStoreURL, pgevents.Options{})
		if err != nil {
			return nil, fmt.Errorf("open PostgreSQL event store: %w", err)
		}
		return store, nil
	default:
		store, err := bolt.Open(eventsFile(cfg.DataDir), bolt.Options{Logger: logger})
		if err != nil {
			return nil, fmt.Errorf("open event store: %w", err)
		}
		return store, nil
	}
}

// exclusiveStore reports whether the configured event store can be open in one
// process at a time (the embedded bbolt file is locked).
func exclusiveStore(cfg Config) bool {
	return cfg.EventStore != "kurrent" && cfg.EventStore != "postgres"
}

// readModels is the configured read-model store and what closes it.
type readModels struct {
	projections.Store
	close func() error
}

func (r readModels) Close() error {
	if r.close == nil {
		return nil
	}
	return r.close()
}

// openReadModels opens the configured read models for events.
func openReadModels(ctx context.Context, cfg Config, events eventstore.Store, logger *slog.Logger) (readModels, error) {
	switch cfg.ReadStore {
	case "memory":
		return readModels{Store: projmemory.New()}, nil
	case "postgres":
		return openPostgresReadModels(ctx, cfg)
	default:
		return openEmbeddedReadModels(ctx, cfg, events, logger)
	}
}

// openEmbeddedReadModels opens the read models kept in the data directory with
// their checkpoint. A data directory without them (a new one, or one of a
// version that kept them in memory) gets an empty file, which the runner builds
// from the events once.
func openEmbeddedReadModels(ctx context.Context, cfg Config, events eventstore.Store, logger *slog.Logger) (readModels, error) {
	path := filepath.Join(cfg.DataDir, projbolt.FileName)
	store, reset, err := projbolt.OpenFor(ctx, path, events, projbolt.Options{})
	if errors.Is(err, projbolt.ErrInUse) {
		return readModels{}, fmt.Errorf("open read models: %w: is another smsbatch running on %s?", err, cfg.DataDir)
	}
	if err != nil {
		return readModels{}, fmt.Errorf("open read models: %w", err)
	}
	if reset != "" {
		logger.Warn("projections: read models removed, rebuilding them from the events", "path", path, "reason", reset)
	}
	return readModels{Store: store, close: store.Close}, nil
}

func openPostgresReadModels(ctx context.Context, cfg Config) (readModels, error) {
	pool, err := openPool(ctx, cfg.ReadStoreURL)
	if err != nil {
		return readModels{}, fmt.Errorf("read store: %w", err)
	}
	if _, err := migrations.Apply(ctx, pool); err != nil {
		pool.Close()
		return readModels{}, err
	}
	store, err := projpg.New(ctx, pool, projpg.Options{})
	if err != nil {
		pool.Close()
		return readModels{}, err
	}
	return readModels{Store: store, close: func() error { pool.Close(); return nil }}, nil
}

func openPool(ctx context.Context, url string) (*pgxpool.Pool, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL connection settings: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	return pool, nil
}

// migrate applies the migrations to every PostgreSQL database configured.
func migrate(ctx context.Context, cfg Config, out io.Writer) error {
	urls := map[string]bool{}
	if cfg.EventStore == "postgres" {
		urls[cfg.EventStoreURL] = true
	}
	if cfg.ReadStore == "postgres" {
		urls[cfg.ReadStoreURL] = true
	}
	if len(urls) == 0 {
		return errors.New("nothing to migrate: neither the event store nor the read store is postgres")
	}
	for url := range urls {
		pool, err := openPool(ctx, url)
		if err != nil {
			return err
		}
		applied, err := migrations.Apply(ctx, pool)
		pool.Close()
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "applied %d migration(s) %v; %d known\n", len(applied), applied, len(migrations.Names()))
	}
	return nil
}

// rebuildProjections replays every event into fresh read models and swaps them
// in. The read models share one state per batch, so status, analytics and
// errors are rebuilt together whichever is named.
func rebuildProjections(ctx context.Context, cfg Config, which string, out io.Writer) error {
	switch which {
	case "", "all", "status", "analytics", "errors":
	default:
		return fmt.Errorf("projections rebuild %q: want status, analytics, errors or all", which)
	}
	if cfg.ReadStore == "memory" {
		return errors.New("projections rebuild: in-memory read models are rebuilt at every start; nothing to rebuild")
	}
	if cfg.EventStore == "bolt" {
		// Opening the event store would create an empty one: a mistyped data
		// directory would then "rebuild" nothing.
		if _, err := os.Stat(filepath.Join(cfg.DataDir, "events.db")); err != nil {
			return fmt.Errorf("projections rebuild: no event store in the data directory %s: %w", cfg.DataDir, err)
		}
	}
	events, err := openEventStore(ctx, cfg, slog.New(slog.NewTextHandler(out, nil)))
	if errors.Is(err, bolt.ErrInUse) {
		return fmt.Errorf("projections rebuild: %w: stop the service first (it holds %s)", err, cfg.DataDir)
	}
	if err != nil {
		return err
	}
	defer events.Close()
	progress := &progressPrinter{out: out}
	if cfg.ReadStore != "postgres" {
		path := filepath.Join(cfg.DataDir, projbolt.FileName)
		err := projbolt.Rebuild(ctx, path, events, projbolt.RebuildOptions{Progress: progress.report})
		if errors.Is(err, projbolt.ErrInUse) {
			return fmt.Errorf("projections rebuild: %w: stop the service first", err)
		}
		return progress.done(err)
	}
	pool, err := openPool(ctx, cfg.ReadStoreURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := migrations.Apply(ctx, pool); err != nil {
		return err
	}
	return progress.done(projpg.Rebuild(ctx, pool, events, projpg.RebuildOptions{Progress: progress.report}))
}

// progressPrinter prints a rebuild's progress, at most a line a second, and
// a last line once it is done.
type progressPrinter struct {
	out     io.Writer
	printed time.Time
	last    projections.RebuildProgress
}

func (p *progressPrinter) report(r projections.RebuildProgress) {
	p.last = r
	if time.Since(p.printed) < time.Second {
		return
	}
	p.printed = time.Now()
	total := "?"
	if r.Total > 0 {
		total = fmt.Sprint(r.Total)
	}
	fmt.Fprintf(p.out, "rebuild: %d/%s events, %.0f events/s, %s left\n", r.Done, total, r.Rate, r.Remaining.Round(time.Second))
}

func (p *progressPrinter) done(err error) error {
	if err == nil {
		fmt.Fprintf(p.out, "rebuild: done, %d events, %.0f events/s\n", p.last.Done, p.last.Rate)
	}
	return err
}

// storeHealth is why the event store can serve nothing more (the embedded store
// met corrupt data), or nil: readiness turns red on it.
func storeHealth(store eventstore.Store) error {
	h, ok := store.(interface{ Health() error })
	if !ok {
		return nil
	}
	if err := h.Health(); err != nil {
		return fmt.Errorf("event store: %w", err)
	}
	return nil
}
