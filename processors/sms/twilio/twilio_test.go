package twilio

import (
	"net/url"
	"testing"
	"time"
)

// twilioExample is the request of Twilio's own documentation and helper-library
// tests, with the signature they publish for it.
var twilioExample = struct {
	token, url string
	form       url.Values
	sig        string
}{
	token: "12345",
	url:   "https://mycompany.com/myapp.php?foo=1&bar=2",
	form: url.Values{
		"CallSid": {"CA1234567890ABCDE"}, "Caller": {"+14158675309"}, "Digits": {"1234"},
		"From": {"+14158675309"}, "To": {"+18005551212"},
	},
	sig: "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
}

func TestSignatureMatchesTwilioPublishedExample(t *testing.T) {
	ex := twilioExample
	if got := Signature(ex.token, ex.url, ex.form); got != ex.sig {
		t.Fatalf("Signature = %q, Twilio publishes %q", got, ex.sig)
	}
	// The documentation's older example, other numbers.
	form := url.Values{"CallSid": {"CA1234567890ABCDE"}, "Caller": {"+12349013030"}, "Digits": {"1234"},
		"From": {"+12349013030"}, "To": {"+18005551212"}}
	if got := Signature(ex.token, ex.url, form); got != "0/KCTR6DLpKmkAf8muzZqo1nDgQ=" {
		t.Fatalf("Signature = %q, Twilio's documentation shows 0/KCTR6DLpKmkAf8muzZqo1nDgQ=", got)
	}
}

func TestValidSignature(t *testing.T) {
	ex := twilioExample
	changed := url.Values{}
	for k, v := range ex.form {
		changed[k] = v
	}
	changed.Set("Digits", "1235")
	extra := url.Values{}
	for k, v := range ex.form {
		extra[k] = v
	}
	extra.Set("MessageStatus", "delivered")
	for _, c := range []struct {
		name, token, url string
		form             url.Values
		sig              string
		want             bool
	}{
		{"good", ex.token, ex.url, ex.form, ex.sig, true},
		{"with the default port", ex.token, "https://mycompany.com:443/myapp.php?foo=1&bar=2", ex.form, ex.sig, true},
		{"missing", ex.token, ex.url, ex.form, "", false},
		{"wrong token", "54321", ex.url, ex.form, ex.sig, false},
		{"empty token", "", ex.url, ex.form, Signature("", ex.url, ex.form), false},
		{"a parameter changed", ex.token, ex.url, changed, ex.sig, false},
		{"a parameter added", ex.token, ex.url, extra, ex.sig, false},
		{"another query", ex.token, "https://mycompany.com/myapp.php?foo=1&bar=3", ex.form, ex.sig, false},
		{"another host", ex.token, "https://evil.example/myapp.php?foo=1&bar=2", ex.form, ex.sig, false},
		{"http instead of https", ex.token, "http://mycompany.com/myapp.php?foo=1&bar=2", ex.form, ex.sig, false},
		{"truncated", ex.token, ex.url, ex.form, ex.sig[:len(ex.sig)-2], false},
	} {
		if got := ValidSignature(c.token, c.url, c.form, c.sig); got != c.want {
			t.Errorf("%s: valid = %v, want %v", c.name, got, c.want)
		}
	}
	// A signature of the URL with a port is valid for the URL without it, too.
	withPort := Signature(ex.token, "https://mycompany.com:1234/myapp.php?foo=1&bar=2", ex.form)
	if !ValidSignature(ex.token, "https://mycompany.com:1234/myapp.php?foo=1&bar=2", ex.form, withPort) {
		t.Error("signature over a URL with a port refused")
	}
}

func TestRepeatedParametersAreSortedByValue(t *testing.T) {
	a := url.Values{"MediaUrl": {"b", "a"}}
	b := url.Values{"MediaUrl": {"a", "b"}}
	if Signature("t", "https://x/y", a) != Signature("t", "https://x/y", b) {
		t.Error("the order of a repeated parameter's values changes the signature")
	}
}

func TestStatusCallbackURLRoundTrips(t *testing.T) {
	sent := time.Date(2026, 3, 1, 12, 0, 0, 123_000_000, time.UTC)
	raw := StatusCallbackURL("https://sms.example.com/prefix/", "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", 42, sent)
	want := "https://sms.example.com/prefix/api/webhooks/sms/status?b=0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b&i=42&s=1772366400123"
	if raw != want {
		t.Fatalf("URL = %s\nwant  %s", raw, want)
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseStatusCallback(u.Query())
	if err != nil {
		t.Fatal(err)
	}
	if m.BatchID != "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b" || m.Index != 42 || !m.SentAt.Equal(sent) {
		t.Fatalf("parsed %+v", m)
	}
	for _, q := range []string{"", "i=1&s=1", "b=x&s=1", "b=x&i=-1&s=1", "b=x&i=1", "b=x&i=1&s=abc"} {
		v, _ := url.ParseQuery(q)
		if _, err := ParseStatusCallback(v); err == nil {
			t.Errorf("query %q parsed", q)
		}
	}
}

func TestReceipt(t *testing.T) {
	for status, want := range map[string][2]bool{
		"delivered": {true, true}, "undelivered": {false, true}, "failed": {false, true},
		"sent": {false, false}, "queued": {false, false}, "sending": {false, false}, "read": {false, false}, "": {false, false},
	} {
		if d, f := Receipt(status); d != want[0] || f != want[1] {
			t.Errorf("%q: delivered %v final %v, want %v", status, d, f, want)
		}
	}
}
