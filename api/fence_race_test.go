package api

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	esmemory "github.com/smsbatch/smsbatch/eventstore/memory"
)

// typeHooks runs a hook before (once) or after the append of an event type.
type typeHooks struct {
	eventstore.Store
	mu     sync.Mutex
	before map[string]func()
	after  map[string]func()
}

func (h *typeHooks) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	var typ string
	if len(events) > 0 {
		typ = events[0].Type
	}
	h.mu.Lock()
	b := h.before[typ]
	delete(h.before, typ)
	h.mu.Unlock()
	if b != nil {
		b()
	}
	res, err := h.Store.Append(ctx, stream, expected, events)
	h.mu.Lock()
	a := h.after[typ]
	delete(h.after, typ)
	h.mu.Unlock()
	if err == nil && a != nil {
		a()
	}
	return res, err
}

// The stalled create, refused by the fence, answers 409 and records that 409
// as the key's answer when it gets there before the retry's claim (which
// comes right after the fence). The retry then replays the 409: no batch at
// all is made for the key, and every retry for 24 hours gets "the batch is
// the retry's" about a batch that does not exist.
func TestFencedCreateDoesNotOwnTheKeysAnswer(t *testing.T) {
	clock := &offsetClock{}
	stalled, goOn := make(chan struct{}), make(chan struct{})
	first := make(chan *httptest.ResponseRecorder, 1)
	store := &typeHooks{Store: esmemory.New(),
		before: map[string]func(){domain.TypeBatchCreated: func() { close(stalled); <-goOn }},
		after: map[string]func(){domain.TypeBatchCreateAbandoned: func() {
			// The store comes back: the stalled create's append goes on
			// while the retry is between its fence and its claim.
			close(goOn)
			select {
			case <-first:
			case <-time.After(5 * time.Second):
			}
		}},
	}
	h := newClockedAPI(t, store, clock.now)
	go func() { first <- servePost(h, context.Background(), "/api/batch", "order-1", keyedBody("Ada")) }()
	<-stalled
	clock.advance(3 * time.Minute)
	retry := servePost(h, context.Background(), "/api/batch", "order-1", keyedBody("Ada"))
	n := batchesCreated(t, store)
	if retry.Code != http.StatusCreated || n != 1 {
		t.Errorf("retry past the lease: %d %s with %d batches stored, want 201 and 1 batch", retry.Code, retry.Body, n)
	}
	again := servePost(h, context.Background(), "/api/batch", "order-1", keyedBody("Ada"))
	if again.Code != http.StatusCreated {
		t.Errorf("the key's answer afterwards: %d %s, want 201", again.Code, again.Body)
	}
}
