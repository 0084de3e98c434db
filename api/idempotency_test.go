package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	esmemory "github.com/smsbatch/smsbatch/eventstore/memory"
)

// keyedEnv is the whole API over an event store, without live updates.
type keyedEnv struct {
	srv   *httptest.Server
	store eventstore.Store
}

func newKeyedAPI(t *testing.T, store eventstore.Store) *keyedEnv {
	t.Helper()
	srv := httptest.NewServer(apiOver(t, store, nil, 0))
	t.Cleanup(srv.Close)
	return &keyedEnv{srv: srv, store: store}
}

type keyedAnswer struct {
	status int
	header http.Header
	body   []byte
}

func (e *keyedEnv) post(t *testing.T, path, key, idemKey, body string) keyedAnswer {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	if idemKey != "" {
		req.Header.Set(IdempotencyHeader, idemKey)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return keyedAnswer{resp.StatusCode, resp.Header, data}
}

func (a keyedAnswer) id(t *testing.T) string {
	t.Helper()
	var st struct{ ID string }
	if err := json.Unmarshal(a.body, &st); err != nil || st.ID == "" {
		t.Fatalf("answer %d %s has no batch id", a.status, a.body)
	}
	return st.ID
}

func (a keyedAnswer) code(t *testing.T) string {
	t.Helper()
	var e errorBody
	json.Unmarshal(a.body, &e)
	return e.Error.Code
}

// created counts the batches stored.
func (e *keyedEnv) created(t *testing.T) int {
	t.Helper()
	return batchesCreated(t, e.store)
}

func keyedBody(name string) string {
	return fmt.Sprintf(`{"text":"Hi {{name}}","recipients":[{"phoneNumber":"+14155550100","variables":{"name":%q}}],"options":{"autoStart":false}}`, name)
}

func TestCreateRetriedWithTheSameKeyGetsTheFirstAnswer(t *testing.T) {
	env := newKeyedAPI(t, esmemory.New())
	first := env.post(t, "/api/batch", liveAcmeKey, "order-1", keyedBody("Ada"))
	if first.status != http.StatusCreated {
		t.Fatalf("create: %d %s", first.status, first.body)
	}
	again := env.post(t, "/api/batch", liveAcmeKey, "order-1", keyedBody("Ada"))
	if again.status != http.StatusCreated || !bytes.Equal(again.body, first.body) || again.header.Get(ReplayedHeader) != "true" {
		t.Fatalf("retry: %d %s (replayed %q), want the first answer %s", again.status, again.body, again.header.Get(ReplayedHeader), first.body)
	}
	if again.header.Get("Location") != "/api/batch/"+first.id(t) {
		t.Fatalf("retry Location %q", again.header.Get("Location"))
	}
	if n := env.created(t); n != 1 {
		t.Fatalf("%d batches stored, want 1", n)
	}
	other := env.post(t, "/api/batch", liveAcmeKey, "order-1", keyedBody("Grace"))
	if other.status != http.StatusUnprocessableEntity || other.code(t) != domain.EINVALID || !strings.Contains(string(other.body), IdempotencyHeader) {
		t.Fatalf("same key, other body: %d %s, want 422 naming the header", other.status, other.body)
	}
	// Keys belong to a tenant: another tenant's same key is another request.
	if g := env.post(t, "/api/batch", liveGlobexKey, "order-1", keyedBody("Ada")); g.status != http.StatusCreated || g.id(t) == first.id(t) {
		t.Fatalf("globex with acme's key: %d %s", g.status, g.body)
	}
	// A refused request claims nothing: fixing it under the same key works.
	if bad := env.post(t, "/api/batch", liveAcmeKey, "order-2", `{"text":"Hi {{name}}","recipients":[]}`); bad.status != http.StatusUnprocessableEntity {
		t.Fatalf("bad create: %d", bad.status)
	}
	if ok := env.post(t, "/api/batch", liveAcmeKey, "order-2", keyedBody("Ada")); ok.status != http.StatusCreated {
		t.Fatalf("fixed create under the key of a refused one: %d %s", ok.status, ok.body)
	}
	if bad := env.post(t, "/api/batch", liveAcmeKey, strings.Repeat("k", 256), keyedBody("Ada")); bad.status != http.StatusUnprocessableEntity {
		t.Fatalf("256-character key: %d, want 422", bad.status)
	}
}

// loseCreated stores BatchCreated appends but answers them with an error while
// lose is positive, as a connection dropping after the commit would.
type loseCreated struct {
	eventstore.Store
	lose atomic.Int32
}

func (l *loseCreated) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	res, err := l.Store.Append(ctx, stream, expected, events)
	if err == nil && events[0].Type == domain.TypeBatchCreated && l.lose.Add(-1) >= 0 {
		return eventstore.AppendResult{}, fmt.Errorf("connection reset: %w", eventstore.ErrUnavailable)
	}
	return res, err
}

// Cause 8: the answer to a create was lost (503, "try again"); the retry must
// not make a second batch.
func TestCreateWhoseAnswerWasLostIsNotMadeTwice(t *testing.T) {
	store := &loseCreated{Store: esmemory.New()}
	env := newKeyedAPI(t, store)
	store.lose.Store(100)
	first := env.post(t, "/api/batch", liveAcmeKey, "order-9", keyedBody("Ada"))
	if first.status != http.StatusServiceUnavailable {
		t.Fatalf("create with its answer lost: %d %s, want 503", first.status, first.body)
	}
	store.lose.Store(0)
	retry := env.post(t, "/api/batch", liveAcmeKey, "order-9", keyedBody("Ada"))
	if retry.status != http.StatusCreated {
		t.Fatalf("retry: %d %s", retry.status, retry.body)
	}
	if n := env.created(t); n != 1 {
		t.Fatalf("%d batches stored after the retry, want 1", n)
	}
	if again := env.post(t, "/api/batch", liveAcmeKey, "order-9", keyedBody("Ada")); !bytes.Equal(again.body, retry.body) {
		t.Fatalf("second retry %s, want %s", again.body, retry.body)
	}
}

func TestConcurrentCreatesWithOneKeyMakeOneBatch(t *testing.T) {
	env := newKeyedAPI(t, esmemory.New())
	var wg sync.WaitGroup
	var mu sync.Mutex
	ids := map[string]bool{}
	for range 8 {
		wg.Go(func() {
			a := env.post(t, "/api/batch", liveAcmeKey, "same", keyedBody("Ada"))
			switch a.status {
			case http.StatusCreated:
				mu.Lock()
				ids[a.id(t)] = true
				mu.Unlock()
			case http.StatusConflict: // the first is still running: retry later
			default:
				t.Errorf("concurrent create: %d %s", a.status, a.body)
			}
		})
	}
	wg.Wait()
	if len(ids) != 1 || env.created(t) != 1 {
		t.Fatalf("%d ids answered and %d batches stored, want 1 and 1", len(ids), env.created(t))
	}
}

func TestLifecycleCommandRetriedWithItsKeyGetsTheFirstAnswer(t *testing.T) {
	env := newKeyedAPI(t, esmemory.New())
	id := env.post(t, "/api/batch", liveAcmeKey, "", keyedBody("Ada")).id(t)
	start := env.post(t, "/api/v2/batch/"+id+"/start", liveAcmeKey, "start-1", "")
	if start.status != http.StatusOK {
		t.Fatalf("start: %d %s", start.status, start.body)
	}
	again := env.post(t, "/api/v2/batch/"+id+"/start", liveAcmeKey, "start-1", "")
	if again.status != http.StatusOK || !bytes.Equal(again.body, start.body) {
		t.Fatalf("start retried with its key: %d %s, want the first answer", again.status, again.body)
	}
	if plain := env.post(t, "/api/v2/batch/"+id+"/start", liveAcmeKey, "", ""); plain.status != http.StatusConflict {
		t.Fatalf("start again without a key: %d, want 409", plain.status)
	}
	if other := env.post(t, "/api/v2/batch/"+id+"/cancel", liveAcmeKey, "start-1", ""); other.status != http.StatusUnprocessableEntity {
		t.Fatalf("the start's key on a cancel: %d, want 422", other.status)
	}
}
