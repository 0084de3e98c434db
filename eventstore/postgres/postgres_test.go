package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/eventstoretest"
	"github.com/smsbatch/smsbatch/eventstore/postgres"
	"github.com/smsbatch/smsbatch/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func open(t testing.TB, url string, opts postgres.Options) *postgres.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := postgres.Open(ctx, url, opts)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestContract(t *testing.T) {
	eventstoretest.Run(t, func(t *testing.T) eventstore.Store {
		return open(t, pgtest.Database(t), postgres.Options{})
	})
}

func TestDurability(t *testing.T) {
	var mu sync.Mutex
	urls := map[string]string{} // the suite's directory -> its database
	eventstoretest.RunDurability(t, func(t *testing.T, dir string) eventstore.Store {
		mu.Lock()
		url, ok := urls[dir]
		if !ok {
			url = pgtest.Database(t)
			urls[dir] = url
		}
		mu.Unlock()
		return open(t, url, postgres.Options{})
	})
}

func TestOpenAppliesMigrationsOnce(t *testing.T) {
	url := pgtest.Database(t)
	s := open(t, url, postgres.Options{})
	ctx := t.Context()
	res, err := s.Append(ctx, "s", eventstore.NoStream(), []eventstore.EventData{{ID: uuid.NewString(), Type: "T", Data: []byte(`{}`)}})
	if err != nil {
		t.Fatal(err)
	}
	// A second instance on the same database finds the schema and the event.
	other := open(t, url, postgres.Options{})
	got, err := other.ReadStream(ctx, "s", 0, 10)
	if err != nil || len(got) != 1 || got[0].Position != res.Position {
		t.Fatalf("second instance reads %v, %v; want the event at %s", got, err, res.Position)
	}
}

func TestOpenFailureIsUnavailableAndHidesPassword(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	// Port 1: nothing listens there.
	_, err := postgres.Open(ctx, "postgres://smsbatch:s3cretPassw0rd@127.0.0.1:1/smsbatch?sslmode=disable&connect_timeout=2", postgres.Options{})
	if err == nil {
		t.Fatal("open of an unreachable server succeeded")
	}
	if !errors.Is(err, eventstore.ErrUnavailable) {
		t.Errorf("open of an unreachable server: %v, want ErrUnavailable", err)
	}
	if strings.Contains(err.Error(), "s3cretPassw0rd") {
		t.Errorf("error shows the password: %v", err)
	}
}

func TestReusedEventIDIsRefused(t *testing.T) {
	s := open(t, pgtest.Database(t), postgres.Options{})
	eventstoretest.ReusedIDIsRefused(t, s)
}

// commitPlan tells the append hook what to do with one append: wait, then commit
// or roll back.
type commitPlan struct {
	delay    time.Duration
	rollback bool
	entered  chan struct{} // closed when the append reaches the hook, if set
	release  chan struct{} // the hook waits for it, if set
}

type planKey struct{}

var errRolledBack = errors.New("rolled back by the test")

// plannedStore opens a store whose appends follow the commitPlan in their context.
func plannedStore(t *testing.T, url string, opts postgres.Options) *postgres.Store {
	s := open(t, url, opts)
	postgres.SetAppendDelay(s, func(ctx context.Context) error {
		p, ok := ctx.Value(planKey{}).(*commitPlan)
		if !ok {
			return nil
		}
		if p.entered != nil {
			close(p.entered)
		}
		if p.release != nil {
			<-p.release
		}
		time.Sleep(p.delay)
		if p.rollback {
			return errRolledBack
		}
		return nil
	})
	return s
}

// recorder collects what a subscription hands over.
type recorder struct {
	mu     sync.Mutex
	events []eventstore.Event
}

func (r *recorder) handle(_ context.Context, page []eventstore.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, page...)
	return nil
}

func (r *recorder) got() []eventstore.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]eventstore.Event(nil), r.events...)
}

// waitFor waits until the recorder holds at least n events, or fails the test.
func (r *recorder) waitFor(t *testing.T, n int, within time.Duration) []eventstore.Event {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := r.got()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("subscription delivered %d events within %s, want %d", len(got), within, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func subscribe(t *testing.T, s eventstore.Store) *recorder {
	r := &recorder{}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- eventstore.Subscribe(ctx, s, eventstore.Start, 64, r.handle) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("subscription ended with %v", err)
		}
	})
	return r
}

// TestLateCommitsAreDeliveredInOrder is the torture test of the global order: 16
// appenders whose transactions commit after random delays, some rolling back, while
// a subscription follows. It must see every committed event once, no rolled-back
// one, and every stream's events in revision order with none missing.
func TestLateCommitsAreDeliveredInOrder(t *testing.T) {
	s := plannedStore(t, pgtest.Database(t), postgres.Options{})
	rec := subscribe(t, s)

	const workers, appendsPerWorker, sharedStreams = 16, 30, 4
	var (
		mu         sync.Mutex
		committed  = map[string]bool{}
		rolledBack = map[string]bool{}
		wg         sync.WaitGroup
	)
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			for i := range appendsPerWorker {
				// Half the appends go to streams all workers share (Any), half to
				// the worker's own stream (Any too: a rolled-back append leaves no
				// revision behind to track).
				stream := "shared-" + strconv.Itoa(rng.IntN(sharedStreams))
				if rng.IntN(2) == 0 {
					stream = "own-" + strconv.Itoa(w)
				}
				evs := make([]eventstore.EventData, 1+rng.IntN(3))
				for k := range evs {
					evs[k] = eventstore.EventData{ID: uuid.NewString(), Type: "Step", Data: fmt.Appendf(nil, `{"w":%d,"i":%d,"k":%d}`, w, i, k)}
				}
				plan := &commitPlan{delay: time.Duration(rng.IntN(30)) * time.Millisecond, rollback: rng.IntN(8) == 0}
				_, err := s.Append(context.WithValue(t.Context(), planKey{}, plan), stream, eventstore.Any(), evs)
				mu.Lock()
				for _, e := range evs {
					switch {
					case err == nil:
						committed[e.ID] = true
					case errors.Is(err, errRolledBack):
						rolledBack[e.ID] = true
					}
				}
				mu.Unlock()
				if err != nil && !errors.Is(err, errRolledBack) {
					t.Errorf("append: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if len(rolledBack) == 0 {
		t.Fatal("no append rolled back: the test proves nothing about rollbacks")
	}

	rec.waitFor(t, len(committed), 30*time.Second)
	// Anything extra (a duplicate, a rolled-back event) would arrive by now too.
	time.Sleep(2 * postgres.DefaultPollInterval)
	got := rec.got()

	seen := map[string]int{}
	next := map[string]uint64{}
	for i, e := range got {
		seen[e.ID]++
		if rolledBack[e.ID] {
			t.Fatalf("delivered event %s of a rolled-back append", e.ID)
		}
		if !committed[e.ID] {
			t.Fatalf("delivered event %s that no append acknowledged", e.ID)
		}
		if e.Revision != next[e.Stream] {
			t.Fatalf("event %d: %s revision %d delivered when revision %d was next", i, e.Stream, e.Revision, next[e.Stream])
		}
		next[e.Stream]++
		if i > 0 && !got[i-1].Position.Less(e.Position) {
			t.Fatalf("event %d at %s delivered after one at %s", i, e.Position, got[i-1].Position)
		}
	}
	for id := range committed {
		if seen[id] != 1 {
			t.Fatalf("committed event %s delivered %d times", id, seen[id])
		}
	}
	t.Logf("%d events committed, %d rolled back, all delivered once in order", len(committed), len(rolledBack))
}

// TestOpenTransactionDelaysDeliveryButLosesNothing: events written after another
// transaction began are not delivered while it runs (it could still commit events
// that sort before them), and all of them are once it ends.
func TestOpenTransactionDelaysDeliveryButLosesNothing(t *testing.T) {
	url := pgtest.Database(t)
	s := plannedStore(t, url, postgres.Options{})
	ctx := t.Context()
	rec := subscribe(t, s)
	step := func() []eventstore.EventData {
		return []eventstore.EventData{{ID: uuid.NewString(), Type: "Step", Data: []byte(`{}`)}}
	}
	const quiet = 3 * postgres.DefaultPollInterval

	// Another client holds a transaction open.
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT pg_current_xact_id()"); err != nil {
		t.Fatal(err)
	}
	first := step()
	if _, err := s.Append(ctx, "a", eventstore.NoStream(), first); err != nil {
		t.Fatal(err)
	}
	time.Sleep(quiet)
	if got := rec.got(); len(got) != 0 {
		t.Fatalf("delivered %d events while an older transaction was open", len(got))
	}
	if got, err := s.ReadStream(ctx, "a", 0, 10); err != nil || len(got) != 1 {
		t.Fatalf("read stream while an older transaction was open: %d events, %v; want the committed one", len(got), err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rec.waitFor(t, 1, 5*time.Second); got[0].ID != first[0].ID {
		t.Fatalf("delivered %s, want %s", got[0].ID, first[0].ID)
	}

	// An append that began first and commits last is delivered before the later
	// ones that committed while it was open.
	late := &commitPlan{entered: make(chan struct{}), release: make(chan struct{})}
	lateEvents := step()
	lateDone := make(chan error, 1)
	go func() {
		_, err := s.Append(context.WithValue(ctx, planKey{}, late), "b", eventstore.NoStream(), lateEvents)
		lateDone <- err
	}()
	<-late.entered
	var early []eventstore.EventData
	for range 3 {
		evs := step()
		if _, err := s.Append(ctx, "c", eventstore.Any(), evs); err != nil {
			t.Fatal(err)
		}
		early = append(early, evs...)
	}
	time.Sleep(quiet)
	if got := rec.got(); len(got) != 1 {
		t.Fatalf("delivered %d events while an older append was open, want only the first one", len(got))
	}
	close(late.release)
	if err := <-lateDone; err != nil {
		t.Fatal(err)
	}
	got := rec.waitFor(t, 5, 5*time.Second)
	want := []string{first[0].ID, lateEvents[0].ID, early[0].ID, early[1].ID, early[2].ID}
	for i, e := range got {
		if i >= len(want) || e.ID != want[i] {
			t.Fatalf("delivered %v, want %v", eventIDs(got), want)
		}
	}
}

// TestListenerReconnects: when the server drops the store's connections, the
// listener reconnects and appends wake waiters again by notification alone.
func TestListenerReconnects(t *testing.T) {
	url := pgtest.Database(t)
	// Poll so rarely that only a notification can wake the waiter in time.
	s := open(t, url, postgres.Options{PollInterval: time.Hour})
	ctx := t.Context()
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())

	listening := func() int {
		var n int
		if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND query = 'LISTEN `+postgres.Channel+`'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitListening := func() {
		deadline := time.Now().Add(10 * time.Second)
		for listening() != 1 {
			if time.Now().After(deadline) {
				t.Fatal("the store's listener did not (re)connect within 10s")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitListening()
	if _, err := admin.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()`); err != nil {
		t.Fatal(err)
	}
	waitListening()

	res := appendRetrying(t, s, "s", []eventstore.EventData{{ID: uuid.NewString(), Type: "T", Data: []byte(`{}`)}})
	woke := make(chan error, 1)
	go func() { woke <- s.WaitForEvents(ctx, eventstore.Start) }()
	select {
	case err := <-woke:
		if err != nil {
			t.Fatalf("wait: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("an event already there did not end the wait")
	}

	go func() { woke <- s.WaitForEvents(ctx, res.Position) }()
	time.Sleep(50 * time.Millisecond)
	appendRetrying(t, s, "s", []eventstore.EventData{{ID: uuid.NewString(), Type: "T", Data: []byte(`{}`)}})
	select {
	case err := <-woke:
		if err != nil {
			t.Fatalf("wait: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("an append after the listener reconnected did not wake the waiter")
	}
}

// appendRetrying appends with Any, retrying while the store says it is unavailable
// (connections the server dropped are found dead on first use).
func appendRetrying(t *testing.T, s eventstore.Store, stream string, evs []eventstore.EventData) eventstore.AppendResult {
	t.Helper()
	for range 20 {
		res, err := s.Append(t.Context(), stream, eventstore.Any(), evs)
		if err == nil {
			return res
		}
		if !errors.Is(err, eventstore.ErrUnavailable) {
			t.Fatalf("append: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("append still unavailable after 20 tries")
	return eventstore.AppendResult{}
}

func eventIDs(evs []eventstore.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.ID
	}
	return out
}

// Waiting for events asks whether one is there after a position many times a
// second; planned once for all values (as a prepared statement is, after a
// few runs), it must walk the global-order index from the position, not scan
// the table: a scan took 25 ms at 100,000 events and most of the server's
// CPU under load.
func TestWaitingForEventsWalksTheIndex(t *testing.T) {
	url := pgtest.Database(t)
	s := open(t, url, postgres.Options{})
	ctx := t.Context()
	for i := range 100 {
		events := make([]eventstore.EventData, 200)
		for k := range events {
			events[k] = eventstore.EventData{ID: uuid.NewString(), Type: "T", Data: []byte(`{}`)}
		}
		if _, err := s.Append(ctx, fmt.Sprintf("s-%d", i), eventstore.NoStream(), events); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, stmt := range []string{
		"ANALYZE events",
		"SET plan_cache_mode = force_generic_plan",
		"PREPARE readable(text, bigint) AS " + postgres.ReadableQuery,
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	rows, err := conn.Query(ctx, "EXPLAIN EXECUTE readable('1', 0)", pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	plan := strings.Join(lines, "\n")
	if strings.Contains(plan, "Seq Scan") || !strings.Contains(plan, "events_global_order") {
		t.Fatalf("the generic plan does not walk events_global_order:\n%s", plan)
	}
}

// A database copied logically into another cluster keeps each event's
// transaction ID, its position, while the new cluster counts from lower down:
// its new events sorted before the old ones and a follower at an old position
// skipped them for good. Open refuses such a database, and says why; the
// database it was copied from opens as ever.
func TestOpenRefusesEventsFromAnotherClustersTransactions(t *testing.T) {
	url := pgtest.Database(t)
	ctx := t.Context()
	s := open(t, url, postgres.Options{})
	if _, err := s.Append(ctx, "a", eventstore.NoStream(), []eventstore.EventData{{ID: uuid.NewString(), Type: "T", Data: []byte(`{}`)}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	reopened := open(t, url, postgres.Options{})
	if err := reopened.Close(); err != nil {
		t.Fatal(err)
	}

	// As a restore into a younger cluster leaves it: an event written by a
	// transaction a million IDs past this server's counter.
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `INSERT INTO streams VALUES ('b', 0);
		INSERT INTO events (xid, stream, revision, id, type, data)
		VALUES ((pg_current_xact_id()::text::bigint + 1000000)::text::xid8, 'b', 0, 'restored', 'T', '')`); err != nil {
		t.Fatal(err)
	}
	refused, err := postgres.Open(ctx, url, postgres.Options{})
	if err == nil {
		refused.Close()
		t.Fatal("opened a database whose events are ahead of the server's transaction IDs")
	}
	if !errors.Is(err, postgres.ErrForeignTransactionIDs) || !strings.Contains(err.Error(), "copied logically") {
		t.Fatalf("open: %v; want ErrForeignTransactionIDs, saying why", err)
	}
}
