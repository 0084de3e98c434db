package bolt

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"

	bbolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/smsbatch/smsbatch/eventstore"
)

// maxProblems bounds the problems a Report lists; the rest are counted.
const maxProblems = 1000

// Report is what Check found in a store.
type Report struct {
	// Path is the store file checked.
	Path string
	// StoreID is the identity recorded in the store; empty when unreadable.
	StoreID string
	// Format is the store's layout version.
	Format string
	// Events is how many records were read.
	Events uint64
	// Streams is the number of events of each stream, as the records say.
	Streams map[string]uint64
	// FirstTypes is the type of each stream's first event (revision 0).
	FirstTypes map[string]string
	// Problems says what is damaged, one line each; empty when the store is clean.
	Problems []string
	// MoreProblems counts the problems found beyond the first maxProblems.
	MoreProblems int
	// DamagedEvents are the global sequences of records that failed a check.
	DamagedEvents []uint64
	// DamagedStreams are the streams with a damaged record or index entry, sorted.
	DamagedStreams []string
	// Notes are findings that are not damage (a store of an older layout, an
	// identity file to write again).
	Notes []string
}

// Clean reports whether no damage was found.
func (r *Report) Clean() bool { return len(r.Problems) == 0 }

func (r *Report) problem(format string, args ...any) {
	if len(r.Problems) >= maxProblems {
		r.MoreProblems++
		return
	}
	r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
}

func (r *Report) damagedStream(name string) {
	if !slices.Contains(r.DamagedStreams, name) {
		r.DamagedStreams = append(r.DamagedStreams, name)
	}
}

// Check verifies the store at path offline: the identity file and the file's size
// (as Open does), bbolt's own consistency check, every record's checksum, and that
// the streams (their chains, or the stream buckets of layouts 1 and 2) and the
// event ID index agree with the records. It opens the file read-only and fails
// with ErrInUse while a running smsbatch holds it. It returns an error only when
// it could not check; what is damaged is in the report.
func Check(ctx context.Context, path string, opts Options) (*Report, error) {
	opts.setDefaults()
	r := &Report{Path: path, Streams: map[string]uint64{}}
	held, err := readIdentityFile(path)
	if errors.Is(err, eventstore.ErrCorrupt) {
		r.problem("%v", err)
	} else if err != nil {
		return nil, fmt.Errorf("bolt: check %s: %w", path, err)
	}
	info, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && held == "":
		return nil, fmt.Errorf("bolt: check %s: no event store there", path)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("bolt: check %s: %w", path, err)
	}
	if err := preflight(path, held); err != nil {
		r.problem("%s: %v", path, err)
		return r, nil
	}
	if info.Size() == 0 {
		r.Notes = append(r.Notes, "the file is empty: a new store, never opened")
		return r, nil
	}
	db, err := openDB(path, &bbolt.Options{ReadOnly: true, Timeout: opts.LockTimeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("bolt: check %s: %w: stop smsbatch first", path, ErrInUse)
	}
	if err != nil {
		r.problem("%s: bbolt cannot open it: %v", path, err)
		return r, nil
	}
	defer db.Close()
	err = guard(func() error {
		return db.View(func(tx *bbolt.Tx) error { return r.check(ctx, tx, held) })
	})
	if errors.Is(err, eventstore.ErrCorrupt) {
		r.problem("%s: reading stopped after %d records: %v", path, r.Events, err)
	} else if err != nil {
		return nil, fmt.Errorf("bolt: check %s: %w", path, err)
	}
	slices.Sort(r.DamagedEvents)
	slices.Sort(r.DamagedStreams)
	return r, nil
}

// check runs the checks inside one read transaction.
func (r *Report) check(ctx context.Context, tx *bbolt.Tx, held string) error {
	meta, all, ids := tx.Bucket(bucketMeta), tx.Bucket(bucketAll), tx.Bucket(bucketIDs)
	if meta == nil || all == nil || ids == nil {
		r.problem("%s: not an smsbatch event store: a bucket of its layout is missing", r.Path)
		return nil
	}
	r.Format, r.StoreID = string(meta.Get(keyFormat)), string(meta.Get(keyStoreID))
	decode := decodeRecord
	var streams streamCheck
	switch r.Format {
	case formatVersion:
		streams = newChainCheck(r, tx)
	case formatVersionV2:
		streams = newNestedCheck(r, tx, decode)
		r.Notes = append(r.Notes, "layout 2: streams have a bucket each; `smsbatch serve` chains them through the log once")
	case formatVersionV1:
		decode = decodeRecordV1
		streams = newNestedCheck(r, tx, decode)
		r.Notes = append(r.Notes, "layout 1: records carry no checksum yet; `smsbatch serve` adds them once")
	default:
		r.problem("%s: unknown layout version %q", r.Path, r.Format)
		return nil
	}
	if streams == nil {
		r.problem("%s: not an smsbatch event store of layout %s: a bucket of its layout is missing", r.Path, r.Format)
		return nil
	}
	switch {
	case held != "" && r.StoreID != held:
		store := "a store without identity"
		if r.StoreID != "" {
			store = "store " + r.StoreID
		}
		r.problem("%s: it is %s, but this data directory held store %s (see %s): the file was replaced", r.Path, store, held, identityPath(r.Path))
	case held == "" && r.Format != formatVersionV1:
		r.Notes = append(r.Notes, fmt.Sprintf("no identity file %s: `smsbatch serve` writes it again", identityPath(r.Path)))
	}

	for err := range tx.Check() {
		r.problem("%s: bbolt consistency check: %v", r.Path, err)
	}

	// Every record: its checksum, and the indexes pointing back at it. A damaged
	// record is reported with the stream that leads to it, by the stream check.
	damaged := map[uint64]error{}
	var lastSeq uint64
	c := all.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if r.Events%10_000 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if len(k) != 8 {
			r.problem("%s: a key of %d bytes in the records", r.Path, len(k))
			continue
		}
		seq := binary.BigEndian.Uint64(k)
		lastSeq = seq
		r.Events++
		e, err := decode(seq, v)
		if err != nil {
			damaged[seq] = err
			r.DamagedEvents = append(r.DamagedEvents, seq)
			continue
		}
		r.Streams[e.Stream]++
		if e.Revision == 0 {
			if r.FirstTypes == nil {
				r.FirstTypes = make(map[string]string)
			}
			r.FirstTypes[e.Stream] = e.Type
		}
		streams.record(seq, e, damaged)
		if at := ids.Get([]byte(e.ID)); len(at) != 8 || binary.BigEndian.Uint64(at) != seq {
			r.damagedStream(e.Stream)
			r.problem("%s: event %d (%s revision %d): the event ID index %s", r.Path, seq, e.Stream, e.Revision, pointsTo(at))
		}
	}
	if seq := all.Sequence(); lastSeq > seq {
		r.problem("%s: the last record is event %d, but the global sequence says %d", r.Path, lastSeq, seq)
	}

	if err := streams.finish(damaged); err != nil {
		return err
	}
	for _, seq := range r.DamagedEvents {
		if err, ok := damaged[seq]; ok {
			r.problem("%s: %v (no stream leads to it)", r.Path, err)
		}
	}
	if n := uint64(ids.Stats().KeyN); n != r.Events {
		r.problem("%s: the event ID index holds %d IDs, the records are %d", r.Path, n, r.Events)
	}
	return nil
}

func pointsTo(at []byte) string {
	switch {
	case at == nil:
		return "has no entry for it"
	case len(at) != 8:
		return fmt.Sprintf("entry is %d bytes", len(at))
	default:
		return fmt.Sprintf("points to event %d instead", binary.BigEndian.Uint64(at))
	}
}
