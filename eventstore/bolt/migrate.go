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

// migrateV1 turns a store of layout "1" into the current one: it rewrites every
// record with its checksum, a chunk per transaction, then records the layout and
// a new identity in one last transaction. Interrupted, it starts again where it
// stopped: records already rewritten are recognised by their version byte (and
// their checksum). It returns the store's new identity.
func migrateV1(db *bbolt.DB, log *slog.Logger, path string) (string, error) {
	began := time.Now()
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
			log.Info("event store migration", "file", path, "records", done)
		}
	}
	id, err := newStoreID()
	if err != nil {
		return "", err
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if err := meta.Put(keyFormat, []byte(formatVersion)); err != nil {
			return err
		}
		return meta.Put(keyStoreID, []byte(id))
	})
	if err != nil {
		return "", err
	}
	log.Info("event store migrated to layout "+formatVersion, "file", path, "records", done, "took", time.Since(began).Round(time.Millisecond))
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
