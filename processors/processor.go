package processors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/google/uuid"
	"golang.org/x/time/rate"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/processors/sms"
)

// Work is the payload of a work message: the batch to send for, and the slice the
// message was handed on from (see domain.DispatchRequest).
type Work struct {
	BatchID   string `json:"batchId"`
	PrevSlice string `json:"prevSlice"`
}

// Processor sends for batches, one bounded time slice per work message.
type Processor struct {
	cfg  Config
	repo *commands.Repository
	log  *slog.Logger

	mu      sync.Mutex
	batches map[string]*batchState
}

// batchState is what this instance remembers of a batch between slices.
type batchState struct {
	// turn admits one slice of the batch at a time in this process.
	turn chan struct{}

	limiter *rate.Limiter
	target  rate.Limit
	// lastDispatch is the time of the batch's last dispatch this instance knows
	// of; a later one in the stream was made elsewhere.
	lastDispatch time.Time
	// waiting counts dispatched sends not yet holding their rate token.
	waiting   atomic.Int32
	holdUntil time.Time // a 429's Retry-After

	template   *domain.Template
	page       int
	recipients []domain.Recipient
}

// NewProcessor returns a send processor.
func NewProcessor(cfg Config) (*Processor, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("processor config: %w", err)
	}
	return &Processor{
		cfg:     cfg,
		repo:    cfg.Commands.Repository(),
		log:     cfg.Logger,
		batches: make(map[string]*batchState),
	}, nil
}

func (p *Processor) state(id string) *batchState {
	p.mu.Lock()
	defer p.mu.Unlock()
	st, ok := p.batches[id]
	if !ok {
		st = &batchState{turn: make(chan struct{}, 1), page: -1}
		p.batches[id] = st
	}
	return st
}

func (p *Processor) forget(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.batches, id)
}

// RunSlice sends for one batch for up to SliceDuration and returns the work to
// hand on, or nil when the batch needs no more work from this chain (paused,
// finished, or taken over by another slice). When ctx is cancelled it stops
// dispatching, lets the messages in flight finish and records them.
func (p *Processor) RunSlice(ctx context.Context, w Work) (*Work, error) {
	st := p.state(w.BatchID)
	select {
	case st.turn <- struct{}{}:
	case <-ctx.Done():
		return &w, nil
	}
	defer func() { <-st.turn }()

	b, err := p.repo.Load(ctx, w.BatchID)
	if domain.ErrorCode(err) == domain.ENOTFOUND {
		p.log.Warn("work for an unknown batch dropped", "batch", w.BatchID)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if b.Status() != domain.StatusProcessing {
		if b.Status().Final() {
			p.forget(w.BatchID)
		}
		return nil, nil
	}
	if err := p.prepare(st, b); err != nil {
		return nil, err
	}
	s := &slice{p: p, st: st, w: w, id: uuid.NewString(), batch: b}
	return s.run(ctx)
}

// prepare readies the batch's template and rate limiter. A limiter made here is
// seeded with the batch's last dispatch, so a slice on a fresh instance does not
// send early.
func (p *Processor) prepare(st *batchState, b *domain.Batch) error {
	if st.template == nil {
		t, err := domain.NewTemplate(b.Text(), domain.TemplateLimits{MaxLength: 1 << 20, MaxVariables: 1 << 10})
		if err != nil {
			return fmt.Errorf("batch %s template: %w", b.ID(), err)
		}
		st.template = &t
	}
	if st.limiter == nil {
		st.target = rate.Limit(p.cfg.Rates.For(b.Priority()))
		if p.cfg.Unlimited {
			st.target = rate.Inf
		}
		st.limiter = rate.NewLimiter(st.target, 1)
	}
	// Another instance may have worked the batch since this one last did: its
	// sends count against the rate here too. The event records when a dispatch
	// was decided; its send went out up to the lookahead plus an append later,
	// so assume the latest.
	if last := b.LastDispatchAt(); last.After(st.lastDispatch) {
		st.limiter = rate.NewLimiter(st.limiter.Limit(), 1)
		st.limiter.AllowN(last.Add(handoverMargin), 1)
		st.lastDispatch = last
	}
	return nil
}

// errRecipientsBroken: the recipients stream does not hold what BatchCreated
// promised. Retrying cannot help; the batch fails.
var errRecipientsBroken = errors.New("recipients missing or unreadable")

// recipient returns recipient index, reading its page when it is not the cached one.
func (p *Processor) recipient(ctx context.Context, st *batchState, batchID string, index int) (domain.Recipient, error) {
	page := index / domain.RecipientPageSize
	if page != st.page {
		events, err := p.cfg.Store.ReadStream(ctx, domain.RecipientsStream(batchID), uint64(page), 1)
		if err != nil {
			return domain.Recipient{}, fmt.Errorf("read recipients page %d: %w", page, err)
		}
		if len(events) == 0 {
			return domain.Recipient{}, fmt.Errorf("page %d: %w", page, errRecipientsBroken)
		}
		e, err := domain.DecodeEvent(events[0].Type, events[0].Data)
		if err != nil {
			return domain.Recipient{}, fmt.Errorf("page %d: %w: %w", page, errRecipientsBroken, err)
		}
		rp, ok := e.(domain.RecipientsPageAdded)
		if !ok {
			return domain.Recipient{}, fmt.Errorf("page %d is a %s: %w", page, e.EventType(), errRecipientsBroken)
		}
		st.page, st.recipients = page, rp.Recipients
	}
	i := index - page*domain.RecipientPageSize
	if i < 0 || i >= len(st.recipients) {
		return domain.Recipient{}, fmt.Errorf("recipient %d: %w", index, errRecipientsBroken)
	}
	return st.recipients[i], nil
}

// result is the provider's answer to one dispatched message.
type result struct {
	d        domain.Dispatch
	phone    string
	segments int
	receipt  sms.Receipt
	err      error
	latency  time.Duration
}

// slice is one work message's worth of sending.
type slice struct {
	p     *Processor
	st    *batchState
	w     Work
	id    string
	batch *domain.Batch
	owned bool // this slice has dispatched, so it leads the chain

	inFlight int
	results  chan result
	finished []result
}

// lookahead lets a dispatch be decided this long before its token is due, so the
// append's latency does not eat into the rate; the send itself waits for the token.
const lookahead = 25 * time.Millisecond

// maxCommitFailures bounds how often a stopping slice retries recording its
// answers (about a second apart) before it leaves them in doubt.
const maxCommitFailures = 5

// handoverMargin is how much later than its recorded decision a dispatch may have
// been sent: the lookahead plus a slow append.
const handoverMargin = 100 * time.Millisecond

func (s *slice) run(ctx context.Context) (*Work, error) {
	p := s.p
	s.results = make(chan result, p.cfg.MaxInFlight)
	deadline := p.cfg.Now().Add(p.cfg.SliceDuration)
	// Sends and the recording of their answers outlive a cancelled ctx: a message
	// in flight at shutdown is finished and recorded, never abandoned.
	keep := context.WithoutCancel(ctx)
	stopping, handOn := false, true
	failures := 0
	timer := time.NewTimer(0)
	defer timer.Stop()

	for {
		now := p.cfg.Now()
		if !stopping && (!now.Before(deadline) || ctx.Err() != nil) {
			stopping = true
		}
		dispatch := !stopping && s.canDispatch(now.Add(lookahead))
		if dispatch {
			// Read ahead so the page is at hand once the dispatch is appended.
			if _, err := p.recipient(ctx, s.st, s.batch.ID(), min(s.batch.Cursor(), s.batch.Total()-1)); err != nil {
				p.log.Error("recipients unreadable", "batch", s.batch.ID(), "err", err)
				stopping, dispatch = true, false
				if errors.Is(err, errRecipientsBroken) {
					s.fail(keep, err)
				}
			}
		}
		if dispatch || len(s.finished) > 0 {
			dispatched, err := s.commit(keep, dispatch)
			switch {
			case errors.Is(err, domain.ErrNotRunning), errors.Is(err, domain.ErrSuperseded):
				stopping, handOn = true, false
			case err != nil:
				p.log.Error("recording batch progress failed", "batch", s.batch.ID(), "err", err)
				stopping = true
				failures++
			}
			s.start(keep, dispatched)
		}
		if stopping && s.inFlight == 0 && len(s.finished) == 0 {
			break
		}
		if stopping && s.inFlight == 0 && failures >= maxCommitFailures {
			// The store keeps refusing: leave the answers unrecorded. Their
			// messages stay in doubt and the next slice sends them again under
			// the same key, which a provider that honours keys answers without
			// sending twice.
			p.log.Error("giving up recording answers; their messages will be re-sent under the same key",
				"batch", s.batch.ID(), "answers", len(s.finished))
			break
		}
		wake := s.wakeAt(now, deadline, stopping)
		timer.Reset(max(wake.Sub(p.cfg.Now()), 0))
		done := ctx.Done()
		if stopping {
			done = nil
		}
		select {
		case r := <-s.results:
			s.collect(r)
		case <-timer.C:
		case <-done:
		}
	}

	if s.batch.Status().Final() {
		p.forget(s.batch.ID())
	}
	if !handOn || s.batch.Status() != domain.StatusProcessing {
		return nil, nil
	}
	next := Work{BatchID: s.w.BatchID, PrevSlice: s.w.PrevSlice}
	if s.owned {
		next.PrevSlice = s.id
	}
	return &next, nil
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

func (s *slice) collect(r result) {
	s.inFlight--
	s.p.cfg.Metrics.InFlight.Dec()
	s.finished = append(s.finished, r)
	// Take every answer already there, so they are recorded in one append.
	for {
		select {
		case r := <-s.results:
			s.inFlight--
			s.p.cfg.Metrics.InFlight.Dec()
			s.finished = append(s.finished, r)
		default:
			return
		}
	}
}

// canDispatch reports whether, at time t, the rate allows a send and the batch as
// last seen has something to send.
func (s *slice) canDispatch(t time.Time) bool {
	if s.batch.Status() != domain.StatusProcessing || t.Before(s.st.holdUntil) || !s.st.hasToken(t) {
		return false
	}
	// One send at a time waits for its token: deciding the next before it took
	// its own would count the same token twice.
	if s.st.limiter.Limit() != rate.Inf && s.st.waiting.Load() > 0 {
		return false
	}
	sendable := s.sendableAt(t)
	return !sendable.IsZero() && !sendable.After(t)
}

// sendableAt is the earliest time, not before now, at which the batch as last
// seen has a message to send if the rate allows: now for a new recipient with
// room in flight or a message in doubt, a retry's due time, or zero for nothing.
func (s *slice) sendableAt(now time.Time) time.Time {
	b := s.batch
	outstanding := b.Outstanding()
	if b.Cursor() < b.Total() && len(outstanding) < s.p.cfg.MaxInFlight {
		return now
	}
	for _, o := range outstanding {
		if o.InFlight() && o.Slice != s.id {
			return now
		}
	}
	if retry := b.NextRetryAt(); !retry.IsZero() {
		return latest(retry, now)
	}
	return time.Time{}
}

// wakeAt is when the loop should look again if no answer arrives first.
func (s *slice) wakeAt(now, deadline time.Time, stopping bool) time.Time {
	if stopping {
		return now.Add(time.Second) // only answers matter now; the timer is a safety net
	}
	if s.batch.Status() != domain.StatusProcessing {
		return deadline
	}
	sendable := s.sendableAt(now)
	if sendable.IsZero() {
		return deadline // nothing to send until an answer comes
	}
	wake := latest(sendable, latest(s.st.tokenAt(now).Add(-lookahead), s.st.holdUntil))
	if s.st.waiting.Load() > 0 {
		wake = latest(wake, now.Add(lookahead)) // until the waiting send takes its token
	}
	if wake.After(deadline) {
		return deadline
	}
	return wake
}

// hasToken reports whether the rate allows a send at t.
func (st *batchState) hasToken(t time.Time) bool {
	return st.limiter.Limit() == rate.Inf || st.limiter.TokensAt(t) >= 1
}

// tokenAt is when the next send is allowed, looking from now.
func (st *batchState) tokenAt(now time.Time) time.Time {
	if st.hasToken(now) || st.limiter.Limit() <= 0 {
		return now
	}
	missing := 1 - st.limiter.TokensAt(now)
	return now.Add(time.Duration(missing / float64(st.limiter.Limit()) * float64(time.Second)))
}

// observe adjusts the batch's pace to the provider's answers: a rate-limit answer
// holds sending for its Retry-After and halves the rate; every success after that
// wins a tenth of the target rate back.
func (s *slice) observe(now time.Time, r recorded) {
	st := s.st
	switch {
	case r.category == domain.CategoryRateLimited:
		s.p.cfg.Metrics.RateLimitWaits.Inc()
		wait := r.retryAfter
		if wait <= 0 {
			wait = time.Second
		}
		st.holdUntil = latest(st.holdUntil, now.Add(wait))
		if st.target != rate.Inf {
			st.limiter.SetLimitAt(now, max(st.limiter.Limit()/2, st.target/16))
		}
	case r.outcome == "sent" && st.limiter.Limit() < st.target:
		st.limiter.SetLimitAt(now, min(st.target, st.limiter.Limit()+st.target/10))
	}
}

// commit appends the answers collected so far and, when asked, a dispatch in the
// same append. It returns the messages dispatched.
func (s *slice) commit(ctx context.Context, dispatch bool) ([]domain.Dispatch, error) {
	p := s.p
	finished := s.finished
	var dispatched []domain.Dispatch
	var dispatchErr error
	var recorded []recorded
	b, err := p.repo.Update(ctx, s.batch.ID(), func(b *domain.Batch) error {
		now := p.cfg.Now()
		recorded = recorded[:0]
		dispatched, dispatchErr = nil, nil
		for _, r := range finished {
			recorded = append(recorded, s.record(b, now, r))
		}
		if dispatch {
			n := s.p.cfg.MaxInFlight
			if s.st.limiter.Limit() != rate.Inf {
				n = 1 // burst 1: one send per token
			}
			dispatched, dispatchErr = b.Dispatch(now, domain.DispatchRequest{
				Slice: s.id, PrevSlice: s.w.PrevSlice, Max: n, MaxInFlight: p.cfg.MaxInFlight,
			})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.batch = b
	s.finished = nil
	if len(dispatched) > 0 {
		s.st.lastDispatch = b.LastDispatchAt()
	}
	now := p.cfg.Now()
	for _, r := range recorded {
		p.count(r)
		s.observe(now, r)
	}
	if len(dispatched) > 0 {
		s.owned = true
	}
	return dispatched, dispatchErr
}

// recorded is what became of one answer, for the metrics.
type recorded struct {
	outcome    string // "sent", "retry", "failed", "stale"
	category   domain.ErrorCategory
	retryAfter time.Duration
}

// record decides what an answer means for the batch: sent, retried later, or
// failed for good.
func (s *slice) record(b *domain.Batch, now time.Time, r result) recorded {
	p := s.p
	if r.err == nil {
		err := b.RecordSent(now, domain.SentParams{
			Index: r.d.Index, Attempt: r.d.Attempt, ProviderID: r.receipt.ProviderID,
			Segments: r.segments, Latency: r.latency,
		})
		if err != nil {
			return recorded{outcome: "stale"}
		}
		return recorded{outcome: "sent"}
	}
	se := sms.Classify(r.err)
	fp := domain.FailureParams{
		Index: r.d.Index, Attempt: r.d.Attempt, Phone: r.phone,
		Category: se.Category, Code: se.Code, Message: se.Message, Latency: r.latency,
	}
	if se.Category.Retryable() && r.d.Attempt < p.cfg.MaxAttempts {
		retryAt := now.Add(p.backoff(r.d.Attempt))
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

// start hands dispatched messages to the provider, each once its rate token is due.
func (s *slice) start(ctx context.Context, dispatched []domain.Dispatch) {
	p := s.p
	for _, d := range dispatched {
		rcp, err := p.recipient(ctx, s.st, s.batch.ID(), d.Index)
		if err != nil {
			// Dispatched but not sent: the message is in doubt and the next slice
			// sends it again under the same key.
			p.log.Error("recipient unreadable after dispatch", "batch", s.batch.ID(), "index", d.Index, "err", err)
			continue
		}
		lim, waiting := s.st.limiter, &s.st.waiting
		waiting.Add(1)
		body := s.st.template.Render(rcp.Values)
		_, segments := domain.Segments(body)
		msg := sms.Message{IdempotencyKey: s.batch.ID() + ":" + strconv.Itoa(d.Index), To: rcp.Phone, Body: body}
		s.inFlight++
		p.cfg.Metrics.InFlight.Inc()
		go func() {
			takeToken(lim, p.cfg.Now)
			waiting.Add(-1)
			start := p.cfg.Now()
			sendCtx, cancel := context.WithTimeout(ctx, p.cfg.SendTimeout)
			receipt, err := p.cfg.Provider.Send(sendCtx, msg)
			cancel()
			s.results <- result{d: d, phone: rcp.Phone, segments: segments, receipt: receipt, err: err, latency: p.cfg.Now().Sub(start)}
		}()
	}
}

// takeToken waits for the batch's next send and takes its token at the moment
// it sends, not when the send was planned: a goroutine that wakes late then
// pushes the following send back by as much, so no one-second window seen by the
// provider holds more sends than the rate.
func takeToken(lim *rate.Limiter, now func() time.Time) {
	for {
		t := now()
		r := lim.ReserveN(t, 1)
		d := r.DelayFrom(t)
		if d <= 0 {
			return
		}
		r.CancelAt(t)
		time.Sleep(d)
	}
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
