package httpprovider_test

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/processors/sms"
	"github.com/smsbatch/smsbatch/processors/sms/httpprovider"
)

// A provider that cannot be reached (its certificate not trusted, its
// connection closed without an answer) is an outage: the batches hold, and no
// recipient uses up its attempts or fails for it.
func TestTransportFailuresAreOutages(t *testing.T) {
	tlsServer := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"sid":"SM1"}`))
	}))
	t.Cleanup(tlsServer.Close)
	hangUp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			conn.Close()
		}
	}))
	t.Cleanup(hangUp.Close)
	for name, base := range map[string]string{"untrusted certificate": tlsServer.URL, "closed without an answer": hangUp.URL} {
		_, err := send(t, newProvider(t, base), "b1:0", okNumber)
		if err == nil {
			t.Fatalf("%s: sent", name)
		}
		if se := sms.Classify(err); !se.Category.Outage() {
			t.Errorf("%s: %v classified %s: not an outage, so every recipient would use up its attempts and fail", name, err, se.Category)
		}
	}
}

// Once the provider answered 2xx it took the message: an answer cut off, cut
// by the timeout or without a sid is a send, never a failure to retry (a
// second call is a second SMS, billed).
func TestAnAcceptedMessageIsSentWhateverBecomesOfTheAnswer(t *testing.T) {
	cut := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, rw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = rw.WriteString("HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"sid\":\"SMabc\",")
		_ = rw.Flush()
	}))
	t.Cleanup(cut.Close)
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"sid":`))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); slow.Close() })
	noSID := stub(t, http.StatusCreated, nil, `{}`)

	for name, p := range map[string]*httpprovider.Provider{
		"cut off":        newProvider(t, cut.URL),
		"cut by timeout": newProvider(t, slow.URL, func(c *httpprovider.Config) { c.Timeout = 200 * time.Millisecond }),
		"without a sid":  newProvider(t, noSID),
	} {
		if _, err := send(t, p, "b1:0", okNumber); err != nil {
			t.Errorf("201 Created, answer %s: %v (category %s): the message would go again", name, err, sms.Classify(err).Category)
		}
	}
}

// A Retry-After far ahead is clamped, as a date as it is as seconds.
func TestRetryAfterIsBoundedAsADate(t *testing.T) {
	far := time.Now().AddDate(50, 0, 0).UTC().Format(http.TimeFormat)
	_, err := send(t, newProvider(t, stub(t, http.StatusTooManyRequests, map[string]string{"Retry-After": far}, `{"code":20429}`)), "b1:0", okNumber)
	asDate := sms.Classify(err)
	_, err = send(t, newProvider(t, stub(t, http.StatusTooManyRequests, map[string]string{"Retry-After": "999999999999"}, `{"code":20429}`)), "b1:1", okNumber)
	asSeconds := sms.Classify(err)
	if asDate.Category != domain.CategoryRateLimited || asDate.RetryAfter != asSeconds.RetryAfter {
		t.Fatalf("Retry-After as a date: %s %s; as seconds %s", asDate.Category, asDate.RetryAfter, asSeconds.RetryAfter)
	}
}

// Twilio's 21611 (the sender's queue is full) is the provider's rate limit:
// the batch slows down; no recipient fails for it.
func TestTwilioQueueFullIsRateLimited(t *testing.T) {
	base := stub(t, http.StatusBadRequest, nil,
		`{"code":21611,"message":"This 'From' number has exceeded the maximum number of queued messages","status":400}`)
	_, err := send(t, newProvider(t, base), "b1:0", okNumber)
	if se := sms.Classify(err); se.Category != domain.CategoryRateLimited || se.RetryAfter < 30*time.Second {
		t.Fatalf("Twilio 21611: %s, hold %s; want rate_limited with a hold", se.Category, se.RetryAfter)
	}
}

// A whole 2xx answer that is not the API's JSON is another server's (a proxy's
// or captive portal's page, a wrong --sms-url): nothing was sent, and it is
// not reported sent; the batches hold as in an outage.
func TestA2xxThatIsNotTheAPIIsNotASend(t *testing.T) {
	for name, base := range map[string]string{
		"HTML page":        stub(t, http.StatusOK, map[string]string{"Content-Type": "text/html"}, "<html><body>Welcome to nginx!</body></html>"),
		"proxy login page": stub(t, http.StatusOK, map[string]string{"Content-Type": "text/html"}, "<html><form action=/login>Sign in to continue</form></html>"),
	} {
		rec, err := send(t, newProvider(t, base), "b1:0", okNumber)
		if err == nil {
			t.Errorf("%s: reported sent (provider ID %q)", name, rec.ProviderID)
			continue
		}
		if se := sms.Classify(err); !se.Category.Outage() {
			t.Errorf("%s: %s, want an outage", name, se.Category)
		}
	}
}
