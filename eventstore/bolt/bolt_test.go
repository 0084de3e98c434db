package bolt_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/bolt"
	"github.com/smsbatch/smsbatch/eventstore/eventstoretest"
)

func open(t *testing.T, path string) *bolt.Store {
	t.Helper()
	s, err := bolt.Open(path, bolt.Options{})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestContract(t *testing.T) {
	eventstoretest.Run(t, func(t *testing.T) eventstore.Store {
		return open(t, filepath.Join(t.TempDir(), "events.db"))
	})
}

func TestDurability(t *testing.T) {
	eventstoretest.RunDurability(t, func(t *testing.T, dir string) eventstore.Store {
		return open(t, filepath.Join(dir, "events.db"))
	})
}

func TestOpenCreatesParentDirectories(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "nested", "events.db")
	s := open(t, path)
	if s.Path() != path {
		t.Errorf("Path() = %s, want %s", s.Path(), path)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("store file: %v", err)
	}
}

func TestSecondOpenFailsWhileInUse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.db")
	open(t, path)

	const lockTimeout = 200 * time.Millisecond
	began := time.Now()
	s, err := bolt.Open(path, bolt.Options{LockTimeout: lockTimeout})
	took := time.Since(began)
	if err == nil {
		_ = s.Close()
		t.Fatal("second open of a file in use succeeded")
	}
	if !errors.Is(err, bolt.ErrInUse) || !strings.Contains(err.Error(), "data directory is in use by another process") {
		t.Errorf("second open: %v; want ErrInUse saying the data directory is in use", err)
	}
	if took > lockTimeout+time.Second {
		t.Errorf("second open failed after %s, lock timeout %s", took, lockTimeout)
	}
}

func TestOpenAfterCloseSucceeds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.db")
	s := open(t, path)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	open(t, path)
}

func TestClockStampsEvents(t *testing.T) {
	at := time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.FixedZone("CET", 3600))
	s, err := bolt.Open(filepath.Join(t.TempDir(), "events.db"), bolt.Options{Clock: func() time.Time { return at }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if _, err := s.Append(ctx, "s", eventstore.NoStream(), []eventstore.EventData{{ID: "1", Type: "T"}}); err != nil {
		t.Fatal(err)
	}
	got, err := s.ReadStream(ctx, "s", 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !got[0].Time.Equal(at) || got[0].Time.Location() != time.UTC {
		t.Errorf("event time %s, want %s in UTC", got[0].Time, at)
	}
	if got[0].Position != (eventstore.Position{Commit: 1}) {
		t.Errorf("first event at %s, want 1/0", got[0].Position)
	}
}

func TestReusedEventIDIsRefused(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "events.db"))
	eventstoretest.ReusedIDIsRefused(t, s)
}

// TestCloseDuringAppends: appends racing Close either fail with ErrClosed or are
// acknowledged, and every acknowledged one is there after reopening.
func TestCloseDuringAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.db")
	s, err := bolt.Open(path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const workers = 8
	acked := make([][]string, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			stream := "s-" + strconv.Itoa(w)
			for i := 0; ; i++ {
				id := stream + "-" + strconv.Itoa(i)
				_, err := s.Append(ctx, stream, eventstore.Any(), []eventstore.EventData{{ID: id, Type: "T"}})
				if errors.Is(err, eventstore.ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("append: %v", err)
					return
				}
				acked[w] = append(acked[w], id)
			}
		})
	}
	time.Sleep(50 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	wg.Wait()

	s = open(t, path)
	for w, ids := range acked {
		got, err := s.ReadStream(ctx, "s-"+strconv.Itoa(w), 0, len(ids)+10)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(ids) {
			t.Fatalf("stream %d: %d events after reopening, %d acknowledged", w, len(got), len(ids))
		}
		for i, e := range got {
			if e.ID != ids[i] {
				t.Fatalf("stream %d, revision %d: %s, acknowledged %s", w, i, e.ID, ids[i])
			}
		}
	}
}

// An append willing to wait for company (eventstore.WithCommitDelay) stays
// unwritten while nothing else comes, up to its delay; an append that is not
// willing is committed at once and takes the waiting ones with it.
func TestAppendsWaitForCompanyOnlyWhenAllMay(t *testing.T) {
	ctx := context.Background()
	readable := func(s *bolt.Store) int {
		t.Helper()
		events, err := s.ReadAll(ctx, eventstore.Start, 10)
		if err != nil {
			t.Fatal(err)
		}
		return len(events)
	}
	appendOne := func(ctx context.Context, s *bolt.Store, stream string) error {
		_, err := s.Append(ctx, stream, eventstore.Any(), []eventstore.EventData{{ID: stream, Type: "T"}})
		return err
	}

	t.Run("alone, it is written once its delay is over", func(t *testing.T) {
		s := open(t, filepath.Join(t.TempDir(), "events.db"))
		const delay = 300 * time.Millisecond
		began := time.Now()
		if err := appendOne(eventstore.WithCommitDelay(ctx, delay), s, "a"); err != nil {
			t.Fatal(err)
		}
		if waited := time.Since(began); waited < delay {
			t.Fatalf("append answered after %s, before its %s delay: it did not wait for company", waited, delay)
		}
		if n := readable(s); n != 1 {
			t.Fatalf("%d events readable, want 1", n)
		}
	})

	t.Run("one that may not wait commits the group", func(t *testing.T) {
		s := open(t, filepath.Join(t.TempDir(), "events.db"))
		waiting := make(chan error, 1)
		go func() { waiting <- appendOne(eventstore.WithCommitDelay(ctx, time.Hour), s, "a") }()
		// While it waits it is not written (nor answered).
		for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if n := readable(s); n != 0 {
				t.Fatalf("%d events readable while the only append waits for company", n)
			}
			select {
			case err := <-waiting:
				t.Fatalf("the waiting append was answered alone (%v)", err)
			default:
			}
		}
		if err := appendOne(ctx, s, "b"); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-waiting:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the waiting append was not committed with the one that may not wait")
		}
		if n := readable(s); n != 2 {
			t.Fatalf("%d events readable, want 2", n)
		}
	})

	t.Run("Close commits the waiting group", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "events.db")
		s, err := bolt.Open(path, bolt.Options{})
		if err != nil {
			t.Fatal(err)
		}
		waiting := make(chan error, 1)
		go func() { waiting <- appendOne(eventstore.WithCommitDelay(ctx, time.Hour), s, "a") }()
		time.Sleep(200 * time.Millisecond) // it reaches the writer, and waits there
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-waiting:
			if errors.Is(err, eventstore.ErrClosed) {
				t.Skip("Close came before the append reached the writer")
			}
			if err != nil {
				t.Fatalf("the waiting append failed at Close: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Close left the waiting append unanswered")
		}
		if n := readable(open(t, path)); n != 1 {
			t.Fatalf("%d events readable after reopening, want the 1 answered", n)
		}
	})
}

// TestStreamReadsFromAnyRevision: streams appended to in turns, by appends of
// 1 to 40 events that cross the chains' marks (every 32nd revision) at any
// point, read forward and backward from every revision, by as many as a read
// may take, give exactly the stream's events in order, then again after a
// reopen.
func TestStreamReadsFromAnyRevision(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.db")
	s := open(t, path)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	streams := []string{"a", "b", "c"}
	ids := map[string][]string{} // each stream's event IDs, by revision
	for n := 0; len(ids["a"]) < 150 || len(ids["b"]) < 150 || len(ids["c"]) < 150; n++ {
		stream := streams[rng.IntN(len(streams))]
		var evs []eventstore.EventData
		for range 1 + rng.IntN(40) {
			id := stream + "-" + strconv.Itoa(len(ids[stream])+len(evs))
			evs = append(evs, eventstore.EventData{ID: id, Type: "T", Data: []byte(`{}`)})
		}
		expected := eventstore.NoStream()
		if k := len(ids[stream]); k > 0 {
			expected = eventstore.Exact(uint64(k - 1))
		}
		if _, err := s.Append(ctx, stream, expected, evs); err != nil {
			t.Fatalf("append %d to %s: %v", n, stream, err)
		}
		for _, e := range evs {
			ids[stream] = append(ids[stream], e.ID)
		}
	}
	check := func(s *bolt.Store) {
		t.Helper()
		for _, stream := range streams {
			want := ids[stream]
			n := len(want)
			for from := 0; from <= n; from++ {
				for _, size := range []int{1, 2, 31, 32, 33, 64, 1000} {
					got, err := s.ReadStream(ctx, stream, uint64(from), size)
					if err != nil {
						t.Fatal(err)
					}
					if w := want[min(from, n):min(from+size, n)]; !sameIDs(got, w) {
						t.Fatalf("%s forward from %d by %d: %v, want %v", stream, from, size, idsOf(got), w)
					}
					got, err = s.ReadStreamBackward(ctx, stream, uint64(from), size)
					if err != nil {
						t.Fatal(err)
					}
					top := min(from, n-1) + 1
					w := slices.Clone(want[max(0, top-size):top])
					slices.Reverse(w)
					if !sameIDs(got, w) {
						t.Fatalf("%s backward from %d by %d: %v, want %v", stream, from, size, idsOf(got), w)
					}
				}
			}
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	check(open(t, path))
}

func idsOf(events []eventstore.Event) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.ID
	}
	return out
}

func sameIDs(events []eventstore.Event, want []string) bool {
	return slices.Equal(idsOf(events), want)
}
