package processors

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/processors/sms"
)

// Work is the payload of a work message: the batch to send for, and the slice the
// message was handed on from (see domain.DispatchRequest).
type Work struct {
	BatchID   string `json:"batchId"`
	PrevSlice string `json:"prevSlice"`
	// NotBefore is when the slice that handed the work on last started a send
	// later than its dispatch's SendAt allowed (it may while it runs, see
	// lateStart): the next slice, wherever it runs, paces from it.
	NotBefore time.Time `json:"notBefore,omitzero"`
	// Recent is when the batch's latest sends, a second's worth, started (or,
	// for those that had not, the latest they may), as the slice that handed
	// the work on knew them: the next slice, if it runs elsewhere, paces from
	// them (see pace.handOn).
	Recent []time.Time `json:"recent,omitempty"`
}

// Processor sends for batches, one bounded time slice per work message. Sends
// outlive the slice that dispatched them: a slice hands its work message on at
// its end without waiting for the provider, and the answers are recorded by the
// next slice of the batch on this instance or, if there is none, by a recorder
// of their own. Until its answer is recorded a send counts as in flight here, and
// no slice anywhere sends that message again before its recorded deadline.
type Processor struct {
	cfg        Config
	repo       *commands.Repository
	log        *slog.Logger
	instance   string
	recipients *recipientPages
	outage     *outage

	mu      sync.Mutex
	batches map[string]*batchState
	// sends counts send goroutines and recorders, for Drain.
	sends sync.WaitGroup
	// senders run the sends.
	senders *workers
	// stop ends the recorders' retries once Drain has given up waiting.
	stop     chan struct{}
	stopOnce sync.Once
	// looks counts the times slices looked at their batch (turns of the
	// slice loop): a handful a message, or the loop spins.
	looks atomic.Int64
	// commits is how long slices' commits take of late (lead); wakes is how
	// late sends wake for their token (wakeSlack).
	commits, wakes latency
}

// batchState is what this instance holds of a batch while it works it: the
// slice turn, the pace, and the sends it has in flight. It is dropped once no
// slice runs, nothing is in flight and it has been idle for StateIdle, whoever
// finished, paused or cancelled the batch.
type batchState struct {
	id string
	// turn admits one slice of the batch at a time in this process.
	turn chan struct{}
	// pace and template are used under turn.
	pace     *pace
	template *domain.Template

	mu sync.Mutex
	// inFlight holds the attempt of every message this instance dispatched whose
	// answer is not recorded yet, by index: its send may still be running, or
	// its answer waits in answers.
	inFlight map[int]int
	answers  []answer
	// signal wakes the active slice when an answer arrives.
	signal    chan struct{}
	active    bool      // a slice holds the turn
	lateStart time.Time // the latest late start during the active slice
	// recorder is closed when the recorder running (see record) stops; nil
	// when none runs.
	recorder  chan struct{}
	idleSince time.Time
}

// answer is the provider's answer to one dispatched message.
type answer struct {
	d        domain.Dispatch
	phone    string
	segments int
	receipt  sms.Receipt
	err      error
	latency  time.Duration
	// at is when the answer came.
	at time.Time
	// notSent: the send gave up before reaching the provider (it could not
	// start by its dispatch's bound: see pace.take). Nothing is recorded; the
	// message is dispatched again under a new attempt.
	notSent bool
}

// NewProcessor returns a send processor.
func NewProcessor(cfg Config) (*Processor, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("processor config: %w", err)
	}
	instance := cfg.Instance
	if instance == "" {
		instance = uuid.NewString()
	}
	return &Processor{
		cfg:        cfg,
		repo:       cfg.Commands.Repository(),
		log:        cfg.Logger.With("instance", instance),
		instance:   instance,
		recipients: newRecipientPages(cfg.Store, cfg.CachedRecipients),
		senders:    newWorkers(),
		outage:     newOutage(cfg, cfg.Logger, cfg.Metrics),
		batches:    make(map[string]*batchState),
		stop:       make(chan struct{}),
	}, nil
}

// Instance is the name this process dispatches under.
func (p *Processor) Instance() string { return p.instance }

// state returns the batch's state, creating it.
func (p *Processor) state(id string) *batchState {
	p.mu.Lock()
	defer p.mu.Unlock()
	st, ok := p.batches[id]
	if !ok {
		st = &batchState{id: id, turn: make(chan struct{}, 1), inFlight: make(map[int]int), signal: make(chan struct{}, 1)}
		p.batches[id] = st
	}
	return st
}

// States is how many batches this instance holds state for.
func (p *Processor) States() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.batches)
}

// sweep drops the state of batches that have been idle for StateIdle.
func (p *Processor) sweep(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, st := range p.batches {
		st.mu.Lock()
		idle := !st.active && st.recorder == nil && len(st.inFlight) == 0 && len(st.answers) == 0 &&
			!st.idleSince.IsZero() && now.Sub(st.idleSince) >= p.cfg.StateIdle
		st.mu.Unlock()
		if idle {
			delete(p.batches, id)
		}
	}
}

// Run drops idle batch state every StateIdle until ctx is done.
func (p *Processor) Run(ctx context.Context) error {
	t := time.NewTicker(max(p.cfg.StateIdle/2, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			p.sweep(p.cfg.Now())
		}
	}
}

// Drain waits until every send this instance started has ended and its answer is
// recorded, or ctx is done. Call it after the router stopped handing out work:
// it is how a graceful shutdown finishes what is in flight. Answers still
// unrecorded when ctx ends are logged: their messages are in doubt and go out
// again once their deadline passes.
func (p *Processor) Drain(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		p.sends.Wait()
		close(done)
	}()
	select {
	case <-done:
		p.senders.stop()
		return nil
	case <-ctx.Done():
	}
	p.stopOnce.Do(func() { close(p.stop) })
	p.mu.Lock()
	defer p.mu.Unlock()
	var lost []string
	for id, st := range p.batches {
		st.mu.Lock()
		for i, a := range st.inFlight {
			lost = append(lost, fmt.Sprintf("%s:%d#%d", id, i, a))
		}
		st.mu.Unlock()
	}
	p.log.Error("shutdown: sends unanswered or answers unrecorded; they will be sent again after their deadline", "messages", lost)
	return fmt.Errorf("drain: %d sends unrecorded: %w", len(lost), ctx.Err())
}

// RunSlice sends for one batch for up to SliceDuration and returns the work to
// hand on, or nil when the batch needs no more work from this chain (paused,
// finished, or taken over by another slice). When ctx is cancelled it stops
// dispatching and hands the work on; its sends finish and are recorded anyway.
func (p *Processor) RunSlice(ctx context.Context, w Work) (next *Work, err error) {
	st := p.state(w.BatchID)
	select {
	case st.turn <- struct{}{}:
	case <-ctx.Done():
		return &w, nil
	}
	st.setActive(true)
	ran := false // a slice ran: its pace follows the work, and hands it on
	defer func() {
		if ran && st.pace != nil {
			// The slice's sends still waiting for their token may start late
			// only while it runs (see startLate): end once they have, whether
			// the slice hands on or the batch paused (its messages in flight
			// complete and are recorded while paused).
			st.awaitStarts(ctx)
		}
		late := st.setActive(false)
		if next != nil && !late.IsZero() {
			next.NotBefore = late
		}
		if next != nil && ran && st.pace != nil {
			next.Recent = st.pace.handOn()
		}
		<-st.turn
		p.recordLeftovers(st)
	}()
	// A recorder storing answers that came while no slice ran stops after its
	// current append: wait for it, or the slice would load the batch without
	// those answers, see their messages still in flight, and wait for answers
	// that will never come to it.
	if done := st.recording(); done != nil {
		select {
		case <-done:
		case <-ctx.Done():
			return &w, nil // as it came
		}
	}
	ran = true
	return p.runSlice(ctx, st, w)
}

// runSlice runs one slice of w's batch while it holds the batch's turn.
func (p *Processor) runSlice(ctx context.Context, st *batchState, w Work) (*Work, error) {
	b, err := p.repo.Load(ctx, w.BatchID)
	if domain.ErrorCode(err) == domain.ENOTFOUND {
		p.log.Warn("work for an unknown batch dropped", "batch", w.BatchID)
		return nil, nil
	}
	if err != nil && ctx.Err() != nil {
		return &w, nil // stopping while the batch loaded: the work goes on as it came
	}
	if err != nil {
		return nil, err
	}
	if b.Status().Final() {
		return p.settleStopped(ctx, st, b, w)
	}
	if b.Status() != domain.StatusProcessing {
		p.finished(b)
		return nil, nil
	}
	if rev, ok := domain.ChainRevision(w.PrevSlice); ok && b.Version() > rev && b.LastSlice() != w.PrevSlice {
		// The chain this work begins has moved on without it: it is the
		// second copy of the chain's first work message (the API publishes
		// it, and so does the lifecycle handler when the event arrives), or
		// a later start or resume ended the chain. Its slice could never
		// dispatch (Batch.Dispatch refuses it), and running it only held the
		// batch's turn from the slice that leads the chain: every batch's
		// first handover waited for one. (The batch as loaded holds the
		// chain's start, so it is not merely behind the store.)
		return nil, nil
	}
	if err := p.prepare(st, b, w); err != nil {
		return nil, err
	}
	s := &slice{p: p, st: st, w: w, id: uuid.NewString(), batch: b}
	return s.run(ctx)
}

// settleStopped ends the chain of a stopped batch once none of its messages
// is in flight. Until then it hands the work on, so that a message whose
// instance died with it in flight is not left pending for good: once no send
// of it can still be running (its deadline has passed, or its instance is
// known gone), it is ended here.
func (p *Processor) settleStopped(ctx context.Context, st *batchState, b *domain.Batch, w Work) (*Work, error) {
	// This instance's own sends end by their answers, recorded once the slice
	// ends (answers held meanwhile): only the deadline ends them, and only
	// with none held. Other instances' end when known gone too.
	settled := func(o domain.Outstanding) bool {
		return o.Instance != p.instance && (o.Instance == "" || (p.cfg.Gone != nil && p.cfg.Gone(o.Instance)))
	}
	inFlight, until := b.Unanswered(settled)
	if !inFlight {
		p.finished(b)
		return nil, nil
	}
	if st.holdsAnswers() {
		return &w, nil // recorded as the slice ends; looked at again after
	}
	if wait := until.Sub(p.cfg.Now()); wait > 0 {
		sleep(ctx, min(wait, p.cfg.SliceDuration))
		return &w, nil
	}
	b, err := p.cfg.Commands.EndUnanswered(ctx, b.ID(), settled)
	if err != nil {
		if ctx.Err() != nil {
			return &w, nil
		}
		// Nothing else hands a stopped batch's chain a work message while the
		// process lives (stall recovery looks at processing batches): a store
		// failing over must not end it. Look again after a pause.
		p.log.Error("ending the unanswered messages of a stopped batch failed; trying again", "batch", w.BatchID, "err", err)
		sleep(ctx, p.cfg.SliceDuration)
		return &w, nil
	}
	p.log.Warn("messages of a stopped batch ended unanswered", "batch", b.ID())
	if inFlight, _ := b.Unanswered(nil); inFlight {
		return &w, nil
	}
	p.finished(b)
	return nil, nil
}

// prepare readies the batch's template and pace for a slice of w.
func (p *Processor) prepare(st *batchState, b *domain.Batch, w Work) error {
	if st.template == nil {
		t, err := domain.NewTemplate(b.Text(), domain.TemplateLimits{MaxLength: 1 << 20, MaxVariables: 1 << 10})
		if err != nil {
			return fmt.Errorf("batch %s template: %w", b.ID(), err)
		}
		st.template = &t
	}
	if st.pace == nil {
		st.pace = newPace(p.target(b))
		if p.cfg.TenantMaxRate > 0 && b.LastSendAt().IsZero() {
			st.pace.warmUp(p.cfg.Now().Add(p.cfg.CapWarmup))
		}
	}
	st.pace.capTo(p.share(b))
	if st.pace.follow(b, p.cfg.Now(), domain.StartsChain(w.PrevSlice), w.Recent) {
		// The slice before ran elsewhere (or this pace is new): pace from its
		// late start. Here the pace saw that send start and holds its
		// neighbours to it by the rules take applies; reseeding from it would
		// push the whole plan back by its lateness, not just the sends a
		// window after it.
		st.pace.notBefore(w.NotBefore)
	}
	return nil
}

// finished forgets what only a batch that sends on needs.
func (p *Processor) finished(b *domain.Batch) {
	if b.Status().Final() {
		p.recipients.forget(b.ID(), b.Pages())
	}
}

// setActive marks whether a slice of the batch runs here. Ending it returns
// the latest late start its sends made (see startLate), zero if none.
func (st *batchState) setActive(active bool) (lateStart time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.active = active
	lateStart, st.lateStart = st.lateStart, time.Time{}
	return lateStart
}

// awaitStarts waits until the sends dispatched here that wait for their token
// have started or given up, or ctx is done. A send dispatched near the slice's
// end is often due after it; were the slice to end first, that send would have
// to start by its SendAt plus handoverMargin, and on a saturated instance, where
// every slice of the batches started together ends together, its goroutine
// often woke later than that, gave its token up and cost the batch an
// interval: the worst batches of a thousand on two cores each lost one so. A
// slice that ends on a pause waits too: a send that gave up then stayed
// outstanding until a resume, though it was in flight when the pause came.
func (st *batchState) awaitStarts(ctx context.Context) {
	if started := st.pace.pendingStarted(); started != nil {
		select {
		case <-started:
		case <-ctx.Done():
		}
	}
}

// startLate reports whether a send may start at t, later than its dispatch's
// SendAt allowed: only while a slice of the batch runs here, which then hands
// t on to the next slice (Work.NotBefore), so that wherever that runs it paces
// from t. Without a running slice the next may already be pacing elsewhere.
func (st *batchState) startLate(t time.Time) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.active {
		return false
	}
	st.lateStart = latest(st.lateStart, t)
	return true
}

// takeAnswers returns the answers waiting to be recorded.
func (st *batchState) takeAnswers() []answer {
	st.mu.Lock()
	defer st.mu.Unlock()
	a := st.answers
	st.answers = nil
	return a
}

// holdsAnswers reports whether answers wait to be recorded.
func (st *batchState) holdsAnswers() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.answers) > 0
}

// putBack returns answers whose recording failed, to be tried again.
func (st *batchState) putBack(a []answer) {
	if len(a) == 0 {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.answers = append(a, st.answers...)
}

// dispatched notes sends about to start.
func (st *batchState) dispatched(ds []domain.Dispatch) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, d := range ds {
		st.inFlight[d.Index] = d.Attempt
	}
}

// recorded forgets sends whose answers are stored (or turned out stale).
func (st *batchState) recorded(a []answer, now time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, r := range a {
		if st.inFlight[r.d.Index] == r.d.Attempt {
			delete(st.inFlight, r.d.Index)
		}
	}
	if len(st.inFlight) == 0 {
		st.idleSince = now
	}
}

// sendingCount is how many of its sends this instance has not recorded yet.
func (st *batchState) sendingCount() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.inFlight)
}

// sending reports whether this instance still has index at attempt in flight.
func (st *batchState) sending(index, attempt int) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	a, ok := st.inFlight[index]
	return ok && a == attempt
}

// settled is this instance's knowledge of which in-flight messages cannot be
// being sent: its own that it is not sending (it never sent them, or it is a
// new process), and those of instances known to be gone.
func (p *Processor) settled(st *batchState) domain.Settled {
	return func(o domain.Outstanding) bool {
		if o.Instance == p.instance {
			return !st.sending(o.Index, o.Attempt)
		}
		return o.Instance == "" || (p.cfg.Gone != nil && p.cfg.Gone(o.Instance))
	}
}

// answered takes a send's answer: the active slice records it, or a recorder
// when no slice of the batch runs here.
func (p *Processor) answered(st *batchState, a answer) {
	a.at = p.cfg.Now()
	st.mu.Lock()
	if a.notSent && st.inFlight[a.d.Index] == a.d.Attempt {
		// Known never to have reached the provider: it may go again at once.
		delete(st.inFlight, a.d.Index)
	}
	st.answers = append(st.answers, a)
	active := st.active
	startRecorder := !active && st.recorder == nil
	if startRecorder {
		st.recorder = make(chan struct{})
		p.sends.Add(1)
	}
	st.mu.Unlock()
	if active {
		select {
		case st.signal <- struct{}{}:
		default:
		}
	}
	if startRecorder {
		go p.record(st)
	}
}

// recording returns a channel closed when the running recorder stops, or nil
// when none runs.
func (st *batchState) recording() chan struct{} {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.recorder
}

// stopRecording marks the recorder stopped; st.mu is held.
func (st *batchState) stopRecording() {
	close(st.recorder)
	st.recorder = nil
}

// recordLeftovers starts a recorder for answers that arrived while the last
// slice was ending.
func (p *Processor) recordLeftovers(st *batchState) {
	st.mu.Lock()
	start := len(st.answers) > 0 && !st.active && st.recorder == nil
	if start {
		st.recorder = make(chan struct{})
		p.sends.Add(1)
	}
	if len(st.inFlight) == 0 && st.idleSince.IsZero() {
		st.idleSince = p.cfg.Now()
	}
	st.mu.Unlock()
	if start {
		go p.record(st)
	}
}

// record stores answers while no slice of the batch runs here: after the
// batch's slices moved to another instance, or it paused, or this instance is
// shutting down. It keeps trying while the store refuses, until Drain gives up.
func (p *Processor) record(st *batchState) {
	defer p.sends.Done()
	wait := 100 * time.Millisecond
	for {
		st.mu.Lock()
		if st.active || len(st.answers) == 0 {
			st.stopRecording()
			st.mu.Unlock()
			return
		}
		answers := st.answers
		st.answers = nil
		st.mu.Unlock()

		// The answers of a shutting-down instance are recorded after its context
		// is gone; the store call is bounded by its own timeouts.
		ctx := context.Background()
		c, err := p.commit(ctx, st, answers, nil)
		if err == nil {
			p.finished(c.batch)
			p.afterCommit(st, answers, c.recorded)
			wait = 100 * time.Millisecond
			continue
		}
		st.putBack(answers)
		p.log.Error("recording answers failed; retrying", "batch", st.id, "answers", len(answers), "err", err, "wait", wait)
		select {
		case <-time.After(wait):
		case <-p.stop:
			st.mu.Lock()
			st.stopRecording()
			st.mu.Unlock()
			return
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// afterCommit updates metrics and local state for answers just stored.
func (p *Processor) afterCommit(st *batchState, answers []answer, recs []recorded) {
	st.recorded(answers, p.cfg.Now())
	for _, r := range recs {
		p.count(r)
	}
}
