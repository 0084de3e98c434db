package bolt

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/smsbatch/smsbatch/eventstore"
)

// TestTheLongestStreamNameIsStored: a stream name at the limit is appended past
// its second mark and read back, before and after a reopen, and Check is clean;
// one byte more is refused before anything is written. (bbolt's own key limit
// let through names whose mark keys it then refused mid-commit.)
func TestTheLongestStreamNameIsStored(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	long := strings.Repeat("x", maxStreamName)
	var ids []string
	for rev := range 2*markEvery + 1 {
		id := "e" + strconv.Itoa(rev)
		expected := eventstore.NoStream()
		if rev > 0 {
			expected = eventstore.Exact(uint64(rev - 1))
		}
		if _, err := s.Append(ctx, long, expected, []eventstore.EventData{{ID: id, Type: "T"}}); err != nil {
			t.Fatalf("append revision %d: %v", rev, err)
		}
		ids = append(ids, id)
	}
	if _, err := s.Append(ctx, long+"x", eventstore.Any(), []eventstore.EventData{{ID: "over", Type: "T"}}); err == nil ||
		!strings.Contains(err.Error(), "stream name is") {
		t.Fatalf("append to a name one byte too long: %v, want the name refused", err)
	}
	read := func(s *Store) {
		t.Helper()
		got, err := s.ReadStream(ctx, long, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		back, err := s.ReadStreamBackward(ctx, long, eventstore.StreamEnd, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(ids) || len(back) != len(ids) {
			t.Fatalf("read %d forward and %d backward, want %d", len(got), len(back), len(ids))
		}
		for i, e := range got {
			if e.ID != ids[i] || back[len(back)-1-i].ID != ids[i] {
				t.Fatalf("revision %d: %s forward, %s backward, want %s", i, e.ID, back[len(back)-1-i].ID, ids[i])
			}
		}
		all, err := s.ReadAll(ctx, eventstore.Start, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(all) != len(ids) {
			t.Fatalf("the log holds %d events, want %d: the refused append wrote something", len(all), len(ids))
		}
	}
	read(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := Check(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Clean() {
		t.Fatalf("check: %v", r.Problems)
	}
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	read(s)
}
