package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	esmemory "github.com/smsbatch/smsbatch/eventstore/memory"
)

// The README: "Every JSON answer carries X-Content-Type-Options: nosniff." A
// create retried with its Idempotency-Key gets the first answer again, which is
// JSON too.
func TestReplayedAnswerCarriesNosniff(t *testing.T) {
	env := newKeyedAPI(t, esmemory.New())
	first := env.post(t, "/api/batch", liveAcmeKey, "order-1", keyedBody("Ada"))
	if first.status != http.StatusCreated || first.header.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("create: %d, nosniff %q", first.status, first.header.Get("X-Content-Type-Options"))
	}
	again := env.post(t, "/api/batch", liveAcmeKey, "order-1", keyedBody("Ada"))
	if again.header.Get(ReplayedHeader) != "true" {
		t.Fatalf("retry not replayed: %d %s", again.status, again.body)
	}
	if got := again.header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Fatalf("replayed answer: X-Content-Type-Options %q, want nosniff (headers %v)", got, again.header)
	}
}

// Retry-failed sends the failed recipients of a campaign again. A campaign's
// quiet hours (and their time zone) and its validity are rules about when
// those recipients may be texted at all (TCPA-style quiet hours, a sale that
// ends): a retry that drops them texts the same people at night, or after the
// offer ended. The retry must keep them (a validUntil already past leaves
// nothing to send, so that retry is refused rather than sent late).
func TestRetryFailedKeepsQuietHoursAndValidity(t *testing.T) {
	env := newAPI(t, nil)
	valid := time.Now().Add(2 * time.Hour).UTC().Truncate(time.Second)
	// Quiet hours that begin 3 hours from now in the zone, so the first send
	// (recorded failed below) may go now whatever the hour the test runs at.
	zone, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	there := time.Now().In(zone)
	start, end := there.Add(3*time.Hour).Format("15:00"), there.Add(6*time.Hour).Format("15:00")
	a := env.do("POST", "/api/batch", testKey, `{"text": "Hi {{name}}", "recipients": [
		{"phoneNumber": "+16502530000", "variables": {"name": "Ada"}},
		{"phoneNumber": "+16502530001", "variables": {"name": "Grace"}}],
		"options": {"name": "Night-safe", "quietHours": {"start": "`+start+`", "end": "`+end+`"},
		"timezone": "America/New_York", "validUntil": "`+valid.Format(time.RFC3339)+`"}}`)
	if a.Code != http.StatusCreated {
		t.Fatalf("create: %d %s", a.Code, a.Body)
	}
	id := keyedAnswer{body: a.Body.Bytes()}.id(t)
	repo, _ := commands.NewRepository(env.es, 0)
	now := time.Now()
	if _, err := repo.Update(context.Background(), id, func(b *domain.Batch) error {
		ds, err := b.Dispatch(now, domain.DispatchRequest{Slice: "s1", PrevSlice: b.LastSlice(), Instance: "i1",
			Deadline: now.Add(10 * time.Second), Max: 1, MaxInFlight: 1})
		if err != nil {
			return err
		}
		return b.RecordFailed(now, domain.FailureParams{Index: ds[0].Index, Attempt: ds[0].Attempt, Category: domain.CategoryUnknown})
	}); err != nil {
		t.Fatal(err)
	}
	r := env.do("POST", "/api/v2/batch/"+id+"/retry-failed", testKey, "")
	if r.Code != http.StatusCreated {
		t.Fatalf("retry-failed: %d %s", r.Code, r.Body)
	}
	var retry struct {
		QuietHours *struct{ Start, End, Timezone string } `json:"quietHours"`
		ValidUntil *time.Time                             `json:"validUntil"`
	}
	if err := json.Unmarshal(r.Body.Bytes(), &retry); err != nil {
		t.Fatal(err)
	}
	if retry.QuietHours == nil || retry.QuietHours.Start != start || retry.QuietHours.End != end || retry.QuietHours.Timezone != "America/New_York" {
		t.Errorf("the retry's quiet hours: %+v, want %s-%s America/New_York as the original's (%s)", retry.QuietHours, start, end, r.Body)
	}
	if retry.ValidUntil == nil || !retry.ValidUntil.Equal(valid) {
		t.Errorf("the retry's validUntil: %v, want the original's %s", retry.ValidUntil, valid)
	}
}

// POST /api/batch?dryRun (the flag written without a value, as many APIs take
// it) must not create and start a real batch: every message of it would be
// sent and billed. "dryRun=yes" is already a 422; an empty value is as
// unclear, and only an absent dryRun means a real create.
func TestADryRunFlagWithoutValueSendsNothing(t *testing.T) {
	for _, query := range []string{"?dryRun", "?dryRun="} {
		env := newAPI(t, nil)
		a := env.do("POST", "/api/batch"+query, testKey, createBody(`"Hi {{name}}"`, ""))
		if a.Code == http.StatusCreated || batchesCreated(t, env.es) != 0 {
			t.Errorf("POST /api/batch%s: %d, %d batch(es) stored and started: %s", query, a.Code, batchesCreated(t, env.es), a.Body)
		}
	}
}

// The Bearer scheme's name is case-insensitive (RFC 9110): "bearer <key>" is
// accepted, and is not counted as a failed authentication.
func TestTheBearerSchemeIsCaseInsensitive(t *testing.T) {
	env := newAPI(t, nil)
	for _, scheme := range []string{"Bearer", "bearer", "BEARER"} {
		req := httptest.NewRequest("GET", "/api/batch", nil)
		req.RemoteAddr = testAddr
		req.Header.Set("Authorization", scheme+" "+testKey)
		rec := httptest.NewRecorder()
		env.handler.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Errorf("Authorization: %s <key>: %d %s, want 200", scheme, rec.Code, rec.Body)
		}
	}
}

// A 405 says which methods the resource has (RFC 9110: the Allow header is
// required), so a client that used the wrong one learns the right one.
func TestAMethodNotAllowedListsTheAllowedOnes(t *testing.T) {
	env := newAPI(t, nil)
	for _, tc := range []struct {
		method, path string
		want         []string
	}{
		{"DELETE", "/api/batch", []string{"GET", "POST"}},
		{"GET", "/api/v2/batch/0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b/pause", []string{"POST"}},
	} {
		a := env.do(tc.method, tc.path, testKey, "")
		if got := a.Header().Values("Allow"); a.Code != http.StatusMethodNotAllowed || !slices.Equal(got, tc.want) {
			t.Errorf("%s %s: %d, Allow %v; want 405 with %v", tc.method, tc.path, a.Code, got, tc.want)
		}
	}
}

// An unknown field inside options is a problem listed with the others (422),
// as an unknown top-level field is, not a malformed body (400) answered alone:
// a user sees every mistake at once. A field named in another case is known,
// as encoding/json matches names.
func TestAnUnknownOptionIsListedWithTheOtherProblems(t *testing.T) {
	env := newAPI(t, nil)
	a := env.do("POST", "/api/batch", testKey, `{"text": "Hi {{name}}", "recipients": [{"phoneNumber": "nope", "variables": {"name": "A"}}],
		"options": {"priority": "normal", "bogus": 1, "autostart": true}}`)
	if e := a.envelope(t); a.Code != http.StatusUnprocessableEntity || !e.names("options.bogus") || !e.names("recipients[0].phoneNumber") || e.names("options.autostart") {
		t.Fatalf("%d %v, want 422 naming options.bogus and the number, not options.autostart", a.Code, e.fields())
	}
	if n := env.events(t); n != 0 {
		t.Fatalf("the refused create left %d events", n)
	}
	if a := env.do("POST", "/api/batch", testKey, createBody(`"Hi {{name}}"`, `{"Priority": "high"}`)); a.Code != http.StatusCreated || !strings.Contains(a.Body.String(), `"priority":"high"`) {
		t.Fatalf("an option named in another case: %d %s", a.Code, a.Body)
	}
}
