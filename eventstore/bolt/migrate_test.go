package bolt

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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

// writeOldStore writes a store of layout "1" or "2" as an earlier build did: n
// events spread over three streams, each stream with a bucket of its own.
func writeOldStore(t *testing.T, path string, n int, format string) []eventstore.Event {
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
		if err := tx.Bucket(bucketMeta).Put(keyFormat, []byte(format)); err != nil {
			return err
		}
		encode := func(seq uint64, stream string, rev uint64, unixNano int64, e eventstore.EventData) []byte {
			return encodeRecord(seq, stream, rev, unixNano, e)
		}
		if format == formatVersionV1 {
			encode = func(_ uint64, stream string, rev uint64, unixNano int64, e eventstore.EventData) []byte {
				return encodeRecordV1(stream, rev, unixNano, e)
			}
		} else if err := tx.Bucket(bucketMeta).Put(keyStoreID, []byte(testStoreID)); err != nil {
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
			if err := all.Put(u64(seq), encode(seq, stream, rev, at.UnixNano(), e)); err != nil {
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
	if format != formatVersionV1 {
		if err := writeIdentityFile(path, testStoreID); err != nil {
			t.Fatal(err)
		}
	}
	return want
}

const testStoreID = "00112233445566778899aabbccddeeff"

// readEverything reads the whole log in pages of 9.
func readEverything(t *testing.T, s *Store) []eventstore.Event {
	t.Helper()
	var got []eventstore.Event
	for pos := eventstore.Start; ; {
		page, err := s.ReadAll(context.Background(), pos, 9)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			return got
		}
		got = append(got, page...)
		pos = page[len(page)-1].Position
	}
}

func sameEvents(t *testing.T, what string, got, want []eventstore.Event) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d events, want %d", what, len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.ID != w.ID || g.Stream != w.Stream || g.Type != w.Type || string(g.Data) != string(w.Data) ||
			string(g.Metadata) != string(w.Metadata) || g.Revision != w.Revision || g.Position != w.Position || !g.Time.Equal(w.Time) {
			t.Fatalf("%s: event %d is %+v, want %+v", what, i, g, w)
		}
	}
}

// TestLayout1IsMigrated: a store written by an earlier build (no checksums, no
// identity) opens, every event reads back as it was, and it is layout 2 with an
// identity file afterwards, then layout 3; an interrupted migration picks up
// where it stopped.
func TestLayout1IsMigrated(t *testing.T) {
	defer func(n int) { migrateChunk = n }(migrateChunk)
	migrateChunk = 7 // several transactions

	path := filepath.Join(t.TempDir(), "events.db")
	want := writeOldStore(t, path, 50, formatVersionV1)
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
	sameEvents(t, "the log after migrating", readEverything(t, s), want)
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
	writeOldStore(t, path, 3, formatVersionV1)
	if err := writeIdentityFile(path, testStoreID); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(path, Options{}); err == nil {
		s.Close()
		t.Fatal("a layout 1 store under another store's identity file opened")
	}
}

// TestLayout2IsMigrated: a store of layout 2 (a bucket for each stream) opens as
// layout 3 under the same identity: the log and every stream read as they were,
// forward, backward and from any revision, appends go on at the right revision,
// the stream buckets are gone, and the store checks clean. An interrupted
// migration picks up after the last record it linked.
func TestLayout2IsMigrated(t *testing.T) {
	defer func(n int) { migrateChunk = n }(migrateChunk)
	migrateChunk = 37 // several transactions, a stream's chain across them

	path := filepath.Join(t.TempDir(), "events.db")
	const n = 300 // 100 a stream: marks at 0, 32, 64 and 96
	want := writeOldStore(t, path, n, formatVersionV2)
	check, err := Check(context.Background(), path, Options{})
	if err != nil || !check.Clean() || check.Format != formatVersionV2 || check.Events != n {
		t.Fatalf("check of a layout 2 store: %v %+v", err, check)
	}

	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{bucketHeads, bucketPrev, bucketMarks} {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if linked, err := migrateChunkV2(db); err != nil || linked != 37 {
		t.Fatalf("first chunk: %d linked, %v", linked, err)
	}
	db.Close()

	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if s.ID() != testStoreID {
		t.Errorf("store ID %q after migrating, want %q", s.ID(), testStoreID)
	}
	sameEvents(t, "the log after migrating", readEverything(t, s), want)
	ctx := context.Background()
	for _, stream := range []string{"s0", "s1", "s2"} {
		var of []eventstore.Event
		for _, e := range want {
			if e.Stream == stream {
				of = append(of, e)
			}
		}
		for _, from := range []uint64{0, 1, 31, 32, 33, 63, 64, 95, 96, 99} {
			for _, size := range []int{1, 2, 31, 32, 33, 100} {
				got, err := s.ReadStream(ctx, stream, from, size)
				if err != nil {
					t.Fatal(err)
				}
				sameEvents(t, fmt.Sprintf("%s from %d, %d", stream, from, size), got, of[from:min(int(from)+size, len(of))])
				got, err = s.ReadStreamBackward(ctx, stream, from, size)
				if err != nil {
					t.Fatal(err)
				}
				back := slices.Clone(of[max(0, int(from)+1-size) : from+1])
				slices.Reverse(back)
				sameEvents(t, fmt.Sprintf("%s backward from %d, %d", stream, from, size), got, back)
			}
		}
	}
	if _, err := s.Append(ctx, "s1", eventstore.Exact(98), []eventstore.EventData{{ID: "late", Type: "T"}}); !errors.Is(err, eventstore.ErrConcurrency) {
		t.Fatalf("append to s1 expecting 98 after migrating: %v; want ErrConcurrency (it holds 100)", err)
	}
	res, err := s.Append(ctx, "s1", eventstore.Exact(99), []eventstore.EventData{{ID: "new", Type: "T"}})
	if err != nil || res.NextExpected != 100 || res.Position.Commit != n+1 {
		t.Fatalf("append to s1 after migrating: %+v %v", res, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	check, err = Check(context.Background(), path, Options{})
	if err != nil || !check.Clean() || check.Format != formatVersion || check.StoreID != testStoreID ||
		check.Events != n+1 || check.Streams["s1"] != 101 || len(check.Notes) != 0 {
		t.Fatalf("check after migrating: %v %+v", err, check)
	}
	db, err = bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.View(func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketStreams) != nil {
			return errors.New("the stream buckets of layout 2 are still there")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}
