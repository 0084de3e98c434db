package bolt

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/smsbatch/smsbatch/eventstore"
)

// migrateChunk is how many records one migration transaction rewrites, so that a
// large store is not rewritten in one transaction held in memory.
var migrateChunk = 10_000

// progressLog says how far a migration is, at most every few seconds.
type progressLog struct{ last time.Time }

func (p *progressLog) log(log *slog.Logger, path string, records uint64) {
	if time.Since(p.last) < 3*time.Second {
		return
	}
	p.last = time.Now()
	log.Info("event store migration", "file", path, "records", records)
}

// migrateV1 turns a store of layout "1" into layout "2": it rewrites every
// record with its checksum, a chunk per transaction, then records the layout and
// a new identity in one last transaction. Interrupted, it starts again where it
// stopped: records already rewritten are recognised by their version byte (and
// their checksum). It returns the store's new identity.
func migrateV1(db *bbolt.DB, log *slog.Logger, path string) (string, error) {
	began := time.Now()
	progress := progressLog{}
	log.Info("event store has layout 1: adding a checksum to every record (once)", "file", path)
	var next, done uint64 = 1, 0
	for {
		moved, last, err := migrateChunkV1(db, next)
		if err != nil {
			return "", err
		}
		done += uint64(moved)
		if moved == 0 && last == 0 {
			break
		}
		next = last + 1
		if moved > 0 {
			progress.log(log, path, done)
		}
	}
	id, err := newStoreID()
	if err != nil {
		return "", err
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if err := meta.Put(keyFormat, []byte(formatVersionV2)); err != nil {
			return err
		}
		return meta.Put(keyStoreID, []byte(id))
	})
	if err != nil {
		return "", err
	}
	log.Info("event store migrated to layout "+formatVersionV2, "file", path, "records", done, "took", time.Since(began).Round(time.Millisecond))
	return id, nil
}

// migrateChunkV1 rewrites up to migrateChunk version 1 records from global
// sequence from on, returning how many it rewrote and the last sequence it
// looked at (0 when there was none left).
func migrateChunkV1(db *bbolt.DB, from uint64) (moved int, last uint64, err error) {
	err = db.Update(func(tx *bbolt.Tx) error {
		all := tx.Bucket(bucketAll)
		type rewrite struct {
			key, rec []byte
		}
		var batch []rewrite
		c := all.Cursor()
		seen := 0
		for k, v := c.Seek(u64(from)); k != nil && seen < migrateChunk; k, v = c.Next() {
			seen++
			if len(k) != 8 {
				return fmt.Errorf("%w: a key of %d bytes in bucket all", eventstore.ErrCorrupt, len(k))
			}
			seq := binary.BigEndian.Uint64(k)
			last = seq
			if len(v) > 0 && v[0] == recordVersion {
				if _, err := decodeRecord(seq, v); err != nil {
					return err
				}
				continue
			}
			e, err := decodeRecordV1(seq, v)
			if err != nil {
				return err
			}
			rec := encodeRecord(seq, e.Stream, e.Revision, e.Time.UnixNano(), eventstore.EventData{
				ID: e.ID, Type: e.Type, Data: e.Data, Metadata: e.Metadata,
			})
			batch = append(batch, rewrite{bytes.Clone(k), rec})
		}
		// Put after the cursor is done with the bucket: bbolt cursors do not
		// survive changes to what they walk.
		all.FillPercent = 1
		for _, r := range batch {
			if err := all.Put(r.key, r.rec); err != nil {
				return fmt.Errorf("rewrite event %d: %w", binary.BigEndian.Uint64(r.key), err)
			}
		}
		moved = len(batch)
		return nil
	})
	return moved, last, err
}

// migrateV2 turns a store of layout "2" into the current one: it chains every
// stream through the log (chain.go), following the records in order, a chunk
// per transaction, then drops the nested bucket of each stream and records the
// layout in one last transaction. Interrupted, it starts again after the last
// record it linked, which the chunk's transaction recorded with the heads.
func migrateV2(db *bbolt.DB, log *slog.Logger, path string) error {
	began := time.Now()
	progress := progressLog{}
	log.Info("event store has layout 2: chaining every stream through the log (once)", "file", path)
	err := db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{bucketHeads, bucketPrev, bucketMarks} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	var done uint64
	for {
		linked, err := migrateChunkV2(db)
		if err != nil {
			return err
		}
		if linked == 0 {
			break
		}
		done += uint64(linked)
		progress.log(log, path, done)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketStreams) != nil {
			if err := tx.DeleteBucket(bucketStreams); err != nil {
				return fmt.Errorf("drop the stream buckets: %w", err)
			}
		}
		return tx.Bucket(bucketMeta).Put(keyFormat, []byte(formatVersion))
	})
	if err != nil {
		return err
	}
	log.Info("event store migrated to layout "+formatVersion, "file", path, "records", done, "took", time.Since(began).Round(time.Millisecond))
	return nil
}

// migrateChunkV2 links up to migrateChunk records after the last one linked,
// returning how many it linked. Each must be the next revision of its stream:
// layout 2's records already say which, so the nested buckets are not read.
func migrateChunkV2(db *bbolt.DB) (linked int, err error) {
	err = db.Update(func(tx *bbolt.Tx) error {
		all, heads, prev, marks := tx.Bucket(bucketAll), tx.Bucket(bucketHeads), tx.Bucket(bucketPrev), tx.Bucket(bucketMarks)
		var from uint64 = 1
		if k, _ := prev.Cursor().Last(); k != nil {
			from = binary.BigEndian.Uint64(k) + 1
		}
		type entry struct {
			seq, rev uint64
			stream   string
		}
		var batch []entry
		c := all.Cursor()
		for k, v := c.Seek(u64(from)); k != nil && len(batch) < migrateChunk; k, v = c.Next() {
			if len(k) != 8 {
				return fmt.Errorf("%w: a key of %d bytes in bucket all", eventstore.ErrCorrupt, len(k))
			}
			seq := binary.BigEndian.Uint64(k)
			e, err := decodeRecord(seq, v)
			if err != nil {
				return err
			}
			batch = append(batch, entry{seq, e.Revision, e.Stream})
		}
		prev.FillPercent = 1
		for _, b := range batch {
			h, err := streamHead(heads, b.stream)
			if err != nil {
				return err
			}
			if b.rev != h.n {
				return fmt.Errorf("event %d: %w: revision %d of %s, whose records before it number %d",
					b.seq, eventstore.ErrCorrupt, b.rev, b.stream, h.n)
			}
			if err := link(prev, marks, b.stream, h.n, b.seq, h.last); err != nil {
				return err
			}
			if err := heads.Put([]byte(b.stream), head{h.n + 1, b.seq}.encode()); err != nil {
				return err
			}
		}
		linked = len(batch)
		return nil
	})
	return linked, err
}
