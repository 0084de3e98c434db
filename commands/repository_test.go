package commands

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/memory"
)

// countingStore counts what the repository reads: events read forward from each
// stream and backward reads of each stream. failSnapshots makes appends to
// snapshot streams fail.
type countingStore struct {
	eventstore.Store

	mu        sync.Mutex
	read      map[string]int // events returned by ReadStream, by stream
	readCalls map[string]int // ReadStream calls, by stream
	backward  map[string]int // ReadStreamBackward calls, by stream
	appends   map[string]int // Append calls, by stream
	// delays holds the commit delay each append asked for
	// (eventstore.WithCommitDelay), by the type of its first event.
	delays        map[string][]time.Duration
	failSnapshots bool
}

func newCountingStore(s eventstore.Store) *countingStore {
	return &countingStore{Store: s, read: map[string]int{}, readCalls: map[string]int{}, backward: map[string]int{}, appends: map[string]int{}}
}

func (c *countingStore) ReadStream(ctx context.Context, stream string, from uint64, max int) ([]eventstore.Event, error) {
	evs, err := c.Store.ReadStream(ctx, stream, from, max)
	c.mu.Lock()
	c.read[stream] += len(evs)
	c.readCalls[stream]++
	c.mu.Unlock()
	return evs, err
}

func (c *countingStore) ReadStreamBackward(ctx context.Context, stream string, from uint64, max int) ([]eventstore.Event, error) {
	c.mu.Lock()
	c.backward[stream]++
	c.mu.Unlock()
	return c.Store.ReadStreamBackward(ctx, stream, from, max)
}

func (c *countingStore) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	c.mu.Lock()
	fail := c.failSnapshots && strings.HasPrefix(stream, domain.SnapshotStreamPrefix)
	c.appends[stream]++
	if c.delays == nil {
		c.delays = map[string][]time.Duration{}
	}
	c.delays[events[0].Type] = append(c.delays[events[0].Type], eventstore.CommitDelay(ctx))
	c.mu.Unlock()
	if fail {
		return eventstore.AppendResult{}, fmt.Errorf("append to %s: %w", stream, eventstore.ErrUnavailable)
	}
	return c.Store.Append(ctx, stream, expected, events)
}

func (c *countingStore) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.read)
	clear(c.readCalls)
	clear(c.backward)
}

func (c *countingStore) counts(stream string) (read, backward int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.read[stream], c.backward[stream]
}

// logBuffer collects what a repository logs.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func newRepo(t *testing.T, store eventstore.Store, cfg RepositoryConfig) (*Repository, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	cfg.Store = store
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	repo, err := NewRepositoryFromConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return repo, logs
}

// addBatch stores a new, started batch of total recipients.
func addBatch(t testing.TB, repo *Repository, id string, total int) {
	t.Helper()
	tmpl, _ := domain.NewTemplate("Hi {{name}}", domain.DefaultTemplateLimits)
	b, err := domain.NewBatch(domain.NewBatchParams{ID: id, Tenant: "acme", Template: tmpl, AutoStart: true, Total: total, Pages: 1}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Add(context.Background(), b); err != nil {
		t.Fatal(err)
	}
}

// send dispatches and records as sent up to n messages of batch id, in one
// update: about 1.2 events per message.
func send(t testing.TB, repo *Repository, id string, n int) {
	t.Helper()
	now := time.Now()
	_, err := repo.Update(context.Background(), id, func(b *domain.Batch) error {
		for done := 0; done < n && !b.Status().Final(); {
			ds, err := b.Dispatch(now, domain.DispatchRequest{Slice: "s", PrevSlice: b.LastSlice(), Max: min(5, n-done), MaxInFlight: 5})
			if err != nil {
				return err
			}
			for _, d := range ds {
				if err := b.RecordSent(now, domain.SentParams{Index: d.Index, Attempt: d.Attempt, Segments: 1}); err != nil {
					return err
				}
			}
			done += len(ds)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// replayed loads batch id from every event of its stream, as a repository without
// snapshots would.
func replayed(t *testing.T, store eventstore.Store, id string) *domain.Batch {
	t.Helper()
	var history []domain.Event
	for {
		evs, err := store.ReadStream(context.Background(), domain.BatchStream(id), uint64(len(history)), 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) == 0 {
			break
		}
		for _, se := range evs {
			e, err := domain.DecodeEvent(se.Type, se.Data)
			if err != nil {
				t.Fatal(err)
			}
			history = append(history, e)
		}
	}
	b, err := domain.LoadBatch(history)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// snapshots returns the snapshots stored for batch id, oldest first.
func snapshots(t *testing.T, store eventstore.Store, id string) []domain.BatchSnapshot {
	t.Helper()
	evs, err := store.ReadStream(context.Background(), domain.SnapshotStream(id), 0, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]domain.BatchSnapshot, len(evs))
	for i, e := range evs {
		if e.Type != domain.TypeBatchSnapshot {
			t.Fatalf("snapshot stream holds a %s event", e.Type)
		}
		if err := json.Unmarshal(e.Data, &out[i]); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func sameBatch(t *testing.T, got, want *domain.Batch) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("loaded batch differs from a full replay:\n got  %+v\n want %+v", got, want)
	}
}

func TestColdLoadReadsOnlyTheEventsAfterTheSnapshot(t *testing.T) {
	store := newCountingStore(memory.New())
	defer store.Close()
	writer, _ := newRepo(t, store, RepositoryConfig{SnapshotEvery: 100})
	addBatch(t, writer, "b1", 1000)
	for range 30 {
		send(t, writer, "b1", 12) // about 15 events each
	}
	snaps := snapshots(t, store, "b1")
	if len(snaps) == 0 {
		t.Fatal("no snapshot written")
	}
	newest := snaps[len(snaps)-1]
	want := replayed(t, store, "b1")
	if newest.Version == want.Version() {
		t.Fatalf("the newest snapshot is at the end of the stream (%d); the test needs events after it", want.Version())
	}

	store.reset()
	cold, _ := newRepo(t, store, RepositoryConfig{SnapshotEvery: 100})
	got, err := cold.Load(context.Background(), "b1")
	if err != nil {
		t.Fatal(err)
	}
	sameBatch(t, got, want)
	read, _ := store.counts(domain.BatchStream("b1"))
	if tail := int(want.Version() - newest.Version); read != tail {
		t.Errorf("cold load read %d events of the batch stream, want the %d after the snapshot at version %d of %d",
			read, tail, newest.Version, want.Version())
	}
	snapRead, snapBackward := store.counts(domain.SnapshotStream("b1"))
	if snapRead != 0 || snapBackward != 1 {
		t.Errorf("cold load read the snapshot stream %d times forward (%d events) and %d times backward; want one backward read",
			snapRead, snapRead, snapBackward)
	}

	// Cached now: one more event reads one event.
	send(t, writer, "b1", 1)
	store.reset()
	if _, err := cold.Load(context.Background(), "b1"); err != nil {
		t.Fatal(err)
	}
	if read, backward := store.counts(domain.BatchStream("b1")); read != 2 || backward != 0 {
		t.Errorf("cached load after one more send read %d events, want 2 (the dispatch and the outcome)", read)
	}
	if _, backward := store.counts(domain.SnapshotStream("b1")); backward != 0 {
		t.Errorf("cached load read the snapshot stream")
	}
}

func TestSnapshotsAreWrittenEveryNEvents(t *testing.T) {
	const every = 50
	store := memory.New()
	defer store.Close()
	repo, _ := newRepo(t, store, RepositoryConfig{SnapshotEvery: every})
	addBatch(t, repo, "b1", 5000)
	var history []uint64 // versions after each update
	for i := range 80 {
		send(t, repo, "b1", 1+i%9)
		b, err := repo.Load(context.Background(), "b1")
		if err != nil {
			t.Fatal(err)
		}
		history = append(history, b.Version())
	}
	last := history[len(history)-1]
	snaps := snapshots(t, store, "b1")
	if want := int(last / every); len(snaps) != want {
		t.Fatalf("%d snapshots for %d events, want one per %d events: %d", len(snaps), last, every, want)
	}
	events, err := store.ReadStream(context.Background(), domain.BatchStream("b1"), 0, 100_000)
	if err != nil {
		t.Fatal(err)
	}
	var decoded []domain.Event
	for _, se := range events {
		e, _ := domain.DecodeEvent(se.Type, se.Data)
		decoded = append(decoded, e)
	}
	for i, s := range snaps {
		// Written by the update that crossed the i+1-th multiple: at the first
		// version stored at or after it, within one update's worth of events.
		if s.Version < uint64(i+1)*every || s.Version >= uint64(i+1)*every+20 {
			t.Errorf("snapshot %d at version %d, want the first version past %d", i, s.Version, (i+1)*every)
		}
		if s.Format != domain.SnapshotFormat {
			t.Errorf("snapshot %d has format %d, want %d", i, s.Format, domain.SnapshotFormat)
		}
		restored, err := domain.RestoreBatch(s)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := domain.LoadBatch(decoded[:s.Version])
		sameBatch(t, restored, want)
	}
}

func TestUnusableSnapshotFallsBackToAFullReplay(t *testing.T) {
	good := func(t *testing.T, store eventstore.Store) domain.BatchSnapshot {
		snaps := snapshots(t, store, "b1")
		if len(snaps) == 0 {
			t.Fatal("no snapshot written")
		}
		return snaps[len(snaps)-1]
	}
	tests := []struct {
		name string
		data func(t *testing.T, store eventstore.Store) (string, []byte)
	}{
		{"not JSON", func(*testing.T, eventstore.Store) (string, []byte) {
			return domain.TypeBatchSnapshot, []byte(`{"format": 1, "version": `)
		}},
		{"another format", func(t *testing.T, store eventstore.Store) (string, []byte) {
			s := good(t, store)
			s.Format = domain.SnapshotFormat + 1
			data, _ := json.Marshal(s)
			return domain.TypeBatchSnapshot, data
		}},
		{"an older format with other fields", func(*testing.T, eventstore.Store) (string, []byte) {
			return domain.TypeBatchSnapshot, []byte(`{"version": 300, "state": {"status": "processing"}}`)
		}},
		{"another batch's", func(t *testing.T, store eventstore.Store) (string, []byte) {
			s := good(t, store)
			s.ID = "b2"
			data, _ := json.Marshal(s)
			return domain.TypeBatchSnapshot, data
		}},
		{"another event type", func(t *testing.T, store eventstore.Store) (string, []byte) {
			data, _ := json.Marshal(good(t, store))
			return "SomethingElse", data
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := newCountingStore(memory.New())
			defer store.Close()
			writer, _ := newRepo(t, store, RepositoryConfig{SnapshotEvery: 100})
			addBatch(t, writer, "b1", 1000)
			for range 25 {
				send(t, writer, "b1", 12)
			}
			typ, data := tt.data(t, store)
			if _, err := store.Append(context.Background(), domain.SnapshotStream("b1"), eventstore.Any(),
				[]eventstore.EventData{{ID: uuid.NewString(), Type: typ, Data: data}}); err != nil {
				t.Fatal(err)
			}
			want := replayed(t, store, "b1")

			store.reset()
			cold, logs := newRepo(t, store, RepositoryConfig{SnapshotEvery: 100})
			got, err := cold.Load(context.Background(), "b1")
			if err != nil {
				t.Fatalf("load with an unusable snapshot: %v", err)
			}
			sameBatch(t, got, want)
			if read, _ := store.counts(domain.BatchStream("b1")); read != int(want.Version()) {
				t.Errorf("read %d events, want all %d: the snapshot must be ignored", read, want.Version())
			}
			if !strings.Contains(logs.String(), "batch snapshot ignored") {
				t.Errorf("ignoring a snapshot logged nothing; logs:\n%s", logs)
			}

			// That load replayed more than SnapshotEvery events, so it wrote a
			// good snapshot: the next cold load reads nothing after it.
			store.reset()
			again, _ := newRepo(t, store, RepositoryConfig{SnapshotEvery: 100})
			got, err = again.Load(context.Background(), "b1")
			if err != nil {
				t.Fatal(err)
			}
			sameBatch(t, got, want)
			if read, _ := store.counts(domain.BatchStream("b1")); read != 0 {
				t.Errorf("load after the replacement snapshot read %d events, want 0", read)
			}
		})
	}
}

func TestSnapshotWriteFailureOnlyLogs(t *testing.T) {
	store := newCountingStore(memory.New())
	defer store.Close()
	store.failSnapshots = true
	repo, logs := newRepo(t, store, RepositoryConfig{SnapshotEvery: 20})
	addBatch(t, repo, "b1", 1000)
	for range 10 {
		send(t, repo, "b1", 5)
	}
	if n := len(snapshots(t, store, "b1")); n != 0 {
		t.Fatalf("%d snapshots written through a failing store", n)
	}
	if !strings.Contains(logs.String(), "batch snapshot not written") || !strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("a failed snapshot write was not logged as a warning; logs:\n%s", logs)
	}
	want := replayed(t, store, "b1")
	if want.Sent() != 50 {
		t.Fatalf("sent %d, want 50: updates must succeed when snapshots cannot be written", want.Sent())
	}
	cold, _ := newRepo(t, store, RepositoryConfig{SnapshotEvery: 20})
	got, err := cold.Load(context.Background(), "b1")
	if err != nil {
		t.Fatal(err)
	}
	sameBatch(t, got, want)
}

func TestMoreActiveBatchesThanTheCacheHolds(t *testing.T) {
	const (
		batches  = 60
		cached   = 8
		every    = 40
		rounds   = 12
		perRound = 5
	)
	store := newCountingStore(memory.New())
	defer store.Close()
	repo, _ := newRepo(t, store, RepositoryConfig{MaxCached: cached, SnapshotEvery: every})
	for i := range batches {
		addBatch(t, repo, fmt.Sprint("b", i), 10_000)
	}
	// Every batch moves on in turn, as slices of many running batches do: with
	// more batches than the cache holds, every update starts from a miss.
	sent := make([]int, batches)
	for range rounds {
		for i := range batches {
			store.reset()
			id := fmt.Sprint("b", i)
			send(t, repo, id, perRound)
			sent[i] += perRound
			if read, _ := store.counts(domain.BatchStream(id)); read > every+perRound*2 {
				t.Fatalf("a miss on %s read %d events; snapshots every %d should bound it", id, read, every)
			}
			if n := len(repo.cache); n > cached || repo.lru.Len() != n {
				t.Fatalf("cache holds %d batches (list %d), limit %d", n, repo.lru.Len(), cached)
			}
		}
	}
	for i := range batches {
		id := fmt.Sprint("b", i)
		b, err := repo.Load(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if b.Sent() != sent[i] {
			t.Fatalf("%s: sent %d, want %d", id, b.Sent(), sent[i])
		}
		sameBatch(t, b, replayed(t, store, id))
	}
}

func TestCacheDropsTheLeastRecentlyUsed(t *testing.T) {
	store := memory.New()
	defer store.Close()
	repo, _ := newRepo(t, store, RepositoryConfig{MaxCached: 3})
	for _, id := range []string{"a", "b", "c"} {
		addBatch(t, repo, id, 1)
	}
	if _, err := repo.Load(context.Background(), "a"); err != nil { // a is now the most recent
		t.Fatal(err)
	}
	addBatch(t, repo, "d", 1)
	for id, want := range map[string]bool{"a": true, "b": false, "c": true, "d": true} {
		if _, ok := repo.cache[id]; ok != want {
			t.Errorf("batch %s cached: %t, want %t", id, ok, want)
		}
	}
	if _, err := repo.Load(context.Background(), "missing"); domain.ErrorCode(err) != domain.ENOTFOUND {
		t.Errorf("load of a missing batch: %v, want ENOTFOUND", err)
	}
	if _, ok := repo.cache["missing"]; ok || repo.lru.Len() != len(repo.cache) {
		t.Errorf("a missing batch stays in the cache (%d entries, list %d)", len(repo.cache), repo.lru.Len())
	}
}

// An update of a batch the repository holds appends without reading the store
// first: the append's expected revision proves the cache current. When another
// writer got there first the store refuses it and the decision is made again
// on the batch caught up; a decision on the cache that appends nothing or
// refuses is made again on the batch caught up before it is answered.
func TestUpdateDecidesOnTheCacheAndChecksWhatItCannotProve(t *testing.T) {
	ctx := context.Background()
	store := newCountingStore(memory.New())
	here, _ := newRepo(t, store, RepositoryConfig{})
	elsewhere, _ := newRepo(t, store, RepositoryConfig{}) // another instance
	addBatch(t, here, "b1", 10)
	stream := domain.BatchStream("b1")
	store.reset()
	send(t, here, "b1", 2)
	store.mu.Lock()
	reads := store.readCalls[stream]
	store.mu.Unlock()
	if reads != 0 {
		t.Fatalf("an update of a cached, current batch read its stream %d times, want none", reads)
	}

	pause := func(b *domain.Batch) error { return b.Pause(time.Now(), "u") }
	resume := func(b *domain.Batch) error { return b.Resume(time.Now(), "u") }
	// Paused elsewhere: here the cache still says processing, where Resume
	// refuses. It must look again, and resume.
	if _, err := elsewhere.Update(ctx, "b1", pause); err != nil {
		t.Fatal(err)
	}
	b, err := here.Update(ctx, "b1", resume)
	if err != nil || b.Status() != domain.StatusProcessing {
		t.Fatalf("resume of a batch paused elsewhere: %v, status %v", err, b)
	}
	// Paused elsewhere again: here the cache says processing, where Pause
	// records; the store refuses that append, and the batch caught up is
	// already paused.
	if _, err := elsewhere.Update(ctx, "b1", pause); err != nil {
		t.Fatal(err)
	}
	if _, err := here.Update(ctx, "b1", pause); domain.ErrorCode(err) != domain.ECONFLICT {
		t.Fatalf("pause of a batch paused elsewhere: %v, want a conflict", err)
	}
	got, err := here.Load(ctx, "b1")
	if err != nil {
		t.Fatal(err)
	}
	if want := replayed(t, store, "b1"); got.Version() != want.Version() || got.Status() != domain.StatusPaused {
		t.Fatalf("cached batch at version %d, %s; the stream holds %d events, paused", got.Version(), got.Status(), want.Version())
	}
}

// snapshotReadFails answers every read of a snapshot stream with err.
type snapshotReadFails struct {
	eventstore.Store
	err error
}

func (s snapshotReadFails) ReadStreamBackward(ctx context.Context, stream string, from uint64, max int) ([]eventstore.Event, error) {
	if strings.HasPrefix(stream, domain.SnapshotStream("")) {
		return nil, s.err
	}
	return s.Store.ReadStreamBackward(ctx, stream, from, max)
}

// Snapshots only spare reading: a snapshot stream that cannot be read for good
// (hard-deleted on KurrentDB, which then answers "stream deleted") costs a full
// replay, not the batch. The store being away is still an error to retry.
func TestUnreadableSnapshotsFallBackToAFullReplay(t *testing.T) {
	store := memory.New()
	defer store.Close()
	writer, _ := newRepo(t, store, RepositoryConfig{SnapshotEvery: 100})
	addBatch(t, writer, "b1", 1000)
	for range 25 {
		send(t, writer, "b1", 12)
	}
	want := replayed(t, store, "b1")

	deleted, _ := newRepo(t, snapshotReadFails{Store: store, err: errors.New("stream 'batchsnapshot-b1' is deleted")}, RepositoryConfig{SnapshotEvery: 100})
	got, err := deleted.Load(context.Background(), "b1")
	if err != nil {
		t.Fatalf("load with its snapshots deleted: %v", err)
	}
	sameBatch(t, got, want)

	away, _ := newRepo(t, snapshotReadFails{Store: store, err: fmt.Errorf("read: %w", eventstore.ErrUnavailable)}, RepositoryConfig{SnapshotEvery: 100})
	if _, err := away.Load(context.Background(), "b1"); !errors.Is(err, eventstore.ErrUnavailable) {
		t.Fatalf("load with the store away: %v, want ErrUnavailable", err)
	}
}
