package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/commands"

	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/projections/memory"
)

// While the read models lag (a large create's pages to apply, a rebuild's
// catch-up, a busy PostgreSQL), GET /api/batch/{id} and the answers to a
// command come from the batch's aggregate. They must still say what the batch
// is: its name included, as the create's own answer does.
func TestAggregateAnswerKeepsTheName(t *testing.T) {
	env := newAPI(t, func(c *Config, _ eventstore.Store) eventstore.Store {
		c.ReadModels = memory.New() // read models that never catch up
		c.ReadYourWrites = 50 * time.Millisecond
		return nil
	})
	a := env.do("POST", "/api/batch", testKey, createBody(`"Hi {{name}}"`, `{"name": "Spring sale", "autoStart": false}`))
	if a.Code != http.StatusCreated {
		t.Fatalf("create: %d %s", a.Code, a.Body)
	}
	var created struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	}
	if err := json.Unmarshal(a.Body.Bytes(), &created); err != nil || created.Name != "Spring sale" {
		t.Fatalf("create answered %s (%v)", a.Body, err)
	}
	for _, req := range []struct{ method, path string }{
		{"GET", "/api/batch/" + created.ID},
		{"POST", "/api/v2/batch/" + created.ID + "/start"},
		{"POST", "/api/v2/batch/" + created.ID + "/pause"},
	} {
		a := env.do(req.method, req.path, testKey, "")
		if a.Code != http.StatusOK {
			t.Fatalf("%s %s: %d %s", req.method, req.path, a.Code, a.Body)
		}
		var got struct {
			Name string `json:"name"`
		}
		if err := json.Unmarshal(a.Body.Bytes(), &got); err != nil || got.Name != "Spring sale" {
			t.Errorf("%s %s answered name %q, want %q: %s", req.method, req.path, got.Name, "Spring sale", a.Body)
		}
	}
}

// Retry-failed, asked again of the same batch (a second click of the
// dashboard's button, which stays shown while the batch has failures; or a
// second retry of a batch still sending, which the README invites: "the
// recipients failed so far are taken"), must not put the recipients an
// earlier retry already took into a new batch: each of them would be texted
// once by each retry.
func TestSecondRetryFailedDoesNotTextTheSameRecipientsAgain(t *testing.T) {
	env := newAPI(t, nil)
	id := failedThenDelivered(t, env, 3, func(int) bool { return false })
	first := env.do("POST", "/api/v2/batch/"+id+"/retry-failed", testKey, "")
	if first.Code != http.StatusCreated || totalOf(t, first) != 3 {
		t.Fatalf("first retry-failed: %d %s", first.Code, first.Body)
	}
	second := env.do("POST", "/api/v2/batch/"+id+"/retry-failed", testKey, "")
	if second.Code == http.StatusCreated {
		t.Fatalf("second retry-failed of the same batch: 201, a new batch of %d recipients, every one already in the first retry", totalOf(t, second))
	}
}

// A batch still sending retried twice: the second retry takes only the
// recipients that failed since the first.
func TestRetryWhileSendingThenAgainTakesOnlyTheNewFailures(t *testing.T) {
	env := newAPI(t, nil)
	var rcpts []string
	for i := range 4 {
		rcpts = append(rcpts, fmt.Sprintf(`{"phoneNumber": "+1650253%04d", "variables": {"name": "R%d"}}`, i, i))
	}
	a := env.do("POST", "/api/batch", testKey, `{"text": "Hi {{name}}", "recipients": [`+strings.Join(rcpts, ",")+`]}`)
	if a.Code != http.StatusCreated {
		t.Fatalf("create: %d %s", a.Code, a.Body)
	}
	id := keyedAnswer{body: a.Body.Bytes()}.id(t)
	repo, _ := commands.NewRepository(env.es, 0)
	failTwo := func(at time.Time) { failNext(t, repo, id, at, 2) }
	now := time.Now()
	failTwo(now)
	first := env.do("POST", "/api/v2/batch/"+id+"/retry-failed", testKey, "")
	if first.Code != http.StatusCreated || totalOf(t, first) != 2 {
		t.Fatalf("first retry-failed: %d %s", first.Code, first.Body)
	}
	failTwo(now.Add(time.Second))
	second := env.do("POST", "/api/v2/batch/"+id+"/retry-failed", testKey, "")
	if second.Code != http.StatusCreated || totalOf(t, second) != 2 {
		t.Fatalf("second retry-failed: %d %s; want the 2 new failures only", second.Code, second.Body)
	}
}
