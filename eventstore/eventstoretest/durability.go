package eventstoretest

import (
	"errors"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/eventstore"
)

// RunDurability runs the contract of stores that persist: what was appended before
// Close is there after opening the same place again, at the same revisions and
// positions, and appends continue from where they stopped. open opens the store
// kept in dir; it is called several times with the same dir, each time after the
// previous store was closed.
func RunDurability(t *testing.T, open func(t *testing.T, dir string) eventstore.Store) {
	t.Run("ReopenKeepsEverything", func(t *testing.T) {
		dir := t.TempDir()
		s := open(t, dir)
		f := newFixture(t, s)
		start := f.mark()
		a, b := f.stream("a"), f.stream("b")
		aEvents := events("Step", 3)
		f.append(a, eventstore.NoStream(), aEvents[:1]...)
		f.append(a, eventstore.Exact(0), aEvents[1:]...)
		bEvents := events("Step", 2)
		bResult := f.append(b, eventstore.NoStream(), bEvents...)
		before := f.readAll(start, 100)
		if err := s.Close(); err != nil {
			t.Fatalf("close: %v", err)
		}

		s = open(t, dir)
		t.Cleanup(func() { _ = s.Close() })
		f.s = s
		checkSame(t, f.readAll(start, 100), before)
		checkStored(t, f.readStream(a), a, 0, aEvents)
		checkStored(t, f.readStream(b), b, 0, bEvents)

		// Revisions and positions continue where they stopped.
		f.conflict(a, eventstore.NoStream(), events("Step", 1)...)
		f.conflict(a, eventstore.Exact(1), events("Step", 1)...)
		more := events("Step", 2)
		res := f.append(a, eventstore.After(3), more...)
		if res.NextExpected != 4 {
			t.Errorf("append after reopening: NextExpected = %d, want 4", res.NextExpected)
		}
		if last := before[len(before)-1].Position; !last.Less(res.Position) {
			t.Errorf("append after reopening landed at %s, not after %s", res.Position, last)
		}
		// Retries are still recognised across a restart.
		if again := f.append(b, eventstore.NoStream(), bEvents...); again != bResult {
			t.Errorf("append retried after reopening returned %+v, the original returned %+v", again, bResult)
		}
		// Waiters are woken by appends after reopening.
		if err := s.WaitForEvents(f.ctx, eventstore.Start); err != nil {
			t.Errorf("wait for events that are already there: %v", err)
		}
		woke := make(chan error, 1)
		go func() { woke <- s.WaitForEvents(f.ctx, res.Position) }()
		time.Sleep(20 * time.Millisecond)
		last := f.append(b, eventstore.Exact(1), events("Step", 1)...)
		if err := waitErr(t, "WaitForEvents after reopening", woke); err != nil {
			t.Errorf("wait for an append after reopening: %v", err)
		}

		want := f.readAll(start, 100)
		if len(want) != len(before)+3 {
			t.Fatalf("after reopening and appending 3 events: %d events, want %d", len(want), len(before)+3)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second close: %v", err)
		}
		s = open(t, dir)
		t.Cleanup(func() { _ = s.Close() })
		f.s = s
		checkSame(t, f.readAll(start, 100), want)
		if got := f.readAll(start, 100); got[len(got)-1].Position != last.Position {
			t.Errorf("last event at %s after the second reopening, appended at %s", got[len(got)-1].Position, last.Position)
		}
		checkStored(t, f.readStream(a), a, 0, append(aEvents, more...))
		if _, err := s.Append(f.ctx, b, eventstore.NoStream(), events("Step", 1)); !errors.Is(err, eventstore.ErrConcurrency) {
			t.Errorf("NoStream on a stream stored before reopening: %v, want ErrConcurrency", err)
		}
	})
}
