package domain

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Status is where a batch is in its life.
type Status string

// The statuses a batch moves through. Completed, failed and cancelled are final.
const (
	StatusPending    Status = "pending"
	StatusProcessing Status = "processing"
	StatusPaused     Status = "paused"
	StatusCompleted  Status = "completed"
	StatusFailed     Status = "failed"
	StatusCancelled  Status = "cancelled"
)

// Final reports whether no more messages will ever be dispatched.
func (s Status) Final() bool {
	return s == StatusCompleted || s == StatusFailed || s == StatusCancelled
}

// Errors the send processor branches on. They are not user errors: a worker that
// meets one stops or drops a result, and nothing is appended.
var (
	// ErrNotRunning: the batch is not processing (paused, pending or final).
	ErrNotRunning = errors.New("batch is not processing")
	// ErrSuperseded: another work slice has taken the batch over.
	ErrSuperseded = errors.New("work slice superseded by another")
	// ErrStaleOutcome: the message is not in flight at that attempt any more (it
	// already has an outcome, or it was re-dispatched by another slice).
	ErrStaleOutcome = errors.New("outcome for a message not in flight at that attempt")
)

// Outstanding is a dispatched message without a final outcome: in flight, or
// waiting for its retry when RetryAt is set.
type Outstanding struct {
	Index   int
	Attempt int
	// Slice is the work slice that dispatched the current attempt, and Instance
	// the process it ran in: the one place that send can still be running.
	Slice    string
	Instance string
	// Deadline is when no send of the current attempt can still be running: the
	// dispatching instance gives up on it before then. Zero for dispatches
	// recorded before deadlines existed, which count as long past.
	Deadline time.Time
	// RetryAt is when a failed attempt may be tried again; zero while in flight.
	RetryAt time.Time
	// Failures counts the failed attempts that use up the message's attempts:
	// those whose category is not an outage of the provider.
	Failures int
}

// InFlight reports whether the attempt was handed to the provider and has no answer recorded.
func (o Outstanding) InFlight() bool { return o.RetryAt.IsZero() }

// outstandingSet holds a batch's outstanding messages sorted by index: a few
// at a time (the batch's in-flight bound), so a slice is searched as fast as a
// map, and copying it for every decision (Batch.Clone) costs one small
// allocation where a map's cost several.
type outstandingSet []Outstanding

func (s outstandingSet) find(index int) (int, bool) {
	return slices.BinarySearchFunc(s, index, func(o Outstanding, index int) int { return o.Index - index })
}

func (s outstandingSet) get(index int) (Outstanding, bool) {
	if i, ok := s.find(index); ok {
		return s[i], true
	}
	return Outstanding{}, false
}

// put adds o, or replaces the message at its index.
func (s *outstandingSet) put(o Outstanding) {
	if i, ok := s.find(o.Index); ok {
		(*s)[i] = o
	} else {
		*s = slices.Insert(*s, i, o)
	}
}

// remove drops the message at index; an emptied set is nil, as a new one is,
// so that equal states compare equal however they were reached.
func (s *outstandingSet) remove(index int) {
	if i, ok := s.find(index); ok {
		if *s = slices.Delete(*s, i, i+1); len(*s) == 0 {
			*s = nil
		}
	}
}

// Settled tells whether a send of an in-flight message can no longer be running
// for a reason the aggregate cannot see: its instance is known gone, or (for the
// asking instance's own sends) it knows the send ended without an answer to
// record. Nil means nothing is known beyond the deadline.
type Settled func(o Outstanding) bool

// InDoubt reports whether o is in flight without an answer although no send of
// it can still be running at now: its deadline has passed or settled says so. Only
// such a message may be sent again; one whose send may still be running is not,
// whoever asks, because a second provider call with the same key is a second SMS.
func (o Outstanding) InDoubt(now time.Time, settled Settled) bool {
	if !o.InFlight() {
		return false
	}
	return !now.Before(o.Deadline) || (settled != nil && settled(o))
}

// Batch is the aggregate: it decides what may happen to a batch and keeps only
// what those decisions need. Its fields change only in apply.
type Batch struct {
	id        string
	tenant    string
	version   uint64
	status    Status
	priority  Priority
	text      string
	variables []string
	total     int
	pages     int
	autoStart bool
	schedule  time.Time
	// validUntil is when unsent messages stop being worth sending; zero: never.
	validUntil time.Time
	// quiet is the batch's quiet hours; nil: none. deferred are the ranges of
	// recipients the cursor passed over while their zones were quiet.
	quiet     *QuietHours
	deferred  []DeferredRange
	createdAt time.Time

	cursor      int
	outstanding outstandingSet
	sent        int
	failed      int
	skipped     int

	lastSlice      string
	lastDispatchAt time.Time
	lastSendAt     time.Time
	throttle       Throttle
	hold           Hold
	cappedRate     float64
	lastEventAt    time.Time
	pausedAt       time.Time
	resumedAt      time.Time
	// receiptIDs is BatchCreated.ReceiptIDs.
	receiptIDs int

	changes []Event
}

// NewBatchParams describes a batch whose recipients are already stored.
type NewBatchParams struct {
	ID           string
	Tenant       string
	Template     Template
	Priority     Priority
	ScheduleTime *time.Time
	AutoStart    bool
	// ValidUntil, when set, is when unsent messages end skipped as expired.
	ValidUntil *time.Time
	// QuietHours, when set, keeps messages from going out in the recipients'
	// local night.
	QuietHours *QuietHours
	Total      int
	Pages      int
	// Name labels the batch for people; RetryOf names the batch whose failed
	// recipients it sends again. Neither takes part in a decision, so the
	// aggregate records them and keeps neither.
	Name, RetryOf string
}

// NewBatch creates a batch. With AutoStart and no future ScheduleTime it starts at
// once; otherwise it stays pending until started or its schedule is due.
func NewBatch(p NewBatchParams, now time.Time) (*Batch, error) {
	switch {
	case p.ID == "" || p.Tenant == "":
		return nil, errors.New("new batch: id and tenant are required")
	case p.Total <= 0:
		return nil, Errorf(EINVALID, "a batch needs at least one recipient")
	case p.Template.Text() == "":
		return nil, Errorf(EINVALID, "a batch needs a template")
	}
	if p.Priority == "" {
		p.Priority = PriorityNormal
	}
	var schedule *time.Time
	if p.ScheduleTime != nil && !p.ScheduleTime.IsZero() {
		t := p.ScheduleTime.UTC()
		schedule = &t
	}
	b := &Batch{}
	b.record(BatchCreated{
		EventHeader:  EventHeader{BatchID: p.ID, Tenant: p.Tenant, At: now},
		Name:         p.Name,
		Text:         p.Template.Text(),
		Variables:    slices.Clone(p.Template.Variables()),
		Priority:     p.Priority,
		ScheduleTime: schedule,
		AutoStart:    p.AutoStart,
		ValidUntil:   utcPtr(p.ValidUntil),
		QuietHours:   p.QuietHours,
		Total:        p.Total,
		Pages:        p.Pages,
		RetryOf:      p.RetryOf,
		ReceiptIDs:   ReceiptIDsOrdered,
	})
	if p.AutoStart && (schedule == nil || !schedule.After(now)) {
		b.record(BatchStarted{EventHeader: b.header(now), By: "auto"})
	}
	return b, nil
}

// LoadBatch rebuilds a batch from its stored events. It is not a constructor: it
// makes no decisions and records no changes.
func LoadBatch(history []Event) (*Batch, error) {
	b := &Batch{}
	for _, e := range history {
		if err := b.Replay(e); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// Replay applies one stored event, catching the batch up. The first event must be
// BatchCreated.
func (b *Batch) Replay(e Event) error {
	if b.version == 0 {
		if _, ok := e.(BatchCreated); !ok {
			return fmt.Errorf("replay batch: first event is %s, want %s", e.EventType(), TypeBatchCreated)
		}
	}
	b.apply(e)
	return nil
}

// Changes returns the events recorded since the batch was loaded or last cleared.
func (b *Batch) Changes() []Event { return b.changes }

// ClearChanges forgets recorded changes, once they are stored.
func (b *Batch) ClearChanges() { b.changes = nil }

// Clone returns a deep copy, so that a decision can be tried without touching a
// cached batch.
func (b *Batch) Clone() *Batch {
	c := *b
	c.variables = slices.Clone(b.variables)
	c.outstanding = slices.Clone(b.outstanding)
	c.changes = slices.Clone(b.changes)
	return &c
}

func (b *Batch) ID() string                { return b.id }
func (b *Batch) Tenant() string            { return b.tenant }
func (b *Batch) Status() Status            { return b.status }
func (b *Batch) Priority() Priority        { return b.priority }
func (b *Batch) Text() string              { return b.text }
func (b *Batch) Variables() []string       { return b.variables }
func (b *Batch) Total() int                { return b.total }
func (b *Batch) Pages() int                { return b.pages }
func (b *Batch) AutoStart() bool           { return b.autoStart }
func (b *Batch) CreatedAt() time.Time      { return b.createdAt }
func (b *Batch) Cursor() int               { return b.cursor }
func (b *Batch) Sent() int                 { return b.sent }
func (b *Batch) Failed() int               { return b.failed }
func (b *Batch) Skipped() int              { return b.skipped }
func (b *Batch) LastSlice() string         { return b.lastSlice }
func (b *Batch) LastDispatchAt() time.Time { return b.lastDispatchAt }
func (b *Batch) LastSendAt() time.Time     { return b.lastSendAt }
func (b *Batch) Throttle() Throttle        { return b.throttle }
func (b *Batch) Hold() Hold                { return b.hold }
func (b *Batch) CappedRate() float64       { return b.cappedRate }
func (b *Batch) LastEventAt() time.Time    { return b.lastEventAt }
func (b *Batch) PausedAt() time.Time       { return b.pausedAt }
func (b *Batch) ResumedAt() time.Time      { return b.resumedAt }
func (b *Batch) ValidUntil() time.Time     { return b.validUntil }

// ReceiptID is the event ID of the delivery receipt of the batch's message
// index: the store refuses a second event with it, so one receipt counts.
func (b *Batch) ReceiptID(index int) string {
	if b.receiptIDs == ReceiptIDsOrdered {
		return OrderedReceiptID(b.id, index)
	}
	return DeliveryReceiptID(b.id, index)
}

// QuietHours returns the batch's quiet hours, if it has them.
func (b *Batch) QuietHours() (QuietHours, bool) {
	if b.quiet == nil {
		return QuietHours{}, false
	}
	return *b.quiet, true
}

// Deferred returns the ranges of recipients waiting for their quiet hours to end.
func (b *Batch) Deferred() []DeferredRange { return slices.Clone(b.deferred) }

// Waiting counts the recipients waiting for their quiet hours to end.
func (b *Batch) Waiting() int {
	n := 0
	for _, r := range b.deferred {
		n += r.Waiting
	}
	return n
}

// Version is the number of events the batch is built from; the stream's revision
// is Version()-1.
func (b *Batch) Version() uint64 { return b.version }

// ScheduleTime is when a scheduled batch may start; zero when not scheduled.
func (b *Batch) ScheduleTime() time.Time { return b.schedule }

// Outstanding returns the dispatched messages without a final outcome, by index.
func (b *Batch) Outstanding() []Outstanding {
	return slices.Clone(b.outstanding)
}

// OutstandingCount is how many messages are outstanding.
func (b *Batch) OutstandingCount() int { return len(b.outstanding) }

// OutstandingAt returns the outstanding message at index, if there is one.
func (b *Batch) OutstandingAt(index int) (Outstanding, bool) {
	return b.outstanding.get(index)
}

// NextRetryAt is the earliest time a waiting retry becomes due; zero if none waits.
func (b *Batch) NextRetryAt() time.Time {
	var next time.Time
	for _, o := range b.outstanding {
		if !o.InFlight() && (next.IsZero() || o.RetryAt.Before(next)) {
			next = o.RetryAt
		}
	}
	return next
}

// NextDispatchAt is the earliest time, not before now, at which the batch has a
// message it may dispatch, rate aside: now for a new recipient while fewer than
// maxInFlight are outstanding or for a message in doubt; otherwise the earliest of
// a retry's due time and an in-flight message's deadline; never inside a throttle
// hold. It is zero when nothing can become sendable without an answer arriving.
func (b *Batch) NextDispatchAt(now time.Time, maxInFlight int, settled Settled) time.Time {
	return b.NextDispatchAtFreeing(now, maxInFlight, 0, settled)
}

// NextDispatchAtFreeing is NextDispatchAt once freed outstanding messages have
// their answers recorded (an answer about to be appended frees its slot).
func (b *Batch) NextDispatchAtFreeing(now time.Time, maxInFlight, freed int, settled Settled) time.Time {
	var next time.Time
	earliest := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	room := len(b.outstanding)-freed < maxInFlight
	if b.cursor < b.total && room {
		earliest(now)
	}
	for _, r := range b.deferred {
		if r.Waiting > 0 && room {
			earliest(latest(r.OpensAt, now))
		}
	}
	if b.expired(now) && (b.cursor < b.total || b.Waiting() > 0) {
		earliest(now) // what is left is skipped as expired
	}
	for _, o := range b.outstanding {
		switch {
		case o.InDoubt(now, settled):
			earliest(now)
		case o.InFlight():
			earliest(o.Deadline)
		default:
			earliest(latest(o.RetryAt, now))
		}
	}
	if !next.IsZero() && next.Before(b.throttle.Until) {
		next = b.throttle.Until
	}
	return next
}

// Done reports whether every recipient has a final outcome.
func (b *Batch) Done() bool {
	return b.cursor >= b.total && len(b.outstanding) == 0 && b.Waiting() == 0
}

// Start lets a pending batch send.
func (b *Batch) Start(now time.Time, by string) error {
	if b.status != StatusPending {
		return b.conflict("started")
	}
	b.record(BatchStarted{EventHeader: b.header(now), By: by})
	return nil
}

// StartIfDue starts a pending, auto-starting batch whose schedule has come. It
// reports whether it did.
func (b *Batch) StartIfDue(now time.Time) bool {
	if b.status != StatusPending || !b.autoStart || b.schedule.After(now) {
		return false
	}
	b.record(BatchStarted{EventHeader: b.header(now), By: "schedule"})
	return true
}

// Reschedule sets when a pending batch starts by itself; see BatchRescheduled.
func (b *Batch) Reschedule(now, at time.Time, by string) error {
	if b.status != StatusPending {
		return b.conflict("rescheduled")
	}
	if !b.validUntil.IsZero() && !at.Before(b.validUntil) {
		// As at create: every recipient would end skipped as expired.
		return &Error{Code: EINVALID, Message: "the schedule is invalid",
			Details: []FieldProblem{{Field: "scheduleTime", Problem: "is at or after the batch's validUntil: nothing would be sent"}}}
	}
	b.record(BatchRescheduled{EventHeader: b.header(now), ScheduleTime: at.UTC(), By: by})
	return nil
}

// Pause stops new dispatches. Messages in flight still get their outcomes.
func (b *Batch) Pause(now time.Time, by string) error {
	if b.status != StatusProcessing {
		return b.conflict("paused")
	}
	b.record(BatchPaused{EventHeader: b.header(now), By: by})
	return nil
}

// Resume lets a paused batch send again, from the first recipient without an outcome.
func (b *Batch) Resume(now time.Time, by string) error {
	if b.status != StatusPaused {
		return b.conflict("resumed")
	}
	b.record(BatchResumed{EventHeader: b.header(now), By: by})
	return nil
}

// Cancel stops a batch for good. Messages in flight still get their outcomes;
// those waiting for a retry will not have one now, and end skipped
// (CategoryCancelled), phone giving their numbers (nil: not known).
func (b *Batch) Cancel(now time.Time, by string, phone func(index int) string) error {
	if b.status.Final() {
		return b.conflict("cancelled")
	}
	b.record(BatchCancelled{EventHeader: b.header(now), By: by})
	b.endRetries(now, nil, "the batch was cancelled before this message's retry", phone)
	return nil
}

// Fail stops a batch that cannot go on. Messages waiting for a retry end
// skipped (CategoryCancelled), as when it is cancelled.
func (b *Batch) Fail(now time.Time, reason string) error {
	if b.status.Final() {
		return b.conflict("failed")
	}
	b.record(BatchFailed{EventHeader: b.header(now), Reason: reason})
	b.endRetries(now, nil, "the batch failed before this message's retry", nil)
	return nil
}

// RetriesWaiting lists the indexes of the messages a cancel at now ends (see
// endRetries), whose numbers its caller may look up.
func (b *Batch) RetriesWaiting(now time.Time) []int {
	var out []int
	for _, o := range b.outstanding {
		if !o.InFlight() || o.InDoubt(now, nil) {
			out = append(out, o.Index)
		}
	}
	return out
}

// endRetries ends the messages of a batch just stopped that wait for a retry,
// and those in flight whose deadline has passed (no send of them can still be
// running: their instance is gone): no slice dispatches for it again, so they
// would stay pending for good.
func (b *Batch) endRetries(now time.Time, settled Settled, why string, phone func(int) string) {
	for _, o := range b.Outstanding() {
		if o.InFlight() && !o.InDoubt(now, settled) {
			continue // its answer is recorded when it comes
		}
		info := RecipientInfo{Skip: CategoryCancelled, Message: why}
		if phone != nil {
			info.Phone = phone(o.Index)
		}
		b.skip(now, o.Index, o.Attempt, info)
	}
}

// Unanswered reports whether messages of the batch are in flight and, of those
// whose sends may still be running (settled does not settle them), the latest
// deadline: until then one may still be answered.
func (b *Batch) Unanswered(settled Settled) (inFlight bool, until time.Time) {
	for _, o := range b.outstanding {
		if !o.InFlight() {
			continue
		}
		inFlight = true
		if (settled == nil || !settled(o)) && o.Deadline.After(until) {
			until = o.Deadline
		}
	}
	return inFlight, until
}

// EndUnanswered ends the messages of a stopped batch still in flight that are
// in doubt at now (their deadline has passed, or settled says no send of them
// can still be running): their instance stopped without recording an answer,
// and no slice dispatches for the batch again. They may or may not have
// reached the provider; they end skipped (CategoryCancelled). ErrNotRunning
// while the batch may still send.
func (b *Batch) EndUnanswered(now time.Time, settled Settled, phone func(int) string) error {
	if !b.status.Final() {
		return ErrNotRunning
	}
	b.endRetries(now, settled, "the batch stopped, and this message's send was never answered: it may or may not have been sent", phone)
	return nil
}

// EndUnsent ends a message of a stopped batch whose send gave up before
// reaching the provider: no dispatch sends it again. ErrNotRunning while the
// batch may still send it; ErrStaleOutcome when it is not in flight.
func (b *Batch) EndUnsent(now time.Time, index, attempt int, phone string) error {
	if !b.status.Final() {
		return ErrNotRunning
	}
	if err := b.checkInFlight(index, attempt); err != nil {
		return err
	}
	b.skip(now, index, attempt, RecipientInfo{Phone: phone, Skip: CategoryCancelled,
		Message: "the batch stopped before this message could be sent"})
	return nil
}

// DispatchRequest asks for messages to hand to the provider.
type DispatchRequest struct {
	// Slice identifies the work slice asking; PrevSlice is the slice its work
	// message was handed on from (or the token of the start or resume that began
	// the chain). A slice may dispatch only while the batch's last dispatching
	// slice is PrevSlice or itself, so of two slices racing from the same work
	// message, the first to dispatch wins and the other stops.
	Slice, PrevSlice string
	// Instance names the process that will send; Deadline is when it will have
	// given up on every send of this dispatch (send timeout plus a margin for
	// clocks), so that every instance agrees when they may be sent again.
	Instance string
	Deadline time.Time
	// SendAt bounds when the messages go out (see MessagesDispatched.SendAt);
	// another instance taking the batch over paces itself from it.
	SendAt time.Time
	// Settled is the asking instance's knowledge of sends that cannot be running
	// any more; see Outstanding.InDoubt.
	Settled Settled
	// Recipient tells about a recipient Dispatch considers: its number (for quiet
	// hours and skips) and whether it must be skipped (it opted out). Nil: no
	// recipient is skipped and quiet hours are not kept; a batch with quiet
	// hours or a validity needs it.
	Recipient func(index int) (RecipientInfo, error)
	// Max is how many sends the rate allows now.
	Max int
	// MaxInFlight bounds the messages of the batch without an answer, including
	// those waiting for a retry.
	MaxInFlight int
}

// RecipientInfo is what Dispatch needs to know of one recipient.
type RecipientInfo struct {
	Phone string
	// Skip, when set, ends the message skipped instead of sent (CategoryOptedOut),
	// with Message saying why.
	Skip    ErrorCategory
	Message string
}

// scanLimit bounds the recipients one Dispatch looks at beyond those it sends
// (skipped, deferred), so that one append stays small.
const scanLimit = 1000

// DeferredRange is a stretch of recipients, [From, To), over which the cursor
// passed while Group's zones were in their quiet hours: Group's recipients in it
// wait for OpensAt. Next is where the second pass over them stands; Waiting
// counts those still to send. To is -1 while the group is still quiet (the
// range grows with the cursor).
type DeferredRange struct {
	Group   string    `json:"group"`
	From    int       `json:"from"`
	To      int       `json:"to"`
	Next    int       `json:"next"`
	Waiting int       `json:"waiting"`
	OpensAt time.Time `json:"opensAt"`
}

// Dispatch decides which messages to send now: first those in doubt (dispatched
// earlier, without an answer, and no longer possibly being sent), then due
// retries, then recipients whose quiet hours have ended, then new recipients
// from the cursor while there is room. A message whose send may still be
// running elsewhere is never chosen: it keeps its place among the outstanding
// until its answer or its deadline. Every returned message is sent with an
// attempt number newer than any earlier one, so late answers to older attempts
// are recognised as stale. Inside a throttle hold nothing is dispatched.
//
// On the way it skips the recipients req.Recipient says to skip (MessageSkipped),
// passes over those whose zones are in the batch's quiet hours (RecipientsDeferred,
// sent on a second pass once their window opens), and, once the batch's validity
// has run out, skips what is left instead of sending it.
func (b *Batch) Dispatch(now time.Time, req DispatchRequest) ([]Dispatch, error) {
	if b.status != StatusProcessing {
		return nil, ErrNotRunning
	}
	if b.lastSlice != req.PrevSlice && b.lastSlice != req.Slice {
		return nil, ErrSuperseded
	}
	if req.Recipient == nil {
		return b.dispatch(now, req)
	}
	// A lookup that fails part-way must leave the batch as it was: the skips
	// recorded before it move the cursor past recipients chosen in the same
	// scan, which would then never be sent.
	saved := b.Clone()
	out, err := b.dispatch(now, req)
	if err != nil {
		*b = *saved
		return nil, err
	}
	return out, nil
}

func (b *Batch) dispatch(now time.Time, req DispatchRequest) ([]Dispatch, error) {
	if b.expired(now) {
		return nil, b.expire(now, req)
	}
	if now.Before(b.throttle.Until) {
		return nil, nil
	}
	var out []Dispatch
	for _, o := range b.Outstanding() {
		if len(out) >= req.Max {
			break
		}
		dueRetry := !o.InFlight() && !o.RetryAt.After(now)
		if !o.InDoubt(now, req.Settled) && !dueRetry {
			continue
		}
		info, err := recipientInfo(req, o.Index)
		if err != nil {
			return nil, err
		}
		if info.Skip != "" {
			b.skip(now, o.Index, o.Attempt, info)
			continue
		}
		out = append(out, Dispatch{Index: o.Index, Attempt: o.Attempt + 1})
	}
	room := req.MaxInFlight - len(b.outstanding)
	plan, cursor := slices.Clone(b.deferred), b.cursor
	changed, scanned := false, 0
	// Recipients whose quiet hours have ended, in the order they were passed over.
	for i := range plan {
		r := &plan[i]
		if now.Before(r.OpensAt) {
			continue
		}
		if r.To < 0 {
			// The group may send again: later recipients of it go with the
			// cursor, the range ends here.
			r.To, changed = cursor, true
		}
		for r.Next < r.To && r.Waiting > 0 && len(out) < req.Max && room > 0 && scanned < scanLimit {
			index := r.Next
			info, err := recipientInfo(req, index)
			if err != nil {
				return nil, err
			}
			r.Next, scanned, changed = r.Next+1, scanned+1, true
			if b.quiet.ZoneGroup(info.Phone) != r.Group {
				continue // sent or skipped in the first pass
			}
			if quiet, opens := b.quiet.QuietAt(r.Group, now); quiet {
				r.Next, r.OpensAt = index, opens // quiet again already: wait anew
				break
			}
			r.Waiting--
			if info.Skip != "" {
				b.skipDeferred(now, index, info)
				continue
			}
			out = append(out, Dispatch{Index: index, Attempt: 1})
			room--
		}
	}
	// New recipients from the cursor.
	for cursor < b.total && len(out) < req.Max && room > 0 && scanned < scanLimit {
		index := cursor
		info, err := recipientInfo(req, index)
		if err != nil {
			return nil, err
		}
		cursor++
		if info.Skip != "" {
			scanned++
			b.skip(now, index, 0, info)
			continue
		}
		if b.quiet != nil {
			group := b.quiet.ZoneGroup(info.Phone)
			if quiet, opens := b.quiet.QuietAt(group, now); quiet {
				scanned++
				plan = deferTo(plan, group, index, opens)
				changed = true
				continue
			}
		}
		out = append(out, Dispatch{Index: index, Attempt: 1})
		room--
	}
	if changed || cursor > b.cursor {
		plan = slices.DeleteFunc(plan, func(r DeferredRange) bool { return r.Waiting == 0 && r.To >= 0 })
		if changed || !slices.Equal(plan, b.deferred) || cursor > b.cursor+len(out) {
			b.record(RecipientsDeferred{EventHeader: b.header(now), Cursor: cursor, Ranges: plan})
		}
	}
	if len(out) == 0 {
		b.completeIfDone(now)
		return nil, nil
	}
	b.record(MessagesDispatched{
		EventHeader: b.header(now), Slice: req.Slice, Instance: req.Instance,
		Deadline: req.Deadline, SendAt: req.SendAt, Messages: out,
	})
	return out, nil
}

// deferTo counts index among group's waiting recipients: in its open range, or
// a new one.
func deferTo(plan []DeferredRange, group string, index int, opens time.Time) []DeferredRange {
	for i := range plan {
		if plan[i].Group == group && plan[i].To < 0 {
			plan[i].Waiting++
			plan[i].OpensAt = latest(plan[i].OpensAt, opens)
			return plan
		}
	}
	return append(plan, DeferredRange{Group: group, From: index, To: -1, Next: index, Waiting: 1, OpensAt: opens})
}

func recipientInfo(req DispatchRequest, index int) (RecipientInfo, error) {
	if req.Recipient == nil {
		return RecipientInfo{}, nil
	}
	info, err := req.Recipient(index)
	if err != nil {
		return RecipientInfo{}, fmt.Errorf("recipient %d: %w", index, err)
	}
	return info, nil
}

// expired reports whether the batch's validity has run out at now.
func (b *Batch) expired(now time.Time) bool {
	return !b.validUntil.IsZero() && !now.Before(b.validUntil)
}

// expire skips, as expired, what is left to send: waiting retries and messages
// in doubt, recipients waiting for their quiet hours, and the recipients never
// dispatched, up to scanLimit at a time. Messages that may be in flight get
// their answers.
func (b *Batch) expire(now time.Time, req DispatchRequest) error {
	skipped := 0
	expired := func(phone string) RecipientInfo {
		return RecipientInfo{Phone: phone, Skip: CategoryExpired, Message: "not sent before the batch's validUntil"}
	}
	for _, o := range b.Outstanding() {
		if o.InFlight() && !o.InDoubt(now, req.Settled) {
			continue
		}
		info, err := recipientInfo(req, o.Index)
		if err != nil {
			return err
		}
		b.skip(now, o.Index, o.Attempt, expired(info.Phone))
		skipped++
	}
	plan := slices.Clone(b.deferred)
	changed := false
	for i := range plan {
		r := &plan[i]
		end := r.To
		if end < 0 {
			end = b.cursor
		}
		for r.Next < end && r.Waiting > 0 && skipped < scanLimit {
			index := r.Next
			info, err := recipientInfo(req, index)
			if err != nil {
				return err
			}
			r.Next, changed = r.Next+1, true
			if b.quiet.ZoneGroup(info.Phone) != r.Group {
				continue
			}
			r.Waiting--
			b.skipDeferred(now, index, expired(info.Phone))
			skipped++
		}
	}
	if changed {
		plan = slices.DeleteFunc(plan, func(r DeferredRange) bool { return r.Waiting == 0 })
		b.record(RecipientsDeferred{EventHeader: b.header(now), Cursor: b.cursor, Ranges: plan})
	}
	for b.cursor < b.total && skipped < scanLimit && !b.status.Final() {
		info, err := recipientInfo(req, b.cursor)
		if err != nil {
			return err
		}
		b.skip(now, b.cursor, 0, expired(info.Phone))
		skipped++
	}
	b.completeIfDone(now)
	return nil
}

// skip records a message skipped: never dispatched (attempt 0, at the cursor) or
// outstanding without a send that may be running.
func (b *Batch) skip(now time.Time, index, attempt int, info RecipientInfo) {
	b.record(MessageSkipped{
		EventHeader: b.header(now), Index: index, Attempt: attempt, Phone: info.Phone,
		Category: info.Skip, Message: info.Message,
	})
}

// skipDeferred records a recipient waiting for its quiet hours skipped; the
// deferred ranges are updated by the RecipientsDeferred recorded with it.
func (b *Batch) skipDeferred(now time.Time, index int, info RecipientInfo) {
	b.skip(now, index, 0, info)
}

// Hold says why a batch is not sending although nobody paused it: the provider
// is out (its circuit breaker is open). Zero when it is not held.
type Hold struct {
	Reason string
	Since  time.Time
}

// HoldReasonProviderOutage is the reason of a batch held because sends to the
// provider keep failing on its side.
const HoldReasonProviderOutage = "provider_outage"

// HoldFor records that the batch is held for reason; a batch held for that
// reason already records nothing.
func (b *Batch) HoldFor(now time.Time, reason string) {
	if b.status.Final() || b.hold.Reason == reason {
		return
	}
	b.record(BatchHeld{EventHeader: b.header(now), Reason: reason})
}

// Unhold records that the batch sends again after a hold.
func (b *Batch) Unhold(now time.Time) {
	if b.hold.Reason == "" {
		return
	}
	b.record(BatchUnheld{EventHeader: b.header(now)})
}

// CapRate records the rate the tenant's cap holds the batch to (0: it does not
// hold it back), unless that is what is recorded already, within a percent.
func (b *Batch) CapRate(now time.Time, rate float64) {
	if b.status != StatusProcessing {
		return
	}
	if rate == b.cappedRate || (rate > 0 && b.cappedRate > 0 && math.Abs(rate-b.cappedRate) < b.cappedRate/100) {
		return
	}
	b.record(BatchRateCapped{EventHeader: b.header(now), Rate: rate})
}

// Throttle is a hold the provider asked for (429 with Retry-After) and the rate
// the batch resumes at afterwards. It is recorded as an event so that whichever
// instance works the batch next keeps to it.
type Throttle struct {
	// Until is when sending may resume.
	Until time.Time
	// Rate is the messages a second the batch resumes at after Until; the pace
	// then climbs back towards the priority's rate. Zero: no reduction.
	Rate float64
}

// SlowDown records a throttle: nothing is dispatched before until, and the batch
// resumes at rate messages a second. A hold ending before the current one does
// not shorten it.
func (b *Batch) SlowDown(now, until time.Time, rate float64) error {
	if b.status.Final() {
		return ErrNotRunning
	}
	b.record(BatchThrottled{EventHeader: b.header(now), Until: latest(until, b.throttle.Until), Rate: rate})
	return nil
}

// SentParams describes a message the provider accepted.
type SentParams struct {
	Index, Attempt int
	ProviderID     string
	Segments       int
	Latency        time.Duration
}

// RecordSent records the final outcome "sent".
func (b *Batch) RecordSent(now time.Time, p SentParams) error {
	if err := b.checkInFlight(p.Index, p.Attempt); err != nil {
		return err
	}
	b.record(MessageSent{
		EventHeader: b.header(now), Index: p.Index, Attempt: p.Attempt,
		ProviderID: p.ProviderID, Segments: p.Segments, LatencyMs: p.Latency.Milliseconds(),
	})
	b.completeIfDone(now)
	return nil
}

// FailureParams describes a failed attempt.
type FailureParams struct {
	Index, Attempt int
	Phone          string
	Category       ErrorCategory
	Code, Message  string
	Latency        time.Duration
}

// RecordAttemptFailed records a recoverable failure to be retried at retryAt.
func (b *Batch) RecordAttemptFailed(now time.Time, p FailureParams, retryAt time.Time) error {
	if err := b.checkInFlight(p.Index, p.Attempt); err != nil {
		return err
	}
	if b.status.Final() {
		// A stopped batch retries nothing: the failure is the message's last.
		return b.RecordFailed(now, p)
	}
	b.record(MessageAttemptFailed{
		EventHeader: b.header(now), Index: p.Index, Attempt: p.Attempt,
		Category: p.Category, Code: p.Code, Message: p.Message,
		RetryAt: retryAt, LatencyMs: p.Latency.Milliseconds(),
	})
	return nil
}

// RecordFailed records the final outcome "failed".
func (b *Batch) RecordFailed(now time.Time, p FailureParams) error {
	if err := b.checkInFlight(p.Index, p.Attempt); err != nil {
		return err
	}
	b.record(MessageFailed{
		EventHeader: b.header(now), Index: p.Index, Attempt: p.Attempt, Phone: p.Phone,
		Category: p.Category, Code: p.Code, Message: p.Message, LatencyMs: p.Latency.Milliseconds(),
	})
	b.completeIfDone(now)
	return nil
}

// SkipParams describes a message that will not be sent.
type SkipParams struct {
	Index    int
	Phone    string
	Category ErrorCategory
	Message  string
}

// Skip records the final outcome "skipped" for the next recipient never
// dispatched (the cursor) or for an outstanding message whose send cannot be
// running (waiting for its retry, or in doubt at now). A message that may be in
// flight cannot be skipped: its answer decides.
func (b *Batch) Skip(now time.Time, p SkipParams, settled Settled) error {
	attempt := 0
	if o, ok := b.outstanding.get(p.Index); ok {
		if o.InFlight() && !o.InDoubt(now, settled) {
			return ErrStaleOutcome
		}
		attempt = o.Attempt
	} else if p.Index != b.cursor || b.cursor >= b.total {
		return ErrStaleOutcome
	}
	if b.status.Final() {
		return ErrNotRunning
	}
	b.skip(now, p.Index, attempt, RecipientInfo{Phone: p.Phone, Skip: p.Category, Message: p.Message})
	b.completeIfDone(now)
	return nil
}

func (b *Batch) checkInFlight(index, attempt int) error {
	o, ok := b.outstanding.get(index)
	if !ok || o.Attempt != attempt || !o.InFlight() {
		return ErrStaleOutcome
	}
	return nil
}

// completeIfDone completes a batch once its last outcome is in, paused or not:
// with nothing left to send there is nothing to resume.
func (b *Batch) completeIfDone(now time.Time) {
	if (b.status == StatusProcessing || b.status == StatusPaused) && b.Done() {
		b.record(BatchCompleted{EventHeader: b.header(now), Sent: b.sent, Failed: b.failed, Skipped: b.skipped})
	}
}

func (b *Batch) conflict(verb string) error {
	return Errorf(ECONFLICT, "batch %s is %s and cannot be %s", b.id, b.status, verb)
}

func (b *Batch) header(now time.Time) EventHeader {
	return EventHeader{BatchID: b.id, Tenant: b.tenant, At: now}
}

func (b *Batch) record(e Event) {
	b.apply(e)
	b.changes = append(b.changes, e)
}

// ChainToken is the PrevSlice of the first work message after a start or resume
// stored at revision rev: it ends every older chain of work messages.
func ChainToken(rev uint64) string { return chainTokenPrefix + strconv.FormatUint(rev, 10) }

// StartsChain reports whether prevSlice is a ChainToken: the work it came with
// begins a chain after a start or resume (or replaces a lost one), rather than
// following a slice's.
func StartsChain(prevSlice string) bool { return strings.HasPrefix(prevSlice, chainTokenPrefix) }

const chainTokenPrefix = "rev-"

// ChainRevision returns the revision of the start or resume whose ChainToken
// prevSlice is, and whether it is one.
func ChainRevision(prevSlice string) (uint64, bool) {
	if !StartsChain(prevSlice) {
		return 0, false
	}
	rev, err := strconv.ParseUint(strings.TrimPrefix(prevSlice, chainTokenPrefix), 10, 64)
	return rev, err == nil
}

func (b *Batch) apply(e Event) {
	rev := b.version
	b.version++
	b.lastEventAt = e.Header().At
	switch e := e.(type) {
	case BatchCreated:
		b.id, b.tenant = e.BatchID, e.Tenant
		b.status = StatusPending
		b.priority = e.Priority
		b.text, b.variables = e.Text, e.Variables
		b.total, b.pages = e.Total, e.Pages
		b.autoStart = e.AutoStart
		if e.ScheduleTime != nil {
			b.schedule = *e.ScheduleTime
		}
		b.createdAt = e.At
		if e.ValidUntil != nil {
			b.validUntil = *e.ValidUntil
		}
		b.quiet = e.QuietHours
		b.receiptIDs = e.ReceiptIDs
		b.outstanding = nil
	case BatchRescheduled:
		b.schedule = e.ScheduleTime
		b.autoStart = true
	case BatchStarted:
		b.status = StatusProcessing
		b.lastSlice = ChainToken(rev)
	case MessagesDispatched:
		for _, d := range e.Messages {
			before, _ := b.outstanding.get(d.Index)
			b.outstanding.put(Outstanding{
				Index: d.Index, Attempt: d.Attempt, Slice: e.Slice, Instance: e.Instance, Deadline: e.Deadline,
				Failures: before.Failures,
			})
			b.cursor = max(b.cursor, d.Index+1)
		}
		b.lastSlice = e.Slice
		b.lastDispatchAt = e.At
		b.lastSendAt = latest(e.SendAt, e.At)
	case BatchThrottled:
		b.throttle = Throttle{Until: e.Until, Rate: e.Rate}
	case MessageSent:
		b.outstanding.remove(e.Index)
		b.sent++
	case MessageAttemptFailed:
		o, _ := b.outstanding.get(e.Index)
		o.RetryAt = e.RetryAt
		if !e.Category.Outage() {
			o.Failures++
		}
		b.outstanding.put(o)
	case BatchRateCapped:
		b.cappedRate = e.Rate
	case BatchHeld:
		b.hold = Hold{Reason: e.Reason, Since: e.At}
	case BatchUnheld:
		b.hold = Hold{}
	case MessageFailed:
		b.outstanding.remove(e.Index)
		b.failed++
	case MessageSkipped:
		b.outstanding.remove(e.Index)
		b.cursor = max(b.cursor, e.Index+1)
		b.skipped++
	case RecipientsDeferred:
		b.cursor = max(b.cursor, e.Cursor)
		b.deferred = slices.Clone(e.Ranges)
	case BatchPaused:
		b.status = StatusPaused
		b.pausedAt = e.At
	case BatchResumed:
		b.status = StatusProcessing
		b.resumedAt = e.At
		b.lastSlice = ChainToken(rev)
	case BatchCompleted:
		b.status = StatusCompleted
		b.hold = Hold{}
	case BatchCancelled:
		b.status = StatusCancelled
	case BatchFailed:
		b.status = StatusFailed
	}
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil || t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
