// Package projections builds what users read from the batch events: the status,
// analytics and errors read models, the runner that follows the event store from a
// checkpoint and applies events to them, and their stores (memory here; postgres in
// its own package). Read models are pure functions of the events: replaying an
// event twice changes nothing, and a rebuild from position 0 gives the same result.
package projections

import (
	"context"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
)

// BatchStatus is the status read model of one batch: what GET /api/batch/{id} shows.
type BatchStatus struct {
	ID     string `json:"id"`
	Tenant string `json:"-"`
	// Name labels the batch for people; "" when none was given.
	Name string `json:"name"`
	// Text is the message template.
	Text      string    `json:"text"`
	Status    string    `json:"status"`
	Priority  string    `json:"priority"`
	CreatedAt time.Time `json:"createdAt"`
	// ScheduleTime is when a scheduled batch starts; nil when not scheduled.
	ScheduleTime *time.Time `json:"scheduleTime,omitempty"`
	// AutoStart: the batch starts by itself (at once, or at its schedule).
	AutoStart bool `json:"autoStart"`
	// ValidUntil is when unsent messages end skipped as expired; QuietHours the
	// recipients' local hours nothing goes out in. Absent when not set.
	ValidUntil *time.Time         `json:"validUntil,omitempty"`
	QuietHours *domain.QuietHours `json:"quietHours,omitempty"`
	Progress   Progress           `json:"progress"`
	Metrics    Metrics            `json:"metrics"`
	PauseInfo  *PauseInfo         `json:"pauseInfo,omitempty"`
	// Hold says why a processing batch is not sending (the provider is out);
	// absent while it sends.
	Hold *Hold `json:"hold,omitempty"`
	// RateCap is present while the tenant's rate cap holds the batch below its
	// priority's rate, shared with the tenant's other running batches.
	RateCap *RateCap `json:"rateCap,omitempty"`
	// RetryOf is the batch whose failed recipients this one sends again;
	// Retries are the batches made to send this one's failed recipients again.
	RetryOf string   `json:"retryOf,omitempty"`
	Retries []string `json:"retries,omitempty"`
	// UpdatedAt is the time of the last event applied to the batch.
	UpdatedAt time.Time `json:"updatedAt"`
	// Revision is the revision of that event in the batch's stream: of two
	// statuses of a batch, the one with the higher revision is the newer
	// (UpdatedAt comes from the clock of whichever instance decided the
	// event, and goes back when their clocks differ).
	Revision uint64 `json:"revision"`
}

// RateCap is the rate a batch is held to by its tenant's cap.
type RateCap struct {
	Rate float64 `json:"rate"`
}

// Hold is why a processing batch waits without being paused, and since when.
// It resumes by itself.
type Hold struct {
	// Reason is "provider_outage": sends keep failing on the provider's side.
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
}

// Progress counts the batch's recipients.
type Progress struct {
	Total int `json:"total"`
	// Pending counts messages handed to the provider without a final outcome (in
	// flight or waiting for a retry).
	Pending   int `json:"pending"`
	Completed int `json:"completed"` // sent
	Failed    int `json:"failed"`
	// Skipped counts recipients not sent for a reason that is not a failure
	// (opted out, expired): a final outcome, apart from failed.
	Skipped int `json:"skipped"`
	// Delivered and Undelivered count the provider's delivery receipts of sent
	// messages; they may come after the batch completed.
	Delivered   int `json:"delivered"`
	Undelivered int `json:"undelivered"`
	// Waiting counts recipients not sent yet because their local time is in the
	// batch's quiet hours; they go when their window opens.
	Waiting int `json:"waiting"`
}

// Metrics summarise the batch's sending.
type Metrics struct {
	// MessagesPerSecond is final outcomes per second of sending time (time spent
	// processing, pauses excluded).
	MessagesPerSecond float64 `json:"messagesPerSecond"`
	// SuccessRate is sent / (sent + failed), 0 before any outcome.
	SuccessRate float64 `json:"successRate"`
}

// PauseInfo is shown once a batch has been paused.
type PauseInfo struct {
	PauseTime  time.Time  `json:"pauseTime"`
	ResumeTime *time.Time `json:"resumeTime,omitempty"`
}

// Analytics is the analytics read model of one batch.
type Analytics struct {
	BatchID string `json:"batchId"`
	Totals  Totals `json:"totals"`
	// ErrorCategories counts the messages that ended without being sent, failed
	// or skipped (opted_out, expired, cancelled), by category.
	ErrorCategories map[string]int `json:"errorCategories"`
	// RetriedCategories counts failed attempts that were retried, by category.
	RetriedCategories map[string]int    `json:"retriedCategories"`
	Throughput        []ThroughputPoint `json:"throughput"`
	LatencyMs         Latency           `json:"latencyMs"`
	// DeliveryRate is delivered / sent: the share of sent messages the
	// provider reported delivered so far (receipts may come later); 0 before
	// any message is sent. Messages with a receipt that did not end sent
	// count among the sent here, so that it never passes 1.
	DeliveryRate float64 `json:"deliveryRate"`
	// DeliveryLatencyMs are percentiles of the time from a message's send to
	// its delivery receipt.
	DeliveryLatencyMs Latency `json:"deliveryLatencyMs"`
}

// Totals of a batch's outcomes.
type Totals struct {
	Sent     int `json:"sent"`
	Failed   int `json:"failed"`
	Retries  int `json:"retries"`
	Segments int `json:"segments"`
	// Delivered and Undelivered count delivery receipts of sent messages.
	Delivered   int `json:"delivered"`
	Undelivered int `json:"undelivered"`
}

// ThroughputPoint counts outcomes in one time bucket starting at Time.
type ThroughputPoint struct {
	Time   time.Time `json:"time"`
	Sent   int       `json:"sent"`
	Failed int       `json:"failed"`
}

// Latency percentiles in milliseconds: of provider answers (final outcomes),
// or of deliveries.
type Latency struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
}

// ErrorEntry is one recipient that failed for good.
type ErrorEntry struct {
	Index       int       `json:"index"`
	PhoneNumber string    `json:"phoneNumber"`
	Category    string    `json:"category"`
	Code        string    `json:"code"`
	Message     string    `json:"message"`
	Attempts    int       `json:"attempts"`
	Time        time.Time `json:"time"`
}

// ListQuery pages through a tenant's batches, newest first.
type ListQuery struct {
	Tenant string
	// Status filters to batches in that status; empty for all.
	Status string
	// Q filters to batches whose name starts with it, ignoring case, or whose
	// ID starts with it; empty for all.
	Q string
	// Limit is the page size (1..100; 0 means 20).
	Limit int
	// Cursor is the NextCursor of the previous page; empty for the first.
	Cursor string
}

// ErrorQuery pages through a batch's errors in recipient order.
type ErrorQuery struct {
	Tenant, BatchID string
	// Category filters to one category; empty for all.
	Category string
	// Limit is the page size (1..1000; 0 means 100).
	Limit int
	// Cursor is the NextCursor of the previous page; empty for the first.
	Cursor string
}

// Store keeps the read models. Apply and the queries are safe for concurrent use.
type Store interface {
	// Apply applies events, in global order, to every read model and records the
	// last one's position as the checkpoint, atomically. Events at or before the
	// checkpoint are skipped, so applying an event twice changes nothing.
	Apply(ctx context.Context, events []eventstore.Event) error
	// Checkpoint is the position of the last event applied.
	Checkpoint(ctx context.Context) (eventstore.Position, error)

	// Batch returns a batch's status; ENOTFOUND when it does not exist or belongs
	// to another tenant.
	Batch(ctx context.Context, tenant, id string) (BatchStatus, error)
	// Batches lists a tenant's batches newest first; the cursor is empty on the last page.
	Batches(ctx context.Context, q ListQuery) (page []BatchStatus, nextCursor string, err error)
	// Analytics returns a batch's analytics; ENOTFOUND as Batch.
	Analytics(ctx context.Context, tenant, id string) (Analytics, error)
	// Errors pages through a batch's failed recipients; ENOTFOUND as Batch.
	Errors(ctx context.Context, q ErrorQuery) (page []ErrorEntry, nextCursor string, err error)
	// Recipients pages through a batch's recipients with their outcomes;
	// ENOTFOUND as Batch.
	Recipients(ctx context.Context, q RecipientQuery) (page []Recipient, nextCursor string, err error)
	// Unfinished returns every tenant's batches that are not final (pending,
	// processing or paused), or stopped with messages in flight
	// (BatchState.Unfinished), and the checkpoint they are read at, together:
	// the send processor starts from them instead of reading the whole log.
	Unfinished(ctx context.Context) (batches []BatchStatus, at eventstore.Position, err error)
}

// Shared is a Store that several processes keep together (the PostgreSQL
// read models of instances sharing a database). One runner at a time applies
// the events, the holder of the store's lease; the others follow its
// checkpoint. Applying is safe from several at once all the same (Apply skips
// what the checkpoint covers): the lease only spares the others reading and
// decoding every event for nothing.
type Shared interface {
	Store
	// TryLease takes the store's lease if no process holds it, reporting nil
	// when one does.
	TryLease(ctx context.Context) (*Lease, error)
}

// Lease is a Shared store's lease, held until Release or until Lost is
// closed (the connection that held it went away).
type Lease struct {
	Lost    <-chan struct{}
	Release func()
}
