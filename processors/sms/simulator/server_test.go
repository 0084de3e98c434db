package simulator_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/processors/sms/simulator"
)

const (
	testSID   = "AC00000000000000000000000000000001"
	testToken = "tok-3f9a1c7e5b2d4f60"
)

// serve returns a handler around a fresh Simulator, and the Simulator's outbox path.
func serve(t *testing.T, simCfg simulator.Config, srvCfg simulator.ServerConfig) (http.Handler, string) {
	t.Helper()
	simCfg.OutboxPath = filepath.Join(t.TempDir(), "sim-outbox.jsonl")
	sim := newSim(t, simCfg)
	if srvCfg.AccountSID == "" {
		srvCfg.AccountSID = testSID
	}
	if srvCfg.AuthToken == "" {
		srvCfg.AuthToken = testToken
	}
	h, err := simulator.NewServer(sim, srvCfg)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	return h, simCfg.OutboxPath
}

type post struct {
	sid, user, pass string
	noAuth          bool
	key             string
	form            url.Values
	method          string
}

func do(t *testing.T, h http.Handler, p post) (*httptest.ResponseRecorder, map[string]any) {
	t.Helper()
	if p.sid == "" {
		p.sid = testSID
	}
	if p.user == "" {
		p.user = testSID
	}
	if p.pass == "" {
		p.pass = testToken
	}
	if p.method == "" {
		p.method = http.MethodPost
	}
	r := httptest.NewRequest(p.method, "/2010-04-01/Accounts/"+p.sid+"/Messages.json", strings.NewReader(p.form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if !p.noAuth {
		r.SetBasicAuth(p.user, p.pass)
	}
	if p.key != "" {
		r.Header.Set(simulator.IdempotencyHeader, p.key)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	var body map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatalf("answer is not JSON: %v: %s", err, w.Body.String())
	}
	return w, body
}

func form(to, body string) url.Values {
	return url.Values{"To": {to}, "Body": {body}, "From": {"+15005550006"}}
}

// wantError checks Twilio's error shape: code, status and a documentation link.
func wantError(t *testing.T, w *httptest.ResponseRecorder, body map[string]any, status int, code float64) {
	t.Helper()
	if w.Code != status {
		t.Errorf("status = %d, want %d (%v)", w.Code, status, body)
	}
	if body["code"] != code || body["status"] != float64(status) {
		t.Errorf("body code/status = %v/%v, want %v/%d", body["code"], body["status"], code, status)
	}
	if msg, _ := body["message"].(string); msg == "" {
		t.Errorf("no message in %v", body)
	}
	if info, _ := body["more_info"].(string); !strings.HasPrefix(info, "https://www.twilio.com/docs/errors/") {
		t.Errorf("more_info = %q", info)
	}
}

func TestServerRequiresBasicAuth(t *testing.T) {
	h, outbox := serve(t, simulator.Config{}, simulator.ServerConfig{})
	for name, p := range map[string]post{
		"no credentials": {noAuth: true},
		"wrong token":    {pass: "not-the-token"},
		"wrong account":  {user: "AC0000000000000000000000000000bad"},
	} {
		t.Run(name, func(t *testing.T) {
			p.form = form(okNumber, "hello")
			w, body := do(t, h, p)
			wantError(t, w, body, http.StatusUnauthorized, 20003)
			if body["message"] != "Authenticate" {
				t.Errorf("message = %v, want Authenticate", body["message"])
			}
			if strings.Contains(w.Body.String(), testToken) {
				t.Error("the answer repeats the token")
			}
		})
	}
	if got := readOutbox(t, outbox); len(got) != 0 {
		t.Errorf("outbox has %d lines after refused requests, want 0", len(got))
	}
}

func TestServerCreatesMessage(t *testing.T) {
	h, outbox := serve(t, simulator.Config{}, simulator.ServerConfig{})
	w, body := do(t, h, post{key: "b1:0", form: form(okNumber, "héllo & <bye>")})
	if w.Code != http.StatusCreated {
		t.Fatalf("status = %d, want 201: %v", w.Code, body)
	}
	sid, _ := body["sid"].(string)
	if !strings.HasPrefix(sid, "SM") {
		t.Errorf("sid = %q, want an SM... sid", sid)
	}
	want := map[string]any{
		"status": "queued", "to": okNumber, "from": "+15005550006", "body": "héllo & <bye>",
		"account_sid": testSID, "api_version": "2010-04-01",
	}
	for k, v := range want {
		if body[k] != v {
			t.Errorf("%s = %v, want %v", k, body[k], v)
		}
	}
	entries := readOutbox(t, outbox)
	if len(entries) != 1 || entries[0].Key != "b1:0" || entries[0].To != okNumber ||
		entries[0].Body != "héllo & <bye>" || entries[0].ProviderID != sid {
		t.Errorf("outbox = %+v, want one line for b1:0 with sid %s", entries, sid)
	}
}

func TestServerRepeatedKeyAnswersTheFirstSid(t *testing.T) {
	h, outbox := serve(t, simulator.Config{}, simulator.ServerConfig{})
	w1, first := do(t, h, post{key: "b1:7", form: form(okNumber, "hello")})
	w2, second := do(t, h, post{key: "b1:7", form: form(okNumber, "hello")})
	if w1.Code != http.StatusCreated || w2.Code != http.StatusOK {
		t.Errorf("statuses = %d, %d; want 201, then 200 for the repeat", w1.Code, w2.Code)
	}
	if first["sid"] != second["sid"] {
		t.Errorf("repeat sid = %v, want the first %v", second["sid"], first["sid"])
	}
	if got := readOutbox(t, outbox); len(got) != 1 {
		t.Errorf("outbox has %d lines, want 1", len(got))
	}
}

func TestServerWithoutKeyDoesNotDeduplicate(t *testing.T) {
	h, outbox := serve(t, simulator.Config{}, simulator.ServerConfig{})
	_, first := do(t, h, post{form: form(okNumber, "hello")})
	_, second := do(t, h, post{form: form(okNumber, "hello")})
	if first["sid"] == second["sid"] {
		t.Errorf("two keyless sends share sid %v", first["sid"])
	}
	if got := readOutbox(t, outbox); len(got) != 2 {
		t.Errorf("outbox has %d lines, want 2", len(got))
	}
}

func TestServerAnswersTestNumbersAsTwilio(t *testing.T) {
	h, outbox := serve(t, simulator.Config{}, simulator.ServerConfig{})
	for to, code := range map[string]int{
		"+15005550001": 21211,
		"+15005550002": 21612,
		"+15005550003": 21408,
		"+15005550004": 21610,
		"+15005550009": 21614,
		"not-a-number": 21211,
	} {
		t.Run(to, func(t *testing.T) {
			w, body := do(t, h, post{key: "k-" + to, form: form(to, "hello")})
			wantError(t, w, body, http.StatusBadRequest, float64(code))
			if want := "https://www.twilio.com/docs/errors/" + strconv.Itoa(code); body["more_info"] != want {
				t.Errorf("more_info = %v, want %s", body["more_info"], want)
			}
		})
	}
	if got := readOutbox(t, outbox); len(got) != 0 {
		t.Errorf("outbox has %d lines, want 0", len(got))
	}
}

func TestServerRequiresToAndBody(t *testing.T) {
	h, _ := serve(t, simulator.Config{}, simulator.ServerConfig{})
	w, body := do(t, h, post{form: url.Values{"Body": {"hello"}}})
	wantError(t, w, body, http.StatusBadRequest, 21604)
	w, body = do(t, h, post{form: url.Values{"To": {okNumber}}})
	wantError(t, w, body, http.StatusBadRequest, 21602)
	w, body = do(t, h, post{form: form(okNumber, strings.Repeat("é", 1601))})
	wantError(t, w, body, http.StatusBadRequest, 21617)
}

func TestServerTransientFailureIs503(t *testing.T) {
	h, outbox := serve(t, simulator.Config{TransientFailureRate: 1}, simulator.ServerConfig{})
	w, body := do(t, h, post{key: "b1:0", form: form(okNumber, "hello")})
	wantError(t, w, body, http.StatusServiceUnavailable, 20500)
	if got := readOutbox(t, outbox); len(got) != 0 {
		t.Errorf("outbox has %d lines, want 0", len(got))
	}
}

func TestServerRateLimit(t *testing.T) {
	h, outbox := serve(t, simulator.Config{}, simulator.ServerConfig{RateLimit: 1})
	w, _ := do(t, h, post{key: "b1:0", form: form(okNumber, "hello")})
	if w.Code != http.StatusCreated {
		t.Fatalf("first status = %d, want 201", w.Code)
	}
	w, body := do(t, h, post{key: "b1:1", form: form(okNumber, "hello")})
	wantError(t, w, body, http.StatusTooManyRequests, 20429)
	if got := w.Header().Get("Retry-After"); got != "1" {
		t.Errorf("Retry-After = %q, want 1", got)
	}
	if got := readOutbox(t, outbox); len(got) != 1 {
		t.Errorf("outbox has %d lines, want 1", len(got))
	}
}

// Below one request a second, the 429's Retry-After still says when the next
// request will be taken: a client that waits what it says is not refused
// again.
func TestServerRetryAfterIsWhenTheNextRequestIsTaken(t *testing.T) {
	h, _ := serve(t, simulator.Config{}, simulator.ServerConfig{RateLimit: 0.5}) // one request every 2 s
	var w *httptest.ResponseRecorder
	for i := range 3 { // the first is taken; one a moment later is not, unless this machine stalled for 2 s
		if w, _ = do(t, h, post{key: "b1:" + strconv.Itoa(i), form: form(okNumber, "hello")}); w.Code == http.StatusTooManyRequests {
			break
		}
	}
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("three requests at once at 0.5 a second: the last answered %d, want 429", w.Code)
	}
	wait, err := strconv.Atoi(w.Header().Get("Retry-After"))
	if err != nil || wait < 1 {
		t.Fatalf("Retry-After = %q, want whole seconds", w.Header().Get("Retry-After"))
	}
	time.Sleep(time.Duration(wait) * time.Second)
	if w, body := do(t, h, post{key: "b1:retry", form: form(okNumber, "hello")}); w.Code != http.StatusCreated {
		t.Errorf("a request %d s later, as Retry-After said: %d %v, want 201", wait, w.Code, body)
	}
}

// With RecordEveryCall, every call of the account is in the calls file,
// whatever its answer: a request the server refuses for its form is a call
// too, and a test counting the calls of a message must see it.
func TestServerRecordsTheCallsItRefuses(t *testing.T) {
	calls := filepath.Join(t.TempDir(), "sim-calls.jsonl")
	h, _ := serve(t, simulator.Config{RecordEveryCall: true, CallsPath: calls}, simulator.ServerConfig{})
	badCallback := form(okNumber, "hello")
	badCallback.Set("StatusCallback", "not a url")
	requests := []struct {
		key  string
		form url.Values
		code float64
	}{
		{"b1:0", url.Values{"Body": {"hello"}}, 21604},
		{"b1:1", form(okNumber, ""), 21602},
		{"b1:2", form(okNumber, strings.Repeat("x", 1601)), 21617},
		{"b1:3", badCallback, 21609},
	}
	for _, r := range requests {
		w, body := do(t, h, post{key: r.key, form: r.form})
		wantError(t, w, body, http.StatusBadRequest, r.code)
	}
	if w, _ := do(t, h, post{key: "b1:4", form: form(okNumber, "hello")}); w.Code != http.StatusCreated {
		t.Fatalf("a valid request: %d", w.Code)
	}
	got, err := simulator.ReadCalls(calls)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{}
	for _, c := range got {
		keys[c.Key] = c.Outcome
	}
	for _, r := range requests {
		if outcome, ok := keys[r.key]; !ok || outcome == "accepted" {
			t.Errorf("the call of %s (refused %v) is in the calls file as %q, %v; want it there, not accepted", r.key, r.code, outcome, ok)
		}
	}
	if len(got) != len(requests)+1 {
		t.Errorf("%d calls recorded, want %d: %+v", len(got), len(requests)+1, got)
	}
}

func TestServerOtherAccountPathIsNotFound(t *testing.T) {
	h, _ := serve(t, simulator.Config{}, simulator.ServerConfig{})
	w, body := do(t, h, post{sid: "AC0000000000000000000000000000other", form: form(okNumber, "hello")})
	wantError(t, w, body, http.StatusNotFound, 20404)
}

func TestServerOnlyPosts(t *testing.T) {
	h, _ := serve(t, simulator.Config{}, simulator.ServerConfig{})
	w, body := do(t, h, post{method: http.MethodGet})
	wantError(t, w, body, http.StatusMethodNotAllowed, 20004)
}

func TestNewServerRefusesBadConfig(t *testing.T) {
	sim := newSim(t, simulator.Config{})
	if _, err := simulator.NewServer(nil, simulator.ServerConfig{AccountSID: testSID, AuthToken: testToken}); err == nil {
		t.Error("NewServer(nil, ...) succeeded")
	}
	_, err := simulator.NewServer(sim, simulator.ServerConfig{AccountSID: "", AuthToken: "", RateLimit: -1})
	if err == nil {
		t.Fatal("NewServer accepted empty credentials and a negative rate")
	}
	for _, want := range []string{"AccountSID", "AuthToken", "RateLimit"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}
