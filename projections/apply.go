package projections

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
)

// The projection logic lives here as pure functions over plain data, so that every
// store shares it: the memory store keeps BatchState values in a map, a SQL store
// loads a batch's state row, applies events in Go and writes it back. Nothing here
// reads a clock: times come from the events, so a rebuild is identical.

// MaxThroughputPoints is the most points Analytics.Throughput holds.
const MaxThroughputPoints = 120

// projected lists the event types the read models use. Other types in a batch
// stream (a newer writer's) are skipped rather than failing the projection.
var projected = map[string]bool{
	domain.TypeBatchCreated:         true,
	domain.TypeBatchRescheduled:     true,
	domain.TypeBatchStarted:         true,
	domain.TypeMessagesDispatched:   true,
	domain.TypeMessageSent:          true,
	domain.TypeMessageAttemptFailed: true,
	domain.TypeMessageFailed:        true,
	domain.TypeMessageSkipped:       true,
	domain.TypeRecipientsDeferred:   true,
	domain.TypeMessageDelivered:     true,
	domain.TypeMessageUndelivered:   true,
	domain.TypeBatchPaused:          true,
	domain.TypeBatchResumed:         true,
	domain.TypeBatchCompleted:       true,
	domain.TypeBatchCancelled:       true,
	domain.TypeBatchFailed:          true,
	domain.TypeBatchHeld:            true,
	domain.TypeBatchUnheld:          true,
	domain.TypeBatchThrottled:       true,
	domain.TypeBatchRateCapped:      true,
}

// Decode returns the batch a stored event belongs to and its payload. ok is false
// for events the read models do not use: streams other than batch streams
// (recipient pages among them) and event types they do not know. A payload of a
// known type that does not decode is an error: skipping it would silently make
// the read models wrong.
func Decode(e eventstore.Event) (batchID string, payload domain.Event, ok bool, err error) {
	batchID, isBatch := strings.CutPrefix(e.Stream, domain.BatchStreamPrefix)
	if !isBatch || batchID == "" || !projected[e.Type] {
		return "", nil, false, nil
	}
	payload, err = domain.DecodeEvent(e.Type, e.Data)
	if err != nil {
		return "", nil, false, err
	}
	return batchID, payload, true, nil
}

// BatchOf is the batch of an event Decode would decode, or "".
func BatchOf(e eventstore.Event) string {
	batchID, isBatch := strings.CutPrefix(e.Stream, domain.BatchStreamPrefix)
	if !isBatch || !projected[e.Type] {
		return ""
	}
	return batchID
}

// MayBeError reports whether an event of type typ may have an ErrorEntryOf.
func MayBeError(typ string) bool {
	return typ == domain.TypeMessageFailed || typ == domain.TypeMessageSkipped
}

// decodeRecipients decodes a recipients page; ok is false for any other event.
func decodeRecipients(e eventstore.Event) (batchID string, payload domain.Event, ok bool, err error) {
	batchID, isPage := strings.CutPrefix(e.Stream, domain.RecipientsStreamPrefix)
	if !isPage || batchID == "" || e.Type != domain.TypeRecipientsPageAdded {
		return "", nil, false, nil
	}
	// Only the numbers are kept: decoding the variables' values too would
	// cost the runner most of its time at a large create.
	var page struct {
		domain.EventHeader
		Page       int `json:"page"`
		First      int `json:"first"`
		Recipients []struct {
			Phone string `json:"p"`
		} `json:"recipients"`
	}
	if err := json.Unmarshal(e.Data, &page); err != nil {
		return "", nil, false, fmt.Errorf("decode %s: %w", e.Type, err)
	}
	p := domain.RecipientsPageAdded{EventHeader: page.EventHeader, Page: page.Page, First: page.First,
		Recipients: make([]domain.Recipient, len(page.Recipients))}
	for i, r := range page.Recipients {
		p.Recipients[i].Phone = r.Phone
	}
	return batchID, p, true, nil
}

// Decoded is a stored event the read models use, with its batch and payload
// (see Decode).
type Decoded struct {
	Event   eventstore.Event
	BatchID string
	Payload domain.Event
}

// DecodePage decodes the events of a page that the read models use and skips
// the others: those Decode takes, and the recipient pages (RecipientsPageAdded,
// whose BatchID is the batch they belong to, decoded with their numbers only,
// without the variables' values), which the recipients read model keeps. Stores decode a whole page before they change anything,
// so that a page holding a malformed event leaves the read models and their
// checkpoint as they were.
func DecodePage(events []eventstore.Event) ([]Decoded, error) {
	use := make([]Decoded, 0, len(events))
	for _, e := range events {
		id, payload, ok, err := Decode(e)
		if !ok && err == nil {
			id, payload, ok, err = decodeRecipients(e)
		}
		if err != nil {
			return nil, fmt.Errorf("event %s at %s: %w", e.ID, e.Position, err)
		}
		if ok {
			use = append(use, Decoded{Event: e, BatchID: id, Payload: payload})
		}
	}
	return use, nil
}

// CachedStates bounds how many batches' decoded states a store keeps between
// applies: a few thousand batches sending at once.
const CachedStates = 4096

// BatchState is everything the status and analytics read models of one batch are
// derived from. It is plain data with JSON tags, so a store may persist it as it
// is; the read models are views of it (StatusView, AnalyticsView). Failed
// recipients are not part of it (there may be millions): ErrorEntryOf gives the
// entry a MessageFailed adds to the batch's errors.
type BatchState struct {
	ID     string `json:"id"`
	Tenant string `json:"tenant"`
	// Position is the last event applied; Apply skips events at or before it, so
	// a state is safe to replay onto.
	Position eventstore.Position `json:"position"`

	Name      string   `json:"name,omitempty"`
	Text      string   `json:"text,omitempty"`
	Variables []string `json:"variables,omitempty"`
	// RetryOf and RetriedBy link a batch and the batches retrying its failures.
	RetryOf   string   `json:"retryOf,omitempty"`
	RetriedBy []string `json:"retriedBy,omitempty"`

	Status       domain.Status `json:"status"`
	Priority     string        `json:"priority"`
	CreatedAt    time.Time     `json:"createdAt"`
	ScheduleTime *time.Time    `json:"scheduleTime,omitempty"`
	AutoStart    bool          `json:"autoStart"`
	// ValidUntil and QuietHours are the batch's sending options, when set.
	ValidUntil *time.Time         `json:"validUntil,omitempty"`
	QuietHours *domain.QuietHours `json:"quietHours,omitempty"`
	UpdatedAt  time.Time          `json:"updatedAt"`
	// Revision is the revision of the last event applied in the batch's
	// stream: unlike UpdatedAt (each event's deciding instance's clock) it
	// only grows.
	Revision uint64 `json:"revision,omitempty"`
	Total    int    `json:"total"`
	// PausedAt is the last pause, ResumedAt the resume that followed it (zero
	// while still paused).
	PausedAt  time.Time `json:"pausedAt,omitzero"`
	ResumedAt time.Time `json:"resumedAt,omitzero"`
	// Hold is why the batch is not sending although nobody paused it (the
	// provider is out); nil while it is not held.
	Hold *Hold `json:"hold,omitempty"`
	// CappedRate is the rate the tenant's rate cap holds the batch to; 0 when
	// it does not hold it back.
	CappedRate float64 `json:"cappedRate,omitempty"`
	// ThrottledUntil is the end of the last hold the provider asked for (429).
	ThrottledUntil time.Time `json:"throttledUntil,omitzero"`

	// Outstanding holds the indexes dispatched without a final outcome, sorted. The
	// aggregate bounds them by its in-flight limit, so the slice stays short.
	Outstanding []int `json:"outstanding,omitempty"`
	// PendingRecords are the outcome records of recipients dispatched without a
	// final outcome, by index (see FoldOutcomes): a store writes a recipient's
	// record once, with its final outcome, instead of once more at each
	// dispatch. Only the outstanding recipients of a batch are here.
	PendingRecords []RecipientOutcome `json:"pendingRecords,omitempty"`
	// Cursor is the first recipient never dispatched nor skipped: dispatch goes
	// in index order, so it and every recipient after it are unsent.
	Cursor int `json:"cursor,omitempty"`

	Sent   int `json:"sent"`
	Failed int `json:"failed"`
	// Skipped counts recipients never sent for a reason that is not a failure
	// (opted out, expired); Delivered and Undelivered count delivery receipts.
	Skipped     int `json:"skipped,omitempty"`
	Delivered   int `json:"delivered,omitempty"`
	Undelivered int `json:"undelivered,omitempty"`
	// Waiting counts recipients waiting for their quiet hours to end, and
	// WaitingFrom is the lowest index one of them may have: the cursor has
	// passed them, so unsent recipients lie below it from there on (0 in a
	// state kept before it existed: from the first).
	Waiting     int `json:"waiting,omitempty"`
	WaitingFrom int `json:"waitingFrom,omitempty"`
	Retries     int `json:"retries"`
	Segments    int `json:"segments"`
	// ErrorCategories counts final failures, RetriedCategories retried attempts.
	ErrorCategories   map[string]int `json:"errorCategories,omitempty"`
	RetriedCategories map[string]int `json:"retriedCategories,omitempty"`

	Throughput Throughput       `json:"throughput"`
	Latency    LatencyHistogram `json:"latency"`
	Active     ActiveTime       `json:"active"`
	// DeliveryLatency counts the times from a message's send to its delivery
	// receipt.
	DeliveryLatency LatencyHistogram `json:"deliveryLatency,omitzero"`
}

// ActiveTime measures how long a batch has been sending: the time spent
// processing, from a start or resume to a pause or the end. While still
// processing, the open period counts up to the last outcome, not to now, so the
// figure is a function of the events alone.
type ActiveTime struct {
	// Closed is the total of the finished processing periods.
	Closed time.Duration `json:"closed"`
	// Since is when the open processing period began; zero when not processing.
	Since time.Time `json:"since,omitzero"`
	// LastOutcome is the time of the latest final outcome.
	LastOutcome time.Time `json:"lastOutcome,omitzero"`
	// Intervals and Span measure the rate sent at: over the finished
	// processing periods, the outcomes after each period's first and the
	// time from its first outcome to its last; First and Count are the open
	// period's first outcome and how many it has had.
	Intervals int           `json:"intervals,omitempty"`
	Span      time.Duration `json:"span,omitempty"`
	First     time.Time     `json:"first,omitzero"`
	Count     int           `json:"count,omitempty"`
}

// Rate is the rate the batch sent at, in outcomes a second: N outcomes of a
// period from its first to its last are N-1 intervals (the time before a
// period's first outcome is its start-up, not sending). Zero until some
// period had two outcomes.
func (a ActiveTime) Rate() float64 {
	intervals, span := a.Intervals, a.Span
	if a.Count > 1 && a.LastOutcome.After(a.First) {
		intervals += a.Count - 1
		span += a.LastOutcome.Sub(a.First)
	}
	if intervals == 0 || span <= 0 {
		return 0
	}
	return float64(intervals) / span.Seconds()
}

// outcome counts a final outcome at at in the open processing period.
func (a *ActiveTime) outcome(at time.Time) {
	if at.After(a.LastOutcome) {
		a.LastOutcome = at
	}
	if a.Since.IsZero() {
		return // answered while paused: no sending period
	}
	if a.Count == 0 || at.Before(a.First) {
		a.First = at
	}
	a.Count++
}

// Total returns the active time so far.
func (a ActiveTime) Total() time.Duration {
	d := a.Closed
	if !a.Since.IsZero() && a.LastOutcome.After(a.Since) {
		d += a.LastOutcome.Sub(a.Since)
	}
	return d
}

func (a *ActiveTime) open(at time.Time) {
	if a.Since.IsZero() {
		a.Since = at
	}
}

func (a *ActiveTime) close(at time.Time) {
	if a.Since.IsZero() {
		return
	}
	if at.After(a.Since) {
		a.Closed += at.Sub(a.Since)
	}
	if a.Count > 1 && a.LastOutcome.After(a.First) {
		a.Intervals += a.Count - 1
		a.Span += a.LastOutcome.Sub(a.First)
	}
	a.Since, a.First, a.Count = time.Time{}, time.Time{}, 0
}

// Apply folds one event of the batch's stream into the state; payload is the
// event decoded (see Decode). Events at or before s.Position are skipped, as is
// anything before the batch's BatchCreated and any second BatchCreated.
func (s *BatchState) Apply(e eventstore.Event, payload domain.Event) {
	if s.ID != "" && !s.Position.Less(e.Position) {
		return
	}
	if _, created := payload.(domain.BatchCreated); created != (s.ID == "") {
		return // nothing comes before the creation, and a batch is created once
	}
	s.Position = e.Position
	at := payload.Header().At.UTC()
	s.UpdatedAt = at
	s.Revision = e.Revision

	switch p := payload.(type) {
	case domain.BatchCreated:
		s.ID, _ = strings.CutPrefix(e.Stream, domain.BatchStreamPrefix)
		s.Tenant = p.Tenant
		s.Name, s.Text, s.Variables, s.RetryOf = p.Name, p.Text, slices.Clone(p.Variables), p.RetryOf
		s.Status = domain.StatusPending
		s.Priority = string(p.Priority)
		s.CreatedAt = at
		if p.ScheduleTime != nil {
			t := p.ScheduleTime.UTC()
			s.ScheduleTime = &t
		}
		s.AutoStart = p.AutoStart
		s.ValidUntil, s.QuietHours = p.ValidUntil, p.QuietHours
		s.Total = p.Total
	case domain.BatchRescheduled:
		t := p.ScheduleTime.UTC()
		s.ScheduleTime, s.AutoStart = &t, true
	case domain.BatchStarted:
		s.Status = domain.StatusProcessing
		s.Active.open(at)
	case domain.MessagesDispatched:
		for _, d := range p.Messages {
			s.Outstanding = insertIndex(s.Outstanding, d.Index)
			s.Cursor = max(s.Cursor, d.Index+1)
		}
	case domain.MessageSent:
		s.Outstanding = removeIndex(s.Outstanding, p.Index)
		s.Sent++
		s.Segments += p.Segments
		s.outcome(at, p.LatencyMs, true)
	case domain.MessageFailed:
		s.Outstanding = removeIndex(s.Outstanding, p.Index)
		s.Failed++
		s.ErrorCategories = increment(s.ErrorCategories, string(p.Category))
		s.outcome(at, p.LatencyMs, false)
	case domain.MessageSkipped:
		s.Outstanding = removeIndex(s.Outstanding, p.Index)
		s.Cursor = max(s.Cursor, p.Index+1)
		s.Skipped++
		s.ErrorCategories = increment(s.ErrorCategories, string(p.Category))
	case domain.RecipientsDeferred:
		s.Waiting, s.WaitingFrom = 0, 0
		for _, r := range p.Ranges {
			if r.Waiting > 0 && (s.Waiting == 0 || r.From < s.WaitingFrom) {
				s.WaitingFrom = r.From
			}
			s.Waiting += r.Waiting
		}
	case domain.MessageDelivered:
		s.Delivered++
		if !p.SentAt.IsZero() {
			s.DeliveryLatency.Add(p.At.Sub(p.SentAt).Milliseconds())
		}
	case domain.MessageUndelivered:
		s.Undelivered++
	case domain.MessageAttemptFailed:
		// The index stays outstanding: it waits for its retry.
		s.Retries++
		s.RetriedCategories = increment(s.RetriedCategories, string(p.Category))
	case domain.BatchPaused:
		s.Status = domain.StatusPaused
		s.PausedAt, s.ResumedAt = at, time.Time{}
		s.Active.close(at)
	case domain.BatchResumed:
		s.Status = domain.StatusProcessing
		s.ResumedAt = at
		s.Active.open(at)
	case domain.BatchHeld:
		s.Hold = &Hold{Reason: p.Reason, Since: at}
	case domain.BatchUnheld:
		s.Hold = nil
	case domain.BatchThrottled:
		s.ThrottledUntil = p.Until.UTC()
	case domain.BatchRateCapped:
		s.CappedRate = p.Rate
	case domain.BatchCompleted:
		s.Status = domain.StatusCompleted
		s.Hold = nil
		s.Waiting = 0
		s.Active.close(at)
	case domain.BatchCancelled:
		s.Status = domain.StatusCancelled
		s.Active.close(at)
	case domain.BatchFailed:
		s.Status = domain.StatusFailed
		s.Active.close(at)
	}
}

// RetryLink returns the batch a BatchCreated retries the failures of; ok is
// false for every other event. Stores apply it to that batch with AddRetry.
func RetryLink(payload domain.Event) (original string, ok bool) {
	c, created := payload.(domain.BatchCreated)
	return c.RetryOf, created && c.RetryOf != ""
}

// AddRetry records that the batch created by e (see RetryLink) retries this
// batch's failures. Like Apply, it skips events at or before s.Position, and
// a batch of another tenant.
func (s *BatchState) AddRetry(e eventstore.Event, payload domain.Event) {
	if s.ID == "" || !s.Position.Less(e.Position) || payload.Header().Tenant != s.Tenant {
		return
	}
	s.Position = e.Position
	s.RetriedBy = append(s.RetriedBy, payload.Header().BatchID)
}

func (s *BatchState) outcome(at time.Time, latencyMs int64, sent bool) {
	s.Active.outcome(at)
	s.Throughput.Add(at, sent)
	s.Latency.Add(latencyMs)
}

// Unfinished reports whether the send processor still has work for the batch:
// it is not final, or, stopped, it still has messages in flight, which end
// once no send of them can still be running (their instance may have died
// with them). The forwarder starts from these batches.
func (s *BatchState) Unfinished() bool { return !s.Status.Final() || len(s.Outstanding) > 0 }

// StatusView returns the status read model.
func (s *BatchState) StatusView() BatchStatus {
	st := BatchStatus{
		ID:         s.ID,
		Tenant:     s.Tenant,
		Name:       s.Name,
		Text:       s.Text,
		RetryOf:    s.RetryOf,
		Retries:    slices.Clone(s.RetriedBy),
		Status:     string(s.Status),
		Priority:   s.Priority,
		CreatedAt:  s.CreatedAt,
		AutoStart:  s.AutoStart,
		ValidUntil: s.ValidUntil,
		QuietHours: s.QuietHours,
		Progress: Progress{
			Total:       s.Total,
			Pending:     len(s.Outstanding),
			Completed:   s.Sent,
			Failed:      s.Failed,
			Skipped:     s.Skipped,
			Delivered:   s.Delivered,
			Undelivered: s.Undelivered,
		},
		UpdatedAt: s.UpdatedAt,
		Revision:  s.Revision,
	}
	if !s.Status.Final() {
		// A stopped batch's recipients wait for nothing: they stay unsent.
		st.Progress.Waiting = s.Waiting
	}
	if s.ScheduleTime != nil {
		t := *s.ScheduleTime
		st.ScheduleTime = &t
	}
	if s.Hold != nil && s.Status == domain.StatusProcessing {
		h := *s.Hold
		st.Hold = &h
	}
	if s.CappedRate > 0 && s.Status == domain.StatusProcessing {
		st.RateCap = &RateCap{Rate: s.CappedRate}
	}
	if outcomes := s.Sent + s.Failed; outcomes > 0 {
		st.Metrics.SuccessRate = float64(s.Sent) / float64(outcomes)
		st.Metrics.MessagesPerSecond = s.Active.Rate()
		if active := s.Active.Total(); st.Metrics.MessagesPerSecond == 0 && active > 0 {
			// One outcome a period so far (or a state from before the
			// intervals were kept): over the time active.
			st.Metrics.MessagesPerSecond = float64(outcomes) / active.Seconds()
		}
	}
	if !s.PausedAt.IsZero() {
		st.PauseInfo = &PauseInfo{PauseTime: s.PausedAt}
		if !s.ResumedAt.IsZero() {
			t := s.ResumedAt
			st.PauseInfo.ResumeTime = &t
		}
	}
	return st
}

// AnalyticsView returns the analytics read model.
func (s *BatchState) AnalyticsView() Analytics {
	a := Analytics{
		BatchID: s.ID,
		Totals: Totals{Sent: s.Sent, Failed: s.Failed, Retries: s.Retries, Segments: s.Segments,
			Delivered: s.Delivered, Undelivered: s.Undelivered},
		ErrorCategories:   cloneCounts(s.ErrorCategories),
		RetriedCategories: cloneCounts(s.RetriedCategories),
		Throughput:        s.Throughput.Points(MaxThroughputPoints),
		LatencyMs:         s.Latency.Percentiles(),
		DeliveryLatencyMs: s.DeliveryLatency.Percentiles(),
	}
	// A receipt may come for a message that did not end sent (an attempt
	// that timed out went out after all, then the recipient failed or the
	// batch was cancelled): such messages reached the provider too, and
	// count among those the rate is of, which keeps it at most 1.
	if reached := max(s.Sent, s.Delivered+s.Undelivered); reached > 0 {
		a.DeliveryRate = float64(s.Delivered) / float64(reached)
	}
	return a
}

// ErrorEntryOf returns the error entry a final failure adds to its batch's errors;
// ok is false for every other event.
func ErrorEntryOf(payload domain.Event) (entry ErrorEntry, ok bool) {
	if sk, ok := payload.(domain.MessageSkipped); ok {
		return ErrorEntry{
			Index: sk.Index, PhoneNumber: sk.Phone, Category: string(sk.Category), Code: string(sk.Category),
			Message: sk.Message, Attempts: sk.Attempt, Time: sk.At.UTC(),
		}, true
	}
	f, ok := payload.(domain.MessageFailed)
	if !ok {
		return ErrorEntry{}, false
	}
	return ErrorEntry{
		Index:       f.Index,
		PhoneNumber: f.Phone,
		Category:    string(f.Category),
		Code:        f.Code,
		Message:     f.Message,
		Attempts:    f.Attempt,
		Time:        f.At.UTC(),
	}, true
}

func insertIndex(set []int, i int) []int {
	at, found := slices.BinarySearch(set, i)
	if found {
		return set
	}
	return slices.Insert(set, at, i)
}

func removeIndex(set []int, i int) []int {
	at, found := slices.BinarySearch(set, i)
	if !found {
		return set
	}
	return slices.Delete(set, at, at+1)
}

func increment(m map[string]int, key string) map[string]int {
	if m == nil {
		m = make(map[string]int)
	}
	m[key]++
	return m
}

// cloneCounts returns a copy of m, empty rather than nil so that JSON shows {}.
func cloneCounts(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	maps.Copy(out, m)
	return out
}

// maxThroughputBuckets bounds the buckets a Throughput keeps. Past it, buckets are
// merged in pairs (Width doubles), so a batch sending for days keeps a state of a
// few kilobytes while the query still has several buckets per point to merge.
const maxThroughputBuckets = 4 * MaxThroughputPoints

// Throughput counts final outcomes in time buckets of Width seconds aligned to the
// Unix epoch. Width starts at one second and doubles whenever the buckets would
// span more than a few hundred widths.
type Throughput struct {
	// Width is the bucket width in seconds, a power of two; 0 means 1.
	Width int64 `json:"width,omitempty"`
	// Buckets are the non-empty buckets, sorted by Start.
	Buckets []ThroughputBucket `json:"buckets,omitempty"`
}

// ThroughputBucket counts the outcomes in [Start, Start+Width) Unix seconds.
type ThroughputBucket struct {
	Start  int64 `json:"t"`
	Sent   int   `json:"s,omitempty"`
	Failed int   `json:"f,omitempty"`
}

func (t *Throughput) width() int64 { return max(t.Width, 1) }

// Add counts one outcome at time at.
func (t *Throughput) Add(at time.Time, sent bool) {
	w := t.width()
	start := floorDiv(at.Unix(), w) * w
	i, found := slices.BinarySearchFunc(t.Buckets, start, func(b ThroughputBucket, s int64) int {
		return cmp.Compare(b.Start, s)
	})
	if !found {
		t.Buckets = slices.Insert(t.Buckets, i, ThroughputBucket{Start: start})
	}
	if sent {
		t.Buckets[i].Sent++
	} else {
		t.Buckets[i].Failed++
	}
	for t.span(t.width()) > maxThroughputBuckets {
		t.coarsen()
	}
}

// span is how many buckets of width w the outcomes cover, empty ones included.
func (t *Throughput) span(w int64) int64 {
	if len(t.Buckets) == 0 {
		return 0
	}
	return floorDiv(t.Buckets[len(t.Buckets)-1].Start, w) - floorDiv(t.Buckets[0].Start, w) + 1
}

// coarsen doubles the width, merging buckets in pairs.
func (t *Throughput) coarsen() {
	w := t.width() * 2
	merged := make([]ThroughputBucket, 0, len(t.Buckets)/2+1)
	for _, b := range t.Buckets {
		start := floorDiv(b.Start, w) * w
		if n := len(merged); n > 0 && merged[n-1].Start == start {
			merged[n-1].Sent += b.Sent
			merged[n-1].Failed += b.Failed
			continue
		}
		merged = append(merged, ThroughputBucket{Start: start, Sent: b.Sent, Failed: b.Failed})
	}
	t.Width, t.Buckets = w, merged
}

// Points returns at most maxPoints evenly wide points from the first outcome's
// bucket to the last, empty ones included so that a chart shows pauses as zero.
// A point's width is the smallest whole multiple of the bucket width that fits.
func (t *Throughput) Points(maxPoints int) []ThroughputPoint {
	if len(t.Buckets) == 0 || maxPoints <= 0 {
		return []ThroughputPoint{}
	}
	w := t.width()
	k := max(1, (t.span(w)+int64(maxPoints)-1)/int64(maxPoints))
	for t.span(w*k) > int64(maxPoints) {
		k++ // epoch alignment can cost one point more than the even split
	}
	width := w * k
	base := floorDiv(t.Buckets[0].Start, width)
	points := make([]ThroughputPoint, t.span(width))
	for i := range points {
		points[i].Time = time.Unix((base+int64(i))*width, 0).UTC()
	}
	for _, b := range t.Buckets {
		p := &points[floorDiv(b.Start, width)-base]
		p.Sent += b.Sent
		p.Failed += b.Failed
	}
	return points
}

// latencyBuckets is the number of buckets of a LatencyHistogram: bucket 0 holds
// answers under 1ms, bucket i >= 1 those in [1.1^(i-1), 1.1^i) ms, and the last
// one everything from about 124s up.
const latencyBuckets = 125

// latencyLower[i] is the lower bound of bucket i in milliseconds.
var latencyLower = func() [latencyBuckets]float64 {
	var b [latencyBuckets]float64
	for i := 1; i < latencyBuckets; i++ {
		b[i] = math.Pow(1.1, float64(i-1))
	}
	return b
}()

// LatencyHistogram counts provider answer times in fixed log-spaced buckets about
// 10% wide, from which percentiles are estimated within that error.
type LatencyHistogram struct {
	// Counts[i] is the number of answers in bucket i; the slice is only as long as
	// the highest bucket used.
	Counts []int `json:"counts,omitempty"`
	// Min and Max are the fastest and slowest answers, in ms; estimates are
	// clamped to them.
	Min int64 `json:"min"`
	Max int64 `json:"max"`
}

// Add counts one answer of ms milliseconds.
func (h *LatencyHistogram) Add(ms int64) {
	ms = max(ms, 0)
	if len(h.Counts) == 0 {
		h.Min, h.Max = ms, ms
	} else {
		h.Min, h.Max = min(h.Min, ms), max(h.Max, ms)
	}
	i := sort.Search(latencyBuckets, func(i int) bool { return latencyLower[i] > float64(ms) }) - 1
	if i >= len(h.Counts) {
		h.Counts = append(h.Counts, make([]int, i+1-len(h.Counts))...)
	}
	h.Counts[i]++
}

func (h *LatencyHistogram) count() int {
	n := 0
	for _, c := range h.Counts {
		n += c
	}
	return n
}

// Percentiles estimates p50, p95 and p99; all zero before any answer.
func (h *LatencyHistogram) Percentiles() Latency {
	n := h.count()
	if n == 0 {
		return Latency{}
	}
	return Latency{P50: h.quantile(0.50, n), P95: h.quantile(0.95, n), P99: h.quantile(0.99, n)}
}

// quantile finds the bucket holding the answer of rank ceil(q*n) and places it
// within the bucket as if the bucket's answers were spread evenly over it.
func (h *LatencyHistogram) quantile(q float64, n int) float64 {
	rank := max(1, int(math.Ceil(q*float64(n))))
	lowest, highest := float64(h.Min), float64(h.Max)
	seen := 0
	for i, c := range h.Counts {
		if c == 0 || seen+c < rank {
			seen += c
			continue
		}
		lo, hi := latencyLower[i], highest+1
		if i+1 < latencyBuckets {
			hi = latencyLower[i+1]
		}
		lo, hi = max(lo, lowest), min(hi, highest)
		v := lo + (hi-lo)*(float64(rank-seen)-0.5)/float64(c)
		return math.Round(min(max(v, lowest), highest)*10) / 10
	}
	return highest
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}
