package web

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, method, path string, header http.Header) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestHandlerServesThePageWithItsHeaders(t *testing.T) {
	h := Handler()
	tests := []struct {
		path, contentType, body string
		csp                     bool
	}{
		{"/", "text/html", `<script type="module" src="/static/js/app.js">`, true},
		{"/static/app.css", "text/css", ".progress", false},
		{"/static/js/app.js", "text/javascript", "import", false},
		{"/static/js/sms.js", "text/javascript", "export function segments", false},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			rec := get(t, h, http.MethodGet, tt.path, nil)
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d", rec.Code)
			}
			if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, tt.contentType) {
				t.Errorf("Content-Type %q, want %s", ct, tt.contentType)
			}
			if !strings.Contains(rec.Body.String(), tt.body) {
				t.Errorf("body does not contain %q", tt.body)
			}
			if cc := rec.Header().Get("Cache-Control"); cc != "no-cache" {
				t.Errorf("Cache-Control %q, want no-cache", cc)
			}
			if rec.Header().Get("ETag") == "" {
				t.Error("no ETag")
			}
			if got := rec.Header().Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("X-Content-Type-Options %q", got)
			}
			csp := rec.Header().Get("Content-Security-Policy")
			if tt.csp && (!strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe")) {
				t.Errorf("Content-Security-Policy %q", csp)
			}
		})
	}
}

func TestUnchangedFilesAreNotSentAgain(t *testing.T) {
	h := Handler()
	first := get(t, h, http.MethodGet, "/static/js/app.js", nil)
	again := get(t, h, http.MethodGet, "/static/js/app.js", http.Header{"If-None-Match": {first.Header().Get("ETag")}})
	if again.Code != http.StatusNotModified {
		t.Fatalf("revalidation answered %d, want 304", again.Code)
	}
}

func TestHandlerRefusesWhatItDoesNotServe(t *testing.T) {
	h := Handler()
	for _, tt := range []struct {
		method, path string
		want         int
	}{
		{http.MethodGet, "/static/nope.js", http.StatusNotFound},
		{http.MethodGet, "/static/../web.go", http.StatusNotFound},
		{http.MethodGet, "/index.html", http.StatusNotFound},
		{http.MethodGet, "/api/batch", http.StatusNotFound},
		{http.MethodPost, "/", http.StatusMethodNotAllowed},
	} {
		if rec := get(t, h, tt.method, tt.path, nil); rec.Code != tt.want {
			t.Errorf("%s %s: %d, want %d", tt.method, tt.path, rec.Code, tt.want)
		}
	}
}
