package bolt

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/smsbatch/smsbatch/eventstore"
)

// encodeRecordV1 is the record encoding of layout "1", kept here to build the
// stores that earlier builds wrote.
func encodeRecordV1(stream string, revision uint64, unixNano int64, e eventstore.EventData) []byte {
	return appendBody([]byte{recordVersionV1}, stream, revision, unixNano, e)
}

// writeV1Store writes a store of layout "1" as an earlier build did: n events
// spread over three streams.
func writeV1Store(t *testing.T, path string, n int) []eventstore.Event {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	at := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	var want []eventstore.Event
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{bucketAll, bucketStreams, bucketIDs, bucketMeta} {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketMeta).Put(keyFormat, []byte(formatVersionV1)); err != nil {
			return err
		}
		all, streams, ids := tx.Bucket(bucketAll), tx.Bucket(bucketStreams), tx.Bucket(bucketIDs)
		for i := range n {
			seq := uint64(i + 1)
			stream := fmt.Sprint("s", i%3)
			sb, err := streams.CreateBucketIfNotExists([]byte(stream))
			if err != nil {
				return err
			}
			rev := sb.Sequence()
			e := eventstore.EventData{ID: fmt.Sprint("id-", i), Type: "T", Data: []byte(fmt.Sprintf(`{"i":%d}`, i))}
			if i%2 == 0 {
				e.Metadata = []byte(`{"tenant":"acme"}`)
			}
			if err := all.Put(u64(seq), encodeRecordV1(stream, rev, at.UnixNano(), e)); err != nil {
				return err
			}
			if err := sb.Put(u64(rev), u64(seq)); err != nil {
				return err
			}
			if err := sb.SetSequence(rev + 1); err != nil {
				return err
			}
			if err := ids.Put([]byte(e.ID), u64(seq)); err != nil {
				return err
			}
			if err := all.SetSequence(seq); err != nil {
				return err
			}
			want = append(want, eventstore.Event{ID: e.ID, Stream: stream, Type: e.Type, Data: e.Data, Metadata: e.Metadata,
				Revision: rev, Position: eventstore.Position{Commit: seq}, Time: at})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return want
}

// TestLayout1IsMigrated: a store written by an earlier build (no checksums, no
// identity) opens, every event reads back as it was, and it is layout 2 with an
// identity file afterwards; an interrupted migration picks up where it stopped.
func TestLayout1IsMigrated(t *testing.T) {
	defer func(n int) { migrateChunk = n }(migrateChunk)
	migrateChunk = 7 // several transactions

	path := filepath.Join(t.TempDir(), "events.db")
	want := writeV1Store(t, path, 50)
	check, err := Check(context.Background(), path, Options{})
	if err != nil || !check.Clean() || check.Format != "1" || check.Events != 50 {
		t.Fatalf("check of a layout 1 store: %v %+v", err, check)
	}

	// A migration interrupted after its first chunk.
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := migrateChunkV1(db, 1); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var got []eventstore.Event
	for pos := eventstore.Start; ; {
		page, err := s.ReadAll(context.Background(), pos, 9)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		got = append(got, page...)
		pos = page[len(page)-1].Position
	}
	if len(got) != len(want) {
		t.Fatalf("%d events after migrating, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.ID != w.ID || g.Stream != w.Stream || g.Type != w.Type || string(g.Data) != string(w.Data) ||
			string(g.Metadata) != string(w.Metadata) || g.Revision != w.Revision || g.Position != w.Position || !g.Time.Equal(w.Time) {
			t.Fatalf("event %d after migrating: %+v, want %+v", i, g, w)
		}
	}
	res, err := s.Append(context.Background(), "s0", eventstore.Exact(16), []eventstore.EventData{{ID: "new", Type: "T"}})
	if err != nil || res.Position.Commit != 51 {
		t.Fatalf("append after migrating: %+v %v", res, err)
	}
	id := s.ID()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path + ".id")
	if err != nil || string(b) != id+"\n" || !validStoreID(id) {
		t.Fatalf("identity file %q (%v), store ID %q", b, err, id)
	}
	check, err = Check(context.Background(), path, Options{})
	if err != nil || !check.Clean() || check.Format != formatVersion || check.StoreID != id || check.Events != 51 {
		t.Fatalf("check after migrating: %v %+v", err, check)
	}
}

// TestLayout1WithIdentityFileIsRefused: an identity file says this directory held
// a store of layout 2, so a layout 1 file here replaced it.
func TestLayout1WithIdentityFileIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.db")
	writeV1Store(t, path, 3)
	if err := writeIdentityFile(path, "00112233445566778899aabbccddeeff"); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(path, Options{}); err == nil {
		s.Close()
		t.Fatal("a layout 1 store under another store's identity file opened")
	}
}
