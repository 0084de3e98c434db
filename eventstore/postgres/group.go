package postgres

import (
	"context"
	"runtime"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/smsbatch/smsbatch/eventstore"
)

// maxGroup and maxGroupEvents bound what one transaction of appends holds, so that
// a flood of appends does not make one commit (and the wait of its first append)
// grow without limit. An append bigger than maxGroupEvents goes alone.
const (
	maxGroup       = 64
	maxGroupEvents = 2000
)

// enqueue queues r and reports whether its caller is to lead. Appends are written
// by leaders, at most Options.Writers at a time, each running one transaction after
// another. An append that finds no leader running leads itself: a lone appender
// writes its append at once, in its own goroutine. The appends that come while a
// leader is busy wait in the queue, and the next transaction a leader starts takes
// them all: one round trip and one commit for many appends, as many appenders need
// when each commit waits for the disk. Another leader starts beside the running
// ones only for parallelEvents waiting events, or for an append that waited
// promoteAfter.
func (s *Store) enqueue(r *appendRequest) (lead bool, err error) {
	s.queueMu.Lock()
	defer s.queueMu.Unlock()
	if s.stopped {
		return false, eventstore.ErrClosed
	}
	s.queue = append(s.queue, r)
	s.queuedEvents += len(r.events)
	select {
	case s.arrived <- struct{}{}:
	default:
	}
	if s.leaders == 0 || s.leaders < s.maxLeaders && s.queuedEvents >= parallelEvents {
		s.leaders++
		s.leading.Add(1)
		return true, nil
	}
	return false, nil
}

// promote makes its caller a leader if fewer than Options.Writers lead, appends
// wait and the Store is not closing, and reports whether it did.
func (s *Store) promote() bool {
	s.queueMu.Lock()
	defer s.queueMu.Unlock()
	if s.stopped || s.leaders >= s.maxLeaders || len(s.queue) == 0 {
		return false
	}
	s.leaders++
	s.leading.Add(1)
	return true
}

// promoteAfter is how long an append waits behind a running transaction of appends
// before it starts one of its own beside it (see promote): a transaction that takes
// longer than its commit should (waiting for a stream's lock, for a slow disk, or
// for a test holding it open) must not hold every other append of the Store.
const promoteAfter = 5 * time.Millisecond

// parallelEvents is how many events must wait before a second transaction of
// appends starts beside a running one. Below, the appends cost the server little
// next to the running transaction's commit, and waiting to join the next group
// makes fewer commits than starting one of their own: eight appenders of one
// event each went about a quarter faster this way than with two transactions at a
// time (on 2 cores). Above, the work of inserting them is worth spreading over more
// than one connection.
const parallelEvents = 32

// lead writes groups of queued appends until the queue is empty. Once own (which
// may be nil) is answered while appends still wait, it hands the lead on to a new
// goroutine, so that its caller does not wait for others' appends.
func (s *Store) lead(own *appendRequest) {
	for {
		s.queueMu.Lock()
		concurrent := s.concurrent
		s.queueMu.Unlock()
		if concurrent {
			// Appenders answered by the last commit are runnable now and about
			// to append again: let them, so that they join the next group instead
			// of following it alone.
			runtime.Gosched()
		}
		s.linger()
		s.commit(s.take())
		s.queueMu.Lock()
		if len(s.queue) == 0 {
			s.leaders--
			s.queueMu.Unlock()
			s.leading.Done()
			return
		}
		s.queueMu.Unlock()
		if own != nil && isDone(own) {
			go s.lead(nil)
			return
		}
	}
}

// linger holds the leader back while every queued append may wait for others
// to share its commit (eventstore.WithCommitDelay), until the first of them has
// waited its delay, the group would be full, one that may not wait comes, or
// the Store closes (Close waits for the leaders: the group commits at once). At
// a paced rate appends come one at a time from many batches, and from several
// instances each committing its own: a transaction, a round trip and a commit
// each, where one would carry them all.
func (s *Store) linger() {
	for {
		s.queueMu.Lock()
		until, ok := s.lingerUntilLocked()
		s.queueMu.Unlock()
		wait := time.Until(until)
		if !ok || wait <= 0 {
			return
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-s.arrived:
		}
		t.Stop()
	}
}

// lingerUntilLocked is when the queued appends stop waiting for company, and
// whether they all may wait at all; queueMu is held.
func (s *Store) lingerUntilLocked() (time.Time, bool) {
	if s.stopped || len(s.queue) == 0 || len(s.queue) >= maxGroup || s.queuedEvents >= maxGroupEvents {
		return time.Time{}, false
	}
	until := s.queue[0].waitUntil
	for _, r := range s.queue {
		if r.waitUntil.IsZero() {
			return time.Time{}, false
		}
		if r.waitUntil.Before(until) {
			until = r.waitUntil
		}
	}
	return until, true
}

// take removes the next group from the queue: the appends in it, in the order
// they came, up to maxGroup of them and maxGroupEvents events (at least one append
// unless another leader took them all).
func (s *Store) take() []*appendRequest {
	s.queueMu.Lock()
	defer s.queueMu.Unlock()
	n, events := 0, 0
	for n < len(s.queue) && n < maxGroup && (n == 0 || events+len(s.queue[n].events) <= maxGroupEvents) {
		if n > 0 && s.appendDelay != nil {
			break
		}
		events += len(s.queue[n].events)
		n++
	}
	group := slices.Clone(s.queue[:n])
	s.queuedEvents -= events
	clear(s.queue[:n])
	s.queue = s.queue[n:]
	s.concurrent = n > 1
	return group
}

func isDone(r *appendRequest) bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// answer is the outcome of one append of a group.
type answer struct {
	result eventstore.AppendResult
	err    error
}

// commit writes a group of appends in one transaction and answers each of them. An
// append whose stream is not at the expected revision writes nothing and does not
// stop the others. When the transaction fails (a reused event ID, a lost
// connection), each append is written again in a transaction of its own, so that
// only the one at fault fails; an append of the failed transaction that did commit
// after all is then recognised as retried.
func (s *Store) commit(group []*appendRequest) {
	live := group[:0]
	for _, r := range group {
		if err := r.ctx.Err(); err != nil {
			r.finish(eventstore.AppendResult{}, err)
			continue
		}
		live = append(live, r)
	}
	if len(live) == 0 {
		return
	}
	if s.groupHook != nil {
		s.groupHook(len(live))
	}
	ctx, cancel := groupContext(live)
	defer cancel()
	answers, err := s.run(ctx, live)
	if err != nil {
		if len(live) == 1 {
			live[0].finish(eventstore.AppendResult{}, err)
			return
		}
		for _, r := range live {
			s.commit([]*appendRequest{r})
		}
		return
	}
	wrote := false
	for i, r := range live {
		r.finish(answers[i].result, answers[i].err)
		wrote = wrote || answers[i].err == nil
	}
	if wrote {
		s.notify()
	}
}

// groupContext returns the context a group's transaction runs in: the append's
// own for one append; for more, one that keeps the first append's values and ends
// once every append's context has ended, as the transaction then has nobody left
// to answer.
func groupContext(group []*appendRequest) (context.Context, context.CancelFunc) {
	if len(group) == 1 {
		return group[0].ctx, func() {}
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(group[0].ctx))
	var waiting atomic.Int64
	waiting.Store(int64(len(group)))
	stops := make([]func() bool, len(group))
	for i, r := range group {
		stops[i] = context.AfterFunc(r.ctx, func() {
			if waiting.Add(-1) == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}

// run writes the group's appends in one transaction: their statements go in one
// batch, which PostgreSQL runs as one implicit transaction, committed at its end.
// With the test hook set, groups have one append, run in an explicit transaction
// so that the hook can hold it open.
func (s *Store) run(ctx context.Context, group []*appendRequest) ([]answer, error) {
	if len(group) == 1 && s.appendDelay == nil {
		// A batch of one costs pgx more than a query.
		sql, args := group[0].statement()
		a, err := s.scanAppend(ctx, s.pool.QueryRow(ctx, sql, args...))
		if err != nil {
			return nil, err
		}
		return []answer{a}, nil
	}
	b := &pgx.Batch{}
	if len(group) > 1 {
		streams := make([]string, len(group))
		for i, r := range group {
			streams[i] = r.stream
		}
		b.Queue(lockStreamsSQL, streams)
	}
	for _, r := range group {
		sql, args := r.statement()
		b.Queue(sql, args...)
	}
	if s.appendDelay == nil {
		br := s.pool.SendBatch(ctx, b)
		answers, err := s.scanGroup(ctx, br, group)
		if closeErr := br.Close(); err == nil && closeErr != nil {
			err = s.opErr(ctx, "commit", closeErr)
		}
		return answers, err
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, s.opErr(ctx, "begin", err)
	}
	// Rollback after Commit is a no-op; on every other path it drops the append.
	defer tx.Rollback(context.WithoutCancel(ctx))
	br := tx.SendBatch(ctx, b)
	answers, err := s.scanGroup(ctx, br, group)
	if closeErr := br.Close(); err == nil && closeErr != nil {
		err = s.opErr(ctx, "insert events", closeErr)
	}
	if err != nil {
		return nil, err
	}
	if answers[0].err == nil {
		if err := s.appendDelay(group[0].ctx); err != nil {
			return nil, err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, s.opErr(ctx, "commit", err)
	}
	return answers, nil
}

// scanGroup reads the answers of a group's statements (after its locks, for more
// than one append). An error other than errNotAppended fails the group.
func (s *Store) scanGroup(ctx context.Context, br pgx.BatchResults, group []*appendRequest) ([]answer, error) {
	if len(group) > 1 {
		if _, err := br.Exec(); err != nil {
			return nil, s.opErr(ctx, "lock streams", err)
		}
	}
	answers := make([]answer, len(group))
	for i := range answers {
		a, err := s.scanAppend(ctx, br.QueryRow())
		if err != nil {
			return nil, err
		}
		answers[i] = a
	}
	return answers, nil
}
