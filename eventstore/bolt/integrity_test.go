package bolt_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/bolt"
	"github.com/smsbatch/smsbatch/internal/faultfs"
)

// fill appends n events of about size bytes to each of the streams, in appends
// of 50, and closes the store. Each event's data holds a marker naming it.
func fill(t *testing.T, path string, streams []string, n, size int) {
	t.Helper()
	s, err := bolt.Open(path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, stream := range streams {
		for i := 0; i < n; i += 50 {
			var evs []eventstore.EventData
			for j := i; j < min(i+50, n); j++ {
				evs = append(evs, eventstore.EventData{
					ID: fmt.Sprintf("%s-%d", stream, j), Type: "T",
					Data: []byte(fmt.Sprintf(`{"marker":%q,"pad":%q}`, marker(stream, j), strings.Repeat("x", size))),
				})
			}
			if _, err := s.Append(ctx, stream, eventstore.Any(), evs); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func marker(stream string, i int) string { return fmt.Sprintf("<<%s#%d>>", stream, i) }

func wantCorrupt(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, eventstore.ErrCorrupt) {
		t.Fatalf("%s: %v; want an error wrapping ErrCorrupt", what, err)
	}
}

// TestFlippedRecordFailsTheStore: a record whose bytes changed fails its checksum
// when read, and from then on the store refuses everything, appends included.
func TestFlippedRecordFailsTheStore(t *testing.T) {
	for _, whileOpen := range []bool{false, true} {
		t.Run(fmt.Sprintf("while open %v", whileOpen), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "events.db")
			fill(t, path, []string{"a", "b"}, 20, 10)
			var s *bolt.Store
			if whileOpen {
				s = open(t, path) // bbolt reads through a shared mapping: it sees the change
			}
			faultfs.Flip(t, path, marker("a", 7))
			if !whileOpen {
				s = open(t, path)
			}
			ctx := context.Background()
			if err := s.Health(); err != nil {
				t.Fatalf("health before reading the record: %v", err)
			}
			got, err := s.ReadStream(ctx, "a", 0, 5)
			if err != nil || len(got) != 5 {
				t.Fatalf("reading the records before the damaged one: %d events, %v", len(got), err)
			}

			_, err = s.ReadStream(ctx, "a", 0, 100)
			wantCorrupt(t, "reading the damaged record", err)
			if !strings.Contains(err.Error(), "event 8: ") || !strings.Contains(err.Error(), "checksum mismatch") {
				t.Errorf("error %q does not name event 8 and the checksum", err)
			}
			wantCorrupt(t, "health", s.Health())

			_, err = s.ReadStream(ctx, "b", 0, 1)
			wantCorrupt(t, "reading a sound stream afterwards", err)
			_, err = s.ReadAll(ctx, eventstore.Start, 1)
			wantCorrupt(t, "reading all afterwards", err)
			_, err = s.Append(ctx, "c", eventstore.NoStream(), []eventstore.EventData{{ID: "c-1", Type: "T"}})
			wantCorrupt(t, "appending afterwards", err)
			wctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			wantCorrupt(t, "waiting for events afterwards", s.WaitForEvents(wctx, eventstore.Position{Commit: 1000}))
			if err := s.Close(); err != nil {
				t.Errorf("close: %v", err)
			}

			s = open(t, path)
			got, err = s.ReadStream(ctx, "c", 0, 1)
			if err != nil || len(got) != 0 {
				t.Errorf("the append refused while failed was written: %v %v", got, err)
			}
		})
	}
}

// TestReadAllFindsAFlippedRecord: a subscriber reading the global order meets the
// damage too, and a waiting subscriber is woken with it.
func TestReadAllFindsAFlippedRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.db")
	fill(t, path, []string{"a"}, 10, 10)
	s := open(t, path)
	ctx := context.Background()
	waited := make(chan error, 1)
	go func() { waited <- s.WaitForEvents(ctx, eventstore.Position{Commit: 10}) }()
	faultfs.Flip(t, path, marker("a", 3))
	_, err := s.ReadAll(ctx, eventstore.Start, 100)
	wantCorrupt(t, "read all", err)
	select {
	case err := <-waited:
		wantCorrupt(t, "wait for events", err)
	case <-time.After(5 * time.Second):
		t.Fatal("a waiting subscriber was not woken when the store failed")
	}
}

// TestStreamIndexMustAgreeWithRecords: a stream's chain leading to another
// stream's record is corruption, not that record.
func TestStreamIndexMustAgreeWithRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.db")
	fill(t, path, []string{"a", "b"}, 3, 1)
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		// Event 3, revision 2 of "a", now links back to event 5, which is
		// revision 1 of "b", instead of event 2.
		return tx.Bucket([]byte("prev")).Put(u64(3), u64(5))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s := open(t, path)
	_, err = s.ReadStream(context.Background(), "a", 1, 10)
	wantCorrupt(t, "read a stream whose chain disagrees", err)
	if !strings.Contains(err.Error(), "revision 1: ") || !strings.Contains(err.Error(), "event 5, which is revision 1 of b") {
		t.Errorf("error %q does not say where the chain leads", err)
	}
	s.Close()

	r, err := bolt.Check(context.Background(), path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Clean() || !equal(r.DamagedStreams, []string{"a"}) || !strings.Contains(strings.Join(r.Problems, "\n"), "event 3 (a revision 2): links to event 5, but the stream's previous is 2") {
		t.Errorf("check: problems %q, damaged streams %v; want stream a's link named", r.Problems, r.DamagedStreams)
	}
}

// TestStreamMarksAndHeadsMustAgreeWithRecords: a read that starts from a missing
// mark, and a head that does not say where its stream ends, are corruption, and
// Check names the stream of each.
func TestStreamMarksAndHeadsMustAgreeWithRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.db")
	fill(t, path, []string{"a", "b"}, 120, 1)
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		// Revision 64 of "a", "\x01a" then the revision, is no longer marked.
		if err := tx.Bucket([]byte("marks")).Delete(append([]byte("\x01a"), u64(64)...)); err != nil {
			return err
		}
		// "b"'s head says 119 events, the last at event 239.
		return tx.Bucket([]byte("heads")).Put([]byte("b"), append(u64(119), u64(239)...))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s := open(t, path)
	ctx := context.Background()
	if got, err := s.ReadStream(ctx, "a", 100, 5); err != nil || len(got) != 5 || got[0].Revision != 100 {
		t.Fatalf("read of a from 100, which the lost mark is not on the way to: %d events, %v", len(got), err)
	}
	_, err = s.ReadStream(ctx, "a", 40, 5)
	wantCorrupt(t, "read from a missing mark", err)
	if !strings.Contains(err.Error(), "stream a revision 64") {
		t.Errorf("error %q does not say which mark", err)
	}
	s.Close()

	r, err := bolt.Check(ctx, path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(r.Problems, "\n")
	if r.Clean() || !equal(r.DamagedStreams, []string{"a", "b"}) ||
		!strings.Contains(all, "event 65 (a revision 64): the stream's mark has no entry for it") ||
		!strings.Contains(all, "stream b: its head says 119 events, the last at event 239; its records 120, the last at event 240") {
		t.Errorf("check: problems %q, damaged streams %v; want a's mark and b's head named", r.Problems, r.DamagedStreams)
	}
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func equal(a, b []string) bool { return strings.Join(a, "\x00") == strings.Join(b, "\x00") }

func wantRefused(t *testing.T, path string, says ...string) {
	t.Helper()
	s, err := bolt.Open(path, bolt.Options{})
	if err == nil {
		s.Close()
		t.Fatalf("open of %s succeeded; want it refused", path)
	}
	wantCorrupt(t, "open", err)
	for _, w := range append([]string{path}, says...) {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("open error %q does not say %q", err, w)
		}
	}
}

// TestEmptiedStoreIsRefused: a store file emptied to 0 bytes is not served as a
// new, empty store, and is left as it is.
func TestEmptiedStoreIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.db")
	fill(t, path, []string{"a"}, 5, 1)
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, path, "empty (0 bytes)", "events.db.id")
	if info, err := os.Stat(path); err != nil || info.Size() != 0 {
		t.Errorf("the refused file was changed: %v %v", info.Size(), err)
	}
}

// TestMissingStoreIsRefused: a data directory that held a store does not start a
// new one when the file is gone.
func TestMissingStoreIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.db")
	fill(t, path, []string{"a"}, 5, 1)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, path, "missing")
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("a refused open created the file: %v", err)
	}
}

// TestReplacedStoreIsRefused: another store's file in this data directory.
func TestReplacedStoreIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.db")
	other := filepath.Join(t.TempDir(), "events.db")
	fill(t, path, []string{"a"}, 5, 1)
	fill(t, other, []string{"b"}, 5, 1)
	mine, theirs := readID(t, path), readID(t, other)
	data, err := os.ReadFile(other)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, path, "replaced", mine, theirs)
}

func readID(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path + ".id")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestTruncatedStoreIsRefused: a store cut short is refused with a clear error,
// never a bbolt panic ("invalid freelist page") or a fault on the missing pages.
func TestTruncatedStoreIsRefused(t *testing.T) {
	for _, cut := range []struct {
		name string
		size func(full int64) int64
		says string
	}{
		{"to half", func(full int64) int64 { return full / 2 }, "truncated"},
		{"to a quarter", func(full int64) int64 { return full / 4 }, "truncated"},
		{"to one page", func(int64) int64 { return 4096 }, "truncated"},
		{"to 100 bytes", func(int64) int64 { return 100 }, "truncated"},
		{"to 10 bytes", func(int64) int64 { return 10 }, "not a bbolt file"},
	} {
		t.Run(cut.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "events.db")
			fill(t, path, []string{"a", "b"}, 500, 200)
			info, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, cut.size(info.Size())); err != nil {
				t.Fatal(err)
			}
			wantRefused(t, path, cut.says)
			r, err := bolt.Check(context.Background(), path, bolt.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if r.Clean() || !strings.Contains(strings.Join(r.Problems, "\n"), cut.says) {
				t.Errorf("check of a store cut %s: %q", cut.name, r.Problems)
			}
		})
	}
}

// TestDamagedPagesNeverPanic: a page of the file overwritten with garbage gives
// errors wrapping ErrCorrupt (whatever bbolt makes of it), never a panic.
func TestDamagedPagesNeverPanic(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.db")
	fill(t, path, []string{"a", "b", "c"}, 300, 300)
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	garbage := bytes.Repeat([]byte{0xA5}, 4096)
	for page := int64(4); page*4096 < info.Size(); page += 7 {
		if _, err := f.WriteAt(garbage, page*4096); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()

	s, err := bolt.Open(path, bolt.Options{})
	if err != nil {
		wantCorrupt(t, "open", err)
		return
	}
	defer s.Close()
	ctx := context.Background()
	_, err = s.ReadAll(ctx, eventstore.Start, 10_000)
	for _, stream := range []string{"a", "b", "c"} {
		if err == nil {
			_, err = s.ReadStream(ctx, stream, 0, 10_000)
		}
	}
	wantCorrupt(t, "reading a store with garbage pages", err)
	t.Logf("read: %v", err)
	wantCorrupt(t, "health", s.Health())
	s.Close()

	r, err := bolt.Check(ctx, path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Clean() {
		t.Error("check found nothing wrong in a store with garbage pages")
	}
}

// TestIdentityFileIsWrittenAgain: a store whose identity file was lost opens and
// gets it back, with the store's own ID.
func TestIdentityFileIsWrittenAgain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.db")
	fill(t, path, []string{"a"}, 3, 1)
	id := readID(t, path)
	if err := os.Remove(path + ".id"); err != nil {
		t.Fatal(err)
	}
	s := open(t, path)
	if s.ID() != id || readID(t, path) != id {
		t.Errorf("store ID %s, identity file %s; want %s", s.ID(), readID(t, path), id)
	}
}

// TestCheck: a clean store checks clean; a flipped record is named with its
// stream; a running store cannot be checked.
func TestCheck(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "events.db")
	fill(t, path, []string{"a", "b"}, 120, 20)
	r, err := bolt.Check(ctx, path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Clean() || r.Events != 240 || r.Streams["a"] != 120 || r.Streams["b"] != 120 || r.StoreID != readID(t, path) {
		t.Fatalf("check of a clean store: %+v", r)
	}

	faultfs.Flip(t, path, marker("b", 33))
	r, err = bolt.Check(ctx, path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Clean() || !equal(r.DamagedStreams, []string{"b"}) || len(r.DamagedEvents) != 1 || r.DamagedEvents[0] != 154 {
		t.Fatalf("check of a flipped record: problems %q, streams %v, events %v; want event 154 of b", r.Problems, r.DamagedStreams, r.DamagedEvents)
	}
	if all := strings.Join(r.Problems, "\n"); !strings.Contains(all, "event 154") || !strings.Contains(all, "checksum mismatch") || !strings.Contains(all, "stream b revision 33") {
		t.Errorf("problems do not name the event, its stream and the checksum: %q", r.Problems)
	}

	open(t, path)
	_, err = bolt.Check(ctx, path, bolt.Options{LockTimeout: 100 * time.Millisecond})
	if !errors.Is(err, bolt.ErrInUse) {
		t.Errorf("check of a store in use: %v; want ErrInUse", err)
	}
}

// TestFullDiskIsUnavailableAndRecovers: appends on a full disk fail with
// ErrUnavailable saying so, nothing half written stays, and appends succeed
// again once there is room.
func TestFullDiskIsUnavailableAndRecovers(t *testing.T) {
	dir := faultfs.Mount(t, 2<<20)
	path := filepath.Join(dir, "events.db")
	s, err := bolt.Open(path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	filler := faultfs.Fill(t, dir)

	data := bytes.Repeat([]byte("y"), 3000)
	acked := 0
	var full error
	for i := 0; i < 2000 && full == nil; i++ {
		_, err := s.Append(ctx, "s", eventstore.After(uint64(acked)), []eventstore.EventData{
			{ID: fmt.Sprint("e", i), Type: "T", Data: data},
		})
		if err != nil {
			full = err
			break
		}
		acked++
	}
	if full == nil {
		t.Fatal("2000 appends of 3 kB fit on a full 2 MiB file system")
	}
	if !errors.Is(full, eventstore.ErrUnavailable) || !strings.Contains(full.Error(), "disk is full") {
		t.Fatalf("append on a full disk: %v; want ErrUnavailable saying the disk is full", full)
	}
	if err := s.Health(); err != nil {
		t.Errorf("a full disk failed the store: %v", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, "s", eventstore.After(uint64(acked)), []eventstore.EventData{{ID: "after", Type: "T", Data: data}}); err != nil {
		t.Fatalf("append once there is room again: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, path)
	got, err := s.ReadStream(ctx, "s", 0, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != acked+1 || got[acked].ID != "after" {
		t.Fatalf("after reopening: %d events, want the %d acknowledged and the one after", len(got), acked+1)
	}
	s.Close()
	if r, err := bolt.Check(ctx, path, bolt.Options{}); err != nil {
		t.Fatalf("check after a full disk: %v", err)
	} else if !r.Clean() {
		t.Fatalf("check after a full disk: %q", r.Problems)
	}
}
