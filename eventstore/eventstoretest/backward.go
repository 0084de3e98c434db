package eventstoretest

import (
	"slices"
	"sync"
	"testing"

	"github.com/smsbatch/smsbatch/eventstore"
)

// testReadStreamBackward: newest first, from a revision or from StreamEnd, a from
// past the end starting at the last event, max honoured, a missing stream empty.
func testReadStreamBackward(t *testing.T, f *fixture) {
	stream := f.stream("backward")
	var want []eventstore.EventData
	for _, n := range []int{3, 3, 4} {
		evs := events("Step", n)
		f.append(stream, eventstore.After(uint64(len(want))), evs...)
		want = append(want, evs...)
	}
	forward := f.readStream(stream)
	cases := []struct {
		from     uint64
		max      int
		wantFrom int // the newest revision returned
		wantTo   int // the oldest revision returned; wantFrom+1 when none
	}{
		{eventstore.StreamEnd, 100, 9, 0},
		{eventstore.StreamEnd, 1, 9, 9},
		{eventstore.StreamEnd, 4, 9, 6},
		{9, 3, 9, 7},
		{5, 3, 5, 3},
		{2, 10, 2, 0},
		{0, 1, 0, 0},
		{0, 5, 0, 0},
		{10, 3, 9, 7},   // just past the end
		{1000, 5, 9, 5}, // far past the end
		{1000, 100, 9, 0},
	}
	for _, c := range cases {
		got, err := f.s.ReadStreamBackward(f.ctx, stream, c.from, c.max)
		if err != nil {
			t.Fatalf("read stream backward from %d max %d: %v", c.from, c.max, err)
		}
		if len(got) > c.max {
			t.Fatalf("read stream backward from %d max %d: %d events", c.from, c.max, len(got))
		}
		// Newest first: the same events as a forward read of that range, reversed.
		reversed := slices.Clone(got)
		slices.Reverse(reversed)
		checkStored(t, reversed, stream, uint64(c.wantTo), want[c.wantTo:c.wantFrom+1])
		checkSame(t, reversed, forward[c.wantTo:c.wantFrom+1])
	}

	for _, from := range []uint64{0, eventstore.StreamEnd} {
		got, err := f.s.ReadStreamBackward(f.ctx, f.stream("never-written"), from, 10)
		if err != nil || len(got) != 0 {
			t.Errorf("backward read of a missing stream from %d: %d events, error %v; want none and no error", from, len(got), err)
		}
	}
	if _, err := f.s.ReadStreamBackward(f.ctx, stream, eventstore.StreamEnd, 0); err == nil {
		t.Error("backward read with max 0 succeeded, want an error")
	}
}

// testReadStreamBackwardSeesEveryAppend: the last event read backward is the one
// the last append wrote, at once, even while other streams are written: a reader
// looking for the newest snapshot relies on it.
func testReadStreamBackwardSeesEveryAppend(t *testing.T, f *fixture) {
	stream := f.stream("latest")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		other := f.stream("noise")
		for n := uint64(0); ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := f.s.Append(f.ctx, other, eventstore.After(n), events("Noise", 1)); err != nil {
				t.Errorf("append to %s: %v", other, err)
				return
			}
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
	}()
	for i := range 20 {
		evs := events("Snapshot", 1+i%3)
		res := f.append(stream, eventstore.Any(), evs...)
		got, err := f.s.ReadStreamBackward(f.ctx, stream, eventstore.StreamEnd, 1)
		if err != nil {
			t.Fatalf("read stream backward: %v", err)
		}
		last := evs[len(evs)-1]
		if len(got) != 1 || got[0].ID != last.ID || got[0].Revision != res.NextExpected || got[0].Position != res.Position {
			t.Fatalf("after append %d: backward read from the end returned %+v, want event %s at revision %d, position %s",
				i, got, last.ID, res.NextExpected, res.Position)
		}
	}
}
