package main

import (
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
