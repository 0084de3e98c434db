package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/smsbatch/smsbatch/eventstore"
	pgevents "github.com/smsbatch/smsbatch/eventstore/postgres"
	"github.com/smsbatch/smsbatch/internal/pgtest"
)

func TestMain(m *testing.M) {
	code := pgtest.Main(m)
	for _, bin := range []string{binPath, benchBinPath} {
		if bin != "" {
			_ = os.RemoveAll(filepath.Dir(bin)) // the binaries built: tens of MB a run
		}
	}
	os.Exit(code)
}

func postgresConfig(t testing.TB, url string) Config {
	cfg := testConfig(t)
	cfg.EventStore, cfg.EventStoreURL = "postgres", url
	cfg.ReadStore, cfg.ReadStoreURL = "postgres", url
	return cfg
}

// onEachStore runs test, in parallel, on the embedded default and on a fresh
// PostgreSQL database (its event store and read models).
func onEachStore(t *testing.T, test func(t *testing.T, cfg Config)) {
	for _, store := range []string{"bolt", "postgres"} {
		t.Run(store, func(t *testing.T) {
			t.Parallel()
			if store == "postgres" {
				test(t, postgresConfig(t, pgtest.Database(t)))
				return
			}
			test(t, testConfig(t))
		})
	}
}

// pgEvents reads every event of the PostgreSQL event store at url.
func pgEvents(t testing.TB, url string) []eventstore.Event {
	t.Helper()
	store, err := pgevents.Open(context.Background(), url, pgevents.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	return allEvents(t, store)
}

func TestPostgresStoresRateAndPauseResume(t *testing.T) {
	skipShort(t)
	t.Parallel()
	url := pgtest.Database(t)
	cfg := postgresConfig(t, url)
	c := startMain(t, cfg)
	normal := c.create(batchBody(recipients(12), "normal"))
	high := c.create(batchBody(recipients(30), "high"))
	time.Sleep(1200 * time.Millisecond)
	if code, _ := c.do("POST", "/api/v2/batch/"+high.ID+"/pause", nil, nil); code != 200 {
		t.Fatalf("pause: %d", code)
	}
	// The read models follow the events; on a shared server they may lag.
	c.waitStatus(high.ID, 20*time.Second, "paused")
	time.Sleep(300 * time.Millisecond)
	before := c.status(high.ID)
	time.Sleep(time.Second)
	if after := c.status(high.ID); after.sending() != before.sending() || after.Status != "paused" {
		t.Fatalf("progress moved while paused: %+v -> %+v", before.Progress, after.Progress)
	}
	if code, _ := c.do("POST", "/api/v2/batch/"+high.ID+"/resume", nil, nil); code != 200 {
		t.Fatalf("resume: %d", code)
	}
	c.waitStatus(normal.ID, 30*time.Second, "completed")
	done := c.waitStatus(high.ID, 30*time.Second, "completed")
	if done.Progress.Completed != 30 {
		t.Fatalf("high batch %+v", done.Progress)
	}
	// The normal batch's rate, 5/s, at the provider: no second holds more than
	// five of its sends (20 ms for the HTTP hop), so the eleventh comes two
	// seconds after the first. (All twelve may take less than 2.2 s when the
	// first left late: the ones after it catch up with the plan, as fast as
	// the window lets them.)
	ts := sendTimes(outbox(t, cfg.DataDir, normal.ID))
	if len(ts) != 12 {
		t.Fatalf("normal batch: %d sent, want 12", len(ts))
	}
	if most := maxInWindow(ts, time.Second-20*time.Millisecond); most > 5 {
		t.Fatalf("normal batch sent %d within one second", most)
	}
	if span := ts[10].Sub(ts[0]); span < 2*time.Second-40*time.Millisecond {
		t.Fatalf("normal batch: 11 sent over %s", span)
	}
	if most := maxInWindow(sendTimes(outbox(t, cfg.DataDir, high.ID)), time.Second-20*time.Millisecond); most > 8 {
		t.Fatalf("high batch sent %d within one second", most)
	}
	c.stop()
	events := pgEvents(t, url)
	assertExactlyOneOutcome(t, events, normal.ID, 12)
	assertExactlyOneOutcome(t, events, high.ID, 30)
}

func TestPostgresRestartMidBatchLosesNothing(t *testing.T) {
	skipShort(t)
	cluster, err := pgtest.StartCluster()
	if err != nil {
		if os.Getenv("SMSBATCH_REQUIRE_POSTGRES") == "1" {
			t.Fatalf("a throwaway PostgreSQL cluster is needed: %v", err)
		}
		t.Skipf("no initdb/pg_ctl for a throwaway cluster: %v", err)
	}
	defer cluster.Stop()
	url := cluster.URL("postgres")
	cfg := postgresConfig(t, url)
	c := startMain(t, cfg)
	st := c.create(batchBody(recipients(30), "high"))
	time.Sleep(1500 * time.Millisecond)
	if err := cluster.Restart(); err != nil {
		t.Fatal(err)
	}
	// While the database comes back, reads may answer 503 (try again), never 500.
	var done status
	deadline := time.Now().Add(60 * time.Second)
	for done.Status != "completed" {
		if time.Now().After(deadline) {
			t.Fatalf("batch is %s after the restart: %+v", done.Status, done.Progress)
		}
		time.Sleep(50 * time.Millisecond)
		var st2 status
		switch code, _ := c.do("GET", "/api/batch/"+st.ID, nil, &st2); code {
		case 200:
			done = st2
		case 503:
		default:
			t.Fatalf("status during the restart: %d, want 200 or 503", code)
		}
	}
	if done.Progress.Completed != 30 {
		t.Fatalf("after the restart: %+v", done.Progress)
	}
	if n := len(outbox(t, cfg.DataDir, st.ID)); n != 30 {
		t.Fatalf("outbox %d, want 30", n)
	}
	c.stop()
	assertExactlyOneOutcome(t, pgEvents(t, url), st.ID, 30)
}

func TestCrashWithSIGKILLOnPostgres(t *testing.T) {
	skipShort(t)
	url := pgtest.Database(t)
	id := crashAndRestart(t, t.TempDir(), "--event-store", "postgres", "--event-store-url", url, "--read-store", "postgres")
	assertExactlyOneOutcome(t, pgEvents(t, url), id, 30)
}

func TestProjectionsRebuildCommand(t *testing.T) {
	skipShort(t)
	t.Parallel()
	url := pgtest.Database(t)
	cfg := postgresConfig(t, url)
	c := startMain(t, cfg)
	st := c.create(batchBody(append(recipients(5), recipient{PhoneNumber: "+15005550004", Variables: map[string]string{"name": "x"}}), "high"))
	c.waitStatus(st.ID, 30*time.Second, "completed")
	c.stop()
	// The read models as kept live, once every event is in: delivery receipts
	// come after the completion, until the instance stops (one came between a
	// read at the completion and the stop in CI). A restart is ready once its
	// read models have caught up with the log.
	c = startMain(t, cfg)
	before := c.status(st.ID)
	var beforeErrors, afterErrors json.RawMessage
	c.do("GET", "/api/batch/"+st.ID+"/errors", nil, &beforeErrors)
	c.stop()

	var out strings.Builder
	if err := rebuildProjections(context.Background(), cfg, "all", &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "rebuild: ") || !strings.Contains(out.String(), "events/s") {
		t.Fatalf("rebuild printed no progress: %q", out.String())
	}
	if err := rebuildProjections(context.Background(), cfg, "everything", &out); err == nil {
		t.Fatal("an unknown read model was accepted")
	}

	c = startMain(t, cfg)
	after := c.status(st.ID)
	if after.Progress != before.Progress || after.Status != before.Status {
		t.Fatalf("after the rebuild %+v, before %+v", after, before)
	}
	c.do("GET", "/api/batch/"+st.ID+"/errors", nil, &afterErrors)
	if string(beforeErrors) != string(afterErrors) {
		t.Fatalf("errors differ after the rebuild:\n%s\n%s", beforeErrors, afterErrors)
	}
}

// The PostgreSQL event store holds the global order back while any transaction
// on the server is open (see eventstore/postgres). Sending must not wait for it:
// a created batch goes out at once, and the read models catch up afterwards.
func TestSendingDoesNotWaitForOtherTransactions(t *testing.T) {
	skipShort(t)
	url := pgtest.Database(t)
	cfg := postgresConfig(t, url)
	c := startMain(t, cfg)

	ctx := context.Background()
	other, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	tx, err := other.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT pg_current_xact_id()"); err != nil {
		t.Fatal(err)
	}

	st := c.create(batchBody(recipients(5), "high"))
	deadline := time.Now().Add(15 * time.Second)
	for len(outbox(t, cfg.DataDir, st.ID)) < 5 {
		if time.Now().After(deadline) {
			t.Fatalf("with another transaction open, %d of 5 messages went out", len(outbox(t, cfg.DataDir, st.ID)))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if done := c.waitStatus(st.ID, 20*time.Second, "completed"); done.Progress.Completed != 5 {
		t.Fatalf("after the transaction ended: %+v", done.Progress)
	}
}
