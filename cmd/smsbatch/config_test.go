package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/api"
)

// The HTTP limits come from flags and SMSBATCH_ variables; 0 on the command line
// turns a limit off (api's -1), left alone it is the documented default.
func TestHTTPLimitSettings(t *testing.T) {
	env := map[string]string{"SMSBATCH_UPLOAD_MIN_RATE": "0", "SMSBATCH_HTTP_IDLE_TIMEOUT": "5s"}
	cfg, err := ParseConfig([]string{"--http-rate-limit", "0", "--auth-failure-limit=0", "--uploads-per-key", "3",
		"--http-read-timeout", "7s", "--data-dir", "/srv/sms"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	var a api.Config
	cfg.apiLimits(&a)
	want := api.Config{
		Limits:       api.Limits{MaxBodyBytes: 64 << 20, MaxRecipients: 1_000_000},
		RateLimit:    api.RateLimit{Requests: -1, Window: time.Minute},
		AuthFailures: api.RateLimit{Requests: -1, Window: time.Minute},
		Uploads:      api.UploadLimits{MinRate: -1, RateWindow: 20 * time.Second, PerKey: 3},
		Timeouts:     api.Timeouts{Read: 7 * time.Second, Write: 30 * time.Second, Idle: 5 * time.Second},
		SpoolDir:     filepath.Join("/srv/sms", "uploads"),
	}
	if a.Limits != want.Limits || a.RateLimit != want.RateLimit || a.AuthFailures != want.AuthFailures ||
		a.Uploads != want.Uploads || a.Timeouts != want.Timeouts || a.SpoolDir != want.SpoolDir {
		t.Fatalf("api limits\n got %+v %+v %+v %+v %+v %s\nwant %+v %+v %+v %+v %+v %s",
			a.Limits, a.RateLimit, a.AuthFailures, a.Uploads, a.Timeouts, a.SpoolDir,
			want.Limits, want.RateLimit, want.AuthFailures, want.Uploads, want.Timeouts, want.SpoolDir)
	}

	defaults, err := ParseConfig(nil, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	defaults.apiLimits(&a)
	if a.RateLimit.Requests != 600 || a.AuthFailures.Requests != 10 || a.Uploads.MinRate != 4096 || a.Uploads.PerKey != 64 {
		t.Fatalf("defaults: %+v %+v %+v", a.RateLimit, a.AuthFailures, a.Uploads)
	}

	for _, bad := range [][]string{{"--http-write-timeout", "0s"}, {"--http-idle-timeout", "-1s"}, {"--upload-rate-window", "0s"}} {
		if _, err := ParseConfig(bad, func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "must be positive") {
			t.Errorf("%v: %v, want refused", bad, err)
		}
	}
}

// --help, and any mistyped flag, print every flag's default to stderr (the
// container's log): a default is the built-in one, never the value of its
// variable, which may be an API key or a URL with a password.
func TestUsageDoesNotPrintSecrets(t *testing.T) {
	env := map[string]string{
		"SMSBATCH_API_KEYS":        "acme:acme-secret-key-0123456789",
		"SMSBATCH_EVENT_STORE":     "postgres",
		"SMSBATCH_EVENT_STORE_URL": "postgres://app:S3cretPass@db:5432/sms",
		"SMSBATCH_NATS_URL":        "nats://user:NatsPass@nats:4222",
	}
	for _, args := range [][]string{{"-h"}, {"--max-inflight", "3"}} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		stderr := os.Stderr
		os.Stderr = w
		_, perr := ParseConfig(args, func(k string) string { return env[k] })
		os.Stderr = stderr
		w.Close()
		out, _ := io.ReadAll(r)
		if !strings.Contains(string(out), "-api-keys") {
			t.Fatalf("smsbatch serve %v printed no usage (%v):\n%s", args, perr, out)
		}
		for _, secret := range []string{"acme-secret-key-0123456789", "S3cretPass", "NatsPass"} {
			if strings.Contains(string(out), secret) {
				t.Errorf("smsbatch serve %v prints the secret %q", args, secret)
			}
		}
	}
	// The variables still set what no flag gives.
	cfg, err := ParseConfig(nil, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.APIKeys != env["SMSBATCH_API_KEYS"] || cfg.EventStoreURL != env["SMSBATCH_EVENT_STORE_URL"] || cfg.NATSURL != env["SMSBATCH_NATS_URL"] {
		t.Fatalf("variables not applied: %+v", cfg)
	}
}

// A flag wins over its variable, which is then not read: a malformed one does
// not refuse the start; without the flag it does.
func TestTheFlagWinsOverABadVariable(t *testing.T) {
	env := map[string]string{"SMSBATCH_MAX_IN_FLIGHT": "five", "SMSBATCH_WORK_SLICE": "2"}
	cfg, err := ParseConfig([]string{"--max-in-flight", "4", "--work-slice", "3s"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("flags given, the variables they override refuse the start: %v", err)
	}
	if cfg.MaxInFlight != 4 || cfg.Slice != 3*time.Second {
		t.Fatalf("got %d, %s", cfg.MaxInFlight, cfg.Slice)
	}
	_, err = ParseConfig(nil, func(k string) string { return env[k] })
	if err == nil || !strings.Contains(err.Error(), "SMSBATCH_MAX_IN_FLIGHT") || !strings.Contains(err.Error(), "SMSBATCH_WORK_SLICE") {
		t.Fatalf("malformed variables without their flags: %v", err)
	}
}

// A URL given for a backend serve does not use is refused, not ignored: an
// SMS URL with the built-in simulator would "send" every message to nobody,
// and a KurrentDB URL is no read-model database.
func TestURLsOfUnselectedBackendsAreRefused(t *testing.T) {
	for _, env := range []map[string]string{
		{"SMSBATCH_SMS_URL": "https://api.twilio.com", "SMSBATCH_SMS_ACCOUNT_SID": "AC123", "SMSBATCH_SMS_AUTH_TOKEN": "tok"},
		{"SMSBATCH_EVENT_STORE_URL": "postgres://app@db:5432/sms"},
		{"SMSBATCH_READ_STORE_URL": "postgres://app@db:5432/sms"},
		{"SMSBATCH_EVENT_STORE": "kurrent", "SMSBATCH_EVENT_STORE_URL": "esdb://admin:Kurr3ntSecret@127.0.0.1:2113?tls=false", "SMSBATCH_READ_STORE": "postgres"},
	} {
		cfg, err := ParseConfig(nil, func(k string) string { return env[k] })
		if err == nil {
			t.Errorf("%v accepted: provider %s, event store %s, read store %s at %q", env, cfg.SMSProvider, cfg.EventStore, cfg.ReadStore, cfg.ReadStoreURL)
		} else if strings.Contains(err.Error(), "Kurr3ntSecret") {
			t.Errorf("the refusal shows a password: %v", err)
		}
	}
	// PostgreSQL for both takes one URL.
	env := map[string]string{"SMSBATCH_EVENT_STORE": "postgres", "SMSBATCH_EVENT_STORE_URL": "postgres://app@db:5432/sms", "SMSBATCH_READ_STORE": "postgres"}
	if cfg, err := ParseConfig(nil, func(k string) string { return env[k] }); err != nil || cfg.ReadStoreURL != env["SMSBATCH_EVENT_STORE_URL"] {
		t.Fatalf("postgres for both: %v, read store URL %q", err, cfg.ReadStoreURL)
	}
}

// A value put in the wrong variable (a database URL in SMSBATCH_READ_STORE
// rather than SMSBATCH_READ_STORE_URL, a URL in a number's variable) is
// refused without being printed: it may hold a password.
func TestAMisplacedURLIsNotPrinted(t *testing.T) {
	for _, env := range []map[string]string{
		{"SMSBATCH_READ_STORE": "postgres://app:S3cretPass@db:5432/sms"},
		{"SMSBATCH_EVENT_STORE": "postgres://app:S3cretPass@db:5432/sms"},
		{"SMSBATCH_SMS_PROVIDER": "https://AC1:S3cretPass@api.twilio.com"},
		{"SMSBATCH_MAX_IN_FLIGHT": "nats://u:S3cretPass@nats:4222"},
	} {
		_, err := ParseConfig(nil, func(k string) string { return env[k] })
		if err == nil {
			t.Fatalf("%v accepted", env)
		}
		if strings.Contains(err.Error(), "S3cretPass") {
			t.Errorf("the refusal prints the password: %v", err)
		}
	}
	// A plain wrong value is still named.
	if _, err := ParseConfig(nil, func(k string) string { return map[string]string{"SMSBATCH_READ_STORE": "mongo"}[k] }); err == nil || !strings.Contains(err.Error(), `"mongo"`) {
		t.Fatalf("read store mongo: %v", err)
	}
}
