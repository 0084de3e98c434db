// Package projectionstest holds the contract suite every projections.Store must
// pass (Run), and the builders its tests and the projection tests use to write
// batch histories as stored events (Events, Batch).
package projectionstest

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
)

// Events builds a history as an event store would hand it to a projection: each
// event encoded, in its stream at the next revision, at the next global position
// (Commit 1, 2, ...), stamped with its own time.
type Events struct {
	list      []eventstore.Event
	revisions map[string]uint64
}

// NewEvents returns an empty history.
func NewEvents() *Events { return &Events{revisions: make(map[string]uint64)} }

// Append encodes e into its batch's stream and returns the stored event.
func (h *Events) Append(e domain.Event) eventstore.Event {
	typ, data, err := domain.EncodeEvent(e)
	if err != nil {
		panic(fmt.Sprintf("projectionstest: %v", err)) // the domain's events always encode
	}
	return h.AppendRaw(domain.BatchStream(e.Header().BatchID), typ, data, e.Header().At)
}

// AppendRaw appends any event: one in another stream, of an unknown type, or
// with a payload that does not decode.
func (h *Events) AppendRaw(stream, eventType string, data []byte, at time.Time) eventstore.Event {
	rev := h.revisions[stream]
	h.revisions[stream] = rev + 1
	pos := uint64(len(h.list) + 1)
	e := eventstore.Event{
		ID:       fmt.Sprintf("event-%d", pos),
		Stream:   stream,
		Type:     eventType,
		Data:     data,
		Revision: rev,
		Position: eventstore.Position{Commit: pos},
		Time:     at.UTC(),
	}
	h.list = append(h.list, e)
	return e
}

// List returns the history so far.
func (h *Events) List() []eventstore.Event { return slices.Clone(h.list) }

// Len is the number of events so far.
func (h *Events) Len() int { return len(h.list) }

// Last returns the position of the last event; Start when there is none.
func (h *Events) Last() eventstore.Position {
	if len(h.list) == 0 {
		return eventstore.Start
	}
	return h.list[len(h.list)-1].Position
}

// Batch writes one batch's events into a history with a clock of its own: every
// event is stamped with Now, which only Advance moves.
type Batch struct {
	ID, Tenant string
	Now        time.Time
	h          *Events
}

// Batch returns a writer of batch id's events, its clock at now.
func (h *Events) Batch(tenant, id string, now time.Time) *Batch {
	return &Batch{ID: id, Tenant: tenant, Now: now.UTC(), h: h}
}

// Advance moves the batch's clock forward by d.
func (b *Batch) Advance(d time.Duration) *Batch {
	b.Now = b.Now.Add(d)
	return b
}

func (b *Batch) header() domain.EventHeader {
	return domain.EventHeader{BatchID: b.ID, Tenant: b.Tenant, At: b.Now}
}

// Created appends a BatchCreated of total recipients at normal priority.
func (b *Batch) Created(total int) eventstore.Event {
	return b.CreatedWith(domain.BatchCreated{Priority: domain.PriorityNormal, Total: total})
}

// CreatedWith appends c with the batch's header, filling Text, Priority and
// Pages when they are empty.
func (b *Batch) CreatedWith(c domain.BatchCreated) eventstore.Event {
	c.EventHeader = b.header()
	if c.Text == "" {
		c.Text = "Hello {{name}}"
		c.Variables = []string{"name"}
	}
	if c.Priority == "" {
		c.Priority = domain.PriorityNormal
	}
	if c.Pages == 0 {
		c.Pages = (c.Total + domain.RecipientPageSize - 1) / domain.RecipientPageSize
	}
	return b.h.Append(c)
}

// Pages appends the recipients pages of a batch of total recipients to its
// recipients stream, as a create does before BatchCreated: recipient i's
// number is Number(i).
func (b *Batch) Pages(total int) {
	for first, page := 0, 0; first < total; first, page = first+domain.RecipientPageSize, page+1 {
		p := domain.RecipientsPageAdded{EventHeader: b.header(), Page: page, First: first}
		for i := first; i < min(total, first+domain.RecipientPageSize); i++ {
			p.Recipients = append(p.Recipients, domain.Recipient{Phone: Number(i), Values: []string{fmt.Sprint("name ", i)}})
		}
		typ, data, err := domain.EncodeEvent(p)
		if err != nil {
			panic(fmt.Sprintf("projectionstest: %v", err))
		}
		b.h.AppendRaw(domain.RecipientsStream(b.ID), typ, data, b.Now)
	}
}

// Number is the number Pages gives recipient i: +1415 and seven digits, so
// that recipients 0-9 share the prefix +141520000.
func Number(i int) string { return fmt.Sprintf("+14152%06d", i) }

// Rescheduled appends a BatchRescheduled to at.
func (b *Batch) Rescheduled(at time.Time) eventstore.Event {
	return b.h.Append(domain.BatchRescheduled{EventHeader: b.header(), ScheduleTime: at, By: "test"})
}

// Skipped appends a MessageSkipped of a recipient never dispatched.
func (b *Batch) Skipped(index int, category domain.ErrorCategory) eventstore.Event {
	return b.h.Append(domain.MessageSkipped{
		EventHeader: b.header(), Index: index, Phone: Number(index), Category: category, Message: "skipped: " + string(category),
	})
}

// Started appends a BatchStarted.
func (b *Batch) Started() eventstore.Event {
	return b.h.Append(domain.BatchStarted{EventHeader: b.header(), By: "test"})
}

// Dispatched appends a MessagesDispatched naming the indexes at attempt 1.
func (b *Batch) Dispatched(indexes ...int) eventstore.Event {
	msgs := make([]domain.Dispatch, len(indexes))
	for i, index := range indexes {
		msgs[i] = domain.Dispatch{Index: index, Attempt: 1}
	}
	return b.DispatchedAt(msgs...)
}

// DispatchedAt appends a MessagesDispatched naming the messages as given.
func (b *Batch) DispatchedAt(msgs ...domain.Dispatch) eventstore.Event {
	return b.h.Append(domain.MessagesDispatched{EventHeader: b.header(), Slice: "slice-test", Messages: msgs})
}

// Sent appends a MessageSent of one segment.
func (b *Batch) Sent(index, attempt int, latency time.Duration) eventstore.Event {
	return b.h.Append(domain.MessageSent{
		EventHeader: b.header(), Index: index, Attempt: attempt,
		ProviderID: fmt.Sprintf("SM%d-%d", index, attempt), Segments: 1, LatencyMs: latency.Milliseconds(),
	})
}

// SentSegments appends a MessageSent of a message of several segments.
func (b *Batch) SentSegments(index, attempt, segments int, latency time.Duration) eventstore.Event {
	return b.h.Append(domain.MessageSent{
		EventHeader: b.header(), Index: index, Attempt: attempt,
		ProviderID: fmt.Sprintf("SM%d-%d", index, attempt), Segments: segments, LatencyMs: latency.Milliseconds(),
	})
}

// AttemptFailed appends a MessageAttemptFailed to be retried a second later.
func (b *Batch) AttemptFailed(index, attempt int, category domain.ErrorCategory) eventstore.Event {
	return b.h.Append(domain.MessageAttemptFailed{
		EventHeader: b.header(), Index: index, Attempt: attempt, Category: category,
		Code: "E-" + string(category), Message: "attempt failed: " + string(category),
		RetryAt: b.Now.Add(time.Second), LatencyMs: 100,
	})
}

// Failed appends a MessageFailed for the recipient at index, phone number
// +1500555xxxx made from the index.
func (b *Batch) Failed(index, attempt int, category domain.ErrorCategory) eventstore.Event {
	return b.h.Append(domain.MessageFailed{
		EventHeader: b.header(), Index: index, Attempt: attempt, Phone: Phone(index), Category: category,
		Code: "E-" + string(category), Message: "failed: " + string(category), LatencyMs: 100,
	})
}

// Delivered appends a MessageDelivered of the message at index, sent ago
// before the batch's time.
func (b *Batch) Delivered(index int, ago time.Duration) eventstore.Event {
	return b.h.Append(domain.MessageDelivered{
		EventHeader: b.header(), Index: index, ProviderID: fmt.Sprintf("SM%d", index), SentAt: b.Now.Add(-ago),
	})
}

// Undelivered appends a MessageUndelivered of the message at index, with
// Twilio's code 30003.
func (b *Batch) Undelivered(index int, ago time.Duration) eventstore.Event {
	return b.h.Append(domain.MessageUndelivered{
		EventHeader: b.header(), Index: index, ProviderID: fmt.Sprintf("SM%d", index), SentAt: b.Now.Add(-ago),
		Code: "30003", Message: "Unreachable destination handset",
	})
}

// Phone is the phone number Failed records for the recipient at index.
func Phone(index int) string { return fmt.Sprintf("+1500555%04d", index%10000) }

// Paused appends a BatchPaused.
func (b *Batch) Paused() eventstore.Event {
	return b.h.Append(domain.BatchPaused{EventHeader: b.header(), By: "test"})
}

// Resumed appends a BatchResumed.
func (b *Batch) Resumed() eventstore.Event {
	return b.h.Append(domain.BatchResumed{EventHeader: b.header(), By: "test"})
}

// Completed appends a BatchCompleted with the given counts.
func (b *Batch) Completed(sent, failed int) eventstore.Event {
	return b.h.Append(domain.BatchCompleted{EventHeader: b.header(), Sent: sent, Failed: failed})
}

// Cancelled appends a BatchCancelled.
func (b *Batch) Cancelled() eventstore.Event {
	return b.h.Append(domain.BatchCancelled{EventHeader: b.header(), By: "test"})
}

// AppendTo appends events to s, each to its stream in the given order, and
// returns the position of the last. Appended in order to an empty memory event
// store, the events land at the positions they carry.
func AppendTo(ctx context.Context, s eventstore.Store, events []eventstore.Event) (eventstore.Position, error) {
	var last eventstore.Position
	for _, e := range events {
		res, err := s.Append(ctx, e.Stream, eventstore.Any(), []eventstore.EventData{
			{ID: e.ID, Type: e.Type, Data: e.Data, Metadata: e.Metadata},
		})
		if err != nil {
			return last, fmt.Errorf("append %s to %s: %w", e.Type, e.Stream, err)
		}
		last = res.Position
	}
	return last, nil
}
