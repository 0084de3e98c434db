package processors

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"golang.org/x/time/rate"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/processors/sms"
)

// slice is one work message's worth of sending.
type slice struct {
	ctx   context.Context // outlives a cancelled handler: see run
	p     *Processor
	st    *batchState
	w     Work
	id    string
	batch *domain.Batch
	owned bool // this slice has dispatched, so it leads the chain
	// token is when the rate allowed the send of the last dispatch decided;
	// at is when it may start, the token or later if the sends before it
	// started late (pace.startAt), at or before its SendAt.
	token, at time.Time
}

// maxCommitFailures bounds how often a slice tries to store its progress before
// it hands its work message on; its answers stay with the batch's state here and
// are recorded later.
const maxCommitFailures = 5

// answerDelay is how long an answer may wait to ride along with the next
// dispatch's append: at a limited rate every message then costs one append,
// the dispatch of the next message carrying the answer of an earlier one.
const answerDelay = 500 * time.Millisecond

// gatherDelay is how long a batch whose rate is lifted waits for the answers of
// its other sends before dispatching, so that one append records several
// answers and dispatches as many messages: well under one append per message.
const gatherDelay = 5 * time.Millisecond

// maxStartDelay bounds how long after its dispatch a send may still go out. A
// send that cannot start by its dispatch's bound (its rate token, or with the
// rate lifted its append or its recipient page, came too late) gives up before
// reaching the provider, so the dispatch's deadline can be known when it is
// appended.
const maxStartDelay = time.Second

func (s *slice) run(ctx context.Context) (*Work, error) {
	p, st := s.p, s.st
	deadline := p.cfg.Now().Add(p.cfg.SliceDuration)
	// Sends and the recording of their answers outlive a cancelled ctx: a message
	// in flight at shutdown is finished and recorded, never abandoned.
	keep := context.WithoutCancel(ctx)
	s.ctx = keep
	settled := p.settled(st)
	commitCtx := keep
	if !st.pace.unlimited() {
		// A dispatch is decided a lead ahead of its token, and the lead follows
		// the commits' real duration (noteCommit): it can wait for others to
		// share its commit. A batch whose rate is lifted commits at once: its
		// next dispatch waits for this one.
		commitCtx = eventstore.WithCommitDelay(keep, eventstore.CommitCompany)
	}
	handOn, failures, lookups := true, 0, 0
	timer := time.NewTimer(0)
	defer timer.Stop()

	// held are answers taken from the batch's state and not recorded yet: they
	// wait for the next dispatch to ride along with, up to answerDelay.
	var held []answer
	defer func() { st.putBack(held) }()
	for {
		p.looks.Add(1)
		now := p.cfg.Now()
		if !now.Before(deadline) || ctx.Err() != nil {
			break
		}
		if a := st.takeAnswers(); len(held) == 0 {
			held = a // most looks: no copy
		} else {
			held = append(held, a...)
		}
		freed := s.freed(held)
		dispatch := s.canDispatch(freed, now, p.lead(st.pace), settled) && !s.gathering(held, now)
		if dispatch {
			// Read ahead so the page is at hand once the dispatch is appended.
			if _, err := p.recipients.get(ctx, s.batch.ID(), min(s.batch.Cursor(), s.batch.Total()-1)); err != nil {
				p.log.Error("recipients unreadable", "batch", s.batch.ID(), "err", err)
				dispatch = false
				if errors.Is(err, errRecipientsBroken) {
					s.fail(keep, err)
				}
			}
		}
		record := len(held) > 0 && (dispatch || s.recordNow(freed, held, now, settled))
		if dispatch || record || p.outage.holdStale(s.batch) {
			var ask dispatchFunc
			if dispatch {
				ask = s.ask(settled)
			}
			answers := held
			held = nil
			began := time.Now() // the store's real latency, whatever clock decides
			c, err := p.commit(commitCtx, st, answers, ask)
			p.noteCommit(time.Since(began))
			if err != nil {
				held = answers
				p.log.Error("recording batch progress failed", "batch", s.batch.ID(), "err", err)
				s.checkOwnership(keep)
				if failures++; failures >= maxCommitFailures {
					break
				}
				sleep(ctx, time.Duration(failures)*200*time.Millisecond)
				continue
			}
			failures = 0
			s.batch = c.batch
			if len(c.dispatched) > 0 {
				s.owned = true
				st.pace.sent(c.batch, s.token, len(c.dispatched))
			}
			st.pace.capTo(p.share(c.batch))
			st.pace.follow(c.batch, p.cfg.Now(), false, nil)
			st.dispatched(c.dispatched)
			p.afterCommit(st, answers, c.recorded)
			s.start(keep, c.dispatched, s.at, c.batch.LastSendAt())
			if errors.Is(c.dispatchErr, domain.ErrNotRunning) || errors.Is(c.dispatchErr, domain.ErrSuperseded) {
				handOn = false
				break
			}
			if errors.Is(c.dispatchErr, errRecipientsBroken) {
				p.log.Error("recipients unreadable", "batch", s.batch.ID(), "err", c.dispatchErr)
				s.fail(keep, c.dispatchErr)
				break
			}
			if c.dispatchErr != nil {
				// What the dispatch looks up about its recipients (a page, the
				// opt-out list) could not be read: looking again at once would
				// spin on the store. Wait as after a failed commit, and hand
				// the work on after as many tries.
				p.log.Error("dispatch could not look up its recipients; trying again", "batch", s.batch.ID(), "err", c.dispatchErr)
				if lookups++; lookups >= maxCommitFailures {
					break
				}
				sleep(ctx, time.Duration(lookups)*200*time.Millisecond)
				continue
			}
			lookups = 0
			continue // look again at once: the answers may have made room
		}
		if s.batch.Status() != domain.StatusProcessing {
			break
		}
		wake := s.wakeAt(freed, now, deadline, settled)
		if len(held) > 0 {
			wake = earliest(wake, held[0].at.Add(answerDelay))
			if s.gathering(held, now) {
				// The dispatch waits for the gathering to end (or for another
				// answer, which signals): looking again before then would
				// find the same and spin.
				wake = latest(wake, held[0].at.Add(gatherDelay))
			}
		}
		timer.Reset(max(wake.Sub(p.cfg.Now()), 0))
		select {
		case <-st.signal:
		case <-timer.C:
		case <-ctx.Done():
		}
	}

	if inFlight, _ := s.batch.Unanswered(nil); inFlight && s.batch.Status().Final() {
		// Its messages in flight end the chain (settleStopped).
		return &Work{BatchID: s.w.BatchID, PrevSlice: s.w.PrevSlice}, nil
	}
	p.finished(s.batch)
	if !handOn || s.batch.Status() != domain.StatusProcessing {
		return nil, nil
	}
	next := Work{BatchID: s.w.BatchID, PrevSlice: s.w.PrevSlice}
	if s.owned {
		next.PrevSlice = s.id
	}
	return &next, nil
}

// checkOwnership learns, after an append whose answer was lost, whether it was
// stored after all: if the batch's last dispatch is this slice's, the slice leads
// the chain and must hand on its own ID, or its successor would be refused.
func (s *slice) checkOwnership(ctx context.Context) {
	b, err := s.p.repo.Load(ctx, s.batch.ID())
	if err != nil {
		return
	}
	s.batch = b
	if b.LastSlice() == s.id {
		s.owned = true
	}
}

// fail marks the batch failed: it cannot go on. Messages in flight still get
// their outcomes.
func (s *slice) fail(ctx context.Context, cause error) {
	b, err := s.p.cfg.Commands.FailBatch(ctx, s.batch.ID(), cause.Error())
	if err != nil {
		s.p.log.Error("failing the batch failed", "batch", s.batch.ID(), "err", err)
		return
	}
	s.batch = b
}

// freed counts the held answers that will free their message's slot once
// recorded: every answer but a failure to retry (which keeps its slot) and a
// send that never went out.
func (s *slice) freed(held []answer) int {
	n := 0
	for _, a := range held {
		if a.notSent {
			continue
		}
		if o, ok := s.batch.OutstandingAt(a.d.Index); ok && o.Attempt == a.d.Attempt && a.err == nil {
			n++
		}
	}
	return n
}

// gathering reports whether a batch whose rate is lifted should wait a little
// for more answers before it dispatches: some of its sends here are still out
// and the oldest answer held is recent.
func (s *slice) gathering(held []answer, now time.Time) bool {
	if !s.st.pace.unlimited() || len(held) == 0 || now.Sub(held[0].at) >= gatherDelay {
		return false
	}
	return s.st.sendingCount() > len(held)
}

// recordNow reports whether held answers must be recorded without waiting for a
// dispatch to carry them. They wait, up to answerDelay from the oldest, while a
// dispatch is coming within that time or while this instance's other sends of
// the batch may still answer (so the last answers of a batch share an append).
// A failure is recorded at once: it must show, and a 429 must hold every
// instance.
func (s *slice) recordNow(freed int, held []answer, now time.Time, settled domain.Settled) bool {
	for _, a := range held {
		if a.err != nil {
			return true
		}
	}
	b := s.batch
	completes := b.Cursor() >= b.Total() && b.OutstandingCount() <= freed
	if completes || b.Status() != domain.StatusProcessing || !s.p.outage.admits() {
		return true
	}
	until := held[0].at.Add(answerDelay)
	if !now.Before(until) {
		return true
	}
	if next := b.NextDispatchAtFreeing(now, s.p.cfg.MaxInFlight, freed, settled); !next.IsZero() && !latest(next, s.st.pace.nextStart(now)).After(until) {
		return false
	}
	return s.st.sendingCount() == len(held)
}

// canDispatch reports whether a dispatch decided now would send: the batch,
// once freed slots are given back, has something it may send now, and the rate
// allows a send by lead from now (the decision is made a lead before its
// token). The batch is judged at now, as Batch.Dispatch judges it: a retry, a
// deadline, a quiet window or a throttle hold that ends within the lead is not
// due yet, and a slice that took it for due appended nothing, looked again at
// once and reloaded the batch each time, until it was (wakeAt sleeps until
// then).
func (s *slice) canDispatch(freed int, now time.Time, lead time.Duration, settled domain.Settled) bool {
	b := s.batch
	if b.Status() != domain.StatusProcessing {
		return false
	}
	next := b.NextDispatchAtFreeing(now, s.p.cfg.MaxInFlight, freed, settled)
	if next.IsZero() || next.After(now) {
		return false
	}
	return s.st.pace.ready(now.Add(lead)) && s.p.outage.admits()
}

// wakeAt is when the loop should look again if no answer arrives first.
func (s *slice) wakeAt(freed int, now, deadline time.Time, settled domain.Settled) time.Time {
	next := s.batch.NextDispatchAtFreeing(now, s.p.cfg.MaxInFlight, freed, settled)
	if next.IsZero() {
		return deadline // nothing to send until an answer comes
	}
	wake := latest(next, s.st.pace.wakeAt(now, s.p.lead(s.st.pace)))
	if !s.p.outage.admits() {
		// Held by the provider's outage: look again when the probe may go.
		wake = latest(wake, s.p.outage.probeAt())
		if !wake.After(now) {
			wake = now.Add(50 * time.Millisecond) // the probe is out: wait for its answer
		}
	}
	if wake.After(deadline) {
		return deadline
	}
	return wake
}

// ask is the slice's dispatch decision, made on the batch as it is at commit
// time. Its token is the one due when the slice decided to dispatch: an append
// the store refused, and the decision made again after it, does not make the
// decision late and move the batch's plan.
func (s *slice) ask(settled domain.Settled) dispatchFunc {
	p, pc := s.p, s.st.pace
	token := pc.tokenAt(p.cfg.Now())
	return func(b *domain.Batch, now time.Time) ([]domain.Dispatch, error) {
		n := 1 // burst 1: one send per token
		if pc.unlimited() {
			n = p.cfg.MaxInFlight
		}
		s.token, s.at = token, pc.startAt(token)
		return b.Dispatch(now, domain.DispatchRequest{
			Slice: s.id, PrevSlice: s.w.PrevSlice,
			Instance: p.instance, Deadline: p.deadline(now), SendAt: latest(s.at.Add(p.wakeSlack()), now.Add(p.lead(pc))), Settled: settled,
			Recipient: p.recipientInfo(s.ctx, b),
			Max:       n, MaxInFlight: p.cfg.MaxInFlight,
		})
	}
}

// deadline is when every send of a dispatch decided at now has ended: it starts
// within maxStartDelay and the provider call is cut at SendTimeout. The margin
// covers clocks that differ between instances.
func (p *Processor) deadline(now time.Time) time.Time {
	return now.Add(maxStartDelay + p.cfg.SendTimeout + p.cfg.DeadlineMargin)
}

// startsBy is the latest a send of a dispatch with deadline may start for the
// deadline to hold: maxStartDelay after the decision.
func (p *Processor) startsBy(deadline time.Time) time.Time {
	return deadline.Add(-p.cfg.SendTimeout - p.cfg.DeadlineMargin)
}

// lead is how long before its token a dispatch is decided, and how much later
// than its decision its recorded SendAt lies: the recent commit time plus four
// times its recent deviation (a TCP retransmission timeout's rule, RFC 6298),
// plus how late sends wake for their token estimated the same way (wakeSlack),
// at least lookahead and the batch's leadFloor, and at most maxLead. A send
// goes out by SendAt plus handoverMargin, or a little later while its slice
// runs, or not at all, so the lead must outlast nearly every commit, not the
// average one: with twice the average, a thousand batches on one instance gave
// up about one send in eleven, each costing the batch a token.
func (p *Processor) lead(pc *pace) time.Duration {
	return min(max(p.commits.timeout()+p.wakes.timeout(), lookahead, pc.leadFloor()), maxLead)
}

// noteCommit folds one commit's duration into the recent commit time.
func (p *Processor) noteCommit(d time.Duration) { p.commits.note(d) }

// wakeSlack is how much later than its token a dispatch's recorded SendAt lies
// at least, so that a send whose goroutine wakes late still goes out by SendAt
// plus handoverMargin: how late sends wake of late (mean plus four deviations),
// at most maxWakeSlack. Idle, it is next to nothing; on a saturated instance
// (a thousand batches on two cores) sends woke up to 200 ms late, and about one
// in eleven gave up its token with a fixed 50 ms.
func (p *Processor) wakeSlack() time.Duration { return min(p.wakes.timeout(), maxWakeSlack) }

// maxWakeSlack bounds wakeSlack, so a send still starts well within
// maxStartDelay of its dispatch.
const maxWakeSlack = 250 * time.Millisecond

// latency is a moving estimate of how long something takes: its mean and mean
// deviation, as RFC 6298 estimates a round trip.
type latency struct {
	mu        sync.Mutex
	mean, dev time.Duration
}

func (l *latency) note(d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mean == 0 {
		l.mean, l.dev = d, d/2
		return
	}
	l.dev += (max(l.mean-d, d-l.mean) - l.dev) / 4
	l.mean += (d - l.mean) / 8
}

// timeout is how long nearly every one takes: mean plus four deviations.
func (l *latency) timeout() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mean + 4*l.dev
}

// dispatchFunc decides a dispatch on the batch as loaded for a commit.
type dispatchFunc func(b *domain.Batch, now time.Time) ([]domain.Dispatch, error)

// committed is what one commit stored.
type committed struct {
	batch       *domain.Batch
	recorded    []recorded
	dispatched  []domain.Dispatch
	dispatchErr error
}

// commit appends answers and, when ask is set, a dispatch in the same append. A
// rate-limit answer among them also records a throttle, so that the batch slows
// down on whichever instance works it next.
func (p *Processor) commit(ctx context.Context, st *batchState, answers []answer, ask dispatchFunc) (committed, error) {
	var c committed
	b, err := p.repo.Update(ctx, st.id, func(b *domain.Batch) error {
		now := p.cfg.Now()
		c.recorded, c.dispatched, c.dispatchErr = c.recorded[:0], nil, nil
		var hold time.Duration
		limited := false
		for _, a := range answers {
			if a.notSent {
				// Never reached the provider: nothing to record, and it goes
				// again, unless the batch has stopped.
				if b.Status().Final() {
					_ = b.EndUnsent(now, a.d.Index, a.d.Attempt, a.phone)
				}
				continue
			}
			r := p.recordAnswer(b, now, a)
			c.recorded = append(c.recorded, r)
			if r.outcome != "stale" && r.category == domain.CategoryRateLimited {
				limited = true
				hold = max(hold, r.retryAfter)
			}
		}
		if limited && !b.Status().Final() {
			if hold <= 0 {
				hold = time.Second
			}
			_ = b.SlowDown(now, now.Add(hold), slowedRate(p.target(b), p.share(b), now, b.Throttle()))
		}
		p.outage.markHold(b, now)
		p.markCap(b)
		if ask != nil {
			c.dispatched, c.dispatchErr = ask(b, now)
		}
		return nil
	})
	if err != nil {
		return committed{}, err
	}
	c.batch = b
	return c, nil
}

// share is the rate the tenant's cap leaves the batch: its target when the cap
// is off or does not bind.
func (p *Processor) share(b *domain.Batch) rate.Limit {
	target := p.target(b)
	if p.cfg.TenantMaxRate <= 0 || target == rate.Inf {
		return target
	}
	return rate.Limit(p.cfg.Shares.Share(b.Tenant(), b.ID(), float64(target)))
}

// markCap records on b the rate its tenant's cap holds it to, so that its
// status shows it (0 once the cap no longer holds it back).
func (p *Processor) markCap(b *domain.Batch) {
	if p.cfg.TenantMaxRate <= 0 {
		return
	}
	share, target := p.share(b), p.target(b)
	if share < target {
		b.CapRate(p.cfg.Now(), float64(share))
	} else {
		b.CapRate(p.cfg.Now(), 0)
	}
}

// target is the batch's rate when the provider keeps up.
func (p *Processor) target(b *domain.Batch) rate.Limit {
	if p.cfg.Unlimited {
		return rate.Inf
	}
	return rate.Limit(p.cfg.Rates.For(b.Priority()))
}

// recorded is what became of one answer, for the metrics.
type recorded struct {
	outcome    string // "sent", "retry", "failed", "stale"
	category   domain.ErrorCategory
	retryAfter time.Duration
}

// recordAnswer decides what an answer means for the batch: sent, retried later,
// or failed for good.
func (p *Processor) recordAnswer(b *domain.Batch, now time.Time, a answer) recorded {
	if a.err == nil {
		err := b.RecordSent(now, domain.SentParams{
			Index: a.d.Index, Attempt: a.d.Attempt, ProviderID: a.receipt.ProviderID,
			Segments: a.segments, Latency: a.latency,
		})
		if err != nil {
			return recorded{outcome: "stale"}
		}
		return recorded{outcome: "sent"}
	}
	se := sms.Classify(a.err)
	fp := domain.FailureParams{
		Index: a.d.Index, Attempt: a.d.Attempt, Phone: a.phone,
		Category: se.Category, Code: se.Code, Message: se.Message, Latency: a.latency,
	}
	// An outage of the provider never fails a recipient for good: it is retried
	// until the provider answers. Other retryable failures use up attempts.
	o, _ := b.OutstandingAt(a.d.Index)
	retry := se.Category.Outage() || (se.Category.Retryable() && o.Failures+1 < p.cfg.MaxAttempts)
	if retry && !b.Status().Final() { // a stopped batch retries nothing
		retryAt := now.Add(p.backoff(min(a.d.Attempt, 16)))
		if se.RetryAfter > 0 {
			retryAt = latest(retryAt, now.Add(se.RetryAfter))
		}
		if b.RecordAttemptFailed(now, fp, retryAt) != nil {
			return recorded{outcome: "stale"}
		}
		return recorded{outcome: "retry", category: se.Category, retryAfter: se.RetryAfter}
	}
	if b.RecordFailed(now, fp) != nil {
		return recorded{outcome: "stale"}
	}
	return recorded{outcome: "failed", category: se.Category, retryAfter: se.RetryAfter}
}

func (p *Processor) count(r recorded) {
	switch r.outcome {
	case "sent":
		p.cfg.Metrics.Sent.Inc()
	case "retry":
		p.cfg.Metrics.AttemptsFailed.WithLabelValues(string(r.category)).Inc()
	case "failed":
		p.cfg.Metrics.Failed.WithLabelValues(string(r.category)).Inc()
	}
	if r.category == domain.CategoryRateLimited && r.outcome != "stale" {
		p.cfg.Metrics.RateLimitWaits.Inc()
	}
}

// backoff is the wait before attempt+1: exponential with jitter.
func (p *Processor) backoff(attempt int) time.Duration {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     p.cfg.BackoffInitial,
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         p.cfg.BackoffMax,
	}
	b.Reset()
	d := b.NextBackOff()
	for range attempt - 1 {
		d = b.NextBackOff()
	}
	return d
}

// start hands dispatched messages to the provider, each once it is due (at:
// its rate token, or later when the sends before it started late) and no later
// than the dispatch's recorded SendAt allows. Each send's answer goes to the
// batch's state here, whichever slice is running by then.
func (s *slice) start(ctx context.Context, dispatched []domain.Dispatch, at, sendAt time.Time) {
	p, st := s.p, s.st
	// A send goes out by its SendAt plus handoverMargin (the next instance to
	// work the batch paces itself from that bound), or up to lateStart later
	// while this slice runs, or not at all. Never after the batch's validity:
	// then it is skipped as expired instead.
	until := s.batch.ValidUntil()
	for _, d := range dispatched {
		startBy, last := sendAt.Add(handoverMargin), sendAt.Add(handoverMargin+lateStart)
		if o, ok := s.batch.OutstandingAt(d.Index); ok && st.pace.unlimited() {
			// No token, no pace for the next instance to keep: the bound is
			// the one its deadline counts on. Held to SendAt plus the
			// margins, a send whose append outlasted the lead by tens of
			// milliseconds gave up after its slice had ended, and its
			// message waited out the deadline on the instance the chain
			// had moved to: three instances on PostgreSQL sent half as fast.
			startBy = p.startsBy(o.Deadline)
			last = startBy
		}
		if !until.IsZero() {
			startBy, last = earliest(startBy, until), earliest(last, until)
		}
		rcp, err := p.recipients.get(ctx, st.id, d.Index)
		if err != nil {
			// Dispatched but never sent: it goes out again under a new attempt.
			p.log.Error("recipient unreadable after dispatch", "batch", st.id, "index", d.Index, "err", err)
			p.answered(st, answer{d: d, notSent: true})
			continue
		}
		pc := st.pace
		slot := pc.slot(at, startBy, last)
		body := st.template.Render(rcp.Values)
		_, segments := domain.Segments(body)
		msg := sms.Message{IdempotencyKey: st.id + ":" + strconv.Itoa(d.Index), To: rcp.Phone, Body: body, BatchID: st.id, Index: d.Index}
		tenant := s.batch.Tenant()
		p.cfg.Metrics.InFlight.Inc()
		p.sends.Add(1)
		p.senders.Go(func() {
			defer p.sends.Done()
			a := answer{d: d, phone: rcp.Phone, segments: segments, notSent: true}
			if pc.take(ctx, p.cfg.Now, slot, st, &p.wakes) {
				// The recipient may have opted out since the dispatch (a send
				// is decided up to a lead, and with the rate lifted a second,
				// before it goes), or the breaker may have opened: then the
				// message never reaches the provider and goes round again, the
				// opted-out one to be skipped by the next dispatch.
				// The lookup may wait (a list being read): a send that could
				// not start by its last moment is not made at all, as in take,
				// or another instance may send it again after its deadline.
				if p.optedOut(ctx, tenant, rcp.Phone) || p.cfg.Now().After(last) {
					pc.left(time.Time{})
				} else if done, ok := p.outage.allow(); !ok {
					pc.left(time.Time{})
				} else {
					sendCtx, cancel := context.WithTimeout(ctx, p.cfg.SendTimeout)
					begin := p.cfg.Now()
					pc.left(begin)
					// The provider may say when the message really left,
					// which on a busy process can be some milliseconds later.
					sendCtx = sms.WithDeparture(sendCtx, func() { pc.departed(begin, p.cfg.Now()) })
					a.receipt, a.err = p.cfg.Provider.Send(sendCtx, msg)
					cancel()
					done(a.err)
					a.latency, a.notSent = p.cfg.Now().Sub(begin), false
				}
			}
			p.cfg.Metrics.InFlight.Dec()
			p.answered(st, a)
		})
	}
}

// optedOut asks the opt-out list again just before a send: true when the
// recipient is on it, or when the list cannot say (the next dispatch asks too,
// and holds the message until it can).
func (p *Processor) optedOut(ctx context.Context, tenant, phone string) bool {
	if p.cfg.Suppressed == nil {
		return false
	}
	out, err := p.cfg.Suppressed(ctx, tenant, phone)
	return out || err != nil
}

// slowedRate is the rate a batch resumes at after the provider asked it to slow
// down at now: half of what it was allowed (its tenant's cap may allow it
// less than its target: share), never below a sixteenth of its target. Zero
// for an unlimited batch, which is only held.
func slowedRate(target, share rate.Limit, now time.Time, th domain.Throttle) float64 {
	if target == rate.Inf {
		return 0
	}
	pc := newPace(target)
	pc.capTo(share)
	return float64(max(pc.rateAt(now, th)/2, target/16))
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// sleep waits d or until ctx is done, reporting whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	return !waitFor(ctx, nil, d) && ctx.Err() == nil
}
