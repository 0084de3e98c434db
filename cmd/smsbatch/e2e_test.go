package main

import (
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/processors/sms/simulator"
)

func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test")
	}
}

func TestNormalBatchOf12SendsEachOnceAtItsRate(t *testing.T) {
	skipShort(t)
	t.Parallel()
	cfg := testConfig(t)
	c := startMain(t, cfg)
	st := c.create(batchBody(recipients(12), "normal"))
	if st.Progress.Total != 12 || st.Priority != "normal" {
		t.Fatalf("created %+v", st)
	}
	done := c.waitStatus(st.ID, 20*time.Second, "completed")
	if done.Progress.Completed != 12 || done.Progress.Failed != 0 || done.Progress.Pending != 0 {
		t.Fatalf("progress %+v, want 12 completed", done.Progress)
	}
	if done.Metrics.SuccessRate != 1 {
		t.Fatalf("success rate %v, want 1", done.Metrics.SuccessRate)
	}
	sent := outbox(t, cfg.DataDir, st.ID)
	if len(sent) != 12 {
		t.Fatalf("outbox has %d messages of the batch, want 12", len(sent))
	}
	if body := sent[st.ID+":3"].Body; body != "Hello Ada 3, your code is ready" {
		t.Fatalf("message 3 reads %q", body)
	}
	ts := sendTimes(sent)
	// 12 messages at 5/s with burst 1: the last goes 11/5 s after the first.
	// Outbox times carry a few ms of scheduling jitter.
	if took := ts[11].Sub(ts[0]); took < 2200*time.Millisecond-30*time.Millisecond {
		t.Fatalf("12 messages went out in %s, faster than 5/s allows", took)
	}
}

// Each priority's batch sends at its rate, and never more than it in a second.
// The rate is judged with the longest gap between two sends left out: on a
// loaded two-core machine (the race detector, the suite's other servers) a
// goroutine now and then waits a few hundred milliseconds for a core, and one
// such stall near a 20-send batch's end alone took it below 90% in CI (gaps
// of 126 ms and one of 427 ms). A pace that lost time send after send, which
// is what the check is for, is still caught; so is a whole batch below 75%.
func TestHighAndLowBatchesKeepTheirRates(t *testing.T) {
	skipShort(t)
	t.Parallel()
	cfg := testConfig(t)
	c := startMain(t, cfg)
	high := c.create(batchBody(recipients(20), "high"))
	low := c.create(batchBody(recipients(7), "low"))
	c.waitStatus(high.ID, 20*time.Second, "completed")
	c.waitStatus(low.ID, 20*time.Second, "completed")
	for _, tc := range []struct {
		id   string
		n    int
		rate float64
	}{{high.ID, 20, 8}, {low.ID, 7, 2}} {
		ts := sendTimes(outbox(t, cfg.DataDir, tc.id))
		if len(ts) != tc.n {
			t.Fatalf("batch %s: %d sent, want %d", tc.id, len(ts), tc.n)
		}
		if most := maxInWindow(ts, time.Second-20*time.Millisecond); most > int(tc.rate) {
			t.Fatalf("rate %v: %d messages within one second", tc.rate, most)
		}
		span := ts[tc.n-1].Sub(ts[0])
		achieved := float64(tc.n-1) / span.Seconds()
		var longest time.Duration
		gaps := make([]string, 0, len(ts))
		for i := 1; i < len(ts); i++ {
			longest = max(longest, ts[i].Sub(ts[i-1]))
			gaps = append(gaps, ts[i].Sub(ts[i-1]).Round(time.Millisecond).String())
		}
		steady := float64(tc.n-2) / (span - longest).Seconds()
		if steady < 0.9*tc.rate || achieved < 0.75*tc.rate || achieved > 1.05*tc.rate {
			t.Fatalf("rate %v: achieved %.2f/s, %.2f/s without the longest gap; between sends %v", tc.rate, achieved, steady, gaps)
		}
		t.Logf("rate %v: achieved %.2f msg/s, %.2f without the longest gap", tc.rate, achieved, steady)
	}
}

func TestPauseStopsSendingAndResumeCompletes(t *testing.T) {
	skipShort(t)
	t.Parallel()
	cfg := testConfig(t)
	c := startMain(t, cfg)
	st := c.create(batchBody(recipients(25), "high"))
	time.Sleep(1200 * time.Millisecond)

	var paused status
	if code, _ := c.do("POST", "/api/v2/batch/"+st.ID+"/pause", nil, &paused); code != 200 {
		t.Fatalf("pause: %d", code)
	}
	if paused.Status != "paused" || paused.PauseInfo == nil || paused.PauseInfo.PauseTime.IsZero() {
		t.Fatalf("pause answered %+v", paused)
	}
	// Messages in flight at the pause land and are recorded; then nothing moves.
	time.Sleep(300 * time.Millisecond)
	before := c.status(st.ID)
	time.Sleep(1500 * time.Millisecond)
	after := c.status(st.ID)
	if after.Status != "paused" || after.sending() != before.sending() {
		t.Fatalf("while paused progress moved: %+v -> %+v", before.Progress, after.Progress)
	}
	if after.Progress.Pending != 0 || after.Progress.Completed == 0 || after.Progress.Completed == 25 {
		t.Fatalf("paused progress %+v: want some sent, none in flight", after.Progress)
	}
	if n := len(outbox(t, cfg.DataDir, st.ID)); n != after.Progress.Completed {
		t.Fatalf("outbox has %d while progress says %d completed", n, after.Progress.Completed)
	}
	if code, _ := c.do("POST", "/api/v2/batch/"+st.ID+"/pause", nil, nil); code != http.StatusConflict {
		t.Fatalf("pausing a paused batch: %d, want 409", code)
	}

	var resumed status
	if code, _ := c.do("POST", "/api/v2/batch/"+st.ID+"/resume", nil, &resumed); code != 200 || resumed.Status != "processing" {
		t.Fatalf("resume: %d %+v", code, resumed)
	}
	done := c.waitStatus(st.ID, 20*time.Second, "completed")
	if done.Progress.Completed+done.Progress.Failed != done.Progress.Total || done.Progress.Total != 25 {
		t.Fatalf("final progress %+v", done.Progress)
	}
	if done.PauseInfo == nil || done.PauseInfo.ResumeTime == nil {
		t.Fatalf("pause info %+v, want pause and resume times", done.PauseInfo)
	}
	if n := len(outbox(t, cfg.DataDir, st.ID)); n != 25 {
		t.Fatalf("outbox holds %d, want 25", n)
	}
	if code, _ := c.do("POST", "/api/v2/batch/"+st.ID+"/resume", nil, nil); code != http.StatusConflict {
		t.Fatalf("resuming a completed batch: %d, want 409", code)
	}
}

func TestTwilioTestNumbersFailWithTheirCategories(t *testing.T) {
	skipShort(t)
	t.Parallel()
	cfg := testConfig(t)
	cfg.SimRecordEveryCall = true // the provider's own count of calls, by number
	c := startMain(t, cfg)
	numbers := map[string]string{
		"+15005550001": "invalid_number",
		"+15005550002": "unroutable",
		"+15005550003": "unroutable",
		"+15005550004": "blocked",
		"+15005550009": "not_sms_capable",
		"+15005550006": "",
		"+14155550100": "",
	}
	var rcps []recipient
	for n := range numbers {
		rcps = append(rcps, recipient{PhoneNumber: n, Variables: map[string]string{"name": "x"}})
	}
	st := c.create(batchBody(rcps, "high"))
	done := c.waitStatus(st.ID, 20*time.Second, "completed")
	if done.Progress.Completed != 2 || done.Progress.Failed != 5 {
		t.Fatalf("progress %+v, want 2 sent and 5 failed", done.Progress)
	}

	var errs struct {
		Errors []struct {
			Index       int    `json:"index"`
			PhoneNumber string `json:"phoneNumber"`
			Category    string `json:"category"`
			Code        string `json:"code"`
			Message     string `json:"message"`
			Attempts    int    `json:"attempts"`
			Time        time.Time
		} `json:"errors"`
		NextCursor string `json:"nextCursor"`
	}
	if code, _ := c.do("GET", "/api/batch/"+st.ID+"/errors", nil, &errs); code != 200 {
		t.Fatalf("errors: %d", code)
	}
	if len(errs.Errors) != 5 {
		t.Fatalf("%d errors, want 5: %+v", len(errs.Errors), errs.Errors)
	}
	// A permanent failure is not retried: each of these numbers reached the
	// provider once. (The attempt an error names counts dispatches: on a
	// loaded machine a send may give up before reaching the provider, and go
	// again under the next attempt.)
	calls, err := simulator.ReadCalls(filepath.Join(cfg.DataDir, "sim-calls.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	callsTo := map[string]int{}
	for _, call := range calls {
		callsTo[call.To]++
	}
	for _, e := range errs.Errors {
		if want := numbers[e.PhoneNumber]; e.Category != want || e.Code == "" || e.Attempts < 1 || e.Time.IsZero() || callsTo[e.PhoneNumber] != 1 {
			t.Fatalf("error %+v after %d calls to the provider, want category %s after 1", e, callsTo[e.PhoneNumber], want)
		}
	}
	if code, _ := c.do("GET", "/api/batch/"+st.ID+"/errors?category=unroutable", nil, &errs); code != 200 || len(errs.Errors) != 2 {
		t.Fatalf("errors filtered to unroutable: %d, %d errors", code, len(errs.Errors))
	}
	if code, _ := c.do("GET", "/api/batch/"+st.ID+"/errors?limit=2", nil, &errs); code != 200 || len(errs.Errors) != 2 || errs.NextCursor == "" {
		t.Fatalf("first page of 2: %d, %d errors, cursor %q", code, len(errs.Errors), errs.NextCursor)
	}
	if code, _ := c.do("GET", "/api/batch/"+st.ID+"/errors?category=nonsense", nil, nil); code != 422 {
		t.Fatalf("unknown category: %d, want 422", code)
	}

	var an struct {
		BatchID string `json:"batchId"`
		Totals  struct {
			Sent, Failed, Retries, Segments int
		} `json:"totals"`
		ErrorCategories map[string]int `json:"errorCategories"`
		Throughput      []struct {
			Time         time.Time
			Sent, Failed int
		} `json:"throughput"`
		LatencyMs struct{ P50, P95, P99 float64 } `json:"latencyMs"`
	}
	if code, _ := c.do("GET", "/api/batch/"+st.ID+"/analytics", nil, &an); code != 200 {
		t.Fatalf("analytics: %d", code)
	}
	want := map[string]int{"invalid_number": 1, "unroutable": 2, "blocked": 1, "not_sms_capable": 1}
	for cat, n := range want {
		if an.ErrorCategories[cat] != n {
			t.Fatalf("analytics categories %v, want %v", an.ErrorCategories, want)
		}
	}
	if an.BatchID != st.ID || an.Totals.Sent != 2 || an.Totals.Failed != 5 || an.Totals.Segments != 2 {
		t.Fatalf("analytics totals %+v", an.Totals)
	}
	sum := 0
	for _, p := range an.Throughput {
		sum += p.Sent + p.Failed
	}
	if sum != 7 {
		t.Fatalf("throughput counts %d outcomes, want 7", sum)
	}
	if an.LatencyMs.P50 < 10 || an.LatencyMs.P99 < an.LatencyMs.P50 {
		t.Fatalf("latency %+v with a 20ms simulator", an.LatencyMs)
	}
}

func TestTransientFailuresAreRetriedUntilSent(t *testing.T) {
	skipShort(t)
	t.Parallel()
	cfg := testConfig(t)
	cfg.SimFailureRate = 0.4
	cfg.MaxAttempts = 12
	cfg.SimSeed = 7
	c := startMain(t, cfg)
	st := c.create(batchBody(recipients(10), "high"))
	done := c.waitStatus(st.ID, 30*time.Second, "completed")
	if done.Progress.Completed != 10 {
		t.Fatalf("progress %+v, want all 10 sent after retries", done.Progress)
	}
	var an struct {
		Totals struct{ Sent, Retries int } `json:"totals"`
	}
	c.do("GET", "/api/batch/"+st.ID+"/analytics", nil, &an)
	if an.Totals.Retries == 0 || an.Totals.Sent != 10 {
		t.Fatalf("analytics %+v, want retries > 0 and 10 sent", an.Totals)
	}
	if n := len(outbox(t, cfg.DataDir, st.ID)); n != 10 {
		t.Fatalf("outbox holds %d, want 10", n)
	}
}

func TestBadInputIsRefusedAndLeavesNothingBehind(t *testing.T) {
	skipShort(t)
	t.Parallel()
	cfg := testConfig(t)
	cfg.MaxBodyBytes = 4096
	c := startMain(t, cfg)
	good := func(mod func(map[string]any)) map[string]any {
		b := batchBody(recipients(2), "normal")
		mod(b)
		return b
	}
	big := batchBody(recipients(200), "normal")
	tests := []struct {
		name      string
		key       string
		body      any
		wantCode  int
		wantError string
		wantField string
	}{
		{"malformed JSON", acmeKey, `{"text": "hi", "recipients": [`, 400, "malformed", ""},
		{"not an object", acmeKey, `[1,2]`, 400, "malformed", ""},
		{"wrong type", acmeKey, `{"text": 5, "recipients": []}`, 400, "malformed", ""},
		{"missing variable", acmeKey, good(func(b map[string]any) {
			b["recipients"] = []recipient{{PhoneNumber: "+14155550100", Variables: map[string]string{}}}
		}), 422, "invalid", "recipients[0].variables.name"},
		{"invalid phone number", acmeKey, good(func(b map[string]any) {
			b["recipients"] = []recipient{{PhoneNumber: "12", Variables: map[string]string{"name": "x"}}}
		}), 422, "invalid", "recipients[0].phoneNumber"},
		{"duplicate phone number", acmeKey, good(func(b map[string]any) {
			b["recipients"] = []recipient{
				{PhoneNumber: "+14155550100", Variables: map[string]string{"name": "x"}},
				{PhoneNumber: "(415) 555-0100", Variables: map[string]string{"name": "y"}},
			}
		}), 422, "invalid", "recipients[1].phoneNumber"},
		{"empty recipient list", acmeKey, good(func(b map[string]any) { b["recipients"] = []recipient{} }), 422, "invalid", "recipients"},
		{"no text", acmeKey, good(func(b map[string]any) { delete(b, "text") }), 422, "invalid", "text"},
		{"broken placeholder", acmeKey, good(func(b map[string]any) { b["text"] = "Hi {{name" }), 422, "invalid", "text"},
		{"unknown priority", acmeKey, good(func(b map[string]any) { b["options"] = map[string]any{"priority": "urgent"} }), 422, "invalid", "options.priority"},
		{"bad schedule time", acmeKey, good(func(b map[string]any) { b["options"] = map[string]any{"scheduleTime": "tomorrow"} }), 422, "invalid", "options.scheduleTime"},
		{"validity already past", acmeKey, good(func(b map[string]any) {
			b["options"] = map[string]any{"validUntil": time.Now().Add(-time.Minute).Format(time.RFC3339)}
		}), 422, "invalid", "options.validUntil"},
		{"quiet hours without an end", acmeKey, good(func(b map[string]any) {
			b["options"] = map[string]any{"quietHours": map[string]string{"start": "21:00"}}
		}), 422, "invalid", "options.quietHours"},
		{"unknown timezone", acmeKey, good(func(b map[string]any) {
			b["options"] = map[string]any{"quietHours": map[string]string{"start": "21:00", "end": "08:00"}, "timezone": "Mars/Olympus"}
		}), 422, "invalid", "options.timezone"},
		{"timezone without quiet hours", acmeKey, good(func(b map[string]any) { b["options"] = map[string]any{"timezone": "Europe/Paris"} }), 422, "invalid", "options.timezone"},
		{"data after the object", acmeKey, `{"text": "hi", "recipients": [{"phoneNumber": "+14155550100"}]} {}`, 400, "malformed", ""},
		{"control character in the text", acmeKey, good(func(b map[string]any) { b["text"] = "Hi {{name}}\x00" }), 422, "invalid", "text"},
		{"invalid UTF-8 in a variable", acmeKey, "{\"text\": \"Hi {{name}}\", \"recipients\": [{\"phoneNumber\": \"+14155550100\", \"variables\": {\"name\": \"\xff\"}}]}", 422, "invalid", "recipients[0].variables.name"},
		{"schedule time in year 9999", acmeKey, good(func(b map[string]any) { b["options"] = map[string]any{"scheduleTime": "9999-12-31T00:00:00Z"} }), 422, "invalid", "options.scheduleTime"},
		{"empty priority", acmeKey, good(func(b map[string]any) { b["options"] = map[string]any{"priority": ""} }), 422, "invalid", "options.priority"},
		{"oversized body", acmeKey, big, 413, "too_large", ""},
		{"missing key", "", good(func(map[string]any) {}), 401, "unauthorized", ""},
		{"wrong key", "not-a-key-0123456789", good(func(map[string]any) {}), 401, "unauthorized", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e apiError
			code, _ := c.as(tt.key).do("POST", "/api/batch", tt.body, &e)
			if code != tt.wantCode || e.Error.Code != tt.wantError || e.Error.Message == "" {
				t.Fatalf("got %d %+v, want %d %s", code, e.Error, tt.wantCode, tt.wantError)
			}
			if tt.wantField != "" {
				found := false
				for _, d := range e.Error.Details {
					found = found || d.Field == tt.wantField
				}
				if !found {
					t.Fatalf("details %+v do not name %s", e.Error.Details, tt.wantField)
				}
			}
		})
	}
	var list struct {
		Batches []status `json:"batches"`
	}
	if code, _ := c.do("GET", "/api/batch", nil, &list); code != 200 || len(list.Batches) != 0 {
		t.Fatalf("after bad input: %d, %d batches listed", code, len(list.Batches))
	}
	c.stop()
	if events := storedEvents(t, cfg.DataDir); len(events) != 0 {
		t.Fatalf("bad input left %d events behind, the first a %s", len(events), events[0].Type)
	}
}

func TestTenantsSeeOnlyTheirOwnBatches(t *testing.T) {
	skipShort(t)
	t.Parallel()
	cfg := testConfig(t)
	c := startMain(t, cfg)
	body := batchBody(recipients(3), "low")
	body["options"] = map[string]any{"autoStart": false}
	st := c.create(body)
	if st.Status != "pending" {
		t.Fatalf("autoStart false: status %s, want pending", st.Status)
	}
	other := c.as(otherKey)
	for _, path := range []string{"/api/batch/" + st.ID, "/api/batch/" + st.ID + "/analytics", "/api/batch/" + st.ID + "/errors"} {
		if code, _ := other.do("GET", path, nil, nil); code != 404 {
			t.Fatalf("other tenant GET %s: %d, want 404", path, code)
		}
	}
	for _, action := range []string{"start", "pause", "resume", "cancel"} {
		if code, _ := other.do("POST", "/api/v2/batch/"+st.ID+"/"+action, nil, nil); code != 404 {
			t.Fatalf("other tenant %s: %d, want 404", action, code)
		}
	}
	var list struct {
		Batches []status `json:"batches"`
	}
	other.do("GET", "/api/batch", nil, &list)
	if len(list.Batches) != 0 {
		t.Fatalf("other tenant lists %d batches", len(list.Batches))
	}
	if code, _ := c.do("GET", "/api/batch/not-a-uuid", nil, nil); code != 404 {
		t.Fatalf("malformed id: %d, want 404", code)
	}
	// The owner starts the pending batch and it completes.
	var started status
	if code, _ := c.do("POST", "/api/v2/batch/"+st.ID+"/start", nil, &started); code != 200 || started.Status != "processing" {
		t.Fatalf("start: %d %+v", code, started)
	}
	c.waitStatus(st.ID, 20*time.Second, "completed")
}

func TestScheduledBatchStartsAtItsTime(t *testing.T) {
	skipShort(t)
	t.Parallel()
	cfg := testConfig(t)
	c := startMain(t, cfg)
	at := time.Now().Add(2 * time.Second).UTC().Truncate(time.Second).Add(time.Second)
	body := batchBody(recipients(2), "high")
	body["options"] = map[string]any{"scheduleTime": at.Format(time.RFC3339)}
	st := c.create(body)
	if st.Status != "pending" {
		t.Fatalf("scheduled batch is %s, want pending", st.Status)
	}
	c.waitStatus(st.ID, 20*time.Second, "completed")
	for _, ts := range sendTimes(outbox(t, cfg.DataDir, st.ID)) {
		if ts.Before(at) {
			t.Fatalf("sent at %s, before its schedule %s", ts, at)
		}
	}
}

func TestCancelStopsABatch(t *testing.T) {
	skipShort(t)
	t.Parallel()
	cfg := testConfig(t)
	c := startMain(t, cfg)
	st := c.create(batchBody(recipients(30), "low"))
	time.Sleep(700 * time.Millisecond)
	var cancelled status
	if code, _ := c.do("POST", "/api/v2/batch/"+st.ID+"/cancel", nil, &cancelled); code != 200 || cancelled.Status != "cancelled" {
		t.Fatalf("cancel: %d %+v", code, cancelled)
	}
	time.Sleep(1200 * time.Millisecond)
	final := c.status(st.ID)
	if n := len(outbox(t, cfg.DataDir, st.ID)); n > 4 || n != final.Progress.Completed {
		t.Fatalf("after cancel the outbox holds %d (progress %+v)", n, final.Progress)
	}
}

func TestListNewestFirstWithPages(t *testing.T) {
	skipShort(t)
	t.Parallel()
	cfg := testConfig(t)
	c := startMain(t, cfg)
	var ids []string
	for range 3 {
		body := batchBody(recipients(1), "normal")
		body["options"] = map[string]any{"autoStart": false}
		ids = append(ids, c.create(body).ID)
	}
	var page struct {
		Batches    []status `json:"batches"`
		NextCursor string   `json:"nextCursor"`
	}
	c.do("GET", "/api/batch?limit=2", nil, &page)
	if len(page.Batches) != 2 || page.Batches[0].ID != ids[2] || page.Batches[1].ID != ids[1] || page.NextCursor == "" {
		t.Fatalf("first page %+v, want the two newest", page)
	}
	cursor := page.NextCursor
	page.Batches, page.NextCursor = nil, ""
	c.do("GET", "/api/batch?limit=2&cursor="+cursor, nil, &page)
	if len(page.Batches) != 1 || page.Batches[0].ID != ids[0] || page.NextCursor != "" {
		t.Fatalf("second page %+v, want the oldest and no cursor", page)
	}
	if code, _ := c.do("GET", "/api/batch?cursor=garbage", nil, nil); code != 422 && code != 400 {
		t.Fatalf("garbage cursor: %d, want 4xx", code)
	}
}

func TestAPIRateLimitPerKey(t *testing.T) {
	skipShort(t)
	t.Parallel()
	cfg := testConfig(t)
	cfg.HTTPRateLimit = 5
	c := startMain(t, cfg)
	for i := range 5 {
		code, hdr := c.do("GET", "/api/batch", nil, nil)
		if code != 200 || hdr.Get("X-RateLimit-Limit") != "5" || hdr.Get("X-RateLimit-Remaining") != fmt.Sprint(4-i) || hdr.Get("X-RateLimit-Reset") == "" {
			t.Fatalf("request %d: %d limit %q remaining %q", i, code, hdr.Get("X-RateLimit-Limit"), hdr.Get("X-RateLimit-Remaining"))
		}
	}
	var e apiError
	if code, _ := c.do("GET", "/api/batch", nil, &e); code != 429 || e.Error.Code != "rate_limited" {
		t.Fatalf("sixth request: %d %+v, want 429", code, e)
	}
	// Another key has its own budget.
	if code, _ := c.as(otherKey).do("GET", "/api/batch", nil, nil); code != 200 {
		t.Fatalf("other key: %d, want 200", code)
	}
}

func TestHealthReadinessAndMetrics(t *testing.T) {
	skipShort(t)
	t.Parallel()
	cfg := testConfig(t)
	c := startMain(t, cfg)
	anon := c.as("")
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, _ := anon.do("GET", path, nil, nil); code != 200 {
			t.Fatalf("%s: %d", path, code)
		}
	}
	st := c.create(batchBody(recipients(2), "high"))
	c.waitStatus(st.ID, 20*time.Second, "completed")
	if code, _ := anon.do("GET", "/metrics", nil, nil); code != 401 {
		t.Fatalf("/metrics without a key: %d, want 401", code)
	}
	req, _ := http.NewRequest("GET", c.base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+acmeKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sb strings.Builder
	buf := make([]byte, 1<<16)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			break
		}
	}
	for _, want := range []string{"smsbatch_messages_sent_total 2", "smsbatch_messages_in_flight 0", "smsbatch_projection_lag_seconds", "smsbatch_rate_limit_waits_total 0"} {
		if !strings.Contains(sb.String(), want) {
			t.Fatalf("/metrics lacks %q", want)
		}
	}
}

// A component that stops while the program runs (the live hub, the opt-out
// lists, the router...) turns /readyz red, naming it: none stops silently.
func TestAStoppedComponentTurnsReadinessRed(t *testing.T) {
	skipShort(t)
	t.Parallel()
	c := startMain(t, testConfig(t))
	c.main.goRun("live updates", func() error { return errors.New("read models unreachable") })
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, _, body := c.as("").raw("GET", "/readyz", nil)
		if code == http.StatusServiceUnavailable && strings.Contains(string(body), "live updates stopped") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz after a component stopped: %d %s", code, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConcurrentCreatesAllComplete(t *testing.T) {
	skipShort(t)
	t.Parallel()
	cfg := testConfig(t)
	cfg.RateUnlimited = true
	c := startMain(t, cfg)
	var wg sync.WaitGroup
	ids := make([]string, 6)
	for i := range ids {
		wg.Go(func() { ids[i] = c.create(batchBody(recipients(40), "normal")).ID })
	}
	wg.Wait()
	for _, id := range ids {
		done := c.waitStatus(id, 30*time.Second, "completed")
		if done.Progress.Completed != 40 {
			t.Fatalf("batch %s: %+v", id, done.Progress)
		}
		if n := len(outbox(t, cfg.DataDir, id)); n != 40 {
			t.Fatalf("batch %s: outbox %d", id, n)
		}
	}
}

func TestBatchOverNATSJetStream(t *testing.T) {
	skipShort(t)
	t.Parallel()
	cfg := testConfig(t)
	cfg.NATSURL = natsURL(t)
	cfg.NATSNamespace = natsNamespace(t, cfg.NATSURL)
	c := startMain(t, cfg)
	st := c.create(batchBody(recipients(12), "high"))
	time.Sleep(700 * time.Millisecond)
	if code, _ := c.do("POST", "/api/v2/batch/"+st.ID+"/pause", nil, nil); code != 200 {
		t.Fatalf("pause: %d", code)
	}
	time.Sleep(500 * time.Millisecond)
	if code, _ := c.do("POST", "/api/v2/batch/"+st.ID+"/resume", nil, nil); code != 200 {
		t.Fatalf("resume: %d", code)
	}
	done := c.waitStatus(st.ID, 30*time.Second, "completed")
	if done.Progress.Completed != 12 || len(outbox(t, cfg.DataDir, st.ID)) != 12 {
		t.Fatalf("over NATS: %+v", done.Progress)
	}
}

// A message not sent before the batch's validUntil is skipped as expired, not
// sent late; the status counts it and the errors list it.
func TestExpiredMessagesAreSkipped(t *testing.T) {
	skipShort(t)
	t.Parallel()
	c := startMain(t, testConfig(t))
	body := batchBody(recipients(20), "low") // 2/s: 10 s for all of them
	body["options"] = map[string]any{"priority": "low", "validUntil": time.Now().Add(2500 * time.Millisecond).Format(time.RFC3339Nano)}
	st := c.create(body)
	done := c.waitStatus(st.ID, 20*time.Second, "completed")
	if done.Progress.Completed+done.Progress.Skipped != 20 || done.Progress.Skipped < 10 || done.Progress.Failed != 0 {
		t.Fatalf("progress %+v, want the ones sent before validUntil and the rest skipped", done.Progress)
	}
	var errs struct {
		Errors []struct {
			Category    string `json:"category"`
			PhoneNumber string `json:"phoneNumber"`
		} `json:"errors"`
	}
	c.do("GET", "/api/batch/"+st.ID+"/errors?category=expired&limit=100", nil, &errs)
	if len(errs.Errors) != done.Progress.Skipped || errs.Errors[0].PhoneNumber == "" {
		t.Fatalf("errors?category=expired lists %d (%+v), want the %d skipped", len(errs.Errors), errs.Errors, done.Progress.Skipped)
	}
	if sent := outbox(t, c.main.Config.DataDir, st.ID); len(sent) != done.Progress.Completed {
		t.Fatalf("outbox holds %d of the batch's messages, want the %d sent", len(sent), done.Progress.Completed)
	}
}
