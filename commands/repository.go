package commands

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
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

// Repository loads and stores Batch aggregates. It keeps loaded batches in memory
// and catches a cached batch up from its last revision, so that loading a batch
// with a million outcomes replays them once, not on every load.
type Repository struct {
	store     eventstore.Store
	maxCached int

	mu    sync.Mutex
	cache map[string]*cachedBatch
}

type cachedBatch struct {
	mu       sync.Mutex
	batch    *domain.Batch
	lastUsed time.Time
}

// NewRepository returns a repository over store keeping up to maxCached batches in
// memory (1000 when maxCached <= 0).
func NewRepository(store eventstore.Store, maxCached int) (*Repository, error) {
	if store == nil {
		return nil, errors.New("commands: nil event store")
	}
	if maxCached <= 0 {
		maxCached = 1000
	}
	return &Repository{store: store, maxCached: maxCached, cache: make(map[string]*cachedBatch)}, nil
}

// Load returns a copy of the batch, caught up with its stream. A batch that does
// not exist is an ENOTFOUND error.
func (r *Repository) Load(ctx context.Context, id string) (*domain.Batch, error) {
	entry := r.entry(id)
	entry.mu.Lock()
	defer entry.mu.Unlock()
	if err := r.catchUp(ctx, id, entry); err != nil {
		return nil, err
	}
	return entry.batch.Clone(), nil
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

func (r *Repository) update(ctx context.Context, id string, decide func(b *domain.Batch) error) (Result, error) {
	for attempt := 0; ; attempt++ {
		b, err := r.Load(ctx, id)
		if err != nil {
			return Result{}, err
		}
		expected := eventstore.After(b.Version())
		if err := decide(b); err != nil {
			return Result{}, err
		}
		if len(b.Changes()) == 0 {
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
		r.remember(id, b)
		return Result{Batch: b.Clone(), Position: pos}, nil
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

func (r *Repository) catchUp(ctx context.Context, id string, entry *cachedBatch) error {
	stream := domain.BatchStream(id)
	for {
		var from uint64
		if entry.batch != nil {
			from = entry.batch.Version()
		}
		events, err := r.store.ReadStream(ctx, stream, from, readPage)
		if err != nil {
			return fmt.Errorf("load batch %s: %w", id, err)
		}
		for _, se := range events {
			e, err := domain.DecodeEvent(se.Type, se.Data)
			if err != nil {
				return fmt.Errorf("load batch %s at revision %d: %w", id, se.Revision, err)
			}
			if entry.batch == nil {
				entry.batch, err = domain.LoadBatch(nil)
				if err != nil {
					return err
				}
			}
			if err := entry.batch.Replay(e); err != nil {
				return fmt.Errorf("load batch %s: %w", id, err)
			}
		}
		if len(events) < readPage {
			break
		}
	}
	if entry.batch == nil {
		r.forget(id, entry)
		return domain.Errorf(domain.ENOTFOUND, "batch not found")
	}
	return nil
}

func (r *Repository) entry(id string) *cachedBatch {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.cache[id]
	if !ok {
		if len(r.cache) >= r.maxCached {
			r.evictLocked()
		}
		e = &cachedBatch{}
		r.cache[id] = e
	}
	e.lastUsed = time.Now()
	return e
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
	if r.cache[id] == entry {
		delete(r.cache, id)
	}
}

// evictLocked drops the least recently used quarter of the cache, so that the
// cost of sorting is paid rarely.
func (r *Repository) evictLocked() {
	ids := slices.Collect(maps.Keys(r.cache))
	slices.SortFunc(ids, func(a, b string) int { return r.cache[a].lastUsed.Compare(r.cache[b].lastUsed) })
	for _, id := range ids[:max(1, len(ids)/4)] {
		delete(r.cache, id)
	}
}
