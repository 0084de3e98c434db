package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/bolt"
	"github.com/smsbatch/smsbatch/eventstore/kurrent"
	pgevents "github.com/smsbatch/smsbatch/eventstore/postgres"
	"github.com/smsbatch/smsbatch/migrations"
	"github.com/smsbatch/smsbatch/projections"
	projmemory "github.com/smsbatch/smsbatch/projections/memory"
	projpg "github.com/smsbatch/smsbatch/projections/postgres"
)

// openEventStore opens the configured event store.
func openEventStore(ctx context.Context, cfg Config, logger *slog.Logger) (eventstore.Store, error) {
	switch cfg.EventStore {
	case "kurrent":
		store, err := kurrent.Open(cfg.EventStoreURL, kurrent.Options{})
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

// readModels is the configured read-model store and what closes it.
type readModels struct {
	projections.Store
	pool *pgxpool.Pool
}

func (r readModels) Close() {
	if r.pool != nil {
		r.pool.Close()
	}
}

func openReadModels(ctx context.Context, cfg Config) (readModels, error) {
	if cfg.ReadStore != "postgres" {
		return readModels{Store: projmemory.New()}, nil
	}
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
	return readModels{Store: store, pool: pool}, nil
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

// rebuildProjections replays every event into fresh read-model tables and swaps
// them in. The read models share one state table per batch, so status, analytics
// and errors are rebuilt together whichever is named.
func rebuildProjections(ctx context.Context, cfg Config, which string, out io.Writer) error {
	switch which {
	case "", "all", "status", "analytics", "errors":
	default:
		return fmt.Errorf("projections rebuild %q: want status, analytics, errors or all", which)
	}
	if cfg.ReadStore != "postgres" {
		return errors.New("projections rebuild needs --read-store postgres: in-memory read models are rebuilt at every start")
	}
	events, err := openEventStore(ctx, cfg, slog.New(slog.NewTextHandler(out, nil)))
	if err != nil {
		return err
	}
	defer events.Close()
	pool, err := openPool(ctx, cfg.ReadStoreURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := migrations.Apply(ctx, pool); err != nil {
		return err
	}
	last := time.Time{}
	return projpg.Rebuild(ctx, pool, events, projpg.RebuildOptions{
		Progress: func(p projpg.Progress) {
			if time.Since(last) < time.Second && p.Total != p.Done {
				return
			}
			last = time.Now()
			total := "?"
			if p.Total > 0 {
				total = fmt.Sprint(p.Total)
			}
			fmt.Fprintf(out, "rebuild: %d/%s events, %.0f events/s, %s left\n", p.Done, total, p.Rate, p.Remaining.Round(time.Second))
		},
	})
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
