package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/optouts"
	"github.com/smsbatch/smsbatch/processors/sms/twilio"
)

const (
	webhookToken = "provider-auth-token-0123"
	publicURL    = "https://sms.example.com/smsbatch"
	acmeNumber   = "+15551230000"
)

// newWebhookAPI is the API with the provider's webhooks and the opt-out lists,
// acmeNumber belonging to acme.
func newWebhookAPI(t *testing.T) *apiEnv {
	t.Helper()
	return newAPI(t, func(cfg *Config, es eventstore.Store) eventstore.Store {
		list, err := optouts.New(optouts.Config{Store: es})
		if err != nil {
			t.Fatal(err)
		}
		cmds, err := commands.NewOptOuts(es, list, nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg.OptOuts = &OptOuts{List: list, Commands: cmds}
		cfg.Webhooks = &Webhooks{PublicURL: publicURL, AuthToken: webhookToken,
			InboundNumbers: map[string]string{acmeNumber: "acme"}}
		return nil
	})
}

// webhook posts form to path (with its query) as the provider would: signed
// with sign over the public URL unless sign is "", or with the given signature
// when sign starts with "sig:".
func (env *apiEnv) webhook(path string, form url.Values, sign string) answer {
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.RemoteAddr = testAddr
	switch {
	case strings.HasPrefix(sign, "sig:"):
		req.Header.Set(twilio.SignatureHeader, strings.TrimPrefix(sign, "sig:"))
	case sign != "":
		req.Header.Set(twilio.SignatureHeader, twilio.Signature(sign, publicURL+path, form))
	}
	rec := httptest.NewRecorder()
	env.handler.ServeHTTP(rec, req)
	return answer{rec}
}

// statusPath is the callback path the provider was given for a message.
func statusPath(batchID string, index int) string {
	u := twilio.StatusCallbackURL("", batchID, index, time.Now().Add(-2*time.Second))
	return u
}

func receiptForm(status, code string) url.Values {
	f := url.Values{"MessageSid": {"SM0123"}, "MessageStatus": {status}, "AccountSid": {"ACtest"}, "To": {"+14155550100"}}
	if code != "" {
		f.Set("ErrorCode", code)
	}
	return f
}

func (env *apiEnv) createBatch(t *testing.T) string {
	t.Helper()
	a := env.do("POST", "/api/batch", testKey, createBody(`"Hi {{name}}"`, `{"autoStart": false}`))
	if a.Code != http.StatusCreated {
		t.Fatalf("create: %d %s", a.Code, a.Body)
	}
	var st struct{ ID string }
	if err := json.Unmarshal(a.Body.Bytes(), &st); err != nil {
		t.Fatal(err)
	}
	return st.ID
}

type progress struct{ Delivered, Undelivered int }

// progressOf waits for the read models to show want, failing after 5 s.
func (env *apiEnv) progressOf(t *testing.T, id string, want progress) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var got struct{ Progress progress }
	for {
		a := env.do("GET", "/api/batch/"+id, testKey, "")
		if err := json.Unmarshal(a.Body.Bytes(), &got); err != nil {
			t.Fatal(err)
		}
		if got.Progress == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("progress %+v, want %+v", got.Progress, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStatusCallbackSignatures(t *testing.T) {
	env := newWebhookAPI(t)
	id := env.createBatch(t)
	path := statusPath(id, 0)
	delivered := receiptForm("delivered", "")
	before := env.events(t)

	for _, c := range []struct {
		name string
		sign string
	}{
		{"missing", ""},
		{"wrong token", "not-the-token"},
		{"garbage", "sig:AAAA"},
	} {
		a := env.webhook(path, delivered, c.sign)
		if a.Code != http.StatusForbidden || a.envelope(t).Error.Code != "forbidden" {
			t.Errorf("%s signature: %d %s, want 403 forbidden", c.name, a.Code, a.Body)
		}
		if strings.Contains(a.Body.String(), webhookToken) {
			t.Error("the answer shows the token")
		}
	}
	// Signed for another message: the URL names the message, so the batch and
	// index cannot be changed under a valid signature.
	sig := twilio.Signature(webhookToken, publicURL+statusPath(id, 1), delivered)
	if a := env.webhook(path, delivered, "sig:"+sig); a.Code != http.StatusForbidden {
		t.Errorf("a signature of another message's URL: %d, want 403", a.Code)
	}
	// Signed over the address the request reached rather than the public URL.
	sig = twilio.Signature(webhookToken, "http://example.com"+path, delivered)
	if a := env.webhook(path, delivered, "sig:"+sig); a.Code != http.StatusForbidden {
		t.Errorf("a signature over the internal URL: %d, want 403", a.Code)
	}
	// An API key is no signature.
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(delivered.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+testKey)
	rec := httptest.NewRecorder()
	env.handler.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Errorf("an API key without a signature: %d, want 403", rec.Code)
	}
	if n := env.events(t); n != before {
		t.Fatalf("refused callbacks stored %d events", n-before)
	}

	// Good, then replayed: accepted every time, counted once.
	for i := range 3 {
		if a := env.webhook(path, delivered, webhookToken); a.Code != http.StatusOK || !strings.Contains(a.Body.String(), "<Response>") {
			t.Fatalf("good callback %d: %d %s", i, a.Code, a.Body)
		}
	}
	env.progressOf(t, id, progress{Delivered: 1})
	if n := env.events(t); n != before+1 {
		t.Fatalf("three identical callbacks stored %d events, want 1", n-before)
	}
}

func TestReceiptsCountOncePerMessage(t *testing.T) {
	env := newWebhookAPI(t)
	id := env.createBatch(t)
	for _, c := range []struct {
		index        int
		status, code string
	}{
		{0, "sent", ""}, // on the way: changes nothing
		{0, "queued", ""},
		{1, "undelivered", "30003"},
		{1, "delivered", ""}, // after an undelivered: the first receipt stands
		{0, "delivered", ""},
		{0, "failed", "30008"},
	} {
		if a := env.webhook(statusPath(id, c.index), receiptForm(c.status, c.code), webhookToken); a.Code != http.StatusOK {
			t.Fatalf("%s for %d: %d %s", c.status, c.index, a.Code, a.Body)
		}
	}
	env.progressOf(t, id, progress{Delivered: 1, Undelivered: 1})
	var a struct {
		Totals            struct{ Delivered, Undelivered int }
		DeliveryLatencyMs struct{ P50 float64 }
	}
	if err := json.Unmarshal(env.do("GET", "/api/batch/"+id+"/analytics", testKey, "").Body.Bytes(), &a); err != nil {
		t.Fatal(err)
	}
	if a.Totals.Delivered != 1 || a.Totals.Undelivered != 1 || a.DeliveryLatencyMs.P50 < 1500 {
		t.Errorf("analytics %+v, want 1 delivered about 2 s after its send, 1 undelivered", a)
	}
}

func TestCallbacksForNoMessageAreAcknowledged(t *testing.T) {
	env := newWebhookAPI(t)
	id := env.createBatch(t) // two recipients
	before := env.events(t)
	for _, path := range []string{
		statusPath("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", 0), // no such batch
		statusPath(id, 2),                      // no such index
		twilio.StatusCallbackPath + "?b=" + id, // not a URL smsbatch gave out
	} {
		if a := env.webhook(path, receiptForm("delivered", ""), webhookToken); a.Code != http.StatusOK {
			t.Errorf("%s: %d %s, want 200", path, a.Code, a.Body)
		}
	}
	if n := env.events(t); n != before {
		t.Fatalf("callbacks for no message stored %d events", n-before)
	}
}

func inboundForm(from, to, body, sid string) url.Values {
	return url.Values{"From": {from}, "To": {to}, "Body": {body}, "MessageSid": {sid}, "AccountSid": {"ACtest"}}
}

type optOutPage struct {
	OptOuts []struct {
		PhoneNumber string
		Source      string
		Since       time.Time
	}
	NextCursor string
	Total      int
}

func (env *apiEnv) optOuts(t *testing.T, key, query string) optOutPage {
	t.Helper()
	a := env.do("GET", "/api/optouts"+query, key, "")
	if a.Code != http.StatusOK {
		t.Fatalf("list: %d %s", a.Code, a.Body)
	}
	var p optOutPage
	if err := json.Unmarshal(a.Body.Bytes(), &p); err != nil {
		t.Fatal(err)
	}
	return p
}

func numbers(p optOutPage) []string {
	out := []string{}
	for _, e := range p.OptOuts {
		out = append(out, e.PhoneNumber)
	}
	return out
}

func TestInboundKeywordsChangeTheList(t *testing.T) {
	env := newWebhookAPI(t)
	const from = "+14155550100"
	send := func(body, sid string) {
		t.Helper()
		if a := env.webhook(twilio.InboundPath, inboundForm(from, acmeNumber, body, sid), webhookToken); a.Code != http.StatusOK {
			t.Fatalf("%q: %d %s", body, a.Code, a.Body)
		}
	}
	send("Hello, when is my order coming?", "SM1")
	send("stop please", "SM2")
	if p := env.optOuts(t, testKey, ""); p.Total != 0 {
		t.Fatalf("messages that are not keywords listed %v", numbers(p))
	}
	send("  Stop\n", "SM3")
	p := env.optOuts(t, testKey, "")
	if p.Total != 1 || p.OptOuts[0].PhoneNumber != from || p.OptOuts[0].Source != "keyword" {
		t.Fatalf("after STOP: %+v", p)
	}
	if p := env.optOuts(t, testOtherKey, ""); p.Total != 0 {
		t.Fatalf("another tenant's list has %v", numbers(p))
	}
	send("START", "SM4")
	if p := env.optOuts(t, testKey, ""); p.Total != 0 {
		t.Fatalf("after START: %v", numbers(p))
	}
	// The STOP replayed: signed and accepted, and it changes nothing.
	send("  Stop\n", "SM3")
	if p := env.optOuts(t, testKey, ""); p.Total != 0 {
		t.Fatalf("a replayed STOP listed %v again", numbers(p))
	}

	// To a number no tenant has: acknowledged, nothing changes.
	if a := env.webhook(twilio.InboundPath, inboundForm(from, "+15559999999", "STOP", "SM5"), webhookToken); a.Code != http.StatusOK {
		t.Fatalf("unmapped number: %d", a.Code)
	}
	// Unsigned: refused.
	if a := env.webhook(twilio.InboundPath, inboundForm(from, acmeNumber, "STOP", "SM6"), ""); a.Code != http.StatusForbidden {
		t.Fatalf("unsigned STOP: %d", a.Code)
	}
	if p := env.optOuts(t, testKey, ""); p.Total != 0 {
		t.Fatalf("refused messages listed %v", numbers(p))
	}
	send("unsubscribe", "SM7")
	if p := env.optOuts(t, testKey, ""); p.Total != 1 {
		t.Fatalf("after UNSUBSCRIBE: %v", numbers(p))
	}
}

func TestOptOutEndpoints(t *testing.T) {
	env := newWebhookAPI(t)
	add := func(key, body string) answer { return env.do("POST", "/api/optouts", key, body) }

	if a := add(testKey, `{"phoneNumber": "(415) 555-0100"}`); a.Code != http.StatusCreated || !strings.Contains(a.Body.String(), `"+14155550100"`) {
		t.Fatalf("add: %d %s", a.Code, a.Body)
	}
	if a := add(testKey, `{"phoneNumber": "+1 415 555 0100"}`); a.Code != http.StatusOK {
		t.Fatalf("add again: %d %s, want 200", a.Code, a.Body)
	}
	for body, want := range map[string]int{
		`{"phoneNumber": "12"}`:             http.StatusUnprocessableEntity,
		`{}`:                                http.StatusUnprocessableEntity,
		`{"phone": "+14155550100"}`:         http.StatusBadRequest,
		`["+14155550100"]`:                  http.StatusBadRequest,
		`{"phoneNumber": "+14155550100"}x`:  http.StatusBadRequest,
		`{"phoneNumber": "+14155550199"} }`: http.StatusBadRequest,
		`{"phoneNumber": "` + strings.Repeat("1", 5000) + `"}`: http.StatusRequestEntityTooLarge,
	} {
		a := add(testKey, body)
		if a.Code != want {
			t.Errorf("%.40s: %d %s, want %d", body, a.Code, a.Body, want)
			continue
		}
		if e := a.envelope(t); want == http.StatusUnprocessableEntity && !e.names("phoneNumber") {
			t.Errorf("%s: details %v do not name phoneNumber", body, e.fields())
		}
	}
	if a := add("", `{"phoneNumber": "+14155550101"}`); a.Code != http.StatusUnauthorized {
		t.Fatalf("without a key: %d", a.Code)
	}
	for i := 1; i <= 4; i++ {
		add(testKey, `{"phoneNumber": "+1415555010`+string(rune('0'+i))+`"}`)
	}
	add(testOtherKey, `{"phoneNumber": "+14155550199"}`)

	// Paged, in number order, apart per tenant.
	first := env.optOuts(t, testKey, "?limit=3")
	// The cursor goes into the query as it is returned, as clients do.
	second := env.optOuts(t, testKey, "?limit=3&cursor="+first.NextCursor)
	// One written by an earlier version, "+" and digits, read the same escaped
	// or not (a "+" unescaped in a query is a space).
	for _, old := range []string{url.QueryEscape("+" + first.NextCursor), "+" + first.NextCursor} {
		if again := env.optOuts(t, testKey, "?limit=3&cursor="+old); strings.Join(numbers(again), ",") != strings.Join(numbers(second), ",") {
			t.Errorf("cursor %q: %v, want %v", old, numbers(again), numbers(second))
		}
	}
	if got := append(numbers(first), numbers(second)...); strings.Join(got, ",") != "+14155550100,+14155550101,+14155550102,+14155550103,+14155550104" ||
		first.Total != 5 || second.NextCursor != "" {
		t.Fatalf("pages %v (total %d) then %v (next %q)", numbers(first), first.Total, numbers(second), second.NextCursor)
	}
	if p := env.optOuts(t, testOtherKey, ""); strings.Join(numbers(p), ",") != "+14155550199" {
		t.Fatalf("other tenant's list: %v", numbers(p))
	}
	if a := env.do("GET", "/api/optouts?cursor=nope", testKey, ""); a.Code != http.StatusUnprocessableEntity {
		t.Errorf("a foreign cursor: %d", a.Code)
	}

	// One number: found, removed (by another tenant: nothing), removed.
	if a := env.do("GET", "/api/optouts/%2B14155550102", testKey, ""); a.Code != http.StatusOK {
		t.Fatalf("get: %d %s", a.Code, a.Body)
	}
	if a := env.do("GET", "/api/optouts/+14155550102", testOtherKey, ""); a.Code != http.StatusNotFound {
		t.Fatalf("get another tenant's: %d", a.Code)
	}
	if a := env.do("DELETE", "/api/optouts/+14155550102", testOtherKey, ""); a.Code != http.StatusNoContent {
		t.Fatalf("delete from the other tenant's list: %d", a.Code)
	}
	if a := env.do("GET", "/api/optouts/+14155550102", testKey, ""); a.Code != http.StatusOK {
		t.Fatalf("another tenant's delete removed acme's number: %d", a.Code)
	}
	for range 2 {
		if a := env.do("DELETE", "/api/optouts/%2B14155550102", testKey, ""); a.Code != http.StatusNoContent {
			t.Fatalf("delete: %d %s", a.Code, a.Body)
		}
	}
	if a := env.do("GET", "/api/optouts/+14155550102", testKey, ""); a.Code != http.StatusNotFound {
		t.Fatalf("get after delete: %d", a.Code)
	}
	if p := env.optOuts(t, testKey, ""); p.Total != 4 {
		t.Fatalf("after delete: %v", numbers(p))
	}
}

// A webhook body over its limit is refused as too large (413), as every other
// body limit of the API is, not as a malformed form, and records nothing.
func TestAWebhookBodyOverItsLimitIsTooLarge(t *testing.T) {
	env := newWebhookAPI(t)
	id := env.createBatch(t)
	form := receiptForm("delivered", "")
	form.Set("Padding", strings.Repeat("x", maxWebhookBytes))
	before := env.events(t)
	a := env.webhook(statusPath(id, 0), form, webhookToken)
	if a.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("a %d-byte receipt: %d %s, want 413", len(form.Encode()), a.Code, a.Body)
	}
	if after := env.events(t); after != before {
		t.Errorf("the refused receipt stored %d events", after-before)
	}
}
