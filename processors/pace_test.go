package processors

import (
	"context"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
)

// A dispatch spends its token at the time the token was due, not when its send
// goes out: the next token is one planned interval after it, however late the
// send turns out to be, so late wake-ups do not add up over a batch.
func TestNextTokenIsPlannedFromTheLastToken(t *testing.T) {
	p := newPace(5)
	interval := time.Duration(float64(time.Second) * headroom / 5)
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	b := &domain.Batch{}
	token := p.tokenAt(t0)
	if !token.Equal(t0) {
		t.Fatalf("first token at %s, want at once", token.Sub(t0))
	}
	for i := 1; i <= 10; i++ {
		p.sent(b, token, 1)
		// Looked at later than planned, as a slice that woke late would.
		now := token.Add(interval / 2)
		next := p.tokenAt(now)
		if got := next.Sub(token); got < interval-time.Millisecond || got > interval+time.Millisecond {
			t.Fatalf("token %d: %s after the one before, want the interval %s", i, got, interval)
		}
		if p.ready(now) {
			t.Fatalf("token %d: ready half an interval after the last token", i)
		}
		token = next
	}
	if got, want := token.Sub(t0), 10*interval; got < want-10*time.Millisecond || got > want+10*time.Millisecond {
		t.Fatalf("ten tokens took %s, want %s: the schedule drifted", got, want)
	}
}

// The sends' real start times hold the rate the provider sees: once a second's
// worth of sends started, the next waits until the first of them is a second
// (and 1%) old, whatever its token says, and gives up if that is after it must
// have started.
func TestSendsStartNoMoreThanTheRateInAnySecond(t *testing.T) {
	if testing.Short() {
		t.Skip("waits a second")
	}
	p := newPace(5)
	ctx := context.Background()
	begin := time.Now()
	due := func(by time.Duration) slot { return p.slot(time.Now(), time.Now().Add(by)) }
	for i := range 5 {
		if !p.take(ctx, time.Now, due(2*time.Second)) {
			t.Fatalf("send %d refused", i)
		}
	}
	if !p.take(ctx, time.Now, due(2*time.Second)) {
		t.Fatal("sixth send refused, though it could wait for the window")
	}
	if waited := time.Since(begin); waited < time.Second {
		t.Fatalf("sixth send started %s after the first, want at least a second", waited)
	}
	// The next four belong to the same second as the sixth: the first five
	// started a second ago.
	for i := range 4 {
		if !p.take(ctx, time.Now, due(100*time.Millisecond)) {
			t.Fatalf("send %d refused, though the second before it held fewer than five", 7+i)
		}
	}
	// The eleventh would have to wait until the sixth is a second old.
	if p.take(ctx, time.Now, due(100*time.Millisecond)) {
		t.Fatal("eleventh send started within a second of the five before it")
	}
}
