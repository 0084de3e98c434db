package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/live"
)

// Fuzz targets of the API's input parsing. `make fuzz` runs each for a while;
// `go test` runs their seeds as ordinary tests.

// Any body to POST /api/batch is answered 201 or 4xx with the error envelope,
// never 5xx or a panic; a 4xx stores nothing, and what a 201 stores is text.
func FuzzCreateBatch(f *testing.F) {
	for _, seed := range []string{
		createBody(`"Hi {{name}}"`, ""),
		createBody(`"Hi {{name}}"`, `{"priority": "high", "autoStart": false}`),
		createBody(`"Hi {{name}}"`, `{"scheduleTime": "2030-01-01T00:00:00Z"}`),
		createBody(`"Hi {{name}}, \u00e9 \ud83d\ude00"`, `{"priority": ""}`),
		createBody(`"Hi {{name}}"`, "") + " 1",
		createBody(`"Hi {{ name }} {{name"`, ""),
		`{"text": "x", "recipients": [{"phoneNumber": "+14155550100", "variables": {"a": 1, "b": true, "c": null, "d": {}}}]}`,
		`{"recipients": [{"phoneNumber": "(415) 555-0100"}, {"phoneNumber": "4155550100"}], "text": "no vars"}`,
		"{\"text\": \"bad \xff\", \"recipients\": [{\"phoneNumber\": \"+1415\\u00005550100\"}]}",
		`{"text": "\ud800", "recipients": [{"phoneNumber": 5, "variables": {"\u0000": "\udc00"}}]}`,
		`{"text": "a", "text": "b", "recipients": [], "recipients": [{}], "extra": 1}`,
		`{}0`, `[]`, `{`, ``, `null`, `{"options": {"bogus": 1}}`,
	} {
		f.Add([]byte(seed))
	}
	env := newAPI(f, nil)
	var mu sync.Mutex
	pos := eventstore.Start
	f.Fuzz(func(t *testing.T, body []byte) {
		mu.Lock()
		defer mu.Unlock()
		a := env.do("POST", "/api/batch", testKey, string(body))
		stored := newEvents(t, env.es, &pos)
		switch {
		case a.Code == http.StatusCreated:
			if len(stored) == 0 || !strings.HasPrefix(a.Header().Get("Location"), "/api/batch/") {
				t.Fatalf("201 with %d events stored, Location %q", len(stored), a.Header().Get("Location"))
			}
			if !utf8.Valid(body) {
				t.Fatalf("a body that is not UTF-8 was accepted: %q", body)
			}
			assertStoredIsText(t, stored)
		case a.Code >= 400 && a.Code < 500:
			a.envelope(t)
			if len(stored) > 0 {
				t.Fatalf("%d %s stored %d events, the first a %s", a.Code, a.Body, len(stored), stored[0].Type)
			}
		default:
			t.Fatalf("%d %s for %q", a.Code, a.Body, body)
		}
		if files := env.spoolFiles(t); len(files) > 0 {
			t.Fatalf("spool files left: %v", files)
		}
	})
}

// newEvents returns the events stored after *pos and moves *pos past them.
func newEvents(t testing.TB, es eventstore.Store, pos *eventstore.Position) []eventstore.Event {
	t.Helper()
	var out []eventstore.Event
	for {
		page, err := es.ReadAll(context.Background(), *pos, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			return out
		}
		out = append(out, page...)
		*pos = page[len(page)-1].Position
	}
}

// assertStoredIsText checks that a stored batch holds only what may be sent:
// text that passes CheckText and numbers in E.164.
func assertStoredIsText(t *testing.T, events []eventstore.Event) {
	t.Helper()
	for _, se := range events {
		e, err := domain.DecodeEvent(se.Type, se.Data)
		if err != nil {
			t.Fatal(err)
		}
		switch e := e.(type) {
		case domain.BatchCreated:
			if err := domain.CheckText(e.Text); err != nil {
				t.Fatalf("stored text %q: %v", e.Text, err)
			}
		case domain.RecipientsPageAdded:
			for _, r := range e.Recipients {
				if len(r.Phone) < 2 || r.Phone[0] != '+' || strings.Trim(r.Phone[1:], "0123456789") != "" {
					t.Fatalf("stored number %q is not E.164", r.Phone)
				}
				for _, v := range r.Values {
					if err := domain.CheckText(v); err != nil {
						t.Fatalf("stored value %q: %v", v, err)
					}
				}
			}
		}
	}
}

// Any query string on the WebSocket routes is answered with a 4xx envelope (the
// fuzzer's requests are no WebSocket handshakes), never 5xx: a ticket the
// service did not issue is a 401, and ?after= is read by ParsePosition's rule.
func FuzzLiveQuery(f *testing.F) {
	for _, seed := range []struct {
		query  string
		bearer bool
	}{
		{"after=0.0", true}, {"after=12.3", true}, {"after=01.2", true}, {"after=", true}, {"after=1.2&after=x", true},
		{"ticket=abc.def", false}, {"ticket=eyJ0IjoiYWNtZSJ9.AAAA", false}, {"ticket=..&after=1.1", false},
		{"ticket=x&after=0.0", true}, {"%zz", true}, {"after=18446744073709551615.18446744073709551615", true},
	} {
		f.Add(seed.query, seed.bearer, false)
		f.Add(seed.query, seed.bearer, true)
	}
	env := newAPI(f, func(cfg *Config, es eventstore.Store) eventstore.Store {
		hub, err := live.NewHub(live.Config{Events: es, ReadModels: cfg.ReadModels, Projections: cfg.Projections})
		if err != nil {
			f.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = hub.Run(ctx) }()
		f.Cleanup(func() { cancel(); <-done })
		cfg.Live = hub
		cfg.AuthFailures.Requests = -1 // its 429s are another rule, tested apart
		return nil
	})
	created := env.do("POST", "/api/batch", testKey, createBody(`"Hi {{name}}"`, `{"autoStart": false}`))
	if created.Code != http.StatusCreated {
		f.Fatalf("create: %d %s", created.Code, created.Body)
	}
	batchPath := created.Header().Get("Location") + "/ws"
	// The hub answers 503 until it has caught up.
	for deadline := time.Now().Add(5 * time.Second); env.do("GET", "/api/ws", testKey, "").Code == http.StatusServiceUnavailable; {
		if time.Now().After(deadline) {
			f.Fatal("the hub did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.Fuzz(func(t *testing.T, query string, bearer, oneBatch bool) {
		path := "/api/ws"
		if oneBatch {
			path = batchPath
		}
		req, err := http.NewRequest("GET", path+"?"+query, nil)
		if err != nil {
			return
		}
		req.RemoteAddr = testAddr
		if bearer {
			req.Header.Set("Authorization", "Bearer "+testKey)
		}
		rec := httptest.NewRecorder()
		env.handler.ServeHTTP(rec, req)
		a := answer{rec}
		if a.Code < 400 || a.Code >= 500 {
			t.Fatalf("%s?%s: %d %s, want a 4xx", path, query, a.Code, a.Body)
		}
		e := a.envelope(t)
		q := req.URL.Query()
		switch {
		case q.Get("ticket") != "":
			if a.Code != http.StatusUnauthorized {
				t.Fatalf("ticket %q the service never issued: %d, want 401", q.Get("ticket"), a.Code)
			}
		case !bearer:
			if a.Code != http.StatusUnauthorized {
				t.Fatalf("no credentials: %d, want 401", a.Code)
			}
		case q.Has("after"):
			_, perr := live.ParsePosition(q.Get("after"))
			if (perr != nil) != e.names("after") {
				t.Fatalf("after=%q (ParsePosition: %v) answered %d %+v", q.Get("after"), perr, a.Code, e.Error)
			}
		}
	})
}

// Any query string on the list endpoints is answered 200 or a 4xx envelope,
// never 5xx; a cursor the service gave leads to the next page.
func FuzzListQueries(f *testing.F) {
	env := newAPI(f, nil)
	var id string
	for range 3 {
		a := env.do("POST", "/api/batch", testKey, createBody(`"Hi {{name}}"`, `{"autoStart": false}`))
		if a.Code != http.StatusCreated {
			f.Fatalf("create: %d %s", a.Code, a.Body)
		}
		id = strings.TrimPrefix(a.Header().Get("Location"), "/api/batch/")
	}
	var page struct {
		NextCursor string `json:"nextCursor"`
	}
	// The read models catch up with the creates a moment later.
	for deadline := time.Now().Add(5 * time.Second); page.NextCursor == ""; {
		a := env.do("GET", "/api/batch?limit=1", testKey, "")
		if err := json.Unmarshal(a.Body.Bytes(), &page); err != nil {
			f.Fatal(err)
		}
		if time.Now().After(deadline) {
			f.Fatal("no next cursor")
		}
	}
	for _, seed := range []string{
		"limit=1&cursor=" + page.NextCursor, "cursor=" + page.NextCursor, "limit=2", "limit=0", "limit=-1", "limit=101",
		"limit=99999999999999999999", "limit=1e3", "cursor=garbage", "cursor=YjE6MTox", "cursor=ZTE6LTE", "cursor=%00",
		"category=blocked", "category=nope", "category=blocked&cursor=ZTE6NQ", "limit=&cursor=",
	} {
		f.Add(seed, false)
		f.Add(seed, true)
	}
	f.Fuzz(func(t *testing.T, query string, errorsList bool) {
		path := "/api/batch"
		if errorsList {
			path += "/" + id + "/errors"
		}
		req, err := http.NewRequest("GET", path+"?"+query, nil)
		if err != nil {
			return
		}
		req.RemoteAddr = testAddr
		req.Header.Set("Authorization", "Bearer "+testKey)
		rec := httptest.NewRecorder()
		env.handler.ServeHTTP(rec, req)
		a := answer{rec}
		switch {
		case a.Code == http.StatusOK:
			var body map[string]json.RawMessage
			if err := json.Unmarshal(a.Body.Bytes(), &body); err != nil {
				t.Fatalf("200 %s: %v", a.Body, err)
			}
			if _, ok := body[map[bool]string{false: "batches", true: "errors"}[errorsList]]; !ok {
				t.Fatalf("200 %s lacks its list", a.Body)
			}
		case a.Code >= 400 && a.Code < 500:
			a.envelope(t)
		default:
			t.Fatalf("%s?%s: %d %s", path, query, a.Code, a.Body)
		}
	})
}

// plainJSONString answers only for string literals encoding/json decodes to
// exactly the bytes between the quotes, and then gives those.
func FuzzPlainJSONString(f *testing.F) {
	for _, seed := range []string{
		`"+14155550100"`, `""`, `"Ada 1"`, `"é 😀"`, `"a\"b"`, `"a\\b"`, `"\u00e9"`, `"\ud800"`,
		"\"a\x00b\"", "\"\xff\"", "\"\xed\xa0\x80\"", `"`, `"a`, `a"`, `"a"b"`, `5`, `null`, `"\t"`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		s, ok := plainJSONString(raw)
		if !ok {
			return
		}
		var want string
		if !json.Valid(raw) || json.Unmarshal(raw, &want) != nil || want != s || !validJSONString(raw) {
			t.Fatalf("plainJSONString(%q) = %q; encoding/json: valid %v, %q", raw, s, json.Valid(raw), want)
		}
	})
}
