package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/bolt"
	esmemory "github.com/smsbatch/smsbatch/eventstore/memory"
	"github.com/smsbatch/smsbatch/eventstore/postgres"
	"github.com/smsbatch/smsbatch/internal/pgtest"
	"github.com/smsbatch/smsbatch/projections"
	"github.com/smsbatch/smsbatch/projections/memory"
)

// retryStores are the event stores the retry-failed races run on: in memory,
// the embedded bolt file, and PostgreSQL (several instances share one) when
// the tests have one.
var retryStores = []struct {
	name string
	open func(t *testing.T) eventstore.Store
}{
	{"memory", func(*testing.T) eventstore.Store { return esmemory.New() }},
	{"bolt", func(t *testing.T) eventstore.Store {
		s, err := bolt.Open(filepath.Join(t.TempDir(), "events.db"), bolt.Options{})
		if err != nil {
			t.Fatalf("open bolt event store: %v", err)
		}
		return s
	}},
	{"postgres", func(t *testing.T) eventstore.Store {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		s, err := postgres.Open(ctx, pgtest.Database(t), postgres.Options{})
		if err != nil {
			t.Fatalf("open PostgreSQL event store: %v", err)
		}
		return s
	}},
}

// Retry-failed asked several times at once, without an Idempotency-Key (a
// double click, two people on the dashboard, a client's retry after a lost
// answer): every recipient that failed is texted again once, by one retry
// batch, however the requests interleave. Each batch that took a recipient
// twice would text them twice, billed twice.
func TestConcurrentRetryFailedTextsEachRecipientOnce(t *testing.T) {
	const failed, requests = 20, 6
	for _, store := range retryStores {
		t.Run(store.name, func(t *testing.T) {
			// Every request reads the failed recipients before any of them
			// creates its batch: the race at its closest, every time.
			gathered := &gatheredReads{left: requests, all: make(chan struct{})}
			env := newAPIOver(t, store.open(t), func(c *Config, _ eventstore.Store) eventstore.Store {
				gathered.Store = c.ReadModels
				c.ReadModels = gathered
				return nil
			})
			id := failedThenDelivered(t, env, failed, func(int) bool { return false })
			codes := make([]int, requests)
			var wg sync.WaitGroup
			for i := range requests {
				wg.Go(func() {
					a := env.do("POST", "/api/v2/batch/"+id+"/retry-failed", testKey, "")
					codes[i] = a.Code
					if a.Code != http.StatusCreated && a.Code != http.StatusConflict {
						t.Errorf("retry-failed: %d %s; want 201 or 409", a.Code, a.Body)
					}
				})
			}
			wg.Wait()
			t.Logf("answers: %v", codes)
			checkRetriedOnce(t, env.es, id, failed)
			// The read models went past the claims in the log: they list
			// the one retry made.
			for deadline := time.Now().Add(10 * time.Second); ; {
				var st struct{ Retries []string }
				a := env.do("GET", "/api/batch/"+id, testKey, "")
				if json.Unmarshal(a.Body.Bytes(), &st) == nil && len(st.Retries) == 1 {
					break
				}
				if len(st.Retries) > 1 || time.Now().After(deadline) {
					t.Fatalf("the batch's status lists retries %v, want the one retry made: %s", st.Retries, a.Body)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// A second instance (several share a PostgreSQL event store) whose read models
// have not yet applied the retry another instance just made is asked to retry
// the same batch: it must not take the recipients that retry took.
func TestRetryFailedOnAnInstanceWhoseReadModelsLag(t *testing.T) {
	const failed = 5
	for _, store := range retryStores {
		t.Run(store.name, func(t *testing.T) {
			first := newAPIOver(t, store.open(t), nil)
			id := failedThenDelivered(t, first, failed, func(int) bool { return false })
			second := laggingInstance(t, first.es)
			if a := first.do("POST", "/api/v2/batch/"+id+"/retry-failed", testKey, ""); a.Code != http.StatusCreated || totalOf(t, a) != failed {
				t.Fatalf("retry-failed on the first instance: %d %s", a.Code, a.Body)
			}
			a := second.do("POST", "/api/v2/batch/"+id+"/retry-failed", testKey, "")
			if a.Code != http.StatusConflict {
				t.Errorf("retry-failed on the second instance, every failed recipient already retried: %d %s; want 409", a.Code, a.Body)
			}
			checkRetriedOnce(t, first.es, id, failed)
		})
	}
}

// checkRetriedOnce fails the test unless each of the failed recipients of
// batch id (failedThenDelivered's numbers) is in exactly one of its retry
// batches, as the event store holds them: twice is a second SMS, never is a
// recipient left out.
func checkRetriedOnce(t *testing.T, es eventstore.Store, id string, failed int) {
	t.Helper()
	counts, retries := retriedFromStore(t, es, id)
	for i := range failed {
		phone := fmt.Sprintf("+1650253%04d", i)
		if n := counts[phone]; n != 1 {
			t.Errorf("%s is in %d of the %d retry batches, want 1", phone, n, retries)
		}
	}
}

// retriedFromStore counts, from the event store, in how many retry batches of
// batch id each number is, and how many retry batches were created.
func retriedFromStore(t *testing.T, es eventstore.Store, id string) (map[string]int, int) {
	t.Helper()
	ctx := context.Background()
	counts, retries := map[string]int{}, 0
	for pos := eventstore.Start; ; {
		events, err := es.ReadAll(ctx, pos, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(events) == 0 {
			return counts, retries
		}
		pos = events[len(events)-1].Position
		for _, e := range events {
			if e.Type != domain.TypeBatchCreated || !strings.HasPrefix(e.Stream, domain.BatchStreamPrefix) {
				continue
			}
			ev, err := domain.DecodeEvent(e.Type, e.Data)
			if err != nil {
				t.Fatal(err)
			}
			created := ev.(domain.BatchCreated)
			if created.RetryOf != id {
				continue
			}
			retries++
			pages, err := es.ReadStream(ctx, domain.RecipientsStream(created.BatchID), 0, created.Pages)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range pages {
				ev, err := domain.DecodeEvent(p.Type, p.Data)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range ev.(domain.RecipientsPageAdded).Recipients {
					counts[r.Phone]++
				}
			}
		}
	}
}

// gatheredReads holds the first reads of failed recipients until that many
// have come, so that concurrent retry-failed requests all read them before any
// goes on (or until a few seconds have passed, should fewer come).
type gatheredReads struct {
	projections.Store
	mu   sync.Mutex
	left int
	all  chan struct{}
}

func (g *gatheredReads) Recipients(ctx context.Context, q projections.RecipientQuery) ([]projections.Recipient, string, error) {
	if q.Status == projections.RecipientFailed {
		g.mu.Lock()
		gather := g.left > 0
		if gather {
			if g.left--; g.left == 0 {
				close(g.all)
			}
		}
		g.mu.Unlock()
		if gather {
			select {
			case <-g.all:
			case <-time.After(5 * time.Second):
			case <-ctx.Done():
			}
		}
	}
	return g.Store.Recipients(ctx, q)
}

// laggingInstance is a second instance of the API over es, whose read models
// have applied what es holds now and nothing after: its projections stall (a
// busy PostgreSQL, a rebuild's catch-up), as another instance writes on.
func laggingInstance(t *testing.T, es eventstore.Store) *apiEnv {
	t.Helper()
	rm := memory.New()
	runner, err := projections.NewRunner(projections.RunnerConfig{Events: es, Store: rm})
	if err != nil {
		t.Fatal(err)
	}
	end := eventstore.Start
	for {
		events, err := es.ReadAll(t.Context(), end, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(events) == 0 {
			break
		}
		end = events[len(events)-1].Position
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { _ = runner.Run(ctx); close(done) }()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	err = runner.WaitFor(wctx, end)
	wcancel()
	cancel()
	<-done
	if err != nil {
		t.Fatalf("the second instance's read models never caught up: %v", err)
	}
	keys, err := ParseKeys("acme:" + testKey + ",other:" + testOtherKey)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := commands.NewRepository(es, 100)
	if err != nil {
		t.Fatal(err)
	}
	cmds, err := commands.New(es, repo, nil)
	if err != nil {
		t.Fatal(err)
	}
	env := &apiEnv{es: es, spool: t.TempDir()}
	env.handler, err = NewHandler(Config{Commands: cmds, ReadModels: rm, Projections: runner, Keys: keys,
		SpoolDir: env.spool, RateLimit: RateLimit{Requests: -1}, ReadYourWrites: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// A request that claimed a retry and died before storing its batch (a crash)
// leaves a claim nothing settles. Past its lease, the next retry fences that
// batch off and retries its recipients: none of them was texted.
func TestRetryFailedFencesOffARetryThatDiedBeforeItsBatch(t *testing.T) {
	const failed = 5
	env := newAPI(t, nil)
	id := failedThenDelivered(t, env, failed, func(int) bool { return false })
	dead := uuid.NewString()
	claimRetry(t, env.es, id, dead, time.Now().Add(-commands.RetryCreateLease-time.Second))
	if a := env.do("POST", "/api/v2/batch/"+id+"/retry-failed", testKey, ""); a.Code != http.StatusCreated || totalOf(t, a) != failed {
		t.Fatalf("retry-failed after a retry that died: %d %s; want 201 with the %d failed recipients", a.Code, a.Body, failed)
	}
	events, err := env.es.ReadStream(context.Background(), domain.BatchStream(dead), 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 1 || events[0].Type != domain.TypeBatchCreateAbandoned {
		t.Errorf("the dead retry's batch stream begins with %v; want it fenced off (%s), so it can never be stored", events, domain.TypeBatchCreateAbandoned)
	}
	checkRetriedOnce(t, env.es, id, failed)
}

// A retry claimed a moment ago and still storing its recipients (a large
// one, another instance) may take anyone: a retry asked meanwhile answers 503
// with Retry-After, creating nothing, rather than guess; once that retry is
// settled, it goes ahead.
func TestRetryFailedWaitsForARetryBeingCreated(t *testing.T) {
	const failed = 5
	env := newAPI(t, func(c *Config, _ eventstore.Store) eventstore.Store {
		c.ReadYourWrites = 100 * time.Millisecond
		return nil
	})
	id := failedThenDelivered(t, env, failed, func(int) bool { return false })
	busy := uuid.NewString()
	claimRetry(t, env.es, id, busy, time.Now())
	a := env.do("POST", "/api/v2/batch/"+id+"/retry-failed", testKey, "")
	if a.Code != http.StatusServiceUnavailable || a.Header().Get("Retry-After") == "" {
		t.Fatalf("retry-failed while another retry is being created: %d %s (Retry-After %q); want 503 with Retry-After",
			a.Code, a.Body, a.Header().Get("Retry-After"))
	}
	if _, retries := retriedFromStore(t, env.es, id); retries != 0 {
		t.Fatalf("%d retry batches created while another retry was being created", retries)
	}
	// That create fails: its request fences its batch off, as createRetry does.
	repo, _ := commands.NewRepository(env.es, 0)
	cmds, err := commands.New(env.es, repo, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmds.AbandonCreate(context.Background(), busy, "acme"); err != nil {
		t.Fatal(err)
	}
	if a := env.do("POST", "/api/v2/batch/"+id+"/retry-failed", testKey, ""); a.Code != http.StatusCreated || totalOf(t, a) != failed {
		t.Fatalf("retry-failed once the other retry failed: %d %s; want 201 with the %d failed recipients", a.Code, a.Body, failed)
	}
	checkRetriedOnce(t, env.es, id, failed)
}

// claimRetry appends a claim of retry retryID of batch id made at, whose
// request has not stored (and may never store) its batch.
func claimRetry(t *testing.T, es eventstore.Store, id, retryID string, at time.Time) {
	t.Helper()
	data, err := json.Marshal(domain.RetryClaimed{RetryID: retryID, Tenant: "acme", At: at.UTC()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := es.Append(context.Background(), domain.RetriesStream(id), eventstore.Any(),
		[]eventstore.EventData{{ID: uuid.NewString(), Type: domain.TypeRetryClaimed, Data: data}}); err != nil {
		t.Fatal(err)
	}
}

// A batch retried before retries were claimed (by an earlier version) has a
// retry no claim names; the read models list it. A retry now still leaves out
// the recipients it took.
func TestRetryFailedLeavesOutARetryMadeBeforeClaims(t *testing.T) {
	const failed = 3
	env := newAPI(t, nil)
	id := failedThenDelivered(t, env, failed, func(int) bool { return false })
	repo, _ := commands.NewRepository(env.es, 0)
	cmds, err := commands.New(env.es, repo, nil)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := domain.NewTemplate("Hi {{name}}", domain.DefaultTemplateLimits)
	if err != nil {
		t.Fatal(err)
	}
	legacy := uuid.NewString()
	recipients := func(yield func(domain.Recipient, error) bool) {
		for i := range failed {
			if !yield(domain.Recipient{Phone: fmt.Sprintf("+1650253%04d", i), Values: []string{fmt.Sprint("R", i)}}, nil) {
				return
			}
		}
	}
	if _, err := cmds.CreateBatch(context.Background(), commands.CreateBatch{ID: legacy, Tenant: "acme", Template: tmpl,
		Name: "Retry of " + id, RetryOf: id, Recipients: recipients}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(env.do("GET", "/api/batch/"+id, testKey, "").Body.String(), legacy); {
		if time.Now().After(deadline) {
			t.Fatal("the read models never listed the earlier retry")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if a := env.do("POST", "/api/v2/batch/"+id+"/retry-failed", testKey, ""); a.Code != http.StatusConflict {
		t.Errorf("retry-failed after a retry that took every failed recipient: %d %s; want 409", a.Code, a.Body)
	}
	checkRetriedOnce(t, env.es, id, failed)
}
