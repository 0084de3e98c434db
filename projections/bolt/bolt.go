// Package bolt owns the embedded projections store: the status, analytics and
// errors read models in a bbolt file beside the event store (readmodels.db in
// the data directory), kept by the projection logic of package projections, and
// their rebuild into a fresh file swapped in by a rename. The read models
// survive restarts with their checkpoint, so a start applies only the events
// after it, and every query reads the few keys it needs from the file: nothing
// is loaded whole into memory, whatever the history.
//
// # Layout
//
//   - bucket "meta": "format" -> the layout version; "checkpoint" -> the
//     position of the last event applied (commit and prepare, big-endian
//     uint64s); "checkpoint-id" -> that event's ID; "checkpoint-prev" -> the
//     position of the event before it. The last two let Follows check that the
//     event store still holds the event the checkpoint names.
//   - bucket "batches": one nested bucket per batch ID holding "tenant" -> the
//     tenant, "state" -> the batch's projections.BatchState as JSON, and, once
//     a recipient has failed, nested buckets "errors" (big-endian uint64
//     recipient index -> projections.ErrorEntry as JSON) and "categories"
//     (category, a zero byte, big-endian index -> empty): the second is the
//     index of the first by category, so a filtered page reads only its rows;
//     once a recipient's outcome is final, nested bucket "outcomes"
//     (big-endian uint64 index -> its status, a zero byte, and the rest of its
//     projections.RecipientOutcome in binary, outcome.go: a status filter
//     reads no record); the records of recipients not final yet are in the
//     state (projections.BatchState.FoldOutcomes).
//   - bucket "numbers": one nested bucket per batch ID, key = recipients page
//     (big-endian uint32), value = the page's numbers joined by newlines. Pages
//     are stored before their batch's BatchCreated, as the event store holds
//     them; one write per 1,000 recipients.
//   - bucket "unfinished": batch ID -> empty, for every batch not final
//     (pending, processing, paused): what the send processor starts from.
//   - bucket "lists": one nested bucket per tenant, key = creation time in
//     nanoseconds (big-endian, sign bit flipped so that it sorts) followed by
//     the batch ID, value = the batch's status, a zero byte and its name
//     lower-cased (projections.FoldName). Keys sort oldest first; a tenant's
//     list, newest first, is a walk backwards from the cursor, and a filtered
//     one reads the state of the batches that match only.
//
// # Durability
//
// Apply writes the read model changes and the checkpoint in one bbolt
// transaction, fsynced before Apply returns: after any crash, power loss
// included, the file holds both as of the same page, and the runner carries on
// after that checkpoint. Skipping the fsync (bbolt's NoSync) is not a safe
// trade for a live file: bbolt orders its writes with the fsyncs, and without
// them a power loss can leave a meta page naming pages that never reached the
// disk, a file neither ahead nor behind but broken. The fsync costs little
// here because the runner applies what has accumulated as one page: the busier
// the log, the more events share an fsync. A rebuild, which writes a file
// nothing reads until it is complete, skips the fsyncs and syncs once before
// the rename. The freelist is kept in the file (not NoFreelistSync), because
// without it bbolt walks every page of the file at open to find the free ones:
// start-up time and memory would grow with history again.
package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	bbolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/projections"
)

// FileName is the read models' file in the data directory.
const FileName = "readmodels.db"

// ErrInUse is returned by Open and Rebuild when another process holds the file
// open (a running service).
var ErrInUse = errors.New("read models are in use by another process")

// ErrFormat is returned by Open for a file of another layout version. The read
// models are derived from the events, so such a file can be removed and built
// again.
var ErrFormat = errors.New("read models file has another layout")

// DefaultLockTimeout is how long Open waits for the file lock by default.
const DefaultLockTimeout = time.Second

// formatVersion is the layout written in the "meta" bucket. Change it whenever
// the layout or the encoding of a value changes: Open then refuses older files
// with ErrFormat, and they are rebuilt from the events.
const formatVersion = "4"

var (
	bucketMeta       = []byte("meta")
	bucketBatches    = []byte("batches")
	bucketLists      = []byte("lists")
	bucketUnfinished = []byte("unfinished")
	bucketErrors     = []byte("errors")
	bucketCategories = []byte("categories")
	bucketOutcomes   = []byte("outcomes")
	bucketNumbers    = []byte("numbers")

	keyFormat         = []byte("format")
	keyCheckpoint     = []byte("checkpoint")
	keyCheckpointID   = []byte("checkpoint-id")
	keyCheckpointPrev = []byte("checkpoint-prev")
	keyTenant         = []byte("tenant")
	keyState          = []byte("state")
)

// Options configures Open. The zero value is ready to use.
type Options struct {
	// LockTimeout is how long Open waits for another process to release the
	// file before failing with ErrInUse. Optional; DefaultLockTimeout when <= 0.
	LockTimeout time.Duration

	// noSync skips the fsync of every commit: only for a file nothing reads
	// until it has been synced and renamed into place (see Rebuild).
	noSync bool
}

func (o *Options) setDefaults() {
	if o.LockTimeout <= 0 {
		o.LockTimeout = DefaultLockTimeout
	}
}

// Store is a projections.Store in a bbolt file, safe for concurrent use: Apply
// calls take turns, queries read a consistent snapshot alongside them.
type Store struct {
	db *bbolt.DB

	// states are batches' states as last committed, decoded, for the Apply
	// calls that follow: decoding each touched batch's state again for every
	// page took a third of applying with a thousand batches sending. Apply
	// changes them in place and forgets them all when its transaction fails.
	states *lru.Cache[string, *projections.BatchState]
	// reads are the states the read side decoded, kept while they are
	// stored unchanged.
	reads *projections.ReadCache

	// beforeCheckpoint, when set (by tests), runs inside Apply's transaction
	// after the read models were written and before the checkpoint is.
	beforeCheckpoint func() error
}

var _ projections.Store = (*Store)(nil)

// Open opens the read models in the bbolt file at path, creating the file and
// its directory if needed. It fails with an error wrapping ErrInUse when
// another process holds the file and does not let go within opts.LockTimeout,
// and with one wrapping ErrFormat when the file has another layout.
func Open(path string, opts Options) (*Store, error) {
	opts.setDefaults()
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("bolt projections: open %s: %w", path, err)
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout:      opts.LockTimeout,
		FreelistType: bbolt.FreelistMapType,
		NoSync:       opts.noSync,
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("bolt projections: open %s: %w (file lock not released within %s)", path, ErrInUse, opts.LockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("bolt projections: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{bucketMeta, bucketBatches, bucketLists, bucketUnfinished, bucketNumbers} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		switch v := meta.Get(keyFormat); {
		case v == nil:
			return meta.Put(keyFormat, []byte(formatVersion))
		case string(v) != formatVersion:
			return fmt.Errorf("%w: version %q, this build reads %q", ErrFormat, v, formatVersion)
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("bolt projections: open %s: %w", path, err)
	}
	states, err := lru.New[string, *projections.BatchState](projections.CachedStates)
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("bolt projections: open %s: %w", path, err)
	}
	return &Store{db: db, states: states, reads: projections.NewReadCache()}, nil
}

// Close releases the file.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("bolt projections: close: %w", err)
	}
	return nil
}

// touched is a batch changed by the page being applied.
type touched struct {
	bucket  *bbolt.Bucket
	state   *projections.BatchState
	created bool
	// outcomes are the records the page makes final or a receipt changes
	// (projections.BatchState.FoldOutcomes), written once each when the batch
	// is saved.
	outcomes map[int]projections.RecipientOutcome
	// listed is what the tenant's list and the unfinished set hold of the
	// batch, as stored before this transaction: they are written again only
	// when it changes.
	listed listing
}

// listing is what the tenant's list and the unfinished set know of a batch.
type listing struct {
	status     domain.Status
	name       string
	unfinished bool
}

func listingOf(st *projections.BatchState) listing {
	return listing{status: st.Status, name: st.Name, unfinished: st.Unfinished()}
}

// Apply implements projections.Store. Every event is decoded before the
// transaction begins, and the read models and the checkpoint are written in
// one transaction: a malformed event, a failure or a crash leaves both as they
// were.
func (s *Store) Apply(ctx context.Context, events []eventstore.Event) error {
	if len(events) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("bolt projections: apply: %w", err)
	}
	use, err := projections.DecodePage(events)
	if err != nil {
		return fmt.Errorf("bolt projections: apply: %w", err)
	}
	if err := s.db.Update(func(tx *bbolt.Tx) error { return s.applyTx(tx, events, use) }); err != nil {
		s.states.Purge() // they may hold what was not committed
		return fmt.Errorf("bolt projections: apply: %w", err)
	}
	return nil
}

func (s *Store) applyTx(tx *bbolt.Tx, events []eventstore.Event, use []projections.Decoded) error {
	meta := tx.Bucket(bucketMeta)
	checkpoint, err := readPosition(meta.Get(keyCheckpoint))
	if err != nil {
		return err
	}
	last := events[len(events)-1]
	if !checkpoint.Less(last.Position) {
		return nil // all applied before
	}
	batches := tx.Bucket(bucketBatches)
	changed := make(map[string]*touched)
	var order []string
	for _, d := range use {
		if !checkpoint.Less(d.Event.Position) {
			continue
		}
		if p, ok := d.Payload.(domain.RecipientsPageAdded); ok {
			if err := putNumbers(tx, d.BatchID, p); err != nil {
				return fmt.Errorf("write numbers of %s: %w", d.BatchID, err)
			}
			continue
		}
		b := changed[d.BatchID]
		if b == nil {
			if b, err = s.loadBatch(batches, d); err != nil {
				return err
			}
			if b == nil {
				continue // events of a batch whose creation was never applied
			}
			changed[d.BatchID] = b
			order = append(order, d.BatchID)
		}
		b.state.Apply(d.Event, d.Payload)
		if entry, ok := projections.ErrorEntryOf(d.Payload); ok {
			if err := putError(b.bucket, entry); err != nil {
				return fmt.Errorf("write error of %s: %w", d.BatchID, err)
			}
		}
		if err := b.state.FoldOutcomes(d.Payload, b.outcome, b.setOutcome); err != nil {
			return fmt.Errorf("batch %s: %w", d.BatchID, err)
		}
		if original, ok := projections.RetryLink(d.Payload); ok {
			old := changed[original]
			if old == nil {
				if old, err = s.loadStored(batches, original); err != nil {
					return err
				}
				if old == nil {
					continue
				}
				changed[original] = old
				order = append(order, original)
			}
			old.state.AddRetry(d.Event, d.Payload)
		}
	}
	for _, id := range order {
		if err := changed[id].save(tx); err != nil {
			return fmt.Errorf("write batch %s: %w", id, err)
		}
	}
	if s.beforeCheckpoint != nil {
		if err := s.beforeCheckpoint(); err != nil {
			return err
		}
	}

	// The event before the last is where a read of the event store finds the
	// checkpoint's event again (see Follows).
	prev := checkpoint
	if len(events) > 1 {
		prev = events[len(events)-2].Position
	}
	for _, kv := range [][2][]byte{
		{keyCheckpoint, positionKey(last.Position)},
		{keyCheckpointPrev, positionKey(prev)},
		{keyCheckpointID, []byte(last.ID)},
	} {
		if err := meta.Put(kv[0], kv[1]); err != nil {
			return fmt.Errorf("write checkpoint: %w", err)
		}
	}
	return nil
}

// loadStored returns the stored batch id, or nil when there is none.
func (s *Store) loadStored(batches *bbolt.Bucket, id string) (*touched, error) {
	bucket := batches.Bucket([]byte(id))
	if bucket == nil {
		return nil, nil
	}
	if st, ok := s.states.Get(id); ok {
		return &touched{bucket: bucket, state: st, listed: listingOf(st)}, nil
	}
	st := &projections.BatchState{}
	if err := json.Unmarshal(bucket.Get(keyState), st); err != nil {
		return nil, fmt.Errorf("decode state of %s: %w", id, err)
	}
	s.states.Add(id, st)
	return &touched{bucket: bucket, state: st, listed: listingOf(st)}, nil
}

// loadBatch returns the stored batch d belongs to, a new one when d creates it,
// or nil when d belongs to a batch never created.
func (s *Store) loadBatch(batches *bbolt.Bucket, d projections.Decoded) (*touched, error) {
	if b, err := s.loadStored(batches, d.BatchID); b != nil || err != nil {
		return b, err
	}
	if _, created := d.Payload.(domain.BatchCreated); !created {
		return nil, nil
	}
	bucket, err := batches.CreateBucket([]byte(d.BatchID))
	if err != nil {
		return nil, fmt.Errorf("create batch %s: %w", d.BatchID, err)
	}
	st := &projections.BatchState{}
	s.states.Add(d.BatchID, st)
	return &touched{bucket: bucket, state: st, created: true}, nil
}

// save writes the batch's state and, for a new batch or one whose status
// changed, its place in its tenant's list and in the unfinished set. Most
// pages change only counts and outcomes: writing those two again for every
// batch a page touched rewrote their pages in every transaction.
func (b *touched) save(tx *bbolt.Tx) error {
	if err := b.saveOutcomes(); err != nil {
		return err
	}
	raw, err := json.Marshal(b.state)
	if err != nil {
		return err
	}
	if err := b.bucket.Put(keyState, raw); err != nil {
		return err
	}
	if !b.created && listingOf(b.state) == b.listed {
		return nil
	}
	unfinished := tx.Bucket(bucketUnfinished)
	if !b.state.Unfinished() {
		err = unfinished.Delete([]byte(b.state.ID))
	} else if b.state.ID != "" {
		err = unfinished.Put([]byte(b.state.ID), nil)
	}
	if err != nil {
		return err
	}
	if b.created {
		if err := b.bucket.Put(keyTenant, []byte(b.state.Tenant)); err != nil {
			return err
		}
	}
	if b.state.Tenant == "" {
		// The domain refuses such a batch and no key belongs to no tenant; a
		// bucket cannot be named "", and failing here would stop the runner.
		return nil
	}
	list, err := tx.Bucket(bucketLists).CreateBucketIfNotExists([]byte(b.state.Tenant))
	if err != nil {
		return err
	}
	// The value carries what the list filters on, kept as the status changes.
	return list.Put(listKey(projections.ListKey{CreatedAt: b.state.CreatedAt, ID: b.state.ID}),
		listValue(string(b.state.Status), projections.FoldName(b.state.Name)))
}

// listValue is a batch's value in its tenant's list.
func listValue(status, foldedName string) []byte {
	return append(append([]byte(status), 0), foldedName...)
}

// putNumbers stores a recipients page's numbers.
func putNumbers(tx *bbolt.Tx, batchID string, p domain.RecipientsPageAdded) error {
	nums, err := tx.Bucket(bucketNumbers).CreateBucketIfNotExists([]byte(batchID))
	if err != nil {
		return err
	}
	return nums.Put(binary.BigEndian.AppendUint32(nil, uint32(p.Page)), []byte(projections.JoinNumbers(projections.RecipientNumbers(p))))
}

// outcome returns the record the batch holds of recipient i: as this page
// wrote it, or as stored.
func (b *touched) outcome(i int) (projections.RecipientOutcome, error) {
	if o, ok := b.outcomes[i]; ok {
		return o, nil
	}
	if outcomes := b.bucket.Bucket(bucketOutcomes); outcomes != nil {
		if v := outcomes.Get(indexKey(i)); v != nil {
			return decodeOutcome(v)
		}
	}
	return projections.NewOutcome(i), nil
}

// setOutcome keeps rec to be written when the batch is saved.
func (b *touched) setOutcome(rec projections.RecipientOutcome) {
	if b.outcomes == nil {
		b.outcomes = make(map[int]projections.RecipientOutcome)
	}
	b.outcomes[rec.Index] = rec
}

// saveOutcomes writes the outcome records the page changed, in key order.
func (b *touched) saveOutcomes() error {
	if len(b.outcomes) == 0 {
		return nil
	}
	outcomes, err := b.bucket.CreateBucketIfNotExists(bucketOutcomes)
	if err != nil {
		return err
	}
	for _, i := range slices.Sorted(maps.Keys(b.outcomes)) {
		if err := outcomes.Put(indexKey(i), encodeOutcome(nil, b.outcomes[i])); err != nil {
			return fmt.Errorf("write outcome %d: %w", i, err)
		}
	}
	return nil
}

// putError records a recipient's final failure. A second final failure of the
// same recipient replaces the first, as in the other stores.
func putError(batch *bbolt.Bucket, entry projections.ErrorEntry) error {
	errs, err := batch.CreateBucketIfNotExists(bucketErrors)
	if err != nil {
		return err
	}
	cats, err := batch.CreateBucketIfNotExists(bucketCategories)
	if err != nil {
		return err
	}
	key := indexKey(entry.Index)
	if old := errs.Get(key); old != nil {
		var was projections.ErrorEntry
		if err := json.Unmarshal(old, &was); err != nil {
			return fmt.Errorf("decode error %d: %w", entry.Index, err)
		}
		if err := cats.Delete(categoryKey(was.Category, entry.Index)); err != nil {
			return err
		}
	}
	raw, err := json.Marshal(entry)
	if err != nil {
		return err
	}
	if err := errs.Put(key, raw); err != nil {
		return err
	}
	return cats.Put(categoryKey(entry.Category, entry.Index), nil)
}

// Checkpoint implements projections.Store.
func (s *Store) Checkpoint(ctx context.Context) (eventstore.Position, error) {
	var pos eventstore.Position
	err := s.db.View(func(tx *bbolt.Tx) error {
		var err error
		pos, err = readPosition(tx.Bucket(bucketMeta).Get(keyCheckpoint))
		return err
	})
	if err != nil {
		return eventstore.Position{}, fmt.Errorf("bolt projections: checkpoint: %w", err)
	}
	return pos, nil
}

// Unfinished implements projections.Store: the batches and the checkpoint are
// read in one transaction.
func (s *Store) Unfinished(ctx context.Context) ([]projections.BatchStatus, eventstore.Position, error) {
	var out []projections.BatchStatus
	var pos eventstore.Position
	err := s.db.View(func(tx *bbolt.Tx) error {
		var err error
		if pos, err = readPosition(tx.Bucket(bucketMeta).Get(keyCheckpoint)); err != nil {
			return err
		}
		batches := tx.Bucket(bucketBatches)
		return tx.Bucket(bucketUnfinished).ForEach(func(id, _ []byte) error {
			b := batches.Bucket(id)
			if b == nil {
				return fmt.Errorf("unfinished batch %s has no state", id)
			}
			// Read once, at start: not kept.
			st := &projections.BatchState{}
			if err := json.Unmarshal(b.Get(keyState), st); err != nil {
				return fmt.Errorf("batch %s: decode state: %w", id, err)
			}
			out = append(out, st.StatusView())
			return nil
		})
	})
	if err != nil {
		return nil, eventstore.Position{}, fmt.Errorf("bolt projections: unfinished: %w", err)
	}
	return out, pos, nil
}

// Follows reports whether the read models were built from events: whether the
// event store holds the event of the checkpoint, with its ID, right after the
// event before it. Read models of another history (an event store replaced,
// or restored from an older copy than the read models) do not, and would
// otherwise skip every new event up to their checkpoint. Empty read models
// follow any event store.
func (s *Store) Follows(ctx context.Context, events eventstore.Store) (bool, error) {
	var (
		checkpoint, prev eventstore.Position
		id               string
	)
	err := s.db.View(func(tx *bbolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		var err error
		if checkpoint, err = readPosition(meta.Get(keyCheckpoint)); err != nil {
			return err
		}
		if prev, err = readPosition(meta.Get(keyCheckpointPrev)); err != nil {
			return err
		}
		id = string(meta.Get(keyCheckpointID))
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("bolt projections: follows: %w", err)
	}
	if checkpoint == eventstore.Start {
		return true, nil
	}
	page, err := events.ReadAll(ctx, prev, 1)
	if err != nil {
		return false, fmt.Errorf("bolt projections: follows: read the checkpoint's event: %w", err)
	}
	return len(page) == 1 && page[0].Position == checkpoint && page[0].ID == id, nil
}

func notFound() error { return domain.Errorf(domain.ENOTFOUND, "batch not found") }

// batchOf returns the bucket of a tenant's batch; ENOTFOUND when there is none
// or it belongs to another tenant.
func batchOf(tx *bbolt.Tx, tenant, id string) (*bbolt.Bucket, error) {
	if id == "" {
		return nil, notFound()
	}
	b := tx.Bucket(bucketBatches).Bucket([]byte(id))
	if b == nil || string(b.Get(keyTenant)) != tenant {
		return nil, notFound()
	}
	return b, nil
}

// stateOf returns the state of batch id, whose bucket is b, for reading only:
// the one decoded before when it is stored unchanged since.
func (s *Store) stateOf(id string, b *bbolt.Bucket) (*projections.BatchState, error) {
	return s.reads.Decode(id, b.Get(keyState))
}

// state loads a batch's state; ENOTFOUND as batchOf.
func (s *Store) state(op, tenant, id string) (*projections.BatchState, error) {
	var st *projections.BatchState
	err := s.db.View(func(tx *bbolt.Tx) error {
		b, err := batchOf(tx, tenant, id)
		if err != nil {
			return err
		}
		st, err = s.stateOf(id, b)
		return err
	})
	if err != nil {
		if domain.ErrorCode(err) == domain.ENOTFOUND {
			return nil, err
		}
		return nil, fmt.Errorf("bolt projections: %s %s: %w", op, id, err)
	}
	return st, nil
}

// Batch implements projections.Store.
func (s *Store) Batch(ctx context.Context, tenant, id string) (projections.BatchStatus, error) {
	st, err := s.state("batch", tenant, id)
	if err != nil {
		return projections.BatchStatus{}, err
	}
	return st.StatusView(), nil
}

// Analytics implements projections.Store.
func (s *Store) Analytics(ctx context.Context, tenant, id string) (projections.Analytics, error) {
	st, err := s.state("analytics", tenant, id)
	if err != nil {
		return projections.Analytics{}, err
	}
	return st.AnalyticsView(), nil
}

// Batches implements projections.Store. It walks the tenant's list backwards
// from the cursor and reads one key more than the page holds to know whether
// another page follows.
func (s *Store) Batches(ctx context.Context, q projections.ListQuery) ([]projections.BatchStatus, string, error) {
	page, err := q.Page()
	if err != nil {
		return nil, "", err
	}
	out := make([]projections.BatchStatus, 0, page.Limit)
	more := false
	err = s.db.View(func(tx *bbolt.Tx) error {
		if q.Tenant == "" {
			return nil
		}
		list := tx.Bucket(bucketLists).Bucket([]byte(q.Tenant))
		if list == nil {
			return nil
		}
		batches := tx.Bucket(bucketBatches)
		c := list.Cursor()
		var k []byte
		if page.After == nil {
			k, _ = c.Last()
		} else if k, _ = c.Seek(listKey(*page.After)); k == nil {
			k, _ = c.Last() // every batch is older than the cursor's
		} else {
			k, _ = c.Prev() // the key found is the cursor's or a newer one
		}
		for v := []byte(nil); k != nil; k, _ = c.Prev() {
			id := k[8:]
			if page.Status != "" || page.Q != "" {
				v = list.Get(k)
				status, name, _ := bytes.Cut(v, []byte{0})
				if !page.Matches(string(status), string(name), string(id)) {
					continue
				}
			}
			if len(out) == page.Limit {
				more = true
				return nil
			}
			b := batches.Bucket(id)
			if b == nil {
				return fmt.Errorf("batch %s is listed but not stored", id)
			}
			st, err := s.stateOf(string(id), b)
			if err != nil {
				return fmt.Errorf("batch %s: %w", id, err)
			}
			out = append(out, st.StatusView())
		}
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("bolt projections: list: %w", err)
	}
	next := ""
	if more {
		next = projections.KeyOf(out[len(out)-1]).Cursor()
	}
	return out, next, nil
}

// Recipients implements projections.Store: the page is read in one
// transaction, a consistent view of the batch.
func (s *Store) Recipients(ctx context.Context, q projections.RecipientQuery) ([]projections.Recipient, string, error) {
	page, err := q.Page()
	if err != nil {
		return nil, "", err
	}
	var (
		out  []projections.Recipient
		next string
	)
	err = s.db.View(func(tx *bbolt.Tx) error {
		b, err := batchOf(tx, q.Tenant, q.BatchID)
		if err != nil {
			return err
		}
		st, err := s.stateOf(q.BatchID, b)
		if err != nil {
			return err
		}
		out, next, err = projections.QueryRecipients(st, page, source{
			outcomes: b.Bucket(bucketOutcomes), numbers: tx.Bucket(bucketNumbers).Bucket([]byte(q.BatchID)),
		})
		return err
	})
	if err != nil {
		if domain.ErrorCode(err) == domain.ENOTFOUND {
			return nil, "", err
		}
		return nil, "", fmt.Errorf("bolt projections: recipients: %w", err)
	}
	return out, next, nil
}

// source reads a batch's recipients for projections.QueryRecipients; either
// bucket may be nil (no number or no outcome stored).
type source struct {
	outcomes, numbers *bbolt.Bucket
}

func (src source) Numbers(page int) ([]string, error) {
	if src.numbers == nil {
		return nil, nil
	}
	return projections.SplitNumbers(string(src.numbers.Get(binary.BigEndian.AppendUint32(nil, uint32(page))))), nil
}

func (src source) Outcomes(from, to int, status, category string, limit int) ([]projections.RecipientOutcome, error) {
	if src.outcomes == nil {
		return nil, nil
	}
	var out []projections.RecipientOutcome
	prefix := append([]byte(status), 0)
	c := src.outcomes.Cursor()
	for k, v := c.Seek(indexKey(from)); k != nil && (limit <= 0 || len(out) < limit); k, v = c.Next() {
		if int(binary.BigEndian.Uint64(k)) >= to {
			break
		}
		if status != "" && !bytes.HasPrefix(v, prefix) {
			continue
		}
		o, err := decodeOutcome(v)
		if err != nil {
			return nil, err
		}
		if category != "" && o.Category != category {
			continue
		}
		out = append(out, o)
	}
	return out, nil
}

// Errors implements projections.Store. A page of one category walks that
// category's index; either way it reads one entry more than the page holds to
// know whether another page follows.
func (s *Store) Errors(ctx context.Context, q projections.ErrorQuery) ([]projections.ErrorEntry, string, error) {
	page, err := q.Page()
	if err != nil {
		return nil, "", err
	}
	out := make([]projections.ErrorEntry, 0, min(page.Limit, 64))
	more := false
	err = s.db.View(func(tx *bbolt.Tx) error {
		b, err := batchOf(tx, q.Tenant, q.BatchID)
		if err != nil {
			return err
		}
		errs := b.Bucket(bucketErrors)
		if errs == nil {
			return nil // no recipient has failed
		}
		for key := range errorKeys(b, page) {
			if len(out) == page.Limit {
				more = true
				return nil
			}
			var e projections.ErrorEntry
			if err := json.Unmarshal(errs.Get(key), &e); err != nil {
				return fmt.Errorf("decode error of %s: %w", q.BatchID, err)
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		if domain.ErrorCode(err) == domain.ENOTFOUND {
			return nil, "", err
		}
		return nil, "", fmt.Errorf("bolt projections: errors: %w", err)
	}
	next := ""
	if more {
		next = projections.ErrorCursor(out[len(out)-1])
	}
	return out, next, nil
}

// errorKeys yields the keys in a batch's "errors" bucket of the entries after
// page.AfterIndex, in index order, of page.Category when it is set.
func errorKeys(batch *bbolt.Bucket, page projections.ErrorPage) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		if page.Category == "" {
			c := batch.Bucket(bucketErrors).Cursor()
			for k, _ := seekAfter(c, nil, page.AfterIndex); k != nil; k, _ = c.Next() {
				if !yield(k) {
					return
				}
			}
			return
		}
		prefix := append([]byte(page.Category), 0)
		c := batch.Bucket(bucketCategories).Cursor()
		for k, _ := seekAfter(c, prefix, page.AfterIndex); bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			if !yield(k[len(prefix):]) {
				return
			}
		}
	}
}

// seekAfter moves c to the first key of prefix followed by an index greater
// than after (-1: the first of prefix).
func seekAfter(c *bbolt.Cursor, prefix []byte, after int) ([]byte, []byte) {
	if after < 0 {
		return c.Seek(prefix)
	}
	key := append(bytes.Clone(prefix), indexKey(after)...)
	k, v := c.Seek(key)
	if bytes.Equal(k, key) {
		return c.Next()
	}
	return k, v
}

// indexKey is a recipient index as a key that sorts in index order.
func indexKey(i int) []byte { return binary.BigEndian.AppendUint64(nil, uint64(i)) }

// categoryKey is a failed recipient's key in the categories index.
func categoryKey(category string, i int) []byte {
	return append(append([]byte(category), 0), indexKey(i)...)
}

// listKey is a batch's key in its tenant's list: the creation time with its
// sign bit flipped, so that times before 1970 sort too, then the ID.
func listKey(k projections.ListKey) []byte {
	key := binary.BigEndian.AppendUint64(nil, uint64(k.CreatedAt.UnixNano())^(1<<63))
	return append(key, k.ID...)
}

func positionKey(p eventstore.Position) []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, p.Commit), p.Prepare)
}

func readPosition(v []byte) (eventstore.Position, error) {
	switch len(v) {
	case 0:
		return eventstore.Start, nil
	case 16:
		return eventstore.Position{Commit: binary.BigEndian.Uint64(v), Prepare: binary.BigEndian.Uint64(v[8:])}, nil
	}
	return eventstore.Position{}, fmt.Errorf("stored position has %d bytes, want 16", len(v))
}
