package commands

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/bolt"
	"github.com/smsbatch/smsbatch/eventstore/memory"
	"github.com/smsbatch/smsbatch/eventstore/postgres"
	"github.com/smsbatch/smsbatch/internal/pgtest"
)

// benchStores are the stores the load benchmarks run on: PostgreSQL on
// TEST_DATABASE_URL or a throwaway cluster, skipped when there is none.
var benchStores = []struct {
	name string
	open func(b *testing.B) eventstore.Store
}{
	{"memory", func(b *testing.B) eventstore.Store {
		s := memory.New()
		b.Cleanup(func() { _ = s.Close() })
		return s
	}},
	{"bolt", openBenchBolt},
	{"postgres", func(b *testing.B) eventstore.Store {
		url := pgtest.Database(b)
		s, err := postgres.Open(context.Background(), url, postgres.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = s.Close() })
		return s
	}},
}

func openBenchBolt(b *testing.B) eventstore.Store {
	s, err := bolt.Open(filepath.Join(b.TempDir(), "events.db"), bolt.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

// withoutSnapshots hides every snapshot, so that a repository over it loads as
// one did before snapshots: by replaying the whole stream.
type withoutSnapshots struct{ eventstore.Store }

func (withoutSnapshots) ReadStreamBackward(context.Context, string, uint64, int) ([]eventstore.Event, error) {
	return nil, nil
}

// seedChunk bounds the events of one append while seeding, to keep the seeding of
// a million outcomes to a few hundred appends.
const seedChunk = 2000

// seedBatch stores batch id with outcomes messages sent, and the snapshots a
// repository writing every repo.snapshotEvery events writes (at the first version
// stored past each multiple). With worstTail it then sends on to just before the
// next multiple, so that a cold load replays almost SnapshotEvery events after
// the newest snapshot, the most it ever does. It returns the messages sent and
// the events after the newest snapshot.
func seedBatch(repo *Repository, id string, outcomes int, worstTail bool) (sent int, tail uint64, err error) {
	ctx := context.Background()
	every := uint64(repo.snapshotEvery)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tmpl, _ := domain.NewTemplate("Hi {{name}}", domain.DefaultTemplateLimits)
	bt, err := domain.NewBatch(domain.NewBatchParams{
		ID: id, Tenant: "acme", Template: tmpl, AutoStart: true, Total: outcomes + int(every) + 10, Pages: 1,
	}, now)
	if err != nil {
		return 0, 0, err
	}
	var stored, snapshotAt uint64
	flush := func() error {
		if len(bt.Changes()) == 0 {
			return nil
		}
		data, err := encodeEvents(bt.Changes())
		if err != nil {
			return err
		}
		if _, err := repo.store.Append(ctx, domain.BatchStream(id), eventstore.After(stored), data); err != nil {
			return err
		}
		bt.ClearChanges()
		if stored/every != bt.Version()/every {
			if err := repo.appendSnapshot(ctx, bt); err != nil {
				return err
			}
			snapshotAt = bt.Version()
		}
		stored = bt.Version()
		return nil
	}
	round := func() error {
		ds, err := bt.Dispatch(now, domain.DispatchRequest{Slice: "s", PrevSlice: bt.LastSlice(), Max: 5, MaxInFlight: 5})
		if err != nil {
			return err
		}
		for _, d := range ds {
			if err := bt.RecordSent(now, domain.SentParams{Index: d.Index, Attempt: d.Attempt, Segments: 1}); err != nil {
				return err
			}
		}
		sent += len(ds)
		return nil
	}
	for sent < outcomes {
		if err := round(); err != nil {
			return 0, 0, err
		}
		if len(bt.Changes()) >= seedChunk || stored/every != bt.Version()/every {
			if err := flush(); err != nil {
				return 0, 0, err
			}
		}
	}
	// A round adds 6 events (a dispatch of 5 and their outcomes).
	for worstTail && bt.Version()+6 < (bt.Version()/every+1)*every {
		if err := round(); err != nil {
			return 0, 0, err
		}
		if len(bt.Changes()) >= seedChunk {
			if err := flush(); err != nil {
				return 0, 0, err
			}
		}
	}
	if err := flush(); err != nil {
		return 0, 0, err
	}
	return sent, bt.Version() - snapshotAt, nil
}

// BenchmarkLoadBatch: loading a batch whose stream holds 100,000 outcomes (and
// 1,000,000 with SMSBATCH_BENCH_BIG=1, as `make bench` sets), with their
// dispatches, on each store:
//
//   - cold: a repository that never saw the batch, as after a restart, on another
//     instance or after the cache dropped it. "snapshot" restores the newest
//     snapshot and replays the events after it; the batch is seeded so that
//     they are SnapshotEvery-6 or so, the most a load replays. "no-snapshot"
//     replays the whole stream, as loads did before snapshots.
//   - cached: caught up from its last revision after one more event, as on the
//     send processor's hot path (the op includes appending that event).
func BenchmarkLoadBatch(b *testing.B) {
	sizes := []int{100_000}
	if os.Getenv("SMSBATCH_BENCH_BIG") != "" {
		sizes = append(sizes, 1_000_000)
	}
	for _, st := range benchStores {
		b.Run(st.name, func(b *testing.B) {
			store := st.open(b)
			for _, n := range sizes {
				b.Run(fmt.Sprintf("outcomes=%d", n), func(b *testing.B) {
					id := fmt.Sprint("big-", n)
					repo, _ := NewRepository(store, 0)
					start := time.Now()
					sent, tail, err := seedBatch(repo, id, n, true)
					if err != nil {
						b.Fatal(err)
					}
					b.Logf("seeded %d outcomes on %s in %s; %d events after the newest snapshot",
						sent, st.name, time.Since(start).Round(time.Millisecond), tail)
					benchLoads(b, store, repo, id, sent, tail)
				})
			}
		})
	}
}

func benchLoads(b *testing.B, store eventstore.Store, repo *Repository, id string, sent int, tail uint64) {
	ctx := context.Background()
	b.Run("cold/snapshot", func(b *testing.B) {
		for range b.N {
			fresh, _ := NewRepository(store, 0)
			got, err := fresh.Load(ctx, id)
			if err != nil || got.Sent() != sent {
				b.Fatalf("load: %v, sent %d, want %d", err, got.Sent(), sent)
			}
		}
		b.ReportMetric(float64(sent), "outcomes")
		b.ReportMetric(float64(tail), "events-replayed")
	})
	b.Run("cold/no-snapshot", func(b *testing.B) {
		for range b.N {
			fresh, _ := NewRepositoryFromConfig(RepositoryConfig{Store: withoutSnapshots{store}, SnapshotEvery: -1})
			got, err := fresh.Load(ctx, id)
			if err != nil || got.Sent() != sent {
				b.Fatalf("load: %v, sent %d, want %d", err, got.Sent(), sent)
			}
		}
		b.ReportMetric(float64(sent), "outcomes")
	})
	b.Run("cached", func(b *testing.B) {
		if _, err := repo.Load(ctx, id); err != nil {
			b.Fatal(err)
		}
		now := time.Now()
		for range b.N {
			// One more event, as a pause from another instance would add.
			_, err := repo.Update(ctx, id, func(bt *domain.Batch) error {
				if bt.Status() == domain.StatusPaused {
					return bt.Resume(now, "bench")
				}
				return bt.Pause(now, "bench")
			})
			if err != nil {
				b.Fatalf("update: %v", err)
			}
		}
	})
}

// BenchmarkLoadManyBatches: one op loads the next of 5,000 batches in turn, each
// with 1,000 outcomes (about 1,200 events: a snapshot near 1,000 and some 200
// events after it), on the embedded store, as slices of 5,000 running batches
// do. "cache=default" holds them all after a first pass; "cache=1000" (the
// old default) misses on every load and restores the snapshot; "no-snapshot"
// misses and replays whole streams, as before snapshots.
func BenchmarkLoadManyBatches(b *testing.B) {
	if os.Getenv("SMSBATCH_BENCH_BIG") == "" {
		b.Skip("seeds 6 million events (a minute, 2 GB of disk): set SMSBATCH_BENCH_BIG=1, as make bench does")
	}
	const batches, outcomes = 5000, 1000
	store := openBenchBolt(b)
	seeder, _ := NewRepository(store, 0)
	start := time.Now()
	// Seeders in parallel share the store's commits.
	ids := make(chan string)
	errs := make(chan error, 8)
	for range cap(errs) {
		go func() {
			var err error
			for id := range ids {
				if err == nil {
					_, _, err = seedBatch(seeder, id, outcomes, false)
				}
			}
			errs <- err
		}()
	}
	for i := range batches {
		ids <- fmt.Sprint("many-", i)
	}
	close(ids)
	for range cap(errs) {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("seeded %d batches of %d outcomes in %s", batches, outcomes, time.Since(start).Round(time.Millisecond))

	loadAll := func(b *testing.B, repo *Repository) {
		ctx := context.Background()
		for i := range b.N {
			got, err := repo.Load(ctx, fmt.Sprint("many-", i%batches))
			if err != nil || got.Sent() != outcomes {
				b.Fatalf("load: %v", err)
			}
		}
	}
	b.Run("cache=default", func(b *testing.B) {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		repo, _ := NewRepository(store, 0)
		for i := range batches { // the first pass misses; every later load hits
			if _, err := repo.Load(context.Background(), fmt.Sprint("many-", i)); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ResetTimer()
		loadAll(b, repo)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/batches, "heap-B/cached-batch")
	})
	b.Run("cache=1000", func(b *testing.B) {
		repo, _ := NewRepository(store, 1000)
		loadAll(b, repo)
	})
	b.Run("cache=1000/no-snapshot", func(b *testing.B) {
		repo, _ := NewRepositoryFromConfig(RepositoryConfig{Store: withoutSnapshots{store}, MaxCached: 1000, SnapshotEvery: -1})
		loadAll(b, repo)
	})
}

// BenchmarkUpdateWithSnapshots: what writing snapshots adds to the hot path. One
// op is one update appending a dispatch of 5 and their outcomes (6 events, about
// a busy slice's worth), with a snapshot every 1,000 events (after every 167th
// update) or none; "snapshot-only" is one snapshot write alone. On memory the
// difference is the CPU a snapshot costs; on bolt each append is an fsync.
func BenchmarkUpdateWithSnapshots(b *testing.B) {
	for _, st := range benchStores[:2] {
		b.Run(st.name, func(b *testing.B) {
			for _, every := range []int{DefaultSnapshotEvery, -1} {
				name := fmt.Sprintf("every=%d", every)
				if every < 0 {
					name = "none"
				}
				b.Run(name, func(b *testing.B) {
					repo, _ := NewRepositoryFromConfig(RepositoryConfig{Store: st.open(b), SnapshotEvery: every})
					addBatch(b, repo, "hot", 10_000_000)
					b.ResetTimer()
					for range b.N {
						send(b, repo, "hot", 5)
					}
				})
			}
			b.Run("snapshot-only", func(b *testing.B) {
				repo, _ := NewRepositoryFromConfig(RepositoryConfig{Store: st.open(b), SnapshotEvery: -1})
				addBatch(b, repo, "hot", 10_000_000)
				send(b, repo, "hot", 5)
				bt, err := repo.Load(context.Background(), "hot")
				if err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				for range b.N {
					if err := repo.appendSnapshot(context.Background(), bt); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
