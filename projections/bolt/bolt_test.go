package bolt_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/smsbatch/smsbatch/eventstore"
	esmemory "github.com/smsbatch/smsbatch/eventstore/memory"
	"github.com/smsbatch/smsbatch/projections"
	"github.com/smsbatch/smsbatch/projections/bolt"
	"github.com/smsbatch/smsbatch/projections/memory"
	"github.com/smsbatch/smsbatch/projections/projectionstest"
)

var t0 = time.Date(2025, 6, 2, 9, 0, 0, 0, time.UTC)

var tenants = []string{"tenant-0", "tenant-1"}

// open opens the read models at path and closes them when the test ends.
func open(t testing.TB, path string) *bolt.Store {
	t.Helper()
	s, err := bolt.Open(path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func tempPath(t testing.TB) string { return filepath.Join(t.TempDir(), bolt.FileName) }

func TestContract(t *testing.T) {
	projectionstest.Run(t, func(t *testing.T) projections.Store { return open(t, tempPath(t)) })
}

// history is campaigns of two tenants, with failures of several categories.
func history(batches, recipients int) *projectionstest.Events {
	h := projectionstest.NewEvents()
	for i := range batches {
		h.Campaign(tenants[i%2], fmt.Sprintf("batch-%02d", i), t0.Add(time.Duration(i)*time.Minute), recipients)
	}
	return h
}

// rebuilt is everything read models built at once from events show.
func rebuilt(t testing.TB, events []eventstore.Event) string {
	t.Helper()
	s := memory.New()
	if len(events) > 0 {
		projectionstest.Apply(t, s, events, len(events))
	}
	return projectionstest.Snapshot(t, s, tenants...)
}

// upTo returns the events at or before pos.
func upTo(events []eventstore.Event, pos eventstore.Position) []eventstore.Event {
	i, _ := slices.BinarySearchFunc(events, pos, func(e eventstore.Event, p eventstore.Position) int {
		switch {
		case e.Position.Less(p):
			return -1
		case p.Less(e.Position):
			return 1
		}
		return 0
	})
	if i < len(events) && events[i].Position == pos {
		i++
	}
	return events[:i]
}

// build applies events to the read models at path in pages of n, as the
// runner does, and closes them.
func build(t *testing.T, path string, events []eventstore.Event, n int) {
	t.Helper()
	s, err := bolt.Open(path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	projectionstest.Apply(t, s, events, n)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestReopenedEqualsRebuiltFromEvents(t *testing.T) {
	events := history(6, 120).List()
	path := tempPath(t)
	build(t, path, events, 7)
	reopened := open(t, path)
	got := projectionstest.Snapshot(t, reopened, tenants...)
	projectionstest.SameSnapshot(t, "reopened against rebuilt from the events", got, rebuilt(t, events))
	errs, _, err := reopened.Errors(t.Context(), projections.ErrorQuery{Tenant: "tenant-1", BatchID: "batch-03", Category: "blocked"})
	if err != nil || len(errs) == 0 {
		t.Fatalf("blocked errors of batch-03 after reopening: %v, %v; want some", errs, err)
	}
}

// countingEvents records every event the runner reads from the event store.
type countingEvents struct {
	eventstore.Store
	mu   sync.Mutex
	read []eventstore.Position
}

func (c *countingEvents) ReadAll(ctx context.Context, after eventstore.Position, max int) ([]eventstore.Event, error) {
	events, err := c.Store.ReadAll(ctx, after, max)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range events {
		c.read = append(c.read, e.Position)
	}
	return events, err
}

// follow runs a runner over events and store until it has applied the event
// at last.
func follow(t *testing.T, events eventstore.Store, store projections.Store, last eventstore.Position) {
	t.Helper()
	runner, err := projections.NewRunner(projections.RunnerConfig{Events: events, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- runner.Run(ctx) }()
	wait, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	if err := runner.WaitFor(wait, last); err != nil {
		t.Fatalf("runner did not reach %s: %v", last, err)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("runner: %v", err)
	}
}

func TestRestartReadsOnlyWhatFollowsTheCheckpoint(t *testing.T) {
	h := history(30, 300)
	es := esmemory.New()
	t.Cleanup(func() { es.Close() })
	if _, err := projectionstest.AppendTo(t.Context(), es, h.List()); err != nil {
		t.Fatal(err)
	}
	path := tempPath(t)
	s, err := bolt.Open(path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	follow(t, es, s, h.Last())
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// While the service is down, two more batches are written.
	before := h.Len()
	h.Campaign("tenant-0", "after-restart-0", t0.Add(2*time.Hour), 40)
	h.Campaign("tenant-1", "after-restart-1", t0.Add(2*time.Hour+time.Minute), 40)
	later := h.List()[before:]
	if _, err := projectionstest.AppendTo(t.Context(), es, later); err != nil {
		t.Fatal(err)
	}

	s = open(t, path)
	checkpoint, err := s.Checkpoint(t.Context())
	if err != nil || checkpoint != h.List()[before-1].Position {
		t.Fatalf("checkpoint after reopening %s (%v), want %s", checkpoint, err, h.List()[before-1].Position)
	}
	counting := &countingEvents{Store: es}
	follow(t, counting, s, h.Last())
	if len(counting.read) != len(later) {
		t.Errorf("the runner read %d events after the restart; %d were appended since the checkpoint of a history of %d",
			len(counting.read), len(later), h.Len())
	}
	for _, pos := range counting.read {
		if !checkpoint.Less(pos) {
			t.Fatalf("the runner read the event at %s, at or before the checkpoint %s", pos, checkpoint)
		}
	}
	projectionstest.SameSnapshot(t, "followed across a restart against rebuilt from the events",
		projectionstest.Snapshot(t, s, tenants...), rebuilt(t, h.List()))
}

func TestFailureBeforeTheCheckpointLeavesThePageUnapplied(t *testing.T) {
	events := history(3, 60).List()
	s := open(t, tempPath(t))
	half := len(events) / 2
	projectionstest.Apply(t, s, events[:half], 10)
	want := projectionstest.Snapshot(t, s, tenants...)

	boom := errors.New("disk on fire")
	bolt.SetBeforeCheckpoint(s, func() error { return boom })
	if err := s.Apply(t.Context(), events[half:half+50]); !errors.Is(err, boom) {
		t.Fatalf("apply with a failing write: %v, want %v", err, boom)
	}
	projectionstest.SameSnapshot(t, "after a page failed between its changes and its checkpoint",
		projectionstest.Snapshot(t, s, tenants...), want)

	bolt.SetBeforeCheckpoint(s, nil)
	projectionstest.Apply(t, s, events[half:], 10)
	projectionstest.SameSnapshot(t, "after the page was applied again", projectionstest.Snapshot(t, s, tenants...), rebuilt(t, events))
}

// The crash tests run this test in a child process that applies the events of
// crashHistory to the read models at $BOLT_CRASH_PATH in pages of 3, from their
// checkpoint on; with $BOLT_CRASH_AT=n, it kills itself in the transaction of
// its n-th page, after the read models were written and before the checkpoint.
func TestCrashChild(t *testing.T) {
	path := os.Getenv("BOLT_CRASH_PATH")
	if path == "" {
		t.Skip("run by the crash tests")
	}
	s, err := bolt.Open(path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if at, _ := strconv.Atoi(os.Getenv("BOLT_CRASH_AT")); at > 0 {
		pages := 0
		bolt.SetBeforeCheckpoint(s, func() error {
			if pages++; pages == at {
				self, _ := os.FindProcess(os.Getpid())
				_ = self.Kill()
				time.Sleep(time.Minute)
			}
			return nil
		})
	}
	checkpoint, err := s.Checkpoint(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	events := crashHistory().List()
	fmt.Println(applyingLine)
	projectionstest.Apply(t, s, events[len(upTo(events, checkpoint)):], 3)
}

// applyingLine is what TestCrashChild prints once it starts applying.
const applyingLine = "crash child: applying"

func crashHistory() *projectionstest.Events { return history(20, 300) }

// crashChild starts TestCrashChild on path and returns once it is applying.
func crashChild(t *testing.T, path string, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), append(env, "BOLT_CRASH_PATH="+path)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	for lines.Scan() && lines.Text() != applyingLine {
	}
	go io.Copy(io.Discard, out) // the rest, so that the child never blocks writing
	return cmd
}

// sameAsCheckpointSays checks that the read models at path are those of the
// events up to their checkpoint, and returns the checkpoint.
func sameAsCheckpointSays(t *testing.T, path string, events []eventstore.Event) eventstore.Position {
	t.Helper()
	s, err := bolt.Open(path, bolt.Options{})
	if err != nil {
		t.Fatalf("reopen after the crash: %v", err)
	}
	defer s.Close()
	checkpoint, err := s.Checkpoint(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	projectionstest.SameSnapshot(t, fmt.Sprintf("after a crash, against the events up to the checkpoint %s", checkpoint),
		projectionstest.Snapshot(t, s, tenants...), rebuilt(t, upTo(events, checkpoint)))
	return checkpoint
}

func TestKilledBetweenChangesAndCheckpoint(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	events := crashHistory().List()
	path := tempPath(t)
	child := crashChild(t, path, "BOLT_CRASH_AT=40")
	if err := child.Wait(); err == nil {
		t.Fatal("the child was not killed")
	}
	checkpoint := sameAsCheckpointSays(t, path, events)
	if want := events[39*3-1].Position; checkpoint != want {
		t.Errorf("checkpoint after a kill in the 40th page of 3 is %s, want %s (the end of the 39th)", checkpoint, want)
	}
}

func TestKilledAtRandomMoments(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	events := crashHistory().List()
	end := events[len(events)-1].Position
	path := tempPath(t)
	rng := rand.New(rand.NewPCG(7, 11))
	var last eventstore.Position
	midway := 0
	for round := 0; round < 5 && last != end; round++ {
		child := crashChild(t, path)
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		if err := child.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = child.Wait()
		checkpoint := sameAsCheckpointSays(t, path, events)
		t.Logf("round %d: killed at checkpoint %s of %s", round, checkpoint, end)
		if checkpoint.Less(last) {
			t.Fatalf("round %d: checkpoint %s went back from %s", round, checkpoint, last)
		}
		if last.Less(checkpoint) && checkpoint.Less(end) {
			midway++
		}
		last = checkpoint
	}
	if midway == 0 {
		t.Fatal("no kill landed while the child was applying pages")
	}
	// The file the kills left carries on where its checkpoint says.
	s := open(t, path)
	projectionstest.Apply(t, s, events[len(upTo(events, last)):], 500)
	projectionstest.SameSnapshot(t, "finished after the kills", projectionstest.Snapshot(t, s, tenants...), rebuilt(t, events))
}

func fileSum(t testing.TB, path string) [32]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(data)
}

// damage changes a stored state and drops an error behind the store's back,
// as a since-fixed bug might have.
func damage(t *testing.T, path, batchID string) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("batches")).Bucket([]byte(batchID))
		if err := b.Put([]byte("state"), []byte(`{"id":"`+batchID+`","tenant":"tenant-0","status":"processing"}`)); err != nil {
			return err
		}
		k, _ := b.Bucket([]byte("errors")).Cursor().First()
		return b.Bucket([]byte("errors")).Delete(k)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// eventStore returns a memory event store holding events.
func eventStore(t *testing.T, events []eventstore.Event) eventstore.Store {
	t.Helper()
	es := esmemory.New()
	t.Cleanup(func() { es.Close() })
	if _, err := projectionstest.AppendTo(t.Context(), es, events); err != nil {
		t.Fatal(err)
	}
	return es
}

func TestRebuildReplacesTheFileWhole(t *testing.T) {
	events := history(6, 100).List()
	es := eventStore(t, events)
	path := tempPath(t)
	build(t, path, events, 7)
	damage(t, path, "batch-02")
	damaged := fileSum(t, path)

	var reports []projections.RebuildProgress
	err := bolt.Rebuild(t.Context(), path, es, bolt.RebuildOptions{
		BatchSize: 100,
		Progress: func(p projections.RebuildProgress) {
			reports = append(reports, p)
			// Until the swap, the live file is the one it was.
			if fileSum(t, path) != damaged {
				t.Fatalf("the live file changed during the rebuild, at %d events", p.Done)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(reports) < len(events)/100 {
		t.Fatalf("%d progress reports for %d events in pages of 100", len(reports), len(events))
	}
	if last := reports[len(reports)-1]; last.Done != int64(len(events)) || last.Rate <= 0 {
		t.Errorf("last progress %+v, want %d done and a rate", last, len(events))
	}
	if _, err := os.Stat(path + ".rebuild"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the rebuild left its file behind: %v", err)
	}
	s := open(t, path)
	projectionstest.SameSnapshot(t, "rebuilt", projectionstest.Snapshot(t, s, tenants...), rebuilt(t, events))
	follows, err := s.Follows(t.Context(), es)
	if err != nil || !follows {
		t.Errorf("rebuilt read models follow their event store: %v, %v", follows, err)
	}
}

func TestInterruptedRebuildLeavesTheLiveFile(t *testing.T) {
	events := history(6, 100).List()
	es := eventStore(t, events)
	path := tempPath(t)
	build(t, path, events[:len(events)/2], 50)
	before := fileSum(t, path)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	err := bolt.Rebuild(ctx, path, es, bolt.RebuildOptions{
		BatchSize: 100,
		Progress: func(p projections.RebuildProgress) {
			if p.Done >= 300 {
				cancel()
			}
		},
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted rebuild: %v, want context.Canceled", err)
	}
	if fileSum(t, path) != before {
		t.Error("an interrupted rebuild changed the live file")
	}
	if _, err := os.Stat(path + ".rebuild"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the interrupted rebuild left its file behind: %v", err)
	}
	// A rebuild killed outright leaves its file; the next one starts over.
	if err := os.WriteFile(path+".rebuild", []byte("torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := bolt.Rebuild(t.Context(), path, es, bolt.RebuildOptions{}); err != nil {
		t.Fatal(err)
	}
	projectionstest.SameSnapshot(t, "rebuilt after an interrupted rebuild", projectionstest.Snapshot(t, open(t, path), tenants...), rebuilt(t, events))
}

func TestRebuildRefusesAFileInUse(t *testing.T) {
	events := history(1, 10).List()
	path := tempPath(t)
	live := open(t, path)
	projectionstest.Apply(t, live, events, 5)
	err := bolt.Rebuild(t.Context(), path, eventStore(t, events), bolt.RebuildOptions{LockTimeout: 50 * time.Millisecond})
	if !errors.Is(err, bolt.ErrInUse) {
		t.Fatalf("rebuild of read models a service has open: %v, want ErrInUse", err)
	}
	if _, err := live.Batch(t.Context(), "tenant-0", "batch-00"); err != nil {
		t.Errorf("the live read models after a refused rebuild: %v", err)
	}
	if _, err := bolt.Open(path, bolt.Options{LockTimeout: 50 * time.Millisecond}); !errors.Is(err, bolt.ErrInUse) {
		t.Errorf("a second open of read models in use: %v, want ErrInUse", err)
	}
}

func TestOpenForStartsAfreshOnAnotherHistory(t *testing.T) {
	events := history(2, 40).List()
	path := tempPath(t)
	openFor := func(es eventstore.Store) (eventstore.Position, string) {
		t.Helper()
		s, reset, err := bolt.OpenFor(t.Context(), path, es, bolt.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		cp, err := s.Checkpoint(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return cp, reset
	}
	last := events[len(events)-1].Position

	build(t, path, events, 9)
	if cp, reset := openFor(eventStore(t, events)); cp != last || reset != "" {
		t.Errorf("read models of their own events: checkpoint %s, reset %q; want %s, kept", cp, reset, last)
	}
	// The events restored from a copy older than the read models.
	if cp, reset := openFor(eventStore(t, events[:len(events)/2])); cp != eventstore.Start || reset == "" {
		t.Errorf("read models ahead of their events: checkpoint %s, reset %q; want removed", cp, reset)
	}
	// Another history altogether, as long as this one.
	build(t, path, events, 9)
	other := slices.Clone(events)
	for i := range other {
		other[i].ID = "other-" + other[i].ID
	}
	if cp, reset := openFor(eventStore(t, other)); cp != eventstore.Start || reset == "" {
		t.Errorf("read models of another history: checkpoint %s, reset %q; want removed", cp, reset)
	}
	// A file of another layout.
	build(t, path, events, 9)
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error { return tx.Bucket([]byte("meta")).Put([]byte("format"), []byte("0")) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := bolt.Open(path, bolt.Options{}); !errors.Is(err, bolt.ErrFormat) {
		t.Errorf("open a file of another layout: %v, want ErrFormat", err)
	}
	if cp, reset := openFor(eventStore(t, events)); cp != eventstore.Start || reset == "" {
		t.Errorf("read models of another layout: checkpoint %s, reset %q; want removed", cp, reset)
	}
}

// BenchmarkApply measures how fast the read models follow the events: a store
// fed the events of many batches in pages of the runner's size (catching up)
// and of 5 (following a quiet log: an fsync for every few events).
func BenchmarkApply(b *testing.B) {
	events := history(20, 1000).List()
	for _, page := range []int{projections.DefaultRunnerBatchSize, 5} {
		b.Run(fmt.Sprintf("page=%d", page), func(b *testing.B) {
			n := len(events)
			if page < 100 {
				n = 5000 // an fsync per page: a sample is enough
			}
			for b.Loop() {
				b.StopTimer()
				s, err := bolt.Open(tempPath(b), bolt.Options{})
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				projectionstest.Apply(b, s, events[:n], page)
				b.StopTimer()
				s.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(b.Elapsed().Seconds()*1e3/float64(b.N*n/page), "ms/page")
		})
	}
}

// BenchmarkRebuild measures a rebuild of the same events into a new file.
func BenchmarkRebuild(b *testing.B) {
	events := history(20, 1000).List()
	es := esmemory.New()
	defer es.Close()
	if _, err := projectionstest.AppendTo(b.Context(), es, events); err != nil {
		b.Fatal(err)
	}
	path := tempPath(b)
	for b.Loop() {
		if err := bolt.Rebuild(b.Context(), path, es, bolt.RebuildOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(events))/b.Elapsed().Seconds(), "events/s")
}

// A state read again while it is stored unchanged is the one decoded before (a
// finished batch's status read again, a list shown again: decoding it took most
// of a status read);
// once the batch moved on, the read decodes what is stored now.
func TestAStateReadAgainUnchangedIsNotDecodedAgain(t *testing.T) {
	s := open(t, tempPath(t))
	events := history(1, 40).List()
	half := len(events) / 2
	projectionstest.Apply(t, s, events[:half], 10)
	read := func() *projections.BatchState {
		t.Helper()
		st, err := bolt.ReadState(s, tenants[0], "batch-00")
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	first := read()
	if again := read(); again != first {
		t.Fatal("a state read twice, unchanged in between, was decoded twice")
	}
	projectionstest.Apply(t, s, events[half:], 10)
	now := read()
	if now == first || now.Position == first.Position {
		t.Fatalf("after more events the read still gives the state at %s", first.Position)
	}
	if want := events[len(events)-1].Position; now.Position != want {
		t.Fatalf("state at %s, want the last event's %s", now.Position, want)
	}
}

// BenchmarkStatusRead is a status read of a batch whose state did not change
// since the last read (a finished batch's status read again).
func BenchmarkStatusRead(b *testing.B) {
	s := open(b, tempPath(b))
	projectionstest.Apply(b, s, history(1, 1000).List(), 100)
	for b.Loop() {
		if _, err := s.Batch(b.Context(), tenants[0], "batch-00"); err != nil {
			b.Fatal(err)
		}
	}
}
