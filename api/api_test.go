package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/eventstore"
	esmemory "github.com/smsbatch/smsbatch/eventstore/memory"
	"github.com/smsbatch/smsbatch/projections"
	"github.com/smsbatch/smsbatch/projections/memory"
)

const (
	testKey      = "acme-key-0123456789abcdef"
	testOtherKey = "other-key-0123456789abcdef"
	testAddr     = "192.0.2.10:40000"
)

// apiEnv is the whole API handler over an in-memory event store and read models,
// with the projections runner following the store.
type apiEnv struct {
	es      eventstore.Store
	handler http.Handler
	spool   string
}

// newAPI builds the handler; tweak may change its configuration (the event store
// it is given is cfg's Commands' store unless tweak swaps Commands).
func newAPI(t testing.TB, tweak func(*Config, eventstore.Store) eventstore.Store) *apiEnv {
	t.Helper()
	return newAPIOver(t, esmemory.New(), tweak)
}

// newAPIOver is newAPI over the event store es, which it closes when the test
// ends.
func newAPIOver(t testing.TB, es eventstore.Store, tweak func(*Config, eventstore.Store) eventstore.Store) *apiEnv {
	t.Helper()
	rm := memory.New()
	runner, err := projections.NewRunner(projections.RunnerConfig{Events: es, Store: rm})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := ParseKeys("acme:" + testKey + ",other:" + testOtherKey)
	if err != nil {
		t.Fatal(err)
	}
	env := &apiEnv{es: es, spool: t.TempDir()}
	cfg := Config{ReadModels: rm, Projections: runner, Keys: keys, SpoolDir: env.spool,
		RateLimit: RateLimit{Requests: -1}}
	cmdStore := es
	if tweak != nil {
		if s := tweak(&cfg, es); s != nil {
			cmdStore = s
		}
	}
	repo, err := commands.NewRepository(cmdStore, 100)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Commands, err = commands.New(cmdStore, repo, nil); err != nil {
		t.Fatal(err)
	}
	if env.handler, err = NewHandler(cfg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = runner.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		es.Close()
	})
	return env
}

// answer is a recorded response.
type answer struct {
	*httptest.ResponseRecorder
}

func (a answer) envelope(t testing.TB) apiErrorBody {
	t.Helper()
	var e apiErrorBody
	if err := json.Unmarshal(a.Body.Bytes(), &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
		t.Fatalf("%d %q is not the error envelope (%v)", a.Code, a.Body.String(), err)
	}
	return e
}

type apiErrorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Details []struct {
			Field   string `json:"field"`
			Problem string `json:"problem"`
		} `json:"details"`
	} `json:"error"`
}

// names reports whether the envelope's details name field.
func (e apiErrorBody) names(field string) bool {
	for _, d := range e.Error.Details {
		if d.Field == field {
			return true
		}
	}
	return false
}

func (e apiErrorBody) fields() []string {
	var out []string
	for _, d := range e.Error.Details {
		out = append(out, d.Field)
	}
	return out
}

// do serves one request from testAddr with key (none when empty).
func (env *apiEnv) do(method, path, key, body string) answer {
	return env.doFrom(testAddr, method, path, key, body)
}

func (env *apiEnv) doFrom(addr, method, path, key, body string) answer {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.RemoteAddr = addr
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	rec := httptest.NewRecorder()
	env.handler.ServeHTTP(rec, req)
	return answer{rec}
}

// events counts the events stored so far.
func (env *apiEnv) events(t testing.TB) int {
	t.Helper()
	n, pos := 0, eventstore.Start
	for {
		page, err := env.es.ReadAll(context.Background(), pos, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			return n
		}
		n += len(page)
		pos = page[len(page)-1].Position
	}
}

// spoolFiles lists what is left in the spool directory.
func (env *apiEnv) spoolFiles(t testing.TB) []string {
	t.Helper()
	entries, err := os.ReadDir(env.spool)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// createBody is a valid batch of two recipients with the given text and options
// (raw JSON, "" for none).
func createBody(text, options string) string {
	b := `{"text": ` + text + `, "recipients": [` +
		`{"phoneNumber": "+14155550100", "variables": {"name": "Ada"}},` +
		`{"phoneNumber": "+14155550101", "variables": {"name": "Grace"}}]`
	if options != "" {
		b += `, "options": ` + options
	}
	return b + `}`
}

func writeFile(path, content string) error {
	return os.WriteFile(path, []byte(content), 0o600)
}
