package processors

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
)

// Forwarder follows the event store and publishes batch lifecycle events to
// Watermill. It keeps a small index of the batches that are not finished, which
// drives the scheduler (pending batches whose time has come are started) and
// recovery (processing batches nobody is working are handed a work message: at
// start, and whenever one has had no event for StallTimeout).
type Forwarder struct {
	store    eventstore.Store
	pub      message.Publisher
	commands *commands.Handlers
	cfg      Config
	log      *slog.Logger

	mu       sync.Mutex
	follower *eventstore.Follower
	batches  map[string]*indexed
	// leaving are the batches that stopped processing (paused, finished)
	// within shareHold: their sends of the last second still count against
	// their tenant's cap, so the others' shares rise only once those are out
	// of every one-second window.
	leaving map[string]leaver
	// stopped are the batches the start point held stopped with messages in
	// flight, and those stopped in the log read up to the end at start: over
	// a transport that loses work messages with the process (RecoverAtStart),
	// each that still has messages in flight gets one at start, whose slice
	// ends them once no send of them can still be running.
	stopped   []string
	caughtUp  bool
	ready     chan struct{}
	readyOnce sync.Once
}

// indexed is what the forwarder knows of an unfinished batch.
type indexed struct {
	status    domain.Status
	lastEvent time.Time
	schedule  time.Time
	autoStart bool
	tenant    string
	priority  domain.Priority
}

// Unfinished is a batch that is not final, or stopped with messages still in
// flight, as the forwarder starts from it.
type Unfinished struct {
	ID           string
	Tenant       string
	Priority     domain.Priority
	Status       domain.Status
	ScheduleTime time.Time
	AutoStart    bool
	// LastEvent is the time of the batch's last event.
	LastEvent time.Time
}

// StartPoint gives the forwarder the batches that were unfinished at a position
// of the log, so that it follows the log from there instead of from its start
// (the read models keep them, with their checkpoint).
type StartPoint func(ctx context.Context) ([]Unfinished, eventstore.Position, error)

// NewForwarder returns a forwarder publishing to pub. cfg is the processor's
// configuration: StallTimeout, RecoveryInterval, Logger and Now are used.
func NewForwarder(store eventstore.Store, pub message.Publisher, cmds *commands.Handlers, cfg Config) (*Forwarder, error) {
	if store == nil || pub == nil || cmds == nil {
		return nil, errors.New("forwarder: nil store, publisher or commands")
	}
	cfg.setDefaults()
	return &Forwarder{
		store: store, pub: pub, commands: cmds, cfg: cfg, log: cfg.Logger,
		batches: make(map[string]*indexed),
		leaving: make(map[string]leaver),
		ready:   make(chan struct{}),
	}, nil
}

// Ready is closed once the forwarder has caught up with the store and recovered
// the batches that were running.
func (f *Forwarder) Ready() <-chan struct{} { return f.ready }

// Run follows the store until ctx is done. Failures to read the store or to
// publish are retried with backoff by the follower; Health reports them.
func (f *Forwarder) Run(ctx context.Context) error {
	from, err := f.start(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	fl, err := eventstore.NewFollower(eventstore.FollowerConfig{
		Name: "forwarder", Store: f.store, After: from, Logger: f.log,
		OnCaughtUp: func() { f.caughtUpAtStart(ctx) },
	}, f.handle)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.follower = fl
	f.mu.Unlock()
	errc := make(chan error, 1)
	go func() { errc <- fl.Run(ctx) }()
	ticker := time.NewTicker(f.cfg.RecoveryInterval)
	defer ticker.Stop()
	for {
		select {
		case err := <-errc:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("forwarder: %w", err)
		case <-ticker.C:
			f.tick(ctx)
		}
	}
}

// Share is the rate batchID may send at under its tenant's rate cap: the cap
// divided among the tenant's processing batches in proportion to their own
// rates; own when the cap does not bind (or is off). Every instance's forwarder
// sees the same batches, so the shares agree once the log has reached them all.
func (f *Forwarder) Share(tenant, batchID string, own float64) float64 {
	limit := f.cfg.TenantMaxRate
	if limit <= 0 {
		return own
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	total, seen := 0.0, false
	for id, b := range f.batches {
		if b.tenant != tenant || b.status != domain.StatusProcessing {
			continue
		}
		if id == batchID {
			seen = true
		}
		total += f.cfg.Rates.For(b.priority)
	}
	now := f.cfg.Now()
	for id, l := range f.leaving {
		switch {
		case !now.Before(l.until):
			delete(f.leaving, id)
		case l.tenant == tenant && id != batchID:
			total += f.cfg.Rates.For(l.priority)
		}
	}
	if !seen {
		total += own // a batch that just started, not indexed here yet
	}
	if total <= limit {
		return own
	}
	return limit * own / total
}

// start fills the index from the start point, retrying while it fails, and
// returns the position to follow from.
func (f *Forwarder) start(ctx context.Context) (eventstore.Position, error) {
	if f.cfg.StartPoint == nil {
		return eventstore.Start, nil
	}
	wait := 100 * time.Millisecond
	for {
		batches, at, err := f.cfg.StartPoint(ctx)
		if err == nil {
			f.mu.Lock()
			for _, b := range batches {
				if b.Status.Final() {
					f.stopped = append(f.stopped, b.ID)
					continue
				}
				f.batches[b.ID] = &indexed{status: b.Status, lastEvent: b.LastEvent, schedule: b.ScheduleTime,
					autoStart: b.AutoStart, tenant: b.Tenant, priority: b.Priority}
			}
			f.mu.Unlock()
			f.log.Info("forwarder: following events", "after", at.String(), "unfinished", len(batches))
			return at, nil
		}
		f.log.Error("forwarder: reading the unfinished batches failed; retrying", "err", err, "wait", wait)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return eventstore.Start, ctx.Err()
		}
		wait = min(2*wait, 10*time.Second)
	}
}

// Health is nil while the forwarder follows the events; an error when it has
// been failing for a while or stopped.
func (f *Forwarder) Health() error {
	f.mu.Lock()
	fl := f.follower
	f.mu.Unlock()
	if fl == nil {
		return nil
	}
	return fl.Health()
}

func (f *Forwarder) handle(ctx context.Context, events []eventstore.Event) error {
	var out []*message.Message
	f.mu.Lock()
	for _, e := range events {
		id, ok := strings.CutPrefix(e.Stream, domain.BatchStreamPrefix)
		if !ok {
			continue
		}
		if lifecycle := f.index(id, e); lifecycle && f.caughtUp {
			msg, err := lifecycleMessage(Lifecycle{BatchID: id, Type: e.Type, Revision: e.Revision})
			if err != nil {
				f.mu.Unlock()
				return err
			}
			out = append(out, msg)
		}
	}
	f.mu.Unlock()
	if len(out) > 0 {
		if err := f.pub.Publish(TopicBatchEvents, out...); err != nil {
			return fmt.Errorf("publish lifecycle events: %w", err)
		}
	}
	return nil
}

// index updates the batch index with e and reports whether e is a lifecycle event.
func (f *Forwarder) index(id string, e eventstore.Event) bool {
	b := f.batches[id]
	if b == nil {
		if e.Type != domain.TypeBatchCreated {
			return false // a finished batch, forgotten
		}
		b = &indexed{}
		f.batches[id] = b
	}
	if e.Type != domain.TypeMessageDelivered && e.Type != domain.TypeMessageUndelivered {
		// Receipts come from the provider, not from whoever works the batch:
		// they must not make a stalled batch look alive.
		b.lastEvent = e.Time
	}
	switch e.Type {
	case domain.TypeBatchCreated:
		var c domain.BatchCreated
		if err := json.Unmarshal(e.Data, &c); err == nil {
			b.autoStart = c.AutoStart
			b.tenant, b.priority = c.Tenant, c.Priority
			if c.ScheduleTime != nil {
				b.schedule = *c.ScheduleTime
			}
		}
		b.status = domain.StatusPending
	case domain.TypeBatchRescheduled:
		var c domain.BatchRescheduled
		if err := json.Unmarshal(e.Data, &c); err == nil {
			b.schedule, b.autoStart = c.ScheduleTime, true
		}
		return false
	case domain.TypeBatchStarted, domain.TypeBatchResumed:
		b.status = domain.StatusProcessing
		delete(f.leaving, id) // counted as processing again
	case domain.TypeBatchPaused:
		f.leave(id, b)
		b.status = domain.StatusPaused
	case domain.TypeBatchCompleted, domain.TypeBatchCancelled, domain.TypeBatchFailed:
		f.leave(id, b)
		delete(f.batches, id)
		if !f.caughtUp && e.Type != domain.TypeBatchCompleted {
			// Stopped while this process was down: its messages in flight
			// may have died with the last one (caughtUpAtStart looks).
			f.stopped = append(f.stopped, id)
		}
	default:
		return false
	}
	return true
}

// leaver is a batch that stopped processing, still counted in its tenant's
// shares until then.
type leaver struct {
	tenant   string
	priority domain.Priority
	until    time.Time
}

// shareHold is how long a batch that stopped processing still counts in its
// tenant's shares: the one-second window its last sends fall in, and the
// margins a send may start late by.
const shareHold = 1500 * time.Millisecond

// leave keeps b, which stops processing, counted in its tenant's shares for
// shareHold, when the cap is on. Callers hold f.mu.
func (f *Forwarder) leave(id string, b *indexed) {
	if f.cfg.TenantMaxRate > 0 && b.status == domain.StatusProcessing {
		f.leaving[id] = leaver{tenant: b.tenant, priority: b.priority, until: f.cfg.Now().Add(shareHold)}
	}
}

// lifecycleMessage is the message of a lifecycle event. Its ID is derived from
// the event, so that the copies the forwarders of several instances publish are
// one message to a broker that drops duplicates (NATS JetStream, see
// chainStart).
func lifecycleMessage(l Lifecycle) (*message.Message, error) {
	payload, err := json.Marshal(l)
	if err != nil {
		return nil, fmt.Errorf("encode lifecycle message: %w", err)
	}
	msg := message.NewMessage(derivedID("lifecycle", l.BatchID, l.Type, strconv.FormatUint(l.Revision, 10)), payload)
	msg.Metadata.Set("batch_id", l.BatchID)
	return msg, nil
}
