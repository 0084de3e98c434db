package processors

import (
	"context"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/smsbatch/smsbatch/domain"
)

// pace is the rate policy of one batch on this instance: a token bucket with
// burst 1 at the batch's rate, reduced for a while after the provider asked the
// batch to slow down, and reseeded when another instance dispatched since this
// one last did. Everything here answers "when may the next message go out".
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
	// seededAt is the last send this bucket accounts for: a later SendAt in the
	// stream was decided elsewhere and reseeds the bucket.
	seededAt time.Time
	// waiting counts dispatched sends that have not taken their token yet: one
	// at a time, or the next decision would count the same token twice.
	waiting atomic.Int32
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

// rampPerSecond is the share of the target rate a throttled batch wins back
// every second after its hold.
const rampPerSecond = 0.1

func newPace(target rate.Limit) *pace {
	return &pace{target: target, share: target, limiter: rate.NewLimiter(target, 1)}
}

// capTo sets what the tenant's rate cap leaves the batch.
func (p *pace) capTo(share rate.Limit) {
	if !p.unlimited() {
		p.share = min(share, p.target)
	}
}

// warmUp holds the first send until at: a capped batch that never sent waits
// for every instance to count it among its tenant's batches.
func (p *pace) warmUp(at time.Time) {
	if p.unlimited() {
		return
	}
	p.limiter = rate.NewLimiter(p.limiter.Limit(), 1)
	p.limiter.AllowN(at.Add(-time.Duration(float64(time.Second)/float64(p.limiter.Limit()))), 1)
}

// unlimited reports whether the rate is lifted: no token is ever waited for.
func (p *pace) unlimited() bool { return p.target == rate.Inf }

// follow brings the pace in line with the batch as stored: the rate a throttle
// allows at now, and a reseed when the batch's last send was decided elsewhere.
func (p *pace) follow(b *domain.Batch, now time.Time) {
	if p.unlimited() {
		return
	}
	p.limiter.SetLimitAt(now, p.rateAt(now, b.Throttle()))
	if last := b.LastSendAt(); last.After(p.seededAt) {
		// Start from an empty bucket at that send: the next token is one
		// interval after it, whatever this bucket believed before.
		p.limiter = rate.NewLimiter(p.limiter.Limit(), 1)
		p.limiter.AllowN(last.Add(handoverMargin), 1)
		p.seededAt = last
	}
}

// sent records that this instance dispatched the batch's latest send, so the
// bucket, which will give that send its token, is not reseeded from it.
func (p *pace) sent(b *domain.Batch) { p.seededAt = latest(p.seededAt, b.LastSendAt()) }

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

// ready reports whether a send decided at t would get its token by then and no
// earlier send still waits for its own.
func (p *pace) ready(t time.Time) bool {
	if p.unlimited() {
		return true
	}
	return p.waiting.Load() == 0 && p.limiter.TokensAt(t) >= 1
}

// tokenAt is when the next send is allowed, looking from now.
func (p *pace) tokenAt(now time.Time) time.Time {
	if p.unlimited() || p.limiter.TokensAt(now) >= 1 || p.limiter.Limit() <= 0 {
		return now
	}
	missing := 1 - p.limiter.TokensAt(now)
	return now.Add(time.Duration(missing / float64(p.limiter.Limit()) * float64(time.Second)))
}

// wakeAt is when a decision that is not ready at now could be, deciding lead
// before the token.
func (p *pace) wakeAt(now time.Time, lead time.Duration) time.Time {
	wake := p.tokenAt(now).Add(-lead)
	if p.waiting.Load() > 0 {
		wake = latest(wake, now.Add(lookahead)) // until the waiting send takes its token
	}
	return wake
}

// reserve notes a send that will wait for its token; take must follow.
func (p *pace) reserve() *rate.Limiter {
	p.waiting.Add(1)
	return p.limiter
}

// take waits for the send's token and takes it at the moment it sends, not when
// it was planned: a goroutine that wakes late then pushes the following send back
// by as much, so no one-second window seen by the provider holds more sends than
// the rate. It gives up, reporting false, when it would send after startBy.
func (p *pace) take(ctx context.Context, lim *rate.Limiter, now func() time.Time, startBy time.Time) bool {
	defer p.waiting.Add(-1)
	if p.unlimited() {
		return true
	}
	for {
		t := now()
		if t.After(startBy) {
			return false // woke too late: going now could crowd the next instance's sends
		}
		r := lim.ReserveN(t, 1)
		d := r.DelayFrom(t)
		if d <= 0 {
			return true
		}
		r.CancelAt(t)
		if t.Add(d).After(startBy) {
			return false
		}
		timer := time.NewTimer(d)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return false
		}
	}
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
