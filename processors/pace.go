package processors

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/smsbatch/smsbatch/domain"
)

// pace is the rate policy of one batch on this instance: a token bucket with
// burst 1 at the batch's rate, reduced for a while after the provider asked the
// batch to slow down, and reseeded when another instance dispatched since this
// one last did. Everything here answers "when may the next message go out".
//
// A dispatch spends its token when it is committed, at the time the token was
// due, so the next dispatch is planned one interval after it without waiting for
// the send to go out: a send that goes out a little late does not push the
// following ones back. The provider is kept from seeing two sends closer than
// an interval by a check on the times the sends really start (see take).
//
// The batch's priority rate is the target. A throttle (BatchThrottled, recorded
// when the provider answers 429) holds sending until its Until and resumes at its
// Rate, which climbs back by a tenth of the target every second. Because the
// throttle is an event, every instance computes the same pace from it.
type pace struct {
	target rate.Limit
	// share is what the tenant's rate cap leaves the batch; at most target.
	share   rate.Limit
	limiter *rate.Limiter
	// planned is the latest time the bucket was spent at: the token time of the
	// last send it planned, or a reseed. The bucket is only ever read at or
	// after it, since golang.org/x/time/rate measures from the latest time it
	// was given.
	planned time.Time
	// seededAt is the last send this bucket accounts for: a later SendAt in the
	// stream was decided elsewhere and reseeds the bucket.
	seededAt time.Time

	// mu guards lastStart and leaving, which the sends' goroutines use.
	mu sync.Mutex
	// lastStart is when this instance's latest send of the batch left for the
	// provider; leaving is set from a send's take until it has left (or will
	// not), and the next send waits for it: the time it left is what the next
	// is spaced from.
	lastStart time.Time
	leaving   chan struct{} // closed by left; nil when no send is on its way
}

// lookahead lets a dispatch be decided this long before its token is due, so the
// append's latency does not eat into the rate; the send itself waits for the token.
// It is the least lead (Processor.lead): a store that appends slower, under load,
// gets a longer one.
const lookahead = 25 * time.Millisecond

// maxLead bounds the lead, so a send still starts well within maxStartDelay of
// its dispatch.
const maxLead = 400 * time.Millisecond

// handoverMargin is how much later than its recorded SendAt a send may go out:
// a send whose goroutine wakes later than that gives up before reaching the
// provider (and goes again under a new attempt). A bucket reseeded from another
// instance's dispatch therefore starts counting that much after its SendAt, and
// the provider never sees two sends of a batch closer than the rate allows
// because a slice moved to another instance.
const handoverMargin = 50 * time.Millisecond

// lateStart is how much later than handoverMargin allows a send may still
// start while the slice that dispatched it runs (batchState.startLate): on a
// saturated instance a send's goroutine may wake that late, and giving up its
// token then cost the batch a whole interval.
const lateStart = 200 * time.Millisecond

// headroom is how much slower than its rate a batch plans its sends, and so
// how much more than the rate's interval apart its sends start: at 5/s, 202 ms,
// so five intervals make 1.01 s and leave 10 ms for a send to reach the provider
// later than the one five before it did without six landing in one second
// there. It costs a percent of the rate.
const headroom = 1.01

// rampPerSecond is the share of the target rate a throttled batch wins back
// every second after its hold.
const rampPerSecond = 0.1

func newPace(target rate.Limit) *pace {
	return &pace{target: target, share: target, limiter: rate.NewLimiter(target/headroom, 1)}
}

// capTo sets what the tenant's rate cap leaves the batch.
func (p *pace) capTo(share rate.Limit) {
	if !p.unlimited() {
		p.share = min(share, p.target)
	}
}

// reseed empties the bucket at t: the next token is one interval after it.
func (p *pace) reseed(t time.Time) {
	p.limiter = rate.NewLimiter(p.limiter.Limit(), 1)
	p.limiter.AllowN(t, 1)
	p.planned = t
}

// warmUp holds the first send until at: a capped batch that never sent waits
// for every instance to count it among its tenant's batches.
func (p *pace) warmUp(at time.Time) {
	if p.unlimited() {
		return
	}
	p.reseed(at.Add(-time.Duration(float64(time.Second) / float64(p.limiter.Limit()))))
}

// unlimited reports whether the rate is lifted: no token is ever waited for.
func (p *pace) unlimited() bool { return p.target == rate.Inf }

// follow brings the pace in line with the batch as stored: the rate a throttle
// allows at now, and a reseed when the batch's last send was decided elsewhere.
// A slice that begins a chain (after a start or resume) has no word from the
// slice before it of a send that started late (Work.NotBefore), so it allows
// for one.
func (p *pace) follow(b *domain.Batch, now time.Time, chainStart bool) {
	if p.unlimited() {
		return
	}
	p.limiter.SetLimitAt(p.at(now), p.rateAt(now, b.Throttle())/headroom)
	if last := b.LastSendAt(); last.After(p.seededAt) {
		// Start from an empty bucket once that send may have gone out,
		// whatever this bucket believed before.
		bound := last.Add(handoverMargin)
		if chainStart {
			bound = bound.Add(lateStart)
		}
		p.reseed(latest(bound, p.planned))
		p.seededAt = last
	}
}

// notBefore makes the next token come at least an interval after t, when a
// send of the batch started (Work.NotBefore).
func (p *pace) notBefore(t time.Time) {
	if !p.unlimited() && p.planned.Before(t) {
		p.reseed(t)
	}
}

// sent spends the tokens of the sends this instance just dispatched, at token,
// when the rate allowed them, so that the next is planned one interval later.
func (p *pace) sent(b *domain.Batch, token time.Time, dispatched int) {
	p.seededAt = latest(p.seededAt, b.LastSendAt())
	if p.unlimited() || dispatched == 0 {
		return
	}
	t := p.at(token)
	for range dispatched {
		p.limiter.ReserveN(t, 1)
	}
	p.planned = t
}

// at is t, or the bucket's last planned send if that is later.
func (p *pace) at(t time.Time) time.Time { return latest(t, p.planned) }

// rateAt is the rate allowed at t under th.
func (p *pace) rateAt(t time.Time, th domain.Throttle) rate.Limit {
	if p.unlimited() {
		return p.target
	}
	if th.Rate <= 0 {
		return p.share
	}
	since := max(t.Sub(th.Until), 0).Seconds()
	return min(p.share, rate.Limit(th.Rate)+p.target*rate.Limit(rampPerSecond*since))
}

// ready reports whether a send decided at t would get its token by then.
func (p *pace) ready(t time.Time) bool {
	if p.unlimited() {
		return true
	}
	return !t.Before(p.planned) && p.limiter.TokensAt(t) >= 1
}

// tokenAt is when the next send is allowed, looking from now: an interval
// after the last planned, even if that has passed, by up to an interval. A
// decision made late (a slice that woke late, or the next slice of the batch
// starting) then does not push the rest of the batch back: its send goes at
// once and the next keeps to the plan. take still holds what the provider sees
// to the rate in any one second.
func (p *pace) tokenAt(now time.Time) time.Time {
	if p.unlimited() || p.limiter.Limit() <= 0 {
		return now
	}
	t := p.at(now)
	if tokens := p.limiter.TokensAt(t); tokens < 1 {
		return t.Add(time.Duration((1 - tokens) / float64(p.limiter.Limit()) * float64(time.Second)))
	}
	if p.planned.IsZero() {
		return t
	}
	interval := time.Duration(float64(time.Second) / float64(p.limiter.Limit()))
	if due := p.planned.Add(interval); !due.Before(now.Add(-interval)) {
		return latest(due, p.planned)
	}
	return t // idle for longer: no send is owed
}

// wakeAt is when a decision that is not ready at now could be, deciding lead
// before the token.
func (p *pace) wakeAt(now time.Time, lead time.Duration) time.Time {
	return p.tokenAt(now).Add(-lead)
}

// slot is what one send needs to take its token: when the token is due, the
// moment after which it starts only while its slice runs (by), the last moment
// it may start at all (last), and how long after the send before it.
type slot struct {
	at, by, last time.Time
	interval     time.Duration
}

// slot is the token of a send due at token that must start by startBy, or by
// last while its slice runs, an interval of the batch's present rate after the
// send before it.
func (p *pace) slot(token, startBy, last time.Time) slot {
	s := slot{at: token, by: startBy, last: last}
	if !p.unlimited() && p.limiter.Limit() > 0 {
		s.interval = time.Duration(float64(time.Second) / float64(p.limiter.Limit()))
	}
	return s
}

// take waits for a send's token and then until an interval has passed since
// the batch's send before it really started here: a send that went out late
// does not make the next, on time, land closer to it than the rate allows as the
// provider sees it, so no one-second window there holds more than the rate,
// wherever the next slice runs (it paces from the last send's bound). The plan
// stays as it was, so a late send delays the ones after it only while they
// would come too close. A send starts by s.by, or by s.last if st lets it (a
// slice of the batch still runs here); it gives up, reporting false, when it
// cannot. How late it woke is noted in wakes. A send that take lets go must
// then say when it left for the provider, or that it did not (left): until
// then the batch's next send waits, so that one held up on its way there
// cannot land next to the one after it.
func (p *pace) take(ctx context.Context, now func() time.Time, s slot, st *batchState, wakes *latency) bool {
	if p.unlimited() {
		return true
	}
	for {
		t := now()
		if t.After(s.last) {
			return false // woke too late: going now could crowd the next slice's sends
		}
		p.mu.Lock()
		if on := p.leaving; on != nil {
			// The send before is on its way to the provider: wait until it
			// has left, then look again.
			p.mu.Unlock()
			if !waitFor(ctx, on, s.last.Sub(t)) {
				return false
			}
			continue
		}
		due := s.at
		if !p.lastStart.IsZero() {
			due = latest(due, p.lastStart.Add(s.interval))
		}
		if !t.Before(due) {
			if t.After(s.by) && !st.startLate(t) {
				p.mu.Unlock()
				return false
			}
			p.lastStart, p.leaving = t, make(chan struct{})
			p.mu.Unlock()
			return true
		}
		p.mu.Unlock()
		if due.After(s.last) || !sleep(ctx, due.Sub(t)) {
			return false
		}
		wakes.note(max(now().Sub(due), 0))
	}
}

// waitFor waits until ch is closed, for at most d, reporting whether it was
// (a nil ch is never closed).
func waitFor(ctx context.Context, ch <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(max(d, 0))
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

// left tells the pace that the send take let go left for the provider at t, or
// did not leave at all (zero t): the next send may then go, an interval after.
func (p *pace) left(t time.Time) {
	if p.unlimited() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lastStart = latest(p.lastStart, t)
	if p.leaving != nil {
		close(p.leaving)
		p.leaving = nil
	}
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
