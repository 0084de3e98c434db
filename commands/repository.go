package commands

import (
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
)

// readPage is how many events one catch-up read asks for.
const readPage = 1000

// maxConflictRetries bounds how often Update reloads and decides again after an
// append lost a race. Conflicts come from a worker and a command acting at the
// same moment, so a handful of retries is plenty.
const maxConflictRetries = 32

// DefaultMaxCached is how many batches a repository keeps in memory unless told
// otherwise. A cached batch is small (status, counts, cursor, a handful of
// outstanding messages, the template text), a few KiB at most, and a miss costs
// a snapshot read and at most SnapshotEvery events; so the cache is sized for
// many more batches than one instance sends at once.
const DefaultMaxCached = 10_000

// DefaultSnapshotEvery is how many events of a batch lie between two snapshots
// unless told otherwise: a cold load replays at most that many.
const DefaultSnapshotEvery = 1000

// RepositoryConfig configures NewRepositoryFromConfig.
type RepositoryConfig struct {
	// Store holds the batches' streams and their snapshot streams. Required.
	Store eventstore.Store
	// MaxCached bounds the batches kept in memory; the least recently used goes
	// first. Optional; DefaultMaxCached when <= 0.
	MaxCached int
	// SnapshotEvery is how many events of a batch's stream lie between two
	// snapshots. Optional; DefaultSnapshotEvery when 0. Negative writes none
	// (snapshots already stored are still read).
	SnapshotEvery int
	// Logger receives snapshots that could not be written or read. Optional;
	// slog.Default() when nil.
	Logger *slog.Logger
}

func (c *RepositoryConfig) setDefaults() {
	if c.MaxCached <= 0 {
		c.MaxCached = DefaultMaxCached
	}
	if c.SnapshotEvery == 0 {
		c.SnapshotEvery = DefaultSnapshotEvery
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports what is wrong with the configuration.
func (c RepositoryConfig) Validate() error {
	if c.Store == nil {
		return errors.New("commands: repository: nil event store")
	}
	return nil
}

// Repository loads and stores Batch aggregates. It keeps loaded batches in memory
// and catches a cached batch up from its last revision. A batch it does not hold
// is restored from its newest snapshot, and only the events after it are read;
// it writes a snapshot every SnapshotEvery events. So loading a batch with a
// million outcomes costs about the same as loading one with a thousand, cached
// or not.
type Repository struct {
	store         eventstore.Store
	maxCached     int
	snapshotEvery int
	log           *slog.Logger

	mu    sync.Mutex
	cache map[string]*list.Element // of *cachedBatch
	lru   *list.List               // of *cachedBatch, the most recently used first
}

type cachedBatch struct {
	id    string
	mu    sync.Mutex
	batch *domain.Batch
}

// NewRepository returns a repository over store keeping up to maxCached batches in
// memory (DefaultMaxCached when maxCached <= 0), with the other settings at their
// defaults.
func NewRepository(store eventstore.Store, maxCached int) (*Repository, error) {
	return NewRepositoryFromConfig(RepositoryConfig{Store: store, MaxCached: maxCached})
}

// NewRepositoryFromConfig returns a repository configured by cfg.
func NewRepositoryFromConfig(cfg RepositoryConfig) (*Repository, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Repository{
		store:         cfg.Store,
		maxCached:     cfg.MaxCached,
		snapshotEvery: cfg.SnapshotEvery,
		log:           cfg.Logger,
		cache:         make(map[string]*list.Element),
		lru:           list.New(),
	}, nil
}

// Load returns a copy of the batch, caught up with its stream. A batch that does
// not exist is an ENOTFOUND error.
func (r *Repository) Load(ctx context.Context, id string) (*domain.Batch, error) {
	b, replayed, err := r.load(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.snapshotEvery > 0 && replayed >= uint64(r.snapshotEvery) {
		// The batch had no snapshot within SnapshotEvery events of its end (it
		// predates snapshots, or its newest one was unreadable or never written):
		// spare the next cold load the same replay.
		r.writeSnapshot(ctx, b)
	}
	return b, nil
}

// load returns a copy of the cached batch caught up with its stream, and how many
// events that took replaying.
func (r *Repository) load(ctx context.Context, id string) (*domain.Batch, uint64, error) {
	entry := r.entry(id)
	entry.mu.Lock()
	defer entry.mu.Unlock()
	replayed, err := r.catchUp(ctx, id, entry)
	if err != nil {
		return nil, 0, err
	}
	return entry.batch.Clone(), replayed, nil
}

// Update loads the batch, lets decide record changes on it, and appends them at the
// revision the decision was made on. When another writer got there first it reloads
// and decides again. A decide that records nothing appends nothing. It returns the
// batch as stored after the update.
func (r *Repository) Update(ctx context.Context, id string, decide func(b *domain.Batch) error) (*domain.Batch, error) {
	res, err := r.update(ctx, id, decide)
	return res.Batch, err
}

// Result is a batch as stored after a command, and the global position of the
// command's last event (the zero Position when it appended nothing).
type Result struct {
	Batch    *domain.Batch
	Position eventstore.Position
}

// update is Update, returning the position of the last event appended too.
//
// The first decision is made on the cached batch without reading the store: the
// append's expected revision proves it current, and when it is not (another
// instance, or a receipt, wrote since) the batch is caught up and the decision
// made again. A decision that appends nothing or fails is only answered once it
// was made on the batch caught up with its stream. A slice that dispatches then
// costs one store round trip, not two.
func (r *Repository) update(ctx context.Context, id string, decide func(b *domain.Batch) error) (Result, error) {
	for attempt := 0; ; attempt++ {
		b, fresh := r.cached(id), true
		if b != nil && attempt == 0 {
			fresh = false
		} else {
			var err error
			if b, err = r.Load(ctx, id); err != nil {
				return Result{}, err
			}
		}
		loaded := b.Version()
		expected := eventstore.After(loaded)
		if err := decide(b); err != nil {
			if !fresh {
				continue // perhaps decided on what has changed since
			}
			return Result{}, err
		}
		if len(b.Changes()) == 0 {
			if !fresh {
				continue
			}
			return Result{Batch: b}, nil
		}
		pos, err := r.append(ctx, domain.BatchStream(id), expected, b.Changes())
		if errors.Is(err, eventstore.ErrConcurrency) && attempt < maxConflictRetries {
			continue
		}
		if err != nil {
			return Result{}, fmt.Errorf("update batch %s: %w", id, err)
		}
		b.ClearChanges()
		r.remember(id, b) // a copy: b is the caller's own
		r.snapshotIfDue(ctx, loaded, b)
		return Result{Batch: b, Position: pos}, nil
	}
}

// Add stores a new batch; the stream must not exist yet.
func (r *Repository) Add(ctx context.Context, b *domain.Batch) (eventstore.Position, error) {
	pos, err := r.append(ctx, domain.BatchStream(b.ID()), eventstore.NoStream(), b.Changes())
	if err != nil {
		return pos, fmt.Errorf("add batch %s: %w", b.ID(), err)
	}
	b.ClearChanges()
	r.remember(b.ID(), b)
	r.snapshotIfDue(ctx, 0, b)
	return pos, nil
}

// unknownOutcomeRetries bounds how often an append that failed in a way that
// leaves its outcome unknown (the store went away mid-append) is sent again.
const unknownOutcomeRetries = 3

// append appends events and, when the store fails in a way that leaves
// the outcome unknown, sends the very same append again (same event IDs): every
// adapter recognises a retried append that landed and answers it with the first
// result, so a decision whose answer was lost is neither lost nor made twice. A
// retry that meets ErrConcurrency means the first never landed and someone else
// wrote since: the caller decides again.
func (r *Repository) append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []domain.Event) (eventstore.Position, error) {
	data, err := encodeEvents(events)
	if err != nil {
		return eventstore.Position{}, err
	}
	wait := 50 * time.Millisecond
	for try := 0; ; try++ {
		res, err := r.store.Append(ctx, stream, expected, data)
		if err == nil || !errors.Is(err, eventstore.ErrUnavailable) || try >= unknownOutcomeRetries || ctx.Err() != nil {
			return res.Position, err
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return eventstore.Position{}, err
		}
		wait *= 4
	}
}

// encodeEvents gives each event a fresh ID; a retried append is a new decision.
func encodeEvents(events []domain.Event) ([]eventstore.EventData, error) {
	out := make([]eventstore.EventData, 0, len(events))
	for _, e := range events {
		typ, data, err := domain.EncodeEvent(e)
		if err != nil {
			return nil, err
		}
		id, err := uuid.NewV7()
		if err != nil {
			return nil, fmt.Errorf("event id: %w", err)
		}
		out = append(out, eventstore.EventData{ID: id.String(), Type: typ, Data: data})
	}
	return out, nil
}

// catchUp brings entry's batch up to the end of its stream, restoring a batch
// that is not cached from its newest snapshot first, and reports how many events
// it replayed.
func (r *Repository) catchUp(ctx context.Context, id string, entry *cachedBatch) (uint64, error) {
	if entry.batch == nil {
		b, err := r.restore(ctx, id)
		if err != nil {
			return 0, err
		}
		entry.batch = b
	}
	stream := domain.BatchStream(id)
	var replayed uint64
	for {
		var from uint64
		if entry.batch != nil {
			from = entry.batch.Version()
		}
		events, err := r.store.ReadStream(ctx, stream, from, readPage)
		if err != nil {
			return replayed, fmt.Errorf("load batch %s: %w", id, err)
		}
		for _, se := range events {
			if se.Type == domain.TypeBatchCreateAbandoned && entry.batch == nil {
				r.forget(id, entry) // a create fenced off: no batch
				return replayed, domain.Errorf(domain.ENOTFOUND, "batch not found")
			}
			e, err := domain.DecodeEvent(se.Type, se.Data)
			if err != nil {
				return replayed, fmt.Errorf("load batch %s at revision %d: %w", id, se.Revision, err)
			}
			if entry.batch == nil {
				entry.batch, err = domain.LoadBatch(nil)
				if err != nil {
					return replayed, err
				}
			}
			if err := entry.batch.Replay(e); err != nil {
				return replayed, fmt.Errorf("load batch %s: %w", id, err)
			}
			replayed++
		}
		if len(events) < readPage {
			break
		}
	}
	if entry.batch == nil {
		r.forget(id, entry)
		return replayed, domain.Errorf(domain.ENOTFOUND, "batch not found")
	}
	return replayed, nil
}

// restore returns the batch as of its newest snapshot, or nil when it has none
// that this build can restore: a snapshot only spares reading events, so one
// that cannot be used means replaying from the start, never a failed load.
func (r *Repository) restore(ctx context.Context, id string) (*domain.Batch, error) {
	events, err := r.store.ReadStreamBackward(ctx, domain.SnapshotStream(id), eventstore.StreamEnd, 1)
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, eventstore.ErrUnavailable) || errors.Is(err, eventstore.ErrClosed) {
			return nil, fmt.Errorf("load batch %s: read its newest snapshot: %w", id, err)
		}
		// Anything else (a snapshot stream an operator deleted for good on
		// KurrentDB reads as an error) costs only the reading a snapshot
		// spares: deleting the snapshots must lose nothing.
		r.log.Warn("batch snapshots unreadable; replaying the batch from its start", "batch", id, "error", err)
		return nil, nil
	}
	if len(events) == 0 {
		return nil, nil
	}
	e := events[0]
	var s domain.BatchSnapshot
	err = json.Unmarshal(e.Data, &s)
	var b *domain.Batch
	switch {
	case e.Type != domain.TypeBatchSnapshot:
		err = fmt.Errorf("event of type %q", e.Type)
	case err == nil && s.ID != id:
		err = fmt.Errorf("snapshot of batch %q", s.ID)
	case err == nil:
		b, err = domain.RestoreBatch(s)
	}
	if err != nil {
		r.log.Info("batch snapshot ignored; replaying the batch from its start",
			"batch", id, "snapshot_revision", e.Revision, "error", err)
		return nil, nil
	}
	return b, nil
}

// snapshotIfDue writes a snapshot of b, just stored, when appending took its
// stream from before events across a multiple of SnapshotEvery.
func (r *Repository) snapshotIfDue(ctx context.Context, before uint64, b *domain.Batch) {
	if every := uint64(r.snapshotEvery); r.snapshotEvery > 0 && before/every != b.Version()/every {
		r.writeSnapshot(ctx, b)
	}
}

// writeSnapshot appends a snapshot of b to its snapshot stream. A snapshot only
// spares later loads some reading, so failing to write one is logged, not
// returned. Snapshots are appended at any revision: two instances writing one
// each is harmless, loads take whichever came last.
func (r *Repository) writeSnapshot(ctx context.Context, b *domain.Batch) {
	err := r.appendSnapshot(ctx, b)
	if err == nil {
		return
	}
	level := slog.LevelWarn
	if ctx.Err() != nil {
		level = slog.LevelDebug // shutting down or the slice ended: nothing is wrong
	}
	r.log.Log(ctx, level, "batch snapshot not written; cold loads replay more events until the next one",
		"batch", b.ID(), "version", b.Version(), "error", err)
}

func (r *Repository) appendSnapshot(ctx context.Context, b *domain.Batch) error {
	s, err := b.Snapshot()
	if err != nil {
		return err
	}
	data, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode snapshot: %w", err)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return fmt.Errorf("event id: %w", err)
	}
	_, err = r.store.Append(ctx, domain.SnapshotStream(b.ID()), eventstore.Any(),
		[]eventstore.EventData{{ID: id.String(), Type: domain.TypeBatchSnapshot, Data: data}})
	return err
}

// entry returns id's cache entry, making it the most recently used, or a new,
// empty one; a new entry beyond MaxCached pushes out the least recently used.
// Both are O(1), so a cache full of batches costs nothing more per load.
func (r *Repository) entry(id string) *cachedBatch {
	r.mu.Lock()
	defer r.mu.Unlock()
	if el, ok := r.cache[id]; ok {
		r.lru.MoveToFront(el)
		return el.Value.(*cachedBatch)
	}
	e := &cachedBatch{id: id}
	r.cache[id] = r.lru.PushFront(e)
	if r.lru.Len() > r.maxCached {
		// A caller still holding the evicted entry finishes with it; the next
		// load of that batch makes a new one.
		oldest := r.lru.Back()
		r.lru.Remove(oldest)
		delete(r.cache, oldest.Value.(*cachedBatch).id)
	}
	return e
}

// cachedEntry returns id's cache entry, or nil, without making it the most
// recently used.
func (r *Repository) cachedEntry(id string) *cachedBatch {
	r.mu.Lock()
	defer r.mu.Unlock()
	if el, ok := r.cache[id]; ok {
		return el.Value.(*cachedBatch)
	}
	return nil
}

// cached returns a copy of the cached batch id as it stands, without reading
// the store, or nil when it is not cached.
func (r *Repository) cached(id string) *domain.Batch {
	entry := r.cachedEntry(id)
	if entry == nil {
		return nil
	}
	entry.mu.Lock()
	defer entry.mu.Unlock()
	if entry.batch == nil {
		return nil
	}
	return entry.batch.Clone()
}

// appended brings the cached batch id over events, just appended outside
// Update at revision first on: when the cache held the batch up to just
// before them, it holds it up to after them without reading them back.
func (r *Repository) appended(id string, first uint64, events []domain.Event) {
	entry := r.cachedEntry(id)
	if entry == nil {
		return
	}
	entry.mu.Lock()
	defer entry.mu.Unlock()
	if entry.batch == nil || entry.batch.Version() != first {
		return
	}
	for _, e := range events {
		if err := entry.batch.Replay(e); err != nil {
			entry.batch = nil // the next load reads it whole
			return
		}
	}
}

// remember caches b, which was just written, unless the cached copy is newer.
func (r *Repository) remember(id string, b *domain.Batch) {
	entry := r.entry(id)
	entry.mu.Lock()
	defer entry.mu.Unlock()
	if entry.batch == nil || entry.batch.Version() <= b.Version() {
		entry.batch = b.Clone()
	}
}

func (r *Repository) forget(id string, entry *cachedBatch) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if el, ok := r.cache[id]; ok && el.Value == entry {
		r.lru.Remove(el)
		delete(r.cache, id)
	}
}
