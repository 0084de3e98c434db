// Package commands holds smsbatch's command handlers: each loads a Batch, lets it
// decide, and appends what it decided at the revision it decided on, retrying on
// conflict. Creating a batch writes its recipients page by page first, so a batch
// becomes visible and startable only once all of them are stored.
package commands

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
)

// Handlers runs the commands on batches.
type Handlers struct {
	repo  *Repository
	store eventstore.Store
	keys  *IdempotencyKeys
	now   func() time.Time
}

// New returns the command handlers. now is the clock; nil means time.Now.
func New(store eventstore.Store, repo *Repository, now func() time.Time) (*Handlers, error) {
	if store == nil || repo == nil {
		return nil, errors.New("commands: nil store or repository")
	}
	if now == nil {
		now = time.Now
	}
	keys, err := NewIdempotencyKeys(store, DefaultIdempotencyPolicy, now)
	if err != nil {
		return nil, err
	}
	return &Handlers{repo: repo, store: store, keys: keys, now: func() time.Time { return now().UTC() }}, nil
}

// Repository returns the batch repository the handlers use.
func (h *Handlers) Repository() *Repository { return h.repo }

// Creation returns batch id's BatchCreated, the first event of its stream:
// what it was created with that the aggregate does not keep (its name, the
// batch it retries).
func (h *Handlers) Creation(ctx context.Context, batchID string) (domain.BatchCreated, error) {
	events, err := h.store.ReadStream(ctx, domain.BatchStream(batchID), 0, 1)
	if err != nil {
		return domain.BatchCreated{}, fmt.Errorf("creation of %s: %w", batchID, err)
	}
	if len(events) == 0 {
		return domain.BatchCreated{}, domain.Errorf(domain.ENOTFOUND, "batch not found")
	}
	e, err := domain.DecodeEvent(events[0].Type, events[0].Data)
	if err != nil {
		return domain.BatchCreated{}, fmt.Errorf("creation of %s: %w", batchID, err)
	}
	created, ok := e.(domain.BatchCreated)
	if !ok {
		return domain.BatchCreated{}, fmt.Errorf("creation of %s: the stream begins with %s", batchID, events[0].Type)
	}
	return created, nil
}

// IdempotencyKeys returns the store of requests' Idempotency-Keys.
func (h *Handlers) IdempotencyKeys() *IdempotencyKeys { return h.keys }

// CreateBatch creates a batch from recipients that were already validated.
type CreateBatch struct {
	ID           string
	Tenant       string
	Template     domain.Template
	Priority     domain.Priority
	ScheduleTime *time.Time
	AutoStart    bool
	// ValidUntil and QuietHours are optional; see domain.NewBatchParams.
	ValidUntil *time.Time
	QuietHours *domain.QuietHours
	// Name labels the batch; RetryOf names the batch whose failed recipients
	// it sends again. Both optional.
	Name, RetryOf string
	// Recipients yields the recipients in order, their Values in the template's
	// variable order. An error it yields aborts the creation.
	Recipients iter.Seq2[domain.Recipient, error]
}

// recipientAppendBytes is about how much of a batch's recipients one append
// carries: some five pages of short numbers and values, which takes most of the
// commits' waits out of a large create (1 MiB took little more, and every
// follower of the log read its pages in bigger bites: 15 MiB more at peak). The
// KurrentDB adapter splits an append above its server's request limit anyway.
const recipientAppendBytes = 256 << 10

// CreateBatch stores the recipients a page at a time in the batch's recipients
// stream, then the BatchCreated event with the full count. If anything fails before
// that last append, no batch exists: the pages written are never read.
//
// Pages are appended several at a time, about recipientAppendBytes: every append
// waits for its commit (an fsync on bolt, a round trip and a commit on
// PostgreSQL), and a million recipients one page per append spent seconds waiting.
func (h *Handlers) CreateBatch(ctx context.Context, cmd CreateBatch) (Result, error) {
	stream := domain.RecipientsStream(cmd.ID)
	header := domain.EventHeader{BatchID: cmd.ID, Tenant: cmd.Tenant, At: h.now()}
	page := domain.RecipientsPageAdded{EventHeader: header}
	total, pages := 0, 0
	var (
		encoded      []eventstore.EventData // pages encoded, not yet appended
		encodedBytes int
		appended     int // pages appended
	)
	appendPages := func() error {
		if len(encoded) == 0 {
			return nil
		}
		if _, err := h.store.Append(ctx, stream, eventstore.After(uint64(appended)), encoded); err != nil {
			return fmt.Errorf("create batch %s: store recipients pages %d to %d: %w", cmd.ID, appended, pages-1, err)
		}
		appended = pages
		encoded, encodedBytes = nil, 0
		return nil
	}
	flush := func() error {
		if len(page.Recipients) == 0 {
			return nil
		}
		page.Page, page.First = pages, total-len(page.Recipients)
		data, err := encodeEvents([]domain.Event{page})
		if err != nil {
			return err
		}
		encoded = append(encoded, data...)
		encodedBytes += len(data[0].Data)
		pages++
		page.Recipients = page.Recipients[:0]
		if encodedBytes >= recipientAppendBytes {
			return appendPages()
		}
		return nil
	}
	for r, err := range cmd.Recipients {
		if err != nil {
			return Result{}, err
		}
		page.Recipients = append(page.Recipients, r)
		total++
		if len(page.Recipients) == domain.RecipientPageSize {
			if err := flush(); err != nil {
				return Result{}, err
			}
		}
	}
	if err := flush(); err != nil {
		return Result{}, err
	}
	if err := appendPages(); err != nil {
		return Result{}, err
	}
	b, err := domain.NewBatch(domain.NewBatchParams{
		ID: cmd.ID, Tenant: cmd.Tenant, Template: cmd.Template, Priority: cmd.Priority,
		ScheduleTime: cmd.ScheduleTime, AutoStart: cmd.AutoStart, ValidUntil: cmd.ValidUntil, QuietHours: cmd.QuietHours,
		Total: total, Pages: pages, Name: cmd.Name, RetryOf: cmd.RetryOf,
	}, h.now())
	if err != nil {
		return Result{}, err
	}
	pos, err := h.repo.Add(ctx, b) // caches a copy of b
	if errors.Is(err, eventstore.ErrConcurrency) {
		// A new ID's stream exists only once AbandonCreate fenced it off.
		return Result{}, fmt.Errorf("%w%w", domain.Errorf(domain.ECONFLICT,
			"this create ran so long that a retry with its Idempotency-Key took over; the batch is the retry's"), ErrCreateAbandoned)
	}
	if err != nil {
		return Result{}, err
	}
	return Result{Batch: b, Position: pos}, nil
}

// ErrCreateAbandoned marks the error of a create fenced off by its retry
// (AbandonCreate): the key belongs to the retry, and the create's answer must
// not be recorded as the key's.
var ErrCreateAbandoned = errors.New("")

// Act names a caller acting on a batch: only its own tenant may.
type Act struct {
	Tenant  string
	BatchID string
	// By names the caller for the record (an API key's name, "scheduler"...).
	By string
}

// StartBatch starts a pending batch now, even one scheduled for later.
func (h *Handlers) StartBatch(ctx context.Context, act Act) (Result, error) {
	return h.act(ctx, act, func(b *domain.Batch) error { return b.Start(h.now(), act.By) })
}

// PauseBatch pauses a processing batch.
func (h *Handlers) PauseBatch(ctx context.Context, act Act) (Result, error) {
	return h.act(ctx, act, func(b *domain.Batch) error { return b.Pause(h.now(), act.By) })
}

// ResumeBatch resumes a paused batch.
func (h *Handlers) ResumeBatch(ctx context.Context, act Act) (Result, error) {
	return h.act(ctx, act, func(b *domain.Batch) error { return b.Resume(h.now(), act.By) })
}

// CancelBatch cancels a batch that has not finished. Its messages waiting for
// a retry end skipped, with their numbers, for the errors list.
func (h *Handlers) CancelBatch(ctx context.Context, act Act) (Result, error) {
	return h.act(ctx, act, func(b *domain.Batch) error {
		now := h.now()
		phone, err := h.phonesOf(ctx, b, b.RetriesWaiting(now))
		if err != nil {
			return err
		}
		return b.Cancel(now, act.By, phone)
	})
}

// EndUnanswered ends the messages of a stopped batch whose sends went
// unanswered (Batch.EndUnanswered, with settled): the slice that finds them,
// their instance having died with them in flight, runs it.
func (h *Handlers) EndUnanswered(ctx context.Context, batchID string, settled domain.Settled) (*domain.Batch, error) {
	return h.repo.Update(ctx, batchID, func(b *domain.Batch) error {
		if !b.Status().Final() {
			return nil
		}
		now := h.now()
		var indexes []int
		for _, o := range b.Outstanding() {
			if o.InDoubt(now, settled) {
				indexes = append(indexes, o.Index)
			}
		}
		phone, err := h.phonesOf(ctx, b, indexes)
		if err != nil {
			return err
		}
		return b.EndUnanswered(now, settled, phone)
	})
}

// phonesOf looks up the numbers of some of b's recipients, for the messages a
// decision ends.
func (h *Handlers) phonesOf(ctx context.Context, b *domain.Batch, indexes []int) (func(int) string, error) {
	phones := make(map[int]string, len(indexes))
	for _, i := range indexes {
		page, err := h.RecipientsPage(ctx, b.ID(), i/domain.RecipientPageSize)
		if err != nil {
			return nil, err
		}
		if at := i % domain.RecipientPageSize; at < len(page) {
			phones[i] = page[at].Phone
		}
	}
	return func(i int) string { return phones[i] }, nil
}

// StartIfDue starts a scheduled, auto-starting batch whose time has come; it is the
// scheduler's command and acts for every tenant.
func (h *Handlers) StartIfDue(ctx context.Context, batchID string) (*domain.Batch, error) {
	return h.repo.Update(ctx, batchID, func(b *domain.Batch) error {
		b.StartIfDue(h.now())
		return nil
	})
}

// FailBatch marks a batch that cannot go on as failed.
func (h *Handlers) FailBatch(ctx context.Context, batchID, reason string) (*domain.Batch, error) {
	return h.repo.Update(ctx, batchID, func(b *domain.Batch) error {
		if b.Status().Final() {
			return nil
		}
		return b.Fail(h.now(), reason)
	})
}

func (h *Handlers) act(ctx context.Context, act Act, decide func(b *domain.Batch) error) (Result, error) {
	return h.repo.update(ctx, act.BatchID, func(b *domain.Batch) error {
		// Another tenant's batch does not exist as far as the caller can tell.
		if b.Tenant() != act.Tenant {
			return domain.Errorf(domain.ENOTFOUND, "batch not found")
		}
		return decide(b)
	})
}
