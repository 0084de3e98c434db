package httpprovider_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/processors/sms"
	"github.com/smsbatch/smsbatch/processors/sms/httpprovider"
	"github.com/smsbatch/smsbatch/processors/sms/simulator"
	"github.com/smsbatch/smsbatch/processors/sms/twilio"
)

const (
	sid      = "AC00000000000000000000000000000001"
	token    = "tok-9c2e7a41d35b6f08"
	okNumber = "+14155550100"
)

// startSim runs the simulator's HTTP server and returns its URL and outbox path.
func startSim(t *testing.T, simCfg simulator.Config, srvCfg simulator.ServerConfig) (string, string) {
	t.Helper()
	simCfg.OutboxPath = filepath.Join(t.TempDir(), "sim-outbox.jsonl")
	sim, err := simulator.New(simCfg)
	if err != nil {
		t.Fatalf("simulator.New: %v", err)
	}
	srvCfg.AccountSID, srvCfg.AuthToken = sid, token
	h, err := simulator.NewServer(sim, srvCfg)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.Close()
		_ = sim.Close()
	})
	return srv.URL, simCfg.OutboxPath
}

// stub runs a server that answers every request with status, headers and body.
func stub(t *testing.T, status int, header map[string]string, body string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k, v := range header {
			w.Header().Set(k, v)
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func newProvider(t *testing.T, baseURL string, edit ...func(*httpprovider.Config)) *httpprovider.Provider {
	t.Helper()
	cfg := httpprovider.Config{BaseURL: baseURL, AccountSID: sid, AuthToken: token, From: "+15005550006"}
	for _, e := range edit {
		e(&cfg)
	}
	p, err := httpprovider.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p
}

func send(t *testing.T, p *httpprovider.Provider, key, to string) (sms.Receipt, error) {
	t.Helper()
	return p.Send(t.Context(), sms.Message{IdempotencyKey: key, To: to, Body: "hello"})
}

// wantFailure checks the category and code a caller would record, and that the token
// is nowhere in what the error prints.
func wantFailure(t *testing.T, err error, category domain.ErrorCategory, code string) *sms.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("Send succeeded, want %s", category)
	}
	noToken(t, err)
	se := sms.Classify(err)
	if se.Category != category {
		t.Errorf("category = %s, want %s (error: %v)", se.Category, category, err)
	}
	if code != "" && se.Code != code {
		t.Errorf("code = %q, want %q (error: %v)", se.Code, code, err)
	}
	return se
}

func noToken(t *testing.T, err error) {
	t.Helper()
	for _, format := range []string{"%v", "%+v", "%#v", "%s"} {
		if s := fmt.Sprintf(format, err); strings.Contains(s, token) {
			t.Errorf("error printed with %s contains the auth token: %s", format, s)
		}
	}
	if se := sms.Classify(err); strings.Contains(se.Message, token) {
		t.Errorf("classified message contains the auth token: %s", se.Message)
	}
}

func TestSendAndResendWithTheSameKey(t *testing.T) {
	base, outbox := startSim(t, simulator.Config{}, simulator.ServerConfig{})
	p := newProvider(t, base)

	first, err := send(t, p, "b1:0", okNumber)
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if !strings.HasPrefix(first.ProviderID, "SM") || first.Duplicate {
		t.Errorf("first receipt = %+v, want a new SM... sid", first)
	}
	again, err := send(t, p, "b1:0", okNumber)
	if err != nil {
		t.Fatalf("re-send: %v", err)
	}
	if again.ProviderID != first.ProviderID || !again.Duplicate {
		t.Errorf("re-send receipt = %+v, want the first sid %s marked Duplicate", again, first.ProviderID)
	}

	entries, err := simulator.ReadOutbox(outbox)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Key != "b1:0" || entries[0].To != okNumber || entries[0].Body != "hello" {
		t.Errorf("outbox = %+v, want one line for b1:0", entries)
	}
}

func TestTwilioTestNumbersMapToCategories(t *testing.T) {
	base, outbox := startSim(t, simulator.Config{}, simulator.ServerConfig{})
	p := newProvider(t, base)
	tests := []struct {
		to       string
		category domain.ErrorCategory
		code     string
	}{
		{"+15005550001", domain.CategoryInvalidNumber, "21211"},
		{"+15005550002", domain.CategoryUnroutable, "21612"},
		{"+15005550003", domain.CategoryUnroutable, "21408"},
		{"+15005550004", domain.CategoryBlocked, "21610"},
		{"+15005550009", domain.CategoryNotSMSCapable, "21614"},
	}
	for _, tt := range tests {
		t.Run(tt.to, func(t *testing.T) {
			_, err := send(t, p, "k"+tt.to, tt.to)
			var se *sms.Error
			if !errors.As(err, &se) {
				t.Fatalf("error = %v, want *sms.Error", err)
			}
			wantFailure(t, err, tt.category, tt.code)
			if tt.category.Retryable() {
				t.Errorf("%s is retryable; a recipient's fault must not be", tt.category)
			}
			if strings.Contains(se.Message, tt.to) {
				t.Errorf("message %q names the number; analytics could not group it", se.Message)
			}
		})
	}
	entries, _ := simulator.ReadOutbox(outbox)
	if len(entries) != 0 {
		t.Errorf("outbox has %d lines, want 0", len(entries))
	}
}

func TestRateLimitedAnswerCarriesRetryAfter(t *testing.T) {
	base, _ := startSim(t, simulator.Config{}, simulator.ServerConfig{RateLimit: 1})
	p := newProvider(t, base)
	if _, err := send(t, p, "b1:0", okNumber); err != nil {
		t.Fatalf("first Send: %v", err)
	}
	_, err := send(t, p, "b1:1", okNumber)
	se := wantFailure(t, err, domain.CategoryRateLimited, "20429")
	if se.RetryAfter != time.Second {
		t.Errorf("RetryAfter = %s, want 1s", se.RetryAfter)
	}
}

func TestRetryAfterAsHTTPDate(t *testing.T) {
	when := time.Now().Add(30 * time.Second).UTC().Format(http.TimeFormat)
	for _, status := range []int{http.StatusTooManyRequests, http.StatusServiceUnavailable} {
		base := stub(t, status, map[string]string{"Retry-After": when}, `{"code":20429,"message":"Too Many Requests","status":429}`)
		_, err := send(t, newProvider(t, base), "b1:0", okNumber)
		se := sms.Classify(err)
		// HTTP dates have whole seconds.
		if se.RetryAfter < 28*time.Second || se.RetryAfter > 31*time.Second {
			t.Errorf("HTTP %d: RetryAfter = %s, want about 30s", status, se.RetryAfter)
		}
	}
}

func TestSlowProviderTimesOut(t *testing.T) {
	base, _ := startSim(t, simulator.Config{Latency: 5 * time.Second}, simulator.ServerConfig{})
	p := newProvider(t, base, func(c *httpprovider.Config) { c.Timeout = 100 * time.Millisecond })
	start := time.Now()
	_, err := send(t, p, "b1:0", okNumber)
	wantFailure(t, err, domain.CategoryTimeout, "timeout")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Send took %s with a 100ms timeout", d)
	}
}

func TestClosedPortMakesTheProviderUnavailable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	_, err = send(t, newProvider(t, "http://"+addr), "b1:0", okNumber)
	wantFailure(t, err, domain.CategoryProviderUnavailable, "network")
	if strings.Contains(err.Error(), sid) {
		t.Errorf("error %q shows the request path", err)
	}
}

func TestTransientFailureMakesTheProviderUnavailable(t *testing.T) {
	base, _ := startSim(t, simulator.Config{TransientFailureRate: 1}, simulator.ServerConfig{})
	_, err := send(t, newProvider(t, base), "b1:0", okNumber)
	wantFailure(t, err, domain.CategoryProviderUnavailable, "20500")
}

func TestRefusedCredentials(t *testing.T) {
	base, outbox := startSim(t, simulator.Config{}, simulator.ServerConfig{})
	p := newProvider(t, base, func(c *httpprovider.Config) { c.AuthToken = token + "-wrong" })
	_, err := send(t, p, "b1:0", okNumber)
	se := wantFailure(t, err, domain.CategoryProviderUnavailable, "20003")
	if !strings.Contains(se.Message, "credentials") {
		t.Errorf("message %q does not say the credentials were refused", se.Message)
	}
	if strings.Contains(err.Error(), "-wrong") {
		t.Errorf("error %q shows the (wrong) token", err)
	}
	entries, _ := simulator.ReadOutbox(outbox)
	if len(entries) != 0 {
		t.Errorf("outbox has %d lines, want 0", len(entries))
	}
}

func TestOtherAnswers(t *testing.T) {
	tests := []struct {
		name     string
		status   int
		body     string
		category domain.ErrorCategory
		code     string
	}{
		{"unknown Twilio code", 400, `{"code":21999,"message":"Something new","status":400}`, domain.CategoryUnknown, "21999"},
		{"4xx without JSON", 422, `<html>nope</html>`, domain.CategoryUnknown, "422"},
		{"forbidden", 403, `{"code":20403,"message":"Forbidden"}`, domain.CategoryProviderUnavailable, "20403"},
		{"wrong account or URL", 404, `{"code":20404,"message":"Not found"}`, domain.CategoryProviderUnavailable, "20404"},
		{"5xx without JSON", 502, `bad gateway`, domain.CategoryProviderUnavailable, "502"},
		{"redirect", 307, ``, domain.CategoryUnknown, "307"},
		{"server echoes the token", 400, `{"code":21999,"message":"token ` + token + ` is odd"}`, domain.CategoryUnknown, "21999"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := stub(t, tt.status, map[string]string{"Location": "/elsewhere"}, tt.body)
			_, err := send(t, newProvider(t, base), "b1:0", okNumber)
			wantFailure(t, err, tt.category, tt.code)
		})
	}
}

func TestRedirectIsNotFollowedWithCredentials(t *testing.T) {
	var leaked atomic.Bool
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			leaked.Store(true)
		}
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"sid":"SMelsewhere"}`))
	}))
	t.Cleanup(other.Close)
	base := stub(t, http.StatusTemporaryRedirect, map[string]string{"Location": other.URL + "/steal"}, "")

	_, err := send(t, newProvider(t, base), "b1:0", okNumber)
	wantFailure(t, err, domain.CategoryUnknown, "307")
	if leaked.Load() {
		t.Error("the credentials followed the redirect")
	}
}

func TestRequestCarriesAuthKeyAndForm(t *testing.T) {
	type seen struct{ user, pass, key, to, from, body, path, ctype string }
	got := make(chan seen, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, _ := r.BasicAuth()
		_ = r.ParseForm()
		got <- seen{user, pass, r.Header.Get(httpprovider.IdempotencyHeader), r.PostForm.Get("To"),
			r.PostForm.Get("From"), r.PostForm.Get("Body"), r.URL.Path, r.Header.Get("Content-Type")}
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"sid":"SM1","status":"queued"}`))
	}))
	t.Cleanup(srv.Close)

	// A trailing slash on BaseURL is forgiven.
	r, err := newProvider(t, srv.URL+"/").Send(t.Context(), sms.Message{IdempotencyKey: "b9:3", To: okNumber, Body: "a+b & c=d"})
	if err != nil || r.ProviderID != "SM1" || r.Duplicate {
		t.Fatalf("Send = %+v, %v; want SM1 not duplicate", r, err)
	}
	want := seen{sid, token, "b9:3", okNumber, "+15005550006", "a+b & c=d",
		"/2010-04-01/Accounts/" + sid + "/Messages.json", "application/x-www-form-urlencoded"}
	if s := <-got; s != want {
		t.Errorf("server saw %+v, want %+v", s, want)
	}
}

func TestStatusCallbackIsAskedForWithAPublicURL(t *testing.T) {
	got := make(chan string, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		_, asked := r.PostForm["StatusCallback"]
		if !asked {
			got <- "(none)"
		} else {
			got <- r.PostForm.Get("StatusCallback")
		}
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"sid":"SM1","status":"queued"}`))
	}))
	t.Cleanup(srv.Close)
	msg := sms.Message{IdempotencyKey: "b9:3", To: okNumber, Body: "hi", BatchID: "b9", Index: 3}

	if _, err := newProvider(t, srv.URL).Send(t.Context(), msg); err != nil {
		t.Fatal(err)
	}
	if cb := <-got; cb != "(none)" {
		t.Errorf("without a public URL the provider asked for a callback at %s", cb)
	}

	before := time.Now()
	p := newProvider(t, srv.URL, func(c *httpprovider.Config) { c.PublicURL = "https://sms.example.com/x/" })
	if _, err := p.Send(t.Context(), msg); err != nil {
		t.Fatal(err)
	}
	cb, err := url.Parse(<-got)
	if err != nil {
		t.Fatal(err)
	}
	if cb.Scheme != "https" || cb.Host != "sms.example.com" || cb.Path != "/x"+twilio.StatusCallbackPath {
		t.Fatalf("callback URL %s, want https://sms.example.com/x%s?...", cb, twilio.StatusCallbackPath)
	}
	m, err := twilio.ParseStatusCallback(cb.Query())
	if err != nil {
		t.Fatal(err)
	}
	if m.BatchID != "b9" || m.Index != 3 || m.SentAt.Before(before.Truncate(time.Millisecond)) || m.SentAt.After(time.Now()) {
		t.Errorf("callback names %+v, want b9, 3, sent during the call", m)
	}
}

func TestCallerCancellation(t *testing.T) {
	base, _ := startSim(t, simulator.Config{Latency: 5 * time.Second}, simulator.ServerConfig{})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err := newProvider(t, base).Send(ctx, sms.Message{IdempotencyKey: "b1:0", To: okNumber, Body: "hello"})
	wantFailure(t, err, domain.CategoryTimeout, "timeout")
}

func TestConfigValidate(t *testing.T) {
	valid := httpprovider.Config{BaseURL: "https://api.twilio.com", AccountSID: sid, AuthToken: token}
	tests := []struct {
		name string
		edit func(*httpprovider.Config)
		want []string // substrings of the error; none means valid
	}{
		{"valid", func(*httpprovider.Config) {}, nil},
		{"everything missing", func(c *httpprovider.Config) { *c = httpprovider.Config{} },
			[]string{"BaseURL is required", "AccountSID is required", "AuthToken is required"}},
		{"relative URL", func(c *httpprovider.Config) { c.BaseURL = "api.twilio.com" }, []string{"absolute http"}},
		{"credentials in the URL", func(c *httpprovider.Config) { c.BaseURL = "https://" + sid + ":" + token + "@api.twilio.com" },
			[]string{"must not contain credentials"}},
		{"unparsable URL holding the token", func(c *httpprovider.Config) { c.BaseURL = "https://x:" + token + "@%zz" },
			[]string{"absolute http"}},
		{"negative timeout", func(c *httpprovider.Config) { c.Timeout = -time.Second }, []string{"negative Timeout"}},
		{"public URL", func(c *httpprovider.Config) { c.PublicURL = "https://sms.example.com/prefix" }, nil},
		{"relative public URL", func(c *httpprovider.Config) { c.PublicURL = "sms.example.com" }, []string{"PublicURL: must be an absolute"}},
		{"public URL with a query", func(c *httpprovider.Config) { c.PublicURL = "https://sms.example.com/?x=1" }, []string{"PublicURL: must not have a query"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := valid
			tt.edit(&cfg)
			_, err := httpprovider.New(cfg)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("New accepted an invalid config")
			}
			noToken(t, err)
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestPrintingConfigOrProviderHidesTheToken(t *testing.T) {
	cfg := httpprovider.Config{BaseURL: "https://api.twilio.com", AccountSID: sid, AuthToken: token}
	p, err := httpprovider.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("provider", slog.Any("config", cfg))
	outputs := []string{
		fmt.Sprintf("%v", cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg), fmt.Sprint(&cfg),
		fmt.Sprintf("%v", p), fmt.Sprintf("%+v", p), logged.String(),
	}
	for _, s := range outputs {
		if strings.Contains(s, token) {
			t.Errorf("printed config contains the token: %s", s)
		}
		if !strings.Contains(s, sid) {
			t.Errorf("printed config lost the account SID, which helps debugging: %s", s)
		}
	}
}

// Many sends at once to one provider keep their connections for the next
// ones: three rounds of 100 concurrent sends open about 100 connections, not
// one a send (http.DefaultTransport keeps two idle per host).
func TestConcurrentSendsReuseConnections(t *testing.T) {
	simURL, _ := startSim(t, simulator.Config{Latency: 20 * time.Millisecond}, simulator.ServerConfig{})
	var conns atomic.Int64
	proxy := httptest.NewUnstartedServer(nil)
	target, _ := url.Parse(simURL)
	proxy.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.URL.Scheme, r.URL.Host, r.RequestURI = target.Scheme, target.Host, ""
		resp, err := http.DefaultTransport.RoundTrip(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	})
	proxy.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	proxy.Start()
	t.Cleanup(proxy.Close)

	p := newProvider(t, proxy.URL)
	const perRound, rounds = 100, 3
	for round := range rounds {
		var wg sync.WaitGroup
		for i := range perRound {
			wg.Go(func() {
				if _, err := send(t, p, fmt.Sprintf("r%d-%d", round, i), okNumber); err != nil {
					t.Errorf("send: %v", err)
				}
			})
		}
		wg.Wait()
	}
	if n := conns.Load(); n > perRound+perRound/2 {
		t.Fatalf("%d sends opened %d connections, want them kept between rounds (at most %d)", perRound*rounds, n, perRound+perRound/2)
	}
}

// The provider says when the request has been written, before the answer
// comes: the sender paces the batch's next sends from that moment.
func TestSendSaysWhenTheMessageLeft(t *testing.T) {
	answer := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-answer // the answer comes only after the departure was reported
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"sid":"SM1"}`))
	}))
	t.Cleanup(srv.Close)
	p := newProvider(t, srv.URL)
	departures := 0
	ctx := sms.WithDeparture(context.Background(), func() {
		departures++
		close(answer)
	})
	if _, err := p.Send(ctx, sms.Message{IdempotencyKey: "b1:0", To: okNumber, Body: "hello"}); err != nil {
		t.Fatal(err)
	}
	if departures != 1 {
		t.Fatalf("departure reported %d times, want once", departures)
	}
}
