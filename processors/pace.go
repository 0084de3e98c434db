package processors

import (
	"context"
	"math"
	"slices"
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
// following ones back. What the provider sees is held to the rate by the times
// the sends really start (see take): no second holds more sends than the rate,
// wherever the batch's slices run (see handOn and adopt).
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

	// mu guards recent, pending, started and leaving, which the sends'
	// goroutines use.
	mu sync.Mutex
	// recent holds when the batch's latest sends left for the provider, oldest
	// first, at most maxRecent: this instance's, and those another instance
	// handed on (or, not knowing them, the latest they can have left).
	recent []time.Time
	// pending holds the sends dispatched here that have not yet taken their
	// slot, in the order they are due.
	pending []pendingSend
	// started is closed once pending empties; nil when nothing waits for it.
	started chan struct{}
	// leaving is set from a send's take until it has left (or will not), and
	// the next send waits for it: the time it left is what the next is paced
	// from. leavingAt is when take let it go, its entry in recent until then.
	leaving   chan struct{} // closed by left; nil when no send is on its way
	leavingAt time.Time
}

// pendingSend is a send dispatched here that has not started: when it is due,
// and the bound it starts by (slot.at and slot.by).
type pendingSend struct{ at, by time.Time }

// maxRecent bounds the sends whose start times a pace keeps, and so the rate
// whose one-second window it holds exactly; above it a second may hold up to
// twice the rate in short bursts, never more.
const maxRecent = 256

// lookahead lets a dispatch be decided this long before its token is due, so the
// append's latency does not eat into the rate; the send itself waits for the token.
// It is the least lead (Processor.lead): a store that appends slower, under load,
// gets a longer one, and a batch at a modest rate half an interval (leadFloor).
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

// headroom is how much slower than its rate a batch plans its sends: at 5/s,
// 202 ms apart, five of them 1.01 s, while a send need only start a second and
// windowMargin after the fifth before it. A send that leaves up to 8 ms late
// then passes none of its lateness to the send a window after it, and a later
// one passes on only what is over. It costs a percent of the rate.
const headroom = 1.01

// windowMargin is how much longer than a second (or than a window's sends at
// the batch's rate, when that is longer) a send waits after the send a window
// before it. The times it counts from are when the provider said its sends left
// (sms.Departed: the simulator as it takes one, the HTTP provider once the
// request is written), so the margin is only for a request reaching the
// provider's clock later than the one a window before it did. It must stay
// well under what headroom adds to a window (10 ms at 5/s): with the window at
// 1.01 s, as the plan's, every millisecond a send left late passed on to the
// sends a window, two, three windows after it, to the end of the batch, and at
// 1,000 batches on two cores 11 to 118 batches a run kept under 98% of their
// rate (eight runs; 0 to 5 with this margin).
const windowMargin = 2 * time.Millisecond

// clockSkew is how far apart the clocks of two instances may be, beyond
// windowMargin: the start times a slice hands on to the next, which may run
// on another instance, count that much later there, so that the sends of a
// batch that moves keep a second apart at the provider even when the
// instance it moves to has a clock that far ahead. (The bounds a dispatch
// records, SendAt, have handoverMargin.) It costs the next slice's first
// window that much, which the plan's headroom takes back.
const clockSkew = 10 * time.Millisecond

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
	p.reseed(at.Add(-p.interval()))
}

// unlimited reports whether the rate is lifted: no token is ever waited for.
func (p *pace) unlimited() bool { return p.target == rate.Inf }

// follow brings the pace in line with the batch as stored: the rate a throttle
// allows at now, and a reseed when the batch's last send was decided elsewhere.
// A slice that begins a chain (after a start or resume) has no word from the
// slice before it of a send that started late (Work.NotBefore), so it allows
// for one. Sends decided elsewhere are paced from the start times the work
// carries (recent, see handOn); work without them (a new chain) has every
// window's worth of sends start at the bound of the last, so the next waits
// out a window after it. It reports whether it reseeded: only then does the
// pace not know the batch's latest sends first hand.
func (p *pace) follow(b *domain.Batch, now time.Time, chainStart bool, recent []time.Time) (reseeded bool) {
	if p.unlimited() {
		return false
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
		p.adopt(recent, bound)
		return true
	}
	return false
}

// adopt replaces what the pace knows of the batch's latest sends with recent,
// handed on by the slice before, which knew them all; or, without it, with a
// window's worth of sends at bound, the latest they can have started. The
// start times handed on were read on another instance's clock: each counts
// clockSkew later here.
func (p *pace) adopt(recent []time.Time, bound time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(recent) > 0 {
		p.recent = p.recent[:0]
		for _, t := range recent {
			p.recent = append(p.recent, t.Add(clockSkew))
		}
		slices.SortFunc(p.recent, time.Time.Compare)
		return
	}
	p.recent = p.recent[:0]
	for range p.handedOn() {
		p.recent = append(p.recent, bound)
	}
}

// handOn returns the start times the next slice of the batch, wherever it
// runs, paces from (Work.Recent): those of its latest sends, a window's worth,
// with the start-by bound of each send dispatched here that has not started
// (no slice runs here to let it start later). A send on its way to the
// provider is waited for, so that the time it left is the one handed on.
func (p *pace) handOn() []time.Time {
	if p.unlimited() {
		return nil
	}
	p.mu.Lock()
	for p.leaving != nil {
		on := p.leaving
		p.mu.Unlock()
		<-on // closed by left, right after take let the send go
		p.mu.Lock()
	}
	defer p.mu.Unlock()
	out := slices.Clone(p.recent)
	for _, ps := range p.pending {
		out = append(out, ps.by)
	}
	slices.SortFunc(out, time.Time.Compare)
	return out[max(len(out)-p.handedOn(), 0):]
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
	return !t.Before(p.planned) && p.limiter.TokensAt(t) >= 1 && !t.Before(p.windowDue())
}

// nextStart is when the next send may start, looking from now: its token
// (tokenAt), or later if the sends a window before it started late (windowDue).
func (p *pace) nextStart(now time.Time) time.Time {
	return p.startAt(p.tokenAt(now))
}

// startAt is when a send whose token is due at token may start: then, or once
// the sends before it leave room (see take), as they are known now.
func (p *pace) startAt(token time.Time) time.Time {
	return latest(token, p.windowDue())
}

// windowDue is the earliest a send decided now may start by the rules take
// holds it to: s.gap after the send before it, s.window after the s.sends-th
// before it, counting the sends dispatched here that are still due as starting
// when they are due. A send decided for its token alone, while the sends a
// window before it started late, would wait past the start-by bound its
// dispatch recorded and give its token up; decided for when it can start, it
// goes then. Zero when no rule holds.
func (p *pace) windowDue() time.Time {
	r := p.rules()
	if r.sends == 0 {
		return time.Time{}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// The starts, latest first: the later of the two lists' last ones each
	// time, down to the r.sends-th.
	i, j := len(p.recent)-1, len(p.pending)-1
	var last, back time.Time
	k := 0
	for ; k < r.sends && (i >= 0 || j >= 0); k++ {
		if j < 0 || (i >= 0 && p.recent[i].After(p.pending[j].at)) {
			back, i = p.recent[i], i-1
		} else {
			back, j = p.pending[j].at, j-1
		}
		if k == 0 {
			last = back
		}
	}
	if k == 0 {
		return time.Time{}
	}
	return r.after(last, back, k == r.sends)
}

// after is the earliest a send may start by s's rules: s.gap after the start
// of the send before it (last), and, when there are s.sends sends before it
// (full), s.window after the start of the s.sends-th (back).
func (s slot) after(last, back time.Time, full bool) time.Time {
	due := last.Add(s.gap)
	if full {
		due = latest(due, back.Add(s.window))
	}
	return due
}

// tokenAt is when the next send is allowed, looking from now: an interval
// after the last planned, even if that has passed, by up to a second's worth of
// sends. A decision made late (a slice that woke late, a commit that took long,
// or the next slice of the batch starting) then does not push the rest of the
// batch back: its send goes at once and the next ones catch up with the plan,
// as fast as take lets them, which holds what the provider sees to the rate in
// any one second. After a longer pause nothing is owed.
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
	interval := p.interval()
	owed := time.Duration(windowSends(p.limiter.Limit())) * interval
	if due := p.planned.Add(interval); !due.Before(now.Add(-owed)) {
		return latest(due, p.planned)
	}
	return t // idle for longer: no send is owed
}

// wakeAt is when a decision that is not ready at now could be, deciding lead
// before the send may start.
func (p *pace) wakeAt(now time.Time, lead time.Duration) time.Time {
	return p.nextStart(now).Add(-lead)
}

// slot is what one send needs to take its token: when the token is due, the
// moment after which it starts only while its slice runs (by), the last moment
// it may start at all (last), and how far from the sends before it: at least
// gap after the last, and window after the sends-th before it. Zero sends: the
// rate holds none (lifted, or nothing allowed), nor is the send pending.
type slot struct {
	at, by, last time.Time
	gap, window  time.Duration
	sends        int
}

// slot is the token of a send due at at that must start by startBy, or by
// last while its slice runs, paced at the batch's present rate. The send is
// pending until it takes the slot or gives it up.
func (p *pace) slot(at, startBy, last time.Time) slot {
	s := p.rules()
	s.at, s.by, s.last = at, startBy, last
	if s.sends == 0 {
		return s
	}
	p.mu.Lock()
	i, _ := slices.BinarySearchFunc(p.pending, at, func(ps pendingSend, t time.Time) int { return ps.at.Compare(t) })
	p.pending = slices.Insert(p.pending, i, pendingSend{at: at, by: startBy})
	p.mu.Unlock()
	return s
}

// rules is how far apart the batch's sends start at its present rate (the
// sends, gap and window of a slot); none when the rate is lifted or nothing
// is allowed.
func (p *pace) rules() slot {
	var s slot
	if p.unlimited() || p.limiter.Limit() <= 0 {
		return s
	}
	interval := p.interval()
	s.sends = min(windowSends(p.limiter.Limit()), maxRecent)
	// The window's sends at the rate itself, not the plan's, and at least a
	// second; the plan's headroom is what absorbs a late send's lateness.
	atRate := time.Duration(float64(interval) / headroom)
	s.gap, s.window = interval/2, max(time.Duration(s.sends)*atRate, time.Second)+windowMargin
	return s
}

// leadFloor is the least lead of the batch's dispatches: half an interval at
// its present rate (101 ms at 5/s), none when the rate is lifted. A dispatch
// appended after its token was due starts its send late, and the window rule
// (see take) carries that lateness to every send a window after it, to the end
// of the batch. The commit time and wake lateness the lead otherwise follows
// are averages with a margin: on a loaded instance a collection or a slow fsync
// made about one dispatch in eight miss its token by 20 ms or more at a lead of
// 25 ms and up (1,000 batches at 5/s on two cores), fewer than one in two
// hundred at this floor. Deciding half an interval ahead keeps at most one
// dispatch of the batch waiting for its token.
func (p *pace) leadFloor() time.Duration {
	if p.unlimited() || p.limiter.Limit() <= 0 {
		return 0
	}
	return p.interval() / 2
}

// interval is the time between two tokens at the bucket's present rate, which
// is positive and not lifted.
func (p *pace) interval() time.Duration {
	return time.Duration(float64(time.Second) / float64(p.limiter.Limit()))
}

// handedOn is how many start times a slice hands on: a second's worth at the
// batch's target rate.
func (p *pace) handedOn() int { return min(windowSends(p.target/headroom), maxRecent) }

// windowSends is how many sends one second may hold at limit l sends a second
// (the rate less headroom): l rounded up, at least one. That many intervals
// make at least a second, so no second holds more, as with a send every
// interval; at 5/s, five sends. (Rounded down, 4.9/s would let six
// sends come within 0.93 s while a throttled batch's rate climbed back.)
func windowSends(l rate.Limit) int {
	return max(int(math.Ceil(float64(l)-1e-9)), 1)
}

// take waits for a send's token, and then until the batch's sends before it
// that really started leave room: the send starts at least s.window after the
// s.sends-th before it (at 5/s, 1.002 s after the fifth), so no one-second
// window at the provider holds more than the rate, and at least s.gap (half an
// interval) after the one before. The plan stays as it was: a send that went
// out late does not push the next back unless the two would come closer than
// that, and a late send's neighbours catch up with the plan instead of passing
// its lateness along the batch. A send starts by s.by, or by s.last if st lets
// it (a slice of the batch still runs here); it gives up, reporting false,
// when it cannot. How late it woke is noted in wakes. A send that take lets go
// must then say when it left for the provider, or that it did not (left):
// until then the batch's next send waits, so that one held up on its way there
// cannot land next to the ones after it.
//
// With the rate lifted there is no token to wait for, but the bounds hold
// all the same: a send whose dispatch's append or recipient page took long
// starts by them or gives up, and its message goes again under a new
// attempt. Its dispatch's deadline counts on it starting within
// maxStartDelay; one that started seconds later was still at the provider
// when another look found the message in doubt and sent it again.
func (p *pace) take(ctx context.Context, now func() time.Time, s slot, st *batchState, wakes *latency) bool {
	if p.unlimited() {
		return !s.late(now(), st)
	}
	for {
		t := now()
		if t.After(s.last) {
			p.giveUp(s)
			return false // woke too late: going now could crowd the next slice's sends
		}
		p.mu.Lock()
		if on := p.leaving; on != nil {
			// The send before is on its way to the provider: wait until it
			// has left, then look again.
			p.mu.Unlock()
			if !waitFor(ctx, on, s.last.Sub(t)) {
				p.giveUp(s)
				return false
			}
			continue
		}
		due := s.at
		if n := len(p.recent); n > 0 && s.sends > 0 {
			due = latest(due, s.after(p.recent[n-1], p.recent[max(n-s.sends, 0)], n >= s.sends))
		}
		if !t.Before(due) {
			if s.late(t, st) {
				p.dropPending(s)
				p.mu.Unlock()
				return false
			}
			p.dropPending(s)
			p.recent = append(p.recent, t)
			if n := len(p.recent); n > 1 && t.Before(p.recent[n-2]) {
				// Only with no rule to keep it after them (sends == 0), or
				// behind bounds another instance handed on.
				slices.SortFunc(p.recent, time.Time.Compare)
			}
			p.leavingAt = t
			if len(p.recent) > maxRecent {
				p.recent = slices.Delete(p.recent, 0, len(p.recent)-maxRecent)
			}
			p.leaving = make(chan struct{})
			p.mu.Unlock()
			return true
		}
		p.mu.Unlock()
		if due.After(s.last) || !sleep(ctx, due.Sub(t)) {
			p.giveUp(s)
			return false
		}
		wakes.note(max(now().Sub(due), 0))
	}
}

// late reports whether a send may no longer start at t: after s.last, or
// after s.by unless st lets it start late (a slice of the batch runs here).
func (s slot) late(t time.Time, st *batchState) bool {
	return t.After(s.last) || (t.After(s.by) && !st.startLate(t))
}

// giveUp forgets a send that will not start.
func (p *pace) giveUp(s slot) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dropPending(s)
}

// dropPending forgets s's send as pending; p.mu is held.
func (p *pace) dropPending(s slot) {
	if s.sends == 0 {
		return
	}
	if i := slices.IndexFunc(p.pending, func(ps pendingSend) bool { return ps.at.Equal(s.at) && ps.by.Equal(s.by) }); i >= 0 {
		p.pending = slices.Delete(p.pending, i, i+1)
	}
	if len(p.pending) == 0 && p.started != nil {
		close(p.started)
		p.started = nil
	}
}

// pendingStarted returns a channel closed once every send dispatched here has
// taken its slot or given it up (each does by its slot's last moment), or nil
// when none is pending.
func (p *pace) pendingStarted() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.pending) == 0 {
		return nil
	}
	if p.started == nil {
		p.started = make(chan struct{})
	}
	return p.started
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
// did not leave at all (zero t): the next send may then go, paced from it.
func (p *pace) left(t time.Time) {
	if p.unlimited() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// Its entry is the last one take noted at leavingAt, unless the pace
	// adopted another slice's start times since (then those stand).
	i := len(p.recent) - 1
	for i >= 0 && !p.recent[i].Equal(p.leavingAt) {
		i--
	}
	if p.leaving != nil && i >= 0 {
		if t.IsZero() {
			p.recent = slices.Delete(p.recent, i, i+1) // it never went
		} else {
			p.recent[i] = latest(p.recent[i], t)
			slices.SortFunc(p.recent, time.Time.Compare)
		}
	}
	if p.leaving != nil {
		close(p.leaving)
		p.leaving = nil
	}
}

// departed moves the start time of the send that left at begin (as left noted
// it) to t, when the provider said the message really left then: the sends a
// second's worth later are paced from that. Unless the pace adopted another
// slice's start times since.
func (p *pace) departed(begin, t time.Time) {
	if p.unlimited() || !t.After(begin) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.recent) - 1; i >= 0; i-- {
		if p.recent[i].Equal(begin) {
			p.recent[i] = t
			slices.SortFunc(p.recent, time.Time.Compare)
			return
		}
	}
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
