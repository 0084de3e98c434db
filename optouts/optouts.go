// Package optouts keeps tenants' opt-out lists (suppression lists) in memory:
// the send processor asks it, before every send, whether a number is suppressed
// for a tenant, and the API pages through a tenant's list. The lists are kept as
// events (domain.OptOutChange, one stream per tenant, written by the commands
// in commands/optouts.go); this package is their read side.
//
// # Shape
//
// A tenant's list is read from its stream the first time it is asked for (or
// preloaded at start), then kept current by following the event log
// (eventstore.Follower) from a checkpoint taken at start: a change made on any
// instance reaches every instance's lists within the follower's latency
// (milliseconds: the store wakes it). Events are applied by their revision in
// the tenant's stream, so the follower and the stream reads can overlap and a
// gap is filled by reading the stream. Nothing is read from the start of the
// log at start-up, and tenants never asked about cost nothing.
//
// # Cost
//
// Suppressed is a map lookup and a binary search under a read lock: well under
// a microsecond, no I/O once the tenant is loaded. A number takes 17 bytes (the
// E.164 digits as an integer, the time it opted out, how), held in sorted
// arrays; changes since the last compaction wait in a small map that is merged
// in once it holds a sixteenth of the list, so a flood of changes costs
// O(n log n), not O(n²). Loading a tenant reads its whole stream once, one
// event per change: see the package benchmarks for the time a million takes.
package optouts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
)

// Checker is what the send processor needs: whether a number is suppressed
// for a tenant now. *List implements it.
type Checker interface {
	// Suppressed reports whether phone (E.164) is on tenant's opt-out list. It
	// reflects every change the log has delivered to this instance: those made
	// here at once, those of other instances within the follower's latency.
	// The first call for a tenant reads its list from the store; an error
	// means the list could not be read, and the caller cannot tell (it should
	// hold the message, not send it).
	Suppressed(ctx context.Context, tenant, phone string) (bool, error)
}

// Config configures a List.
type Config struct {
	// Store holds the opt-out streams and is followed for changes. Required.
	Store eventstore.Store
	// From returns the position Run follows the log after: any position at or
	// before the end of the log when Run starts (the read models' checkpoint).
	// Optional; the start of the log when nil.
	From func(ctx context.Context) (eventstore.Position, error)
	// Logger; default discards.
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.From == nil {
		c.From = func(context.Context) (eventstore.Position, error) { return eventstore.Start, nil }
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports what is missing.
func (c Config) Validate() error {
	if c.Store == nil {
		return errors.New("optouts: missing Store")
	}
	return nil
}

// List holds the opt-out lists of the tenants asked about. It is safe for
// concurrent use.
type List struct {
	cfg Config

	mu      sync.Mutex
	tenants map[string]*tenantList

	follower atomic.Pointer[eventstore.Follower] // set by Run
}

var _ Checker = (*List)(nil)

// New returns a List; it reads nothing until asked or run.
func New(cfg Config) (*List, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &List{cfg: cfg, tenants: make(map[string]*tenantList)}, nil
}

// Run follows the event log so that changes made on other instances reach
// these lists, until ctx is done (nil) or the store is closed or damaged.
func (l *List) Run(ctx context.Context) error {
	from, err := l.cfg.From(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("opt-out lists: start position: %w", err)
	}
	l.catchUpHeld(ctx)
	f, err := eventstore.NewFollower(eventstore.FollowerConfig{
		Name: "opt-out lists", Store: l.cfg.Store, After: from, Logger: l.cfg.Logger,
	}, l.apply)
	if err != nil {
		return err
	}
	l.follower.Store(f)
	return f.Run(ctx)
}

// catchUpHeld reads on the streams of the lists read before Run took its
// start position (by a send, or Preload): each covers its stream only up to
// its read, and a change committed after that read and at or before the start
// position would reach it neither from the follower nor from a later read. A
// list whose read fails is read again, from where it stopped, when next asked.
func (l *List) catchUpHeld(ctx context.Context) {
	l.mu.Lock()
	held := make([]*tenantList, 0, len(l.tenants))
	for _, t := range l.tenants {
		held = append(held, t)
	}
	l.mu.Unlock()
	for _, t := range held {
		t.mu.Lock() // waits for a first read under way, which may predate from
		loaded := t.loaded.Load()
		t.mu.Unlock()
		if !loaded {
			continue // its first read is still to come: it reads the stream as it is
		}
		// Read outside the tenant's lock (caughtUp), so that the sends asking
		// about the tenant meanwhile do not wait for the store.
		if _, err := l.caughtUp(ctx, t.tenant); err != nil {
			t.mu.Lock()
			t.loaded.Store(false)
			t.mu.Unlock()
			if ctx.Err() == nil {
				l.cfg.Logger.Warn("opt-out list: reading on at start failed; it is read again when next asked", "tenant", t.tenant, "err", err)
			}
		}
	}
}

// Health is nil while the lists follow the log (or before Run).
func (l *List) Health() error {
	if f := l.follower.Load(); f != nil {
		return f.Health()
	}
	return nil
}

// Suppressed implements Checker.
func (l *List) Suppressed(ctx context.Context, tenant, phone string) (bool, error) {
	t, err := l.loaded(ctx, tenant)
	if err != nil {
		return false, err
	}
	n, ok := encode(phone)
	if !ok {
		return false, nil // never on a list: the commands refuse what does not encode
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	_, listed := t.find(n)
	return listed, nil
}

// Entry is one number on a list.
type Entry struct {
	PhoneNumber string `json:"phoneNumber"`
	// Since is when the number opted out (to the second).
	Since time.Time `json:"since"`
	// Source says how: "keyword" (the recipient texted STOP or a synonym) or
	// "api" (added by hand).
	Source domain.OptOutSource `json:"source"`
}

// Lookup reads what tenant's stream holds beyond the list (one read) and
// reports whether phone is on it and how many events the stream holds, for a
// command to decide on and append after (commands.SuppressionState).
func (l *List) Lookup(ctx context.Context, tenant, phone string) (listed bool, events uint64, err error) {
	_, listed, events, err = l.get(ctx, tenant, phone)
	return listed, events, err
}

// Get returns phone's entry in tenant's list, read up to date with its stream.
func (l *List) Get(ctx context.Context, tenant, phone string) (Entry, bool, error) {
	e, listed, _, err := l.get(ctx, tenant, phone)
	return e, listed, err
}

func (l *List) get(ctx context.Context, tenant, phone string) (entry Entry, listed bool, events uint64, err error) {
	t, err := l.caughtUp(ctx, tenant)
	if err != nil {
		return Entry{}, false, 0, err
	}
	n, ok := encode(phone)
	t.mu.RLock()
	defer t.mu.RUnlock()
	if !ok {
		return Entry{}, false, t.next, nil
	}
	m, listed := t.find(n)
	if listed {
		entry = m.entry(n)
	}
	return entry, listed, t.next, nil
}

// Page is one page of a list, in number order.
type Page struct {
	Entries []Entry
	// NextCursor continues the list; empty on the last page.
	NextCursor string
	// Total is how many numbers the list holds.
	Total int
}

// Page returns up to limit numbers of tenant's list after the cursor (the
// NextCursor of the previous page; "" for the first), read up to date with
// the tenant's stream.
func (l *List) Page(ctx context.Context, tenant, cursor string, limit int) (Page, error) {
	var after uint64
	if cursor != "" {
		// The cursor is the last number's digits; a "+" before them (as
		// cursors were once written) may arrive decoded from a query as a space.
		n, ok := encode("+" + strings.TrimLeft(cursor, "+ "))
		if !ok {
			return Page{}, &domain.Error{Code: domain.EINVALID, Message: "invalid cursor",
				Details: []domain.FieldProblem{{Field: "cursor", Problem: "not a cursor this list returned"}}}
		}
		after = n
	}
	t, err := l.caughtUp(ctx, tenant)
	if err != nil {
		return Page{}, err
	}
	t.mu.Lock() // compacting changes the arrays
	defer t.mu.Unlock()
	t.compact()
	i, _ := slices.BinarySearch(t.nums, after+1)
	end := min(i+limit, len(t.nums))
	p := Page{Entries: make([]Entry, 0, end-i), Total: len(t.nums)}
	for j := i; j < end; j++ {
		p.Entries = append(p.Entries, meta{since: t.since[j], src: t.src[j]}.entry(t.nums[j]))
	}
	if end < len(t.nums) && end > i {
		p.NextCursor = strings.TrimPrefix(decode(t.nums[end-1]), "+") // safe in a URL as it is
	}
	return p, nil
}

// Preload reads the lists of tenants, so that their first sends do not wait
// for it; a failure is logged, and the list is read again when asked for.
func (l *List) Preload(ctx context.Context, tenants ...string) {
	for _, tenant := range tenants {
		start := time.Now()
		t, err := l.loaded(ctx, tenant)
		if err != nil {
			if ctx.Err() == nil {
				l.cfg.Logger.Warn("opt-out list: preload failed; it is read when first needed", "tenant", tenant, "err", err)
			}
			continue
		}
		t.mu.RLock()
		n := len(t.nums) + len(t.delta)
		t.mu.RUnlock()
		l.cfg.Logger.Debug("opt-out list loaded", "tenant", tenant, "numbers", n, "took", time.Since(start))
	}
}

// tenant returns the entry of tenant's list, created empty and unloaded.
func (l *List) tenant(tenant string) *tenantList {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.tenants[tenant]
	if t == nil {
		t = &tenantList{tenant: tenant, delta: make(map[uint64]meta)}
		l.tenants[tenant] = t
	}
	return t
}

// loaded returns tenant's list, reading it from its stream if it is not held
// yet. Concurrent callers wait for one read.
func (l *List) loaded(ctx context.Context, tenant string) (*tenantList, error) {
	t := l.tenant(tenant)
	if t.loaded.Load() {
		return t, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.loaded.Load() {
		return t, nil
	}
	if err := t.readStream(ctx, l.cfg.Store); err != nil {
		return nil, err
	}
	t.compact()
	t.loaded.Store(true)
	return t, nil
}

// caughtUp returns tenant's list with whatever its stream holds beyond it
// read. The read happens outside the lock, so that the sends asking about the
// tenant meanwhile do not wait for it.
func (l *List) caughtUp(ctx context.Context, tenant string) (*tenantList, error) {
	t, err := l.loaded(ctx, tenant)
	if err != nil {
		return nil, err
	}
	stream := domain.OptOutStream(tenant)
	for {
		t.mu.RLock()
		from := t.next
		t.mu.RUnlock()
		events, err := l.cfg.Store.ReadStream(ctx, stream, from, readPage)
		if err != nil {
			return nil, fmt.Errorf("read opt-out list of %s: %w", tenant, err)
		}
		t.mu.Lock()
		err = t.applyNext(events) // the follower may have applied some since
		t.mu.Unlock()
		if err != nil {
			return nil, err
		}
		if len(events) < readPage {
			return t, nil
		}
	}
}

// apply is the follower's handler: it applies the opt-out events of the
// tenants held, in their streams' order.
func (l *List) apply(ctx context.Context, events []eventstore.Event) error {
	for _, e := range events {
		tenant, ok := strings.CutPrefix(e.Stream, domain.OptOutStreamPrefix)
		if !ok {
			continue
		}
		l.mu.Lock()
		t := l.tenants[tenant]
		l.mu.Unlock()
		if t == nil {
			continue // never asked for: its first read takes the stream as it is
		}
		if err := t.follow(ctx, l.cfg.Store, e); err != nil {
			if errors.Is(err, errDamaged) {
				// Only this tenant's list is wrong (follow set it to be read
				// again, which fails too, so its sends wait: none is made
				// against a list that may miss a STOP); the other tenants'
				// changes go on arriving.
				l.cfg.Logger.Error("opt-out list: an event cannot be read; the tenant's sends wait until it can", "tenant", tenant, "err", err)
				continue
			}
			return err
		}
	}
	return nil
}

// readPage is how many events one stream read asks for.
const readPage = 1000

// tenantList is one tenant's list: numbers in sorted arrays, and the changes
// not merged into them yet.
type tenantList struct {
	tenant string
	loaded atomic.Bool

	mu sync.RWMutex
	// next is the number of the stream's events applied: the revision of the
	// next one.
	next uint64
	// nums, since and src are the listed numbers (sorted), when each opted out
	// (Unix seconds) and how, as of the last compaction.
	nums  []uint64
	since []int64
	src   []uint8
	// delta holds the changes since: a number listed (meta.out) or taken off.
	delta map[uint64]meta
}

// meta is a number's state in the delta, or an entry's details.
type meta struct {
	out   bool
	since int64
	src   uint8
}

var sources = []domain.OptOutSource{domain.OptOutByAPI, domain.OptOutByKeyword}

func sourceCode(s domain.OptOutSource) uint8 {
	if i := slices.Index(sources, s); i >= 0 {
		return uint8(i)
	}
	return 0
}

func (m meta) entry(n uint64) Entry {
	src := domain.OptOutByAPI
	if int(m.src) < len(sources) {
		src = sources[m.src]
	}
	return Entry{PhoneNumber: decode(n), Since: time.Unix(m.since, 0).UTC(), Source: src}
}

// find reports whether n is listed, with its details. Callers hold mu.
func (t *tenantList) find(n uint64) (meta, bool) {
	if m, ok := t.delta[n]; ok {
		return m, m.out
	}
	i, ok := slices.BinarySearch(t.nums, n)
	if !ok {
		return meta{}, false
	}
	return meta{out: true, since: t.since[i], src: t.src[i]}, true
}

// change applies one change. A number opting out while listed keeps its first
// opt-out; one opting in while not listed changes nothing. Callers hold mu.
func (t *tenantList) change(c domain.OptOutChange) {
	n, ok := encode(c.Phone)
	if !ok {
		return
	}
	if _, listed := t.find(n); listed == c.OptedOut {
		return
	}
	t.delta[n] = meta{out: c.OptedOut, since: c.At.Unix(), src: sourceCode(c.Source)}
	if t.loaded.Load() && len(t.delta) > max(4096, len(t.nums)/16) {
		t.compact()
	}
}

// compact merges the delta into the sorted arrays. Callers hold mu.
func (t *tenantList) compact() {
	if len(t.delta) == 0 {
		return
	}
	keys := make([]uint64, 0, len(t.delta))
	for n := range t.delta {
		keys = append(keys, n)
	}
	slices.Sort(keys)
	size := len(t.nums)
	for _, n := range keys {
		if t.delta[n].out {
			size++
		}
	}
	nums, since, src := make([]uint64, 0, size), make([]int64, 0, size), make([]uint8, 0, size)
	i := 0
	for _, n := range keys {
		for i < len(t.nums) && t.nums[i] < n {
			nums, since, src = append(nums, t.nums[i]), append(since, t.since[i]), append(src, t.src[i])
			i++
		}
		if i < len(t.nums) && t.nums[i] == n {
			i++ // replaced by the change
		}
		if m := t.delta[n]; m.out {
			nums, since, src = append(nums, n), append(since, m.since), append(src, m.src)
		}
	}
	nums, since, src = append(nums, t.nums[i:]...), append(since, t.since[i:]...), append(src, t.src[i:]...)
	t.nums, t.since, t.src = nums, since, src
	t.delta = make(map[uint64]meta) // clear would keep a big map's memory
}

// readStream applies the tenant's events from revision next on. Callers hold mu.
func (t *tenantList) readStream(ctx context.Context, store eventstore.Store) error {
	stream := domain.OptOutStream(t.tenant)
	for {
		events, err := store.ReadStream(ctx, stream, t.next, readPage)
		if err != nil {
			return fmt.Errorf("read opt-out list of %s: %w", t.tenant, err)
		}
		if err := t.applyNext(events); err != nil {
			return err
		}
		if len(events) < readPage {
			return nil
		}
	}
}

// applyNext applies the events of a stream read that come next, skipping those
// applied already. Callers hold mu.
func (t *tenantList) applyNext(events []eventstore.Event) error {
	for _, e := range events {
		if e.Revision != t.next {
			continue
		}
		if err := t.applyEvent(e); err != nil {
			return err
		}
	}
	return nil
}

// follow applies one event the follower delivered: the next of the stream, or
// one already applied (a stream read got there first), or one past a gap,
// which the stream fills.
func (t *tenantList) follow(ctx context.Context, store eventstore.Store, e eventstore.Event) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var err error
	switch {
	case !t.loaded.Load(), e.Revision < t.next:
		return nil // a load to come, or done, reads it from the stream
	case e.Revision == t.next:
		err = t.applyEvent(e)
	default:
		err = t.readStream(ctx, store)
	}
	if errors.Is(err, errDamaged) {
		// Read again from the stream when next asked, which fails too
		// until the event can be read: the tenant's sends wait.
		t.loaded.Store(false)
	}
	return err
}

func (t *tenantList) applyEvent(e eventstore.Event) error {
	c, err := domain.DecodeOptOutChange(e.Type, e.Data)
	if err != nil {
		// A damaged event cannot be skipped: the list would be wrong for good.
		return fmt.Errorf("opt-out list of %s, revision %d: %w: %w", t.tenant, e.Revision, errDamaged, err)
	}
	t.change(c)
	t.next = e.Revision + 1
	return nil
}

// errDamaged marks an opt-out event this version cannot read.
var errDamaged = errors.New("an event that cannot be read")

// encode turns an E.164 number into the integer of its digits: unique, as no
// country code starts with 0, and at most 15 digits fit in 50 bits.
func encode(phone string) (uint64, bool) {
	digits, ok := strings.CutPrefix(phone, "+")
	if !ok || len(digits) == 0 || len(digits) > 15 || digits[0] == '0' {
		return 0, false
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	return n, err == nil
}

func decode(n uint64) string { return "+" + strconv.FormatUint(n, 10) }
