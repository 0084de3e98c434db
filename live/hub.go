// Package live owns the read side's push: the hub that follows the event log,
// waits until the read models include what it saw, and hands every change of a
// batch's status (and every new final failure) to the clients that follow it,
// each through a small bounded queue. It knows nothing of WebSocket: package
// api carries the messages to browsers and authenticates them.
package live

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/projections"
)

// Waiter is told a position and returns once the read models include it.
type Waiter interface {
	WaitFor(ctx context.Context, pos eventstore.Position) error
}

// Config configures the hub.
type Config struct {
	// Events is the event store the hub follows (required).
	Events eventstore.Store
	// ReadModels is where every status sent is read from, so that it is the very
	// object GET /api/batch/{id} returns (required).
	ReadModels projections.Store
	// Projections is waited on before a status is read, so the read models
	// include the events the status is sent for (required): the projections Runner.
	Projections Waiter
	// BufferSize is how many error messages wait for one client; a client
	// further behind is disconnected. Statuses wait one a batch, the newest
	// (see Client). Default 64.
	BufferSize int
	// StatusInterval is the least time between two status messages of one batch;
	// default 100ms (10 a second). The latest status is always sent at the end.
	StatusInterval time.Duration
	// MaxReplay bounds the batch.error messages a reconnecting client is sent
	// for what it missed; a client further behind is refused with 409 and
	// should reconnect without a position. Default 1000.
	MaxReplay int
	Logger    *slog.Logger
}

func (c *Config) setDefaults() {
	if c.BufferSize <= 0 {
		c.BufferSize = 64
	}
	if c.StatusInterval <= 0 {
		c.StatusInterval = 100 * time.Millisecond
	}
	if c.MaxReplay <= 0 {
		c.MaxReplay = 1000
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every missing setting.
func (c Config) Validate() error {
	var errs []error
	if c.Events == nil {
		errs = append(errs, errors.New("missing Events"))
	}
	if c.ReadModels == nil {
		errs = append(errs, errors.New("missing ReadModels"))
	}
	if c.Projections == nil {
		errs = append(errs, errors.New("missing Projections"))
	}
	return errors.Join(errs...)
}

// Hub pushes batch changes to subscribed clients. One follower of the event
// store feeds it; at most every StatusInterval it waits for the read models to
// include what it has seen and sends every changed batch's status, read from the
// read models, and every new final failure to the clients that follow the batch.
// Each client has a bounded queue; the hub never waits for a client and drops one
// whose queue is full.
type Hub struct {
	cfg Config
	log *slog.Logger

	// mu orders a flush against a client's registration: a client receives
	// everything after the position its first messages are complete at, and
	// nothing twice.
	mu      sync.Mutex
	running bool
	flushed eventstore.Position // every event up to here has been sent to the clients
	clients map[*Client]struct{}
	// follower follows the event store once Run has started.
	follower *eventstore.Follower
	// startErr is why Run has not started yet, while it retries.
	startErr error
	// statusErr is why a flush could not read a batch's status, failing
	// since statusFailingSince; zero once a flush reads every one.
	statusErr          error
	statusFailingSince time.Time
}

// NewHub returns a hub; it sends nothing until Run.
func NewHub(cfg Config) (*Hub, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("live hub config: %w", err)
	}
	cfg.setDefaults()
	return &Hub{cfg: cfg, log: cfg.Logger, clients: make(map[*Client]struct{})}, nil
}

// Running reports whether the hub follows the log and takes subscriptions.
func (h *Hub) Running() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.running
}

// Flushed is the position up to which every event has been sent to the clients.
func (h *Hub) Flushed() eventstore.Position {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.flushed
}

// Clients is how many clients are subscribed.
func (h *Hub) Clients() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.clients)
}

// statusUnhealthyAfter is how long reading a batch's status may keep failing
// before Health says so, as a follower's.
const statusUnhealthyAfter = 10 * time.Second

// errHubStopped answers clients arriving while the hub is not running.
var errHubStopped = domain.Errorf(domain.EUNAVAILABLE, "live updates are not available yet; try again shortly")

// Run follows the event store from the read models' checkpoint and sends
// changes until ctx is done, then disconnects every client and returns nil. It
// returns an error when the event store is closed or Run is already running.
func (h *Hub) Run(ctx context.Context) error {
	start, err := h.startPoint(ctx)
	if err != nil {
		return nil // ctx is done
	}
	h.mu.Lock()
	if h.running {
		h.mu.Unlock()
		return errors.New("live hub: already running")
	}
	h.running, h.flushed, h.startErr = true, start, nil
	h.mu.Unlock()
	defer h.stop()

	ctx, cancel := context.WithCancel(ctx)
	pages := make(chan []eventstore.Event)
	subErr := make(chan error, 1)
	followed := make(chan struct{})
	go func() {
		defer close(followed)
		subErr <- h.follow(ctx, start, pages)
	}()
	defer func() {
		cancel()
		<-followed
	}()

	p := pending{batches: make(map[string]*dirtyBatch), head: start}
	var lastFlush time.Time
	var timer *time.Timer
	var timerC <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-subErr:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("live hub: %w", err)
		case events := <-pages:
			if err := p.collect(events); err != nil {
				// A payload that does not decode cannot be shown; the read models
				// will refuse it too and say so.
				h.log.Error("live hub: skipping undecodable event", "error", err)
			}
			if timerC != nil {
				continue // a flush is already due
			}
			if wait := h.cfg.StatusInterval - time.Since(lastFlush); wait > 0 {
				timer = time.NewTimer(wait)
				timerC = timer.C
				continue
			}
		case <-timerC:
		}
		timerC = nil
		if timer != nil {
			timer.Stop()
		}
		if err := h.flush(ctx, &p); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			h.log.Error("live hub: flush failed", "error", err)
		}
		lastFlush = time.Now()
		if len(p.batches) > 0 {
			// Statuses that could not be read are tried again next time.
			timer = time.NewTimer(h.cfg.StatusInterval)
			timerC = timer.C
		}
	}
}

// startPoint reads the read models' checkpoint, the position the hub follows
// from, retrying with backoff until it succeeds or ctx is done: a read models'
// hiccup as the instance starts must not leave it without live updates. While
// it fails, Health says so.
func (h *Hub) startPoint(ctx context.Context) (eventstore.Position, error) {
	attempt := 0
	return backoff.Retry(ctx, func() (eventstore.Position, error) { return h.cfg.ReadModels.Checkpoint(ctx) },
		backoff.WithBackOff(&backoff.ExponentialBackOff{InitialInterval: 100 * time.Millisecond,
			RandomizationFactor: 0.5, Multiplier: 2, MaxInterval: 15 * time.Second}),
		backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(func(err error, wait time.Duration) {
			attempt++
			h.mu.Lock()
			h.startErr = err
			h.mu.Unlock()
			h.log.Error("live hub: reading the read models' checkpoint failed; retrying",
				"error", err, "attempt", attempt, "wait", wait)
		}))
}

// follow hands every page of events after from to pages until ctx is done or
// the store is closed; the follower resubscribes after failures.
func (h *Hub) follow(ctx context.Context, from eventstore.Position, pages chan<- []eventstore.Event) error {
	f, err := eventstore.NewFollower(eventstore.FollowerConfig{Name: "live updates", Store: h.cfg.Events, After: from, Logger: h.log},
		func(ctx context.Context, events []eventstore.Event) error {
			select {
			case pages <- events:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.follower = f
	h.mu.Unlock()
	return f.Run(ctx)
}

// Health is nil while the hub follows the events; an error when it has been
// failing for a while or stopped.
func (h *Hub) Health() error {
	h.mu.Lock()
	f, startErr := h.follower, h.startErr
	statusErr, since := h.statusErr, h.statusFailingSince
	h.mu.Unlock()
	if startErr != nil {
		return fmt.Errorf("live hub: cannot start: read checkpoint: %w", startErr)
	}
	if !since.IsZero() && time.Since(since) >= statusUnhealthyAfter {
		return fmt.Errorf("live hub: reading statuses failing for %s: %w", time.Since(since).Round(time.Second), statusErr)
	}
	if f == nil {
		return nil
	}
	return f.Health()
}

func (h *Hub) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.running = false
	for c := range h.clients {
		h.dropLocked(c, DropShutdown)
	}
}

// pending is what the hub has seen and not yet sent.
type pending struct {
	head    eventstore.Position // the last event seen
	batches map[string]*dirtyBatch
	errors  []outMessage
}

type dirtyBatch struct {
	tenant string
	// last is the batch's last event seen; its status message carries it.
	last eventstore.Position
	// retried marks a batch whose status could not be read last time.
	retried bool
}

func (p *pending) collect(events []eventstore.Event) error {
	var errs []error
	for _, e := range events {
		p.head = e.Position
		if d := p.batches[projections.BatchOf(e)]; d != nil && !projections.MayBeError(e.Type) {
			// A batch already to be sent: its tenant is known, and only an
			// error has more to say than its position.
			d.last = e.Position
			continue
		}
		id, payload, ok, err := projections.Decode(e)
		if err != nil {
			errs = append(errs, fmt.Errorf("event %s at %s: %w", e.Type, e.Position, err))
			continue
		}
		if !ok {
			continue
		}
		tenant := payload.Header().Tenant
		if d := p.batches[id]; d != nil {
			d.last = e.Position
		} else {
			p.batches[id] = &dirtyBatch{tenant: tenant, last: e.Position}
		}
		if entry, ok := projections.ErrorEntryOf(payload); ok {
			p.errors = append(p.errors, errorMessage(tenant, id, e.Position, entry))
		}
	}
	return errors.Join(errs...)
}

// outMessage is one message for the clients of its batch, encoded once.
type outMessage struct {
	tenant, batchID string
	pos             eventstore.Position
	isStatus        bool
	// always: sent to every client following the batch, whatever position
	// it has seen (a status read only after its flush).
	always bool
	data   []byte
}

// liveMessage is the JSON shape of every message a client receives.
type liveMessage struct {
	Type     string                   `json:"type"`
	Position string                   `json:"position"`
	Batch    *projections.BatchStatus `json:"batch,omitempty"`
	BatchID  string                   `json:"batchId,omitempty"`
	Error    *projections.ErrorEntry  `json:"error,omitempty"`
}

// Message types.
const (
	MessageBatchStatus = "batch.status"
	MessageBatchError  = "batch.error"
)

func encodeMessage(m liveMessage) []byte {
	data, err := json.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("live hub: encode message: %v", err)) // plain data always encodes
	}
	return data
}

func statusMessage(st projections.BatchStatus, pos eventstore.Position) outMessage {
	return outMessage{tenant: st.Tenant, batchID: st.ID, pos: pos, isStatus: true,
		data: encodeMessage(liveMessage{Type: MessageBatchStatus, Position: FormatPosition(pos), Batch: &st})}
}

func errorMessage(tenant, batchID string, pos eventstore.Position, entry projections.ErrorEntry) outMessage {
	return outMessage{tenant: tenant, batchID: batchID, pos: pos,
		data: encodeMessage(liveMessage{Type: MessageBatchError, Position: FormatPosition(pos), BatchID: batchID, Error: &entry})}
}

// sortMessages puts messages in position order, a batch's error before the
// status that includes it, so that a client's last position covers everything
// before it.
func sortMessages(msgs []outMessage) {
	slices.SortStableFunc(msgs, func(a, b outMessage) int {
		if a.pos != b.pos {
			if a.pos.Less(b.pos) {
				return -1
			}
			return 1
		}
		return cmp.Compare(boolInt(a.isStatus), boolInt(b.isStatus))
	})
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// flush sends what p holds to the clients that follow it and empties p.
func (h *Hub) flush(ctx context.Context, p *pending) error {
	head := p.head
	if len(p.batches) > 0 || len(p.errors) > 0 {
		if err := h.cfg.Projections.WaitFor(ctx, head); err != nil {
			return fmt.Errorf("wait for read models at %s: %w", head, err)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	msgs := make([]outMessage, 0, len(p.batches)+len(p.errors))
	for _, m := range p.errors {
		if h.followedLocked(m.tenant, m.batchID) {
			msgs = append(msgs, m)
		}
	}
	var readErr error
	for id, d := range p.batches {
		if !h.followedLocked(d.tenant, id) {
			delete(p.batches, id)
			continue
		}
		st, err := h.cfg.ReadModels.Batch(ctx, d.tenant, id)
		if err != nil {
			if domain.ErrorCode(err) == domain.ENOTFOUND {
				delete(p.batches, id)
				continue
			}
			// Tried again at the next flush; the others go on meanwhile.
			d.retried = true
			readErr = fmt.Errorf("read status of batch %s: %w", id, err)
			continue
		}
		m := statusMessage(st, d.last)
		if d.retried {
			// Its change may lie before the position a client reconnected
			// after (flushed moved past it while it could not be read): it
			// goes to every client following the batch, whatever position
			// it has. A status is the whole state: a second one repeats
			// nothing that matters.
			m = statusMessage(st, head)
			m.always = true
		}
		msgs = append(msgs, m)
		delete(p.batches, id)
	}
	p.errors = p.errors[:0]
	sortMessages(msgs)
	for c := range h.clients {
		for _, m := range msgs {
			if !c.follows(m.tenant, m.batchID) || (!m.always && !c.after.Less(m.pos)) {
				continue
			}
			if c.changed != nil && m.isStatus {
				c.changed[m.batchID] = struct{}{} // its snapshot is being read
				continue
			}
			if !c.push(m, h.cfg.BufferSize) {
				h.dropLocked(c, DropTooSlow)
				break
			}
		}
	}
	if readErr != nil {
		if h.statusFailingSince.IsZero() {
			h.statusFailingSince = time.Now()
		}
		h.statusErr = readErr
	} else {
		h.statusFailingSince, h.statusErr = time.Time{}, nil
	}
	if h.flushed.Less(head) {
		h.flushed = head
	}
	return readErr
}

func (h *Hub) followedLocked(tenant, batchID string) bool {
	for c := range h.clients {
		if c.follows(tenant, batchID) {
			return true
		}
	}
	return false
}

// client is one WebSocket connection's view of the hub.
// Client is one subscriber's view of the hub: its first messages, then a queue
// of live ones, until the hub drops it.
type Client struct {
	tenant string
	// batchID is the batch followed; empty follows every batch of the tenant.
	batchID string
	// after is the last position the client has been given (or has said it saw);
	// later messages at or before it are duplicates. Guarded by Hub.mu.
	after eventstore.Position
	// initial is sent before anything queued in send.
	initial [][]byte
	// changed, while a new client's snapshot is read, collects the batches
	// whose status a flush would have sent it. Guarded by Hub.mu.
	changed map[string]struct{}
	// send hands the queued messages over one at a time (pump).
	send chan []byte
	// gone is closed when the hub drops the client, with why.
	gone    chan struct{}
	dropped bool
	why     Drop
	// quit is closed when the client leaves or is dropped: its pump ends.
	quit     chan struct{}
	quitOnce sync.Once

	// queue holds the live messages waiting for the client, in the order of
	// their positions, from head on. A batch's status still waiting when a
	// newer one comes is dropped from its place (data nil) and the newer one
	// queued at the end (statusAt: where each batch's waiting status is), so
	// a status is a batch's newest and the order stays that of positions: a
	// client that reconnects after the last position it read misses nothing.
	// A tenant with more batches changing within one flush than BufferSize
	// keeps its dashboard, which learns each batch's newest status at its own
	// pace; only errors (each one counts) can fill the queue. Guarded by qmu.
	qmu      sync.Mutex
	queue    []queued
	head     int
	statusAt map[string]int
	errors   int
	ready    chan struct{}
}

// queued is a message waiting in a client's queue.
type queued struct {
	data    []byte
	batchID string
	status  bool
}

// maxStatusesWaiting bounds the batches whose status waits for one client: a
// tenant's dashboard follows its 2,000 busiest batches and more at once.
const maxStatusesWaiting = 10_000

// push queues m for the client; false when the client is too far behind: more
// than limit errors, or statuses of more than maxStatusesWaiting batches,
// wait for it.
func (c *Client) push(m outMessage, limit int) bool {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if m.isStatus {
		if i, ok := c.statusAt[m.batchID]; ok {
			c.queue[i].data = nil // superseded
		}
		c.statusAt[m.batchID] = len(c.queue)
	} else {
		c.errors++
	}
	c.queue = append(c.queue, queued{data: m.data, batchID: m.batchID, status: m.isStatus})
	if c.errors > limit || len(c.statusAt) > maxStatusesWaiting {
		return false
	}
	if waiting := len(c.statusAt) + c.errors; len(c.queue)-c.head > 2*waiting+64 {
		c.compactLocked()
	}
	select {
	case c.ready <- struct{}{}:
	default:
	}
	return true
}

// compactLocked drops the superseded statuses and what was taken from the queue.
func (c *Client) compactLocked() {
	kept := make([]queued, 0, len(c.statusAt)+c.errors)
	for _, q := range c.queue[c.head:] {
		if q.data == nil {
			continue
		}
		if q.status {
			c.statusAt[q.batchID] = len(kept)
		}
		kept = append(kept, q)
	}
	c.queue, c.head = kept, 0
}

// pop takes the first message waiting, if any.
func (c *Client) pop() ([]byte, bool) {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	for c.head < len(c.queue) {
		q := c.queue[c.head]
		c.queue[c.head] = queued{}
		c.head++
		if c.head == len(c.queue) {
			c.queue, c.head = c.queue[:0], 0
		}
		if q.data == nil {
			continue
		}
		if q.status {
			delete(c.statusAt, q.batchID)
		} else {
			c.errors--
		}
		return q.data, true
	}
	return nil, false
}

// pump hands the queued messages to Messages until the client leaves.
func (c *Client) pump() {
	for {
		data, ok := c.pop()
		if !ok {
			select {
			case <-c.ready:
				continue
			case <-c.quit:
				return
			}
		}
		select {
		case c.send <- data:
		case <-c.quit:
			return
		}
	}
}

func (c *Client) stop() { c.quitOnce.Do(func() { close(c.quit) }) }

// Drop says why the hub let a client go.
type Drop int

const (
	// DropTooSlow: the client's queue was full; it fell behind.
	DropTooSlow Drop = iota + 1
	// DropShutdown: the hub stopped.
	DropShutdown
)

// Initial returns the messages to send before any from Messages: the current
// status of what the client follows, or what it missed since its position.
func (c *Client) Initial() [][]byte { return c.initial }

// Messages delivers the live messages, each an encoded JSON message.
func (c *Client) Messages() <-chan []byte { return c.send }

// Gone is closed when the hub drops the client; Why then says why.
func (c *Client) Gone() <-chan struct{} { return c.gone }

// Why says why the client was dropped, once Gone is closed.
func (c *Client) Why() Drop { return c.why }

func (c *Client) follows(tenant, batchID string) bool {
	return c.tenant == tenant && (c.batchID == "" || c.batchID == batchID)
}

func (h *Hub) dropLocked(c *Client, why Drop) {
	if c.dropped {
		return
	}
	c.dropped, c.why = true, why
	close(c.gone)
	c.stop()
	delete(h.clients, c)
}

// Unsubscribe removes a client that went away.
func (h *Hub) Unsubscribe(c *Client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.clients, c)
	c.stop()
}

// Subscription is what a client asks for.
type Subscription struct {
	Tenant  string
	BatchID string // empty: every batch of the tenant
	// After is the last position the client saw, when it reconnects; nil for a
	// fresh start.
	After *eventstore.Position
}

// Subscribe adds a client and computes its first messages: without a position,
// the current status of its batch (or of the tenant's 100 newest); with one,
// what it missed since then. Live messages follow without a gap or duplicate.
// Another tenant's batch, or none, is ENOTFOUND; too much missed is ECONFLICT.
func (h *Hub) Subscribe(ctx context.Context, sub Subscription) (*Client, error) {
	c := &Client{tenant: sub.Tenant, batchID: sub.BatchID, send: make(chan []byte),
		gone: make(chan struct{}), quit: make(chan struct{}), ready: make(chan struct{}, 1),
		statusAt: make(map[string]int)}
	go c.pump()
	var err error
	// A position this hub has not flushed yet is normally just ahead of it
	// (another instance, or an append it is about to apply). One it does not
	// reach soon is from another history: the event store was restored or
	// replaced since the client saw it. Following from there would leave the
	// client silent and skip every change until the log passed it: such a
	// client starts afresh, with the current status.
	if sub.After != nil && h.reaches(ctx, *sub.After, aheadWait) {
		err = h.registerAfter(ctx, c, *sub.After)
	} else {
		err = h.subscribe(ctx, c, sub)
	}
	if err != nil {
		c.stop() // never registered, or dropped: its pump ends
		return nil, err
	}
	return c, nil
}

// subscribe registers c, a client without a position, with its snapshot.
func (h *Hub) subscribe(ctx context.Context, c *Client, sub Subscription) error {
	// Read before the lock: the checkpoint the snapshot is at least as new as.
	cp, err := h.cfg.ReadModels.Checkpoint(ctx)
	if err != nil {
		return fmt.Errorf("read checkpoint: %w", err)
	}
	// Registered first, so that no flush is missed, and the snapshot read
	// without the hub's lock: a slow list query must not hold up every other
	// client's updates and /readyz. Meanwhile flushes queue the client's errors
	// and note the batches whose status changed (see flush), read again below.
	h.mu.Lock()
	if !h.running {
		h.mu.Unlock()
		return errHubStopped
	}
	c.after = h.flushed
	if c.after.Less(cp) {
		c.after = cp
	}
	c.changed = make(map[string]struct{})
	h.clients[c] = struct{}{}
	h.mu.Unlock()

	var snapshot []projections.BatchStatus
	if sub.BatchID != "" {
		var st projections.BatchStatus
		if st, err = h.cfg.ReadModels.Batch(ctx, sub.Tenant, sub.BatchID); err == nil {
			snapshot = append(snapshot, st)
		}
	} else {
		snapshot, _, err = h.cfg.ReadModels.Batches(ctx, projections.ListQuery{Tenant: sub.Tenant, Limit: 100})
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	changed := c.changed
	c.changed = nil
	if err != nil || !h.running {
		// Another tenant's batch, or none (ENOTFOUND), or the hub stopped.
		h.dropLocked(c, DropShutdown)
		if err == nil {
			err = errHubStopped
		}
		return err
	}
	// Statuses that changed while the snapshot was read: read again, in step
	// with the flushes (a few, and only when the snapshot's read was slow).
	fresh := func(id string) (*projections.BatchStatus, error) {
		if _, ok := changed[id]; !ok {
			return nil, nil
		}
		delete(changed, id)
		st, err := h.status(ctx, sub.Tenant, id)
		if err != nil {
			h.dropLocked(c, DropShutdown)
		}
		return st, err
	}
	for _, st := range snapshot {
		again, err := fresh(st.ID)
		if err != nil {
			return err
		}
		if again != nil {
			st = *again
		}
		c.initial = append(c.initial, statusMessage(st, c.after).data)
	}
	for id := range changed { // new since the snapshot was read
		again, err := fresh(id)
		if err != nil {
			return err
		}
		if again != nil {
			c.initial = append(c.initial, statusMessage(*again, c.after).data)
		}
	}
	return nil
}

// aheadWait is how long a reconnecting client's position may stay ahead of what
// the hub has flushed before it is taken for one of another history.
const aheadWait = 2 * time.Second

// reaches reports whether the hub has flushed pos, or does within wait.
func (h *Hub) reaches(ctx context.Context, pos eventstore.Position, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	for {
		h.mu.Lock()
		flushed := h.flushed
		h.mu.Unlock()
		if !flushed.Less(pos) {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// replay gathers what a client missed after a position from the event store.
type replay struct {
	tenant, batchID string
	pos             eventstore.Position
	scanned         int
	last            map[string]eventstore.Position
	errors          []outMessage
}

const replayPage = 512

// maxReplayEvents bounds the events read to find what a reconnecting client
// missed, whoever they belong to; a client further behind starts afresh.
const maxReplayEvents = 100_000

var errReplayTooLong = domain.Errorf(domain.ECONFLICT, "too much happened after the position to replay; reconnect without after and read the batch's errors")

// scan reads events after r.pos up to and including to.
func (h *Hub) scan(ctx context.Context, r *replay, to eventstore.Position) error {
	for r.pos.Less(to) {
		events, err := h.cfg.Events.ReadAll(ctx, r.pos, replayPage)
		if err != nil {
			return fmt.Errorf("read events after %s: %w", r.pos, err)
		}
		if len(events) == 0 {
			return nil
		}
		if r.scanned += len(events); r.scanned > maxReplayEvents {
			return errReplayTooLong
		}
		for _, e := range events {
			if to.Less(e.Position) {
				r.pos = to
				return nil
			}
			r.pos = e.Position
			id, payload, ok, err := projections.Decode(e)
			if err != nil || !ok || payload.Header().Tenant != r.tenant || (r.batchID != "" && r.batchID != id) {
				continue
			}
			r.last[id] = e.Position
			if entry, ok := projections.ErrorEntryOf(payload); ok {
				if len(r.errors) >= h.cfg.MaxReplay {
					return errReplayTooLong
				}
				r.errors = append(r.errors, errorMessage(r.tenant, id, e.Position, entry))
			}
		}
	}
	return nil
}

func (h *Hub) registerAfter(ctx context.Context, c *Client, after eventstore.Position) error {
	if c.batchID != "" {
		// Another tenant's batch, or none: 404 before anything else.
		if _, err := h.cfg.ReadModels.Batch(ctx, c.tenant, c.batchID); err != nil {
			return err
		}
	}
	r := &replay{tenant: c.tenant, batchID: c.batchID, pos: after, last: make(map[string]eventstore.Position)}
	// Most of the way without holding up the hub, the rest under its lock:
	// the scan to what the hub has flushed, and the statuses of the batches
	// it found (the read models include everything flushed), thousands of
	// reads for a dashboard back from a long absence, while every other
	// client's updates and /readyz would wait.
	h.mu.Lock()
	upTo := h.flushed
	h.mu.Unlock()
	if err := h.scan(ctx, r, upTo); err != nil {
		return err
	}
	read := make(map[string]*projections.BatchStatus, len(r.last))
	seen := maps.Clone(r.last)
	for id := range r.last {
		st, err := h.status(ctx, c.tenant, id)
		if err != nil {
			return err
		}
		read[id] = st
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.running {
		return errHubStopped
	}
	if err := h.scan(ctx, r, h.flushed); err != nil {
		return err
	}
	msgs := r.errors
	for id, pos := range r.last {
		st, ok := read[id]
		if !ok || seen[id] != pos {
			// Changed since its status was read: read it again, in step
			// with the flushes.
			var err error
			if st, err = h.status(ctx, c.tenant, id); err != nil {
				return err
			}
		}
		if st != nil {
			msgs = append(msgs, statusMessage(*st, pos))
		}
	}
	sortMessages(msgs)
	for _, m := range msgs {
		c.initial = append(c.initial, m.data)
	}
	c.after = after
	if c.after.Less(h.flushed) {
		c.after = h.flushed
	}
	h.clients[c] = struct{}{}
	return nil
}

// status reads a batch's status for a reconnecting client; nil when it is gone.
func (h *Hub) status(ctx context.Context, tenant, id string) (*projections.BatchStatus, error) {
	st, err := h.cfg.ReadModels.Batch(ctx, tenant, id)
	if err != nil {
		if domain.ErrorCode(err) == domain.ENOTFOUND {
			return nil, nil
		}
		return nil, err
	}
	return &st, nil
}

// FormatPosition writes a position as clients see it: "commit.prepare".
func FormatPosition(p eventstore.Position) string {
	return strconv.FormatUint(p.Commit, 10) + "." + strconv.FormatUint(p.Prepare, 10)
}

// ParsePosition reads what FormatPosition wrote, and nothing else.
func ParsePosition(s string) (eventstore.Position, error) {
	commit, prepare, ok := strings.Cut(s, ".")
	c, err1 := parseDecimal(commit)
	p, err2 := parseDecimal(prepare)
	if !ok || err1 != nil || err2 != nil {
		return eventstore.Position{}, errors.New(`want "<commit>.<prepare>", two whole numbers as sent in a message's position`)
	}
	return eventstore.Position{Commit: c, Prepare: p}, nil
}

func parseDecimal(s string) (uint64, error) {
	if s == "" || (len(s) > 1 && s[0] == '0') || strings.Trim(s, "0123456789") != "" {
		return 0, errors.New("not a canonical decimal")
	}
	return strconv.ParseUint(s, 10, 64)
}
