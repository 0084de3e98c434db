package api

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
)

// Failed authentications are limited per client address: past the limit an
// address gets 429 whatever key it sends, so guessing keys gets nowhere, while
// other addresses are not affected.
func TestFailedAuthenticationsAreLimitedPerAddress(t *testing.T) {
	env := newAPI(t, func(cfg *Config, _ eventstore.Store) eventstore.Store {
		cfg.AuthFailures = RateLimit{Requests: 3, Window: time.Minute}
		return nil
	})
	const guesser, bystander = "198.51.100.7:5000", "203.0.113.9:6000"
	for i := range 3 {
		key := "wrong-key-0123456789-" + string(rune('a'+i))
		if i == 2 {
			key = "" // no key at all fails too
		}
		if a := env.doFrom(guesser, "GET", "/api/batch", key, ""); a.Code != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d, want 401", i+1, a.Code)
		}
	}
	for _, key := range []string{"wrong-key-0123456789-d", testKey} {
		a := env.doFrom(guesser, "GET", "/api/batch", key, "")
		if a.Code != http.StatusTooManyRequests {
			t.Fatalf("after 3 failures, key %.5s…: %d, want 429", key, a.Code)
		}
		if e := a.envelope(t); e.Error.Code != domain.ERATELIMITED {
			t.Fatalf("code %s, want rate_limited", e.Error.Code)
		}
		if a.Header().Get("Retry-After") == "" {
			t.Fatal("429 without Retry-After")
		}
	}
	if a := env.doFrom(bystander, "GET", "/api/batch", testKey, ""); a.Code != http.StatusOK {
		t.Fatalf("another address: %d, want 200", a.Code)
	}
	// Successes are not failures: an address that authenticates many times is
	// never limited by this rule.
	for range 10 {
		if a := env.doFrom(bystander, "GET", "/api/batch", testKey, ""); a.Code != http.StatusOK {
			t.Fatalf("repeated good key: %d, want 200", a.Code)
		}
	}
}

// A zero RateLimit means the default; a negative one turns the limit off.
func TestRateLimitZeroIsTheDefaultNegativeIsOff(t *testing.T) {
	for _, tt := range []struct {
		requests  int
		wantLimit string
	}{{0, "600"}, {-1, ""}, {7, "7"}} {
		env := newAPI(t, func(cfg *Config, _ eventstore.Store) eventstore.Store {
			cfg.RateLimit = RateLimit{Requests: tt.requests}
			return nil
		})
		a := env.do("GET", "/api/batch", testKey, "")
		if a.Code != http.StatusOK || a.Header().Get("X-RateLimit-Limit") != tt.wantLimit {
			t.Fatalf("Requests %d: %d, X-RateLimit-Limit %q, want %q", tt.requests, a.Code, a.Header().Get("X-RateLimit-Limit"), tt.wantLimit)
		}
	}
}

// One API key runs at most Uploads.PerKey uploads at once; the next is a 429
// with Retry-After until one finishes. Other keys have their own slots.
func TestConcurrentUploadsPerKeyAreCapped(t *testing.T) {
	env := newAPI(t, func(cfg *Config, _ eventstore.Store) eventstore.Store {
		cfg.Uploads.PerKey = 1
		return nil
	})
	srv := httptest.NewServer(env.handler)
	t.Cleanup(srv.Close)
	post := func(key string, body io.Reader) (*http.Response, error) {
		req, _ := http.NewRequest("POST", srv.URL+"/api/batch", body)
		req.Header.Set("Authorization", "Bearer "+key)
		return http.DefaultClient.Do(req)
	}

	// The first upload sends half its body, then waits.
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.CloseWithError(io.ErrUnexpectedEOF) }) // before the server's Close
	first := make(chan *http.Response, 1)
	go func() {
		resp, err := post(testKey, pr)
		if err != nil {
			t.Errorf("first upload: %v", err)
			close(first)
			return
		}
		first <- resp
	}()
	body := createBody(`"Hi {{name}}"`, "")
	if _, err := pw.Write([]byte(body[:40])); err != nil {
		t.Fatal(err)
	}

	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := post(testKey, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var e apiErrorBody
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode == http.StatusTooManyRequests {
			if e.Error.Code != domain.ERATELIMITED || resp.Header.Get("Retry-After") == "" {
				t.Fatalf("429 %+v, Retry-After %q", e.Error, resp.Header.Get("Retry-After"))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a second concurrent upload of one key: %d, want 429", resp.StatusCode)
		}
		time.Sleep(10 * time.Millisecond)
	}
	resp, err := post(testOtherKey, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("another key's upload: %d, want 201", resp.StatusCode)
	}

	// The first upload finishes; its slot is free again.
	pw.Write([]byte(body[40:]))
	pw.Close()
	if r, ok := <-first; !ok || r.StatusCode != http.StatusCreated {
		t.Fatalf("first upload did not complete with 201: %v", r)
	} else {
		r.Body.Close()
	}
	resp, err = post(testKey, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("after the first finished: %d, want 201", resp.StatusCode)
	}
}
