package api

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
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
	body := createBody(`"Hi {{name}}"`, "")
	post := func(key string) (int, apiErrorBody, http.Header) {
		t.Helper()
		req, _ := http.NewRequest("POST", srv.URL+"/api/batch", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e apiErrorBody
		json.NewDecoder(resp.Body).Decode(&e)
		return resp.StatusCode, e, resp.Header
	}

	// The first upload sends part of its body over a connection of its own,
	// then waits. A probe may take the only slot just as it arrives: then the
	// first is answered 429 at once, and starts again, with a longer head
	// start each time before the next probe (under load a probe in flight at
	// every restart kept it out for the whole deadline).
	var first net.Conn
	headStart := 20 * time.Millisecond
	begin := func() {
		var err error
		if first, err = net.Dial("tcp", srv.Listener.Addr().String()); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(first, "POST /api/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s", testKey, len(body), body[:40])
		time.Sleep(headStart)
		headStart = min(2*headStart, time.Second)
	}
	answered := func() bool {
		first.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		n, _ := first.Read(make([]byte, 1))
		return n > 0
	}
	begin()
	t.Cleanup(func() { first.Close() })
	for deadline := time.Now().Add(30 * time.Second); ; {
		code, e, hdr := post(testKey)
		if code == http.StatusTooManyRequests {
			if e.Error.Code != domain.ERATELIMITED || hdr.Get("Retry-After") == "" {
				t.Fatalf("429 %+v, Retry-After %q", e.Error, hdr.Get("Retry-After"))
			}
			break
		}
		if code != http.StatusCreated || time.Now().After(deadline) {
			t.Fatalf("a second concurrent upload of one key: %d, want 429", code)
		}
		if answered() {
			first.Close()
			begin()
		}
	}
	if code, _, _ := post(testOtherKey); code != http.StatusCreated {
		t.Fatalf("another key's upload: %d, want 201", code)
	}

	// The first upload finishes; its slot is free again.
	first.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := first.Write([]byte(body[40:])); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(first), nil)
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("the first upload: %v, %v; want 201", resp, err)
	}
	if code, _, _ := post(testKey); code != http.StatusCreated {
		t.Fatalf("after the first finished: %d, want 201", code)
	}
}
