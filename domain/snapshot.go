package domain

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Snapshots let a batch with a long history load without replaying it: a
// BatchSnapshot is the aggregate's state after its first Version events, kept in
// the batch's snapshot stream; a load restores the newest one and replays only the
// events after it. A snapshot is a cache, never the truth: one that cannot be
// restored is ignored and the batch replays from its start.

// SnapshotStreamPrefix starts the names of snapshot streams. It must not start
// with BatchStreamPrefix: whatever follows the log takes the streams starting
// with that prefix for the aggregate's events.
const SnapshotStreamPrefix = "batchsnapshot-"

// SnapshotStream is the name of the stream holding batch id's snapshots, one
// event each, the newest last.
func SnapshotStream(id string) string { return SnapshotStreamPrefix + id }

// TypeBatchSnapshot is the stored type of a snapshot event.
const TypeBatchSnapshot = "BatchSnapshot"

// SnapshotFormat is the version of BatchSnapshot's shape and meaning, stored in
// every snapshot. Bump it when a field is added, removed or changes meaning, or
// when apply changes what state an event leaves: RestoreBatch refuses every other
// format, so snapshots written before the change are ignored rather than restored
// without the new state. TestSnapshotFormatFollowsItsShape holds the shape of
// each format.
const SnapshotFormat = 6

// ErrSnapshotFormat is returned by RestoreBatch for a snapshot of another format.
var ErrSnapshotFormat = errors.New("snapshot of another format")

// BatchSnapshot is the state of a Batch after its first Version events, as plain
// data with JSON tags. It mirrors the aggregate's fields one to one (but for the
// unsaved changes, which a snapshot never has).
type BatchSnapshot struct {
	Format int `json:"format"`
	// Version is how many events of the batch stream the state reflects: the
	// snapshot stands for revisions 0 to Version-1.
	Version uint64 `json:"version"`

	ID        string    `json:"id"`
	Tenant    string    `json:"tenant"`
	Status    Status    `json:"status"`
	Priority  Priority  `json:"priority"`
	Text      string    `json:"text"`
	Variables []string  `json:"variables"`
	Total     int       `json:"total"`
	Pages     int       `json:"pages"`
	AutoStart bool      `json:"autoStart"`
	Schedule  time.Time `json:"schedule,omitzero"`
	CreatedAt time.Time `json:"createdAt"`

	ValidUntil time.Time       `json:"validUntil,omitzero"`
	Quiet      *QuietHours     `json:"quiet,omitempty"`
	Deferred   []DeferredRange `json:"deferred,omitempty"`

	Cursor      int                   `json:"cursor"`
	Outstanding []OutstandingSnapshot `json:"outstanding"`
	Sent        int                   `json:"sent"`
	Failed      int                   `json:"failed"`
	Skipped     int                   `json:"skipped"`

	LastSlice      string    `json:"lastSlice"`
	LastDispatchAt time.Time `json:"lastDispatchAt,omitzero"`
	LastSendAt     time.Time `json:"lastSendAt,omitzero"`
	ThrottleUntil  time.Time `json:"throttleUntil,omitzero"`
	ThrottleRate   float64   `json:"throttleRate,omitempty"`
	HoldReason     string    `json:"holdReason,omitempty"`
	HoldSince      time.Time `json:"holdSince,omitzero"`
	CappedRate     float64   `json:"cappedRate,omitempty"`
	LastEventAt    time.Time `json:"lastEventAt"`
	PausedAt       time.Time `json:"pausedAt,omitzero"`
	ResumedAt      time.Time `json:"resumedAt,omitzero"`
	ReceiptIDs     int       `json:"receiptIds,omitempty"`
}

// OutstandingSnapshot is an Outstanding message in a snapshot, field for field:
// Snapshot and RestoreBatch convert one into the other, so a field added to
// Outstanding alone does not compile.
type OutstandingSnapshot struct {
	Index    int       `json:"index"`
	Attempt  int       `json:"attempt"`
	Slice    string    `json:"slice"`
	Instance string    `json:"instance,omitempty"`
	Deadline time.Time `json:"deadline,omitzero"`
	RetryAt  time.Time `json:"retryAt,omitzero"`
	Failures int       `json:"failures,omitempty"`
}

// Snapshot returns the batch's state. Only a stored state can be a snapshot: a
// batch with unsaved changes, or one never created, is an error.
func (b *Batch) Snapshot() (BatchSnapshot, error) {
	switch {
	case b.version == 0:
		return BatchSnapshot{}, errors.New("snapshot: the batch has no events")
	case len(b.changes) > 0:
		return BatchSnapshot{}, fmt.Errorf("snapshot batch %s: %d changes are not stored yet", b.id, len(b.changes))
	}
	s := BatchSnapshot{
		Format:  SnapshotFormat,
		Version: b.version,

		ID:        b.id,
		Tenant:    b.tenant,
		Status:    b.status,
		Priority:  b.priority,
		Text:      b.text,
		Variables: slices.Clone(b.variables),
		Total:     b.total,
		Pages:     b.pages,
		AutoStart: b.autoStart,
		Schedule:  b.schedule,
		CreatedAt: b.createdAt,

		ValidUntil: b.validUntil,
		Quiet:      clonePtr(b.quiet),
		Deferred:   slices.Clone(b.deferred),

		Cursor:      b.cursor,
		Outstanding: make([]OutstandingSnapshot, 0, len(b.outstanding)),
		Sent:        b.sent,
		Failed:      b.failed,
		Skipped:     b.skipped,

		LastSlice:      b.lastSlice,
		LastDispatchAt: b.lastDispatchAt,
		LastSendAt:     b.lastSendAt,
		ThrottleUntil:  b.throttle.Until,
		ThrottleRate:   b.throttle.Rate,
		HoldReason:     b.hold.Reason,
		HoldSince:      b.hold.Since,
		CappedRate:     b.cappedRate,
		LastEventAt:    b.lastEventAt,
		PausedAt:       b.pausedAt,
		ResumedAt:      b.resumedAt,
		ReceiptIDs:     b.receiptIDs,
	}
	for _, o := range b.outstanding { // sorted by index
		s.Outstanding = append(s.Outstanding, OutstandingSnapshot(o))
	}
	return s, nil
}

// RestoreBatch rebuilds a batch from a snapshot. It is not a constructor: it
// makes no decisions and records no changes; the events after s.Version are
// replayed onto the result with Replay. It refuses a snapshot of another format
// (ErrSnapshotFormat) and one that cannot be a stored batch's state.
func RestoreBatch(s BatchSnapshot) (*Batch, error) {
	if s.Format != SnapshotFormat {
		return nil, fmt.Errorf("restore batch %s: format %d, this build reads %d: %w", s.ID, s.Format, SnapshotFormat, ErrSnapshotFormat)
	}
	if err := s.check(); err != nil {
		return nil, fmt.Errorf("restore batch %s at version %d: %w", s.ID, s.Version, err)
	}
	b := &Batch{
		id:        s.ID,
		tenant:    s.Tenant,
		version:   s.Version,
		status:    s.Status,
		priority:  s.Priority,
		text:      s.Text,
		variables: slices.Clone(s.Variables),
		total:     s.Total,
		pages:     s.Pages,
		autoStart: s.AutoStart,
		schedule:  s.Schedule,
		createdAt: s.CreatedAt,

		validUntil: s.ValidUntil,
		quiet:      clonePtr(s.Quiet),
		deferred:   slices.Clone(s.Deferred),

		cursor:  s.Cursor,
		sent:    s.Sent,
		failed:  s.Failed,
		skipped: s.Skipped,

		lastSlice:      s.LastSlice,
		lastDispatchAt: s.LastDispatchAt,
		lastSendAt:     s.LastSendAt,
		throttle:       Throttle{Until: s.ThrottleUntil, Rate: s.ThrottleRate},
		hold:           Hold{Reason: s.HoldReason, Since: s.HoldSince},
		cappedRate:     s.CappedRate,
		lastEventAt:    s.LastEventAt,
		pausedAt:       s.PausedAt,
		resumedAt:      s.ResumedAt,
		receiptIDs:     s.ReceiptIDs,
	}
	for _, o := range s.Outstanding {
		b.outstanding.put(Outstanding(o))
	}
	return b, nil
}

// check refuses what no stored batch can be, so that a damaged snapshot is not
// taken for a state.
func (s BatchSnapshot) check() error {
	switch s.Status {
	case StatusPending, StatusProcessing, StatusPaused, StatusCompleted, StatusFailed, StatusCancelled:
	default:
		return fmt.Errorf("unknown status %q", s.Status)
	}
	switch {
	case s.ID == "" || s.Tenant == "":
		return errors.New("no id or tenant")
	case s.Version == 0:
		return errors.New("version 0 holds no event")
	case s.Total < 0 || s.Cursor < 0 || s.Cursor > s.Total || s.Sent < 0 || s.Failed < 0 || s.Skipped < 0:
		return fmt.Errorf("counts out of range: total %d, cursor %d, sent %d, failed %d", s.Total, s.Cursor, s.Sent, s.Failed)
	}
	seen := make(map[int]bool, len(s.Outstanding))
	for _, o := range s.Outstanding {
		if seen[o.Index] || o.Index < 0 || o.Index >= s.Cursor {
			return fmt.Errorf("outstanding message %d twice or never dispatched (cursor %d)", o.Index, s.Cursor)
		}
		seen[o.Index] = true
	}
	return nil
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	c := *p
	return &c
}
