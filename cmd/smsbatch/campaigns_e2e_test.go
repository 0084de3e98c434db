package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/internal/pgtest"
)

// campaign is the status object with the fields campaign management adds.
type campaign struct {
	status
	Name         string     `json:"name"`
	Text         string     `json:"text"`
	ScheduleTime *time.Time `json:"scheduleTime"`
	AutoStart    bool       `json:"autoStart"`
	RetryOf      string     `json:"retryOf"`
	Retries      []string   `json:"retries"`
}

type recipientRow struct {
	Index             int        `json:"index"`
	PhoneNumber       string     `json:"phoneNumber"`
	Status            string     `json:"status"`
	Category          string     `json:"category"`
	Attempts          int        `json:"attempts"`
	ProviderMessageID string     `json:"providerMessageId"`
	DispatchedAt      *time.Time `json:"dispatchedAt"`
	OutcomeAt         *time.Time `json:"outcomeAt"`
}

type recipientPage struct {
	Recipients []recipientRow `json:"recipients"`
	NextCursor string         `json:"nextCursor"`
}

func (c *client) campaign(id string) campaign {
	c.t.Helper()
	var st campaign
	if code, _ := c.do("GET", "/api/batch/"+id, nil, &st); code != 200 {
		c.t.Fatalf("status of %s: %d", id, code)
	}
	return st
}

// recipientsOf pages through a batch's recipients with the query given.
func (c *client) recipientsOf(id, query string) []recipientRow {
	c.t.Helper()
	var all []recipientRow
	cursor := ""
	for range 1000 {
		q := query
		if cursor != "" {
			q += "&cursor=" + cursor
		}
		var page recipientPage
		if code, _ := c.do("GET", "/api/batch/"+id+"/recipients?"+q, nil, &page); code != 200 {
			c.t.Fatalf("recipients of %s ?%s: %d", id, q, code)
		}
		all = append(all, page.Recipients...)
		if page.NextCursor == "" {
			return all
		}
		cursor = page.NextCursor
	}
	c.t.Fatal("endless recipients cursor")
	return nil
}

func indexes(rows []recipientRow) []int {
	out := make([]int, len(rows))
	for i, r := range rows {
		out[i] = r.Index
	}
	return out
}

// campaignBody is a named batch of n recipients, of which recipients 3 and 7
// have the simulator's blocked and invalid test numbers: they fail for good.
func campaignBody(n int, name string) map[string]any {
	rcps := recipients(n)
	rcps[3].PhoneNumber = "+15005550004"
	rcps[7].PhoneNumber = "+15005550001"
	return map[string]any{
		"text":       "Hi {{name}}, spring sale ends Sunday",
		"recipients": rcps,
		"options":    map[string]any{"priority": "high", "name": name},
	}
}

func TestCampaignEndpoints(t *testing.T) {
	skipShort(t)
	t.Parallel()
	cfg := testConfig(t)
	cfg.RateUnlimited = true
	cfg.HTTPRateLimit = 0
	campaignEndpoints(t, startMain(t, cfg))
}

func TestPostgresCampaignEndpoints(t *testing.T) {
	skipShort(t)
	t.Parallel()
	cfg := postgresConfig(t, pgtest.Database(t))
	cfg.RateUnlimited = true
	cfg.HTTPRateLimit = 0
	campaignEndpoints(t, startMain(t, cfg))
}

// campaignEndpoints runs names and the list's filters, the recipients,
// the export and retry-failed through the real program (the dry run and the
// reschedule have tests of their own, on each store).
func campaignEndpoints(t *testing.T, c *client) {
	const n = 30
	created := c.create(campaignBody(n, "Spring Sale 2026"))
	st := c.campaign(created.ID)
	if st.Name != "Spring Sale 2026" || st.Text != "Hi {{name}}, spring sale ends Sunday" || !st.AutoStart || st.ScheduleTime != nil {
		t.Fatalf("status: name %q text %q autoStart %v schedule %v", st.Name, st.Text, st.AutoStart, st.ScheduleTime)
	}
	c.waitStatus(created.ID, 60*time.Second, "completed")
	clean := c.create(map[string]any{"text": "Hello", "recipients": recipients(3), "options": map[string]any{"name": "autumn", "autoStart": false}})

	// The list: by status, by name ignoring case, by ID prefix.
	list := func(query string) []string {
		t.Helper()
		var page struct{ Batches []campaign }
		if code, _ := c.do("GET", "/api/batch?"+query, nil, &page); code != 200 {
			t.Fatalf("list ?%s: %d", query, code)
		}
		var ids []string
		for _, b := range page.Batches {
			ids = append(ids, b.ID)
		}
		return ids
	}
	for query, want := range map[string][]string{
		"q=spring":                       {created.ID},
		"q=SPRING%20SALE":                {created.ID},
		"q=" + created.ID[:13]:           {created.ID},
		"status=pending":                 {clean.ID},
		"status=completed&q=spring":      {created.ID},
		"status=pending&q=spring":        nil,
		"q=AUTUMN&limit=1":               {clean.ID},
		"q=" + url.QueryEscape("ün"):     nil,
		"status=completed&q=" + "Spring": {created.ID},
	} {
		if got := list(query); !slices.Equal(got, want) {
			t.Errorf("list ?%s: %v, want %v", query, got, want)
		}
	}
	var bad apiError
	if code, _ := c.do("GET", "/api/batch?status=done", nil, &bad); code != 422 || len(bad.Error.Details) == 0 || bad.Error.Details[0].Field != "status" {
		t.Errorf("list ?status=done: %d %+v, want 422 naming status", code, bad)
	}

	// Recipients: every one with its outcome; filters by status and number.
	all := c.recipientsOf(created.ID, "limit=7")
	if len(all) != n {
		t.Fatalf("%d recipients listed, want %d", len(all), n)
	}
	for i, r := range all {
		want := "sent"
		if i == 3 || i == 7 {
			want = "failed"
		}
		if r.Index != i || r.Status != want || r.Attempts != 1 || r.DispatchedAt == nil || r.OutcomeAt == nil {
			t.Fatalf("recipient %d: %+v, want %s with its times", i, r, want)
		}
		if want == "sent" && (r.ProviderMessageID == "" || r.PhoneNumber != recipients(n)[i].PhoneNumber) {
			t.Fatalf("recipient %d: %+v, want its number and provider ID", i, r)
		}
	}
	failed := c.recipientsOf(created.ID, "status=failed")
	if !slices.Equal(indexes(failed), []int{3, 7}) || failed[0].Category != "blocked" || failed[1].Category != "invalid_number" {
		t.Errorf("failed recipients: %+v", failed)
	}
	if got := c.recipientsOf(created.ID, "phone=%2B15005550004"); !slices.Equal(indexes(got), []int{3}) {
		t.Errorf("?phone=+15005550004: %v", indexes(got))
	}
	if got := c.recipientsOf(created.ID, "phone=+1500555"); !slices.Equal(indexes(got), []int{3, 7}) {
		t.Errorf("?phone=+1500555 (the + unencoded): %v, want the two test numbers", indexes(got))
	}
	if got := c.recipientsOf(created.ID, "phone="+url.QueryEscape("(415) 200-0005")); !slices.Equal(indexes(got), []int{5}) {
		t.Errorf("?phone=(415) 200-0005 in the default region: %v", indexes(got))
	}
	if got := c.recipientsOf(created.ID, "status=unsent"); len(got) != 0 {
		t.Errorf("unsent recipients of a completed batch: %v", indexes(got))
	}
	if got := c.recipientsOf(clean.ID, "status=unsent"); len(got) != 3 {
		t.Errorf("unsent recipients of a batch not started: %v", indexes(got))
	}
	for _, query := range []string{"status=delivered", "phone=abc", "limit=1001", "category=nope", "cursor=zzz"} {
		if code, _ := c.do("GET", "/api/batch/"+created.ID+"/recipients?"+query, nil, &bad); code != 422 {
			t.Errorf("recipients ?%s: %d, want 422", query, code)
		}
	}

	// The export: every recipient, its outcome and its variables.
	code, hdr, body := c.raw("GET", "/api/batch/"+created.ID+"/export.csv", nil)
	if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/csv") || !strings.Contains(hdr.Get("Content-Disposition"), "attachment") {
		t.Fatalf("export: %d %s %s", code, hdr.Get("Content-Type"), hdr.Get("Content-Disposition"))
	}
	rows, err := csv.NewReader(bytes.NewReader(body)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != n+1 || rows[0][0] != "index" || rows[0][len(rows[0])-1] != "name" {
		t.Fatalf("export: %d rows, header %v", len(rows), rows[0])
	}
	col := func(name string) int { return slices.Index(rows[0], name) }
	for i, row := range rows[1:] {
		if row[col("index")] != fmt.Sprint(i) || row[col("phoneNumber")] != all[i].PhoneNumber || row[col("status")] != all[i].Status ||
			row[col("name")] != fmt.Sprint("Ada ", i) || row[col("outcomeAt")] == "" {
			t.Fatalf("export row %d: %v", i, row)
		}
	}
	if rows[4][col("category")] != "blocked" {
		t.Errorf("export of the blocked recipient: %v", rows[4])
	}

	// Another tenant sees none of it.
	other := c.as(otherKey)
	for _, req := range [][2]string{
		{"GET", "/recipients"}, {"GET", "/export.csv"},
	} {
		if code, _ := other.do(req[0], "/api/batch/"+created.ID+req[1], nil, &bad); code != 404 {
			t.Errorf("another tenant's %s %s: %d, want 404", req[0], req[1], code)
		}
	}
	for _, p := range []string{"/retry-failed", "/schedule"} {
		if code, _ := other.do("POST", "/api/v2/batch/"+created.ID+p, map[string]string{"scheduleTime": time.Now().Add(time.Hour).Format(time.RFC3339)}, &bad); code != 404 {
			t.Errorf("another tenant's POST %s: %d, want 404", p, code)
		}
	}

	// Retry the failed recipients, under an idempotency key.
	keyed := *c
	keyed.header = http.Header{"Idempotency-Key": {"retry-" + created.ID}}
	var retry campaign
	code, hdr = keyed.do("POST", "/api/v2/batch/"+created.ID+"/retry-failed", nil, &retry)
	if code != 201 || hdr.Get("Location") != "/api/batch/"+retry.ID {
		t.Fatalf("retry-failed: %d, Location %q", code, hdr.Get("Location"))
	}
	if retry.RetryOf != created.ID || retry.Name != "Retry of Spring Sale 2026" || retry.Progress.Total != 2 || retry.Priority != "high" || retry.Text != st.Text {
		t.Fatalf("the retry batch: %+v", retry)
	}
	var again campaign
	code, hdr = keyed.do("POST", "/api/v2/batch/"+created.ID+"/retry-failed", nil, &again)
	if code != 201 || again.ID != retry.ID || hdr.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry-failed again with the key: %d %s (replayed %q), want the first answer", code, again.ID, hdr.Get("Idempotent-Replayed"))
	}
	c.waitStatus(retry.ID, 30*time.Second, "completed")
	retried := c.recipientsOf(retry.ID, "")
	if len(retried) != 2 || retried[0].PhoneNumber != "+15005550004" || retried[1].PhoneNumber != "+15005550001" {
		t.Fatalf("the retry's recipients: %+v", retried)
	}
	_, _, exported := c.raw("GET", "/api/batch/"+retry.ID+"/export.csv", nil)
	if !strings.Contains(string(exported), ",Ada 3\n") || !strings.Contains(string(exported), ",Ada 7\n") {
		t.Errorf("the retry lost its recipients' variables:\n%s", exported)
	}
	deadline := time.Now().Add(10 * time.Second)
	for st = c.campaign(created.ID); !slices.Equal(st.Retries, []string{retry.ID}) && time.Now().Before(deadline); st = c.campaign(created.ID) {
		time.Sleep(50 * time.Millisecond)
	}
	if !slices.Equal(st.Retries, []string{retry.ID}) {
		t.Fatalf("the original's retries: %v, want [%s]", st.Retries, retry.ID)
	}
	// The blocked recipient is in the retry already: a second retry would
	// text them a second time.
	if code, _ := c.do("POST", "/api/v2/batch/"+created.ID+"/retry-failed?category=blocked", nil, &bad); code != 409 {
		t.Errorf("retry-failed ?category=blocked, whose one recipient the first retry took: %d, want 409", code)
	}
	if code, _ := c.do("POST", "/api/v2/batch/"+created.ID+"/retry-failed?category=timeout", nil, &bad); code != 409 {
		t.Errorf("retry-failed of a category none failed with: %d, want 409", code)
	}
	if code, _ := c.do("POST", "/api/v2/batch/"+clean.ID+"/retry-failed", nil, &bad); code != 409 || !strings.Contains(bad.Error.Message, "nothing to retry") {
		t.Errorf("retry-failed of a batch with no failure: %d %+v, want 409", code, bad)
	}
}

func TestDryRunStoresNothing(t *testing.T) {
	skipShort(t)
	t.Parallel()
	onEachStore(t, func(t *testing.T, cfg Config) { dryRunStoresNothing(t, startMain(t, cfg)) })
}

func dryRunStoresNothing(t *testing.T, c *client) {
	before := allEvents(t, c.main.store)
	rcps := recipients(12)
	rcps[1].Variables["name"] = "Zoë 🌸"                     // UCS-2
	rcps[2].Variables["name"] = strings.Repeat("long ", 40) // GSM-7, two segments
	var dry struct {
		DryRun        bool `json:"dryRun"`
		Total         int  `json:"total"`
		TotalSegments int  `json:"totalSegments"`
		Messages      []struct {
			Index       int    `json:"index"`
			PhoneNumber string `json:"phoneNumber"`
			Text        string `json:"text"`
			Encoding    string `json:"encoding"`
			Segments    int    `json:"segments"`
		} `json:"messages"`
	}
	code, _ := c.do("POST", "/api/batch?dryRun=true", batchBody(rcps, "low"), &dry)
	if code != 200 || !dry.DryRun || dry.Total != 12 || len(dry.Messages) != 10 {
		t.Fatalf("dry run: %d %+v", code, dry)
	}
	m := dry.Messages
	if m[0].Text != "Hello Ada 0, your code is ready" || m[0].Encoding != "GSM-7" || m[0].Segments != 1 || m[0].PhoneNumber != rcps[0].PhoneNumber {
		t.Errorf("message 0: %+v", m[0])
	}
	if m[1].Encoding != "UCS-2" || m[1].Segments != 1 || !strings.Contains(m[1].Text, "Zoë 🌸") {
		t.Errorf("message 1: %+v", m[1])
	}
	if m[2].Encoding != "GSM-7" || m[2].Segments != 2 {
		t.Errorf("message 2: %+v", m[2])
	}
	if dry.TotalSegments != 13 {
		t.Errorf("total segments %d, want 13 (one message of two)", dry.TotalSegments)
	}
	// A dry run validates as a create does.
	bad := batchBody(recipients(2), "low")
	bad["recipients"] = []recipient{{PhoneNumber: "nope", Variables: map[string]string{}}}
	var e apiError
	if code, _ := c.do("POST", "/api/batch?dryRun=true", bad, &e); code != 422 || len(e.Error.Details) != 2 {
		t.Errorf("dry run of a bad batch: %d %+v, want 422 with the number and the missing variable", code, e)
	}
	if code, _ := c.do("POST", "/api/batch?dryRun=perhaps", batchBody(recipients(1), "low"), &e); code != 422 {
		t.Errorf("dryRun=perhaps: %d, want 422", code)
	}
	if after := allEvents(t, c.main.store); len(after) != len(before) {
		t.Fatalf("a dry run stored %d events", len(after)-len(before))
	}
	var list struct{ Batches []status }
	if c.do("GET", "/api/batch", nil, &list); len(list.Batches) != 0 {
		t.Fatalf("a dry run made a batch: %+v", list.Batches)
	}
}

// A rescheduled batch starts at its new time: earlier than it was scheduled,
// or later, but not at the old time.
func TestRescheduledBatchStartsAtItsNewTime(t *testing.T) {
	skipShort(t)
	t.Parallel()
	onEachStore(t, func(t *testing.T, cfg Config) { rescheduledBatchStartsAtItsNewTime(t, startMain(t, cfg)) })
}

func rescheduledBatchStartsAtItsNewTime(t *testing.T, c *client) {
	start := time.Now()
	schedule := func(id string, at time.Time) campaign {
		t.Helper()
		var st campaign
		if code, _ := c.do("POST", "/api/v2/batch/"+id+"/schedule", map[string]string{"scheduleTime": at.Format(time.RFC3339Nano)}, &st); code != 200 {
			t.Fatalf("schedule %s: %d", id, code)
		}
		return st
	}
	create := func(at time.Time, autoStart bool) string {
		body := batchBody(recipients(2), "high")
		body["options"] = map[string]any{"scheduleTime": at.Format(time.RFC3339Nano), "autoStart": autoStart}
		return c.create(body).ID
	}
	sooner := create(start.Add(time.Hour), true)
	later := create(start.Add(2*time.Second), true)
	manual := create(start.Add(time.Hour), false)
	if st := schedule(sooner, start.Add(2*time.Second)); st.ScheduleTime == nil || !st.ScheduleTime.Equal(start.Add(2*time.Second).Truncate(time.Nanosecond)) {
		t.Fatalf("rescheduled status: %+v", st.ScheduleTime)
	}
	schedule(later, start.Add(6*time.Second))
	if st := schedule(manual, start.Add(3*time.Second)); !st.AutoStart {
		t.Fatalf("scheduling a batch made without autoStart leaves it manual: %+v", st)
	}
	c.waitStatus(sooner, 10*time.Second, "processing", "completed")
	c.waitStatus(manual, 10*time.Second, "processing", "completed")
	if time.Since(start) > 5*time.Second {
		t.Fatalf("the batches moved to a sooner time started %s after creation", time.Since(start))
	}
	time.Sleep(time.Until(start.Add(4500 * time.Millisecond)))
	if st := c.campaign(later); st.Status != "pending" {
		t.Fatalf("the batch moved to a later time is %s at its old time (+4.5s)", st.Status)
	}
	c.waitStatus(later, 10*time.Second, "processing", "completed")

	started := map[string]time.Time{}
	for _, e := range allEvents(t, c.main.store) {
		if e.Type == domain.TypeBatchStarted {
			started[strings.TrimPrefix(e.Stream, domain.BatchStreamPrefix)] = e.Time
		}
	}
	for id, at := range map[string]time.Time{sooner: start.Add(2 * time.Second), manual: start.Add(3 * time.Second), later: start.Add(6 * time.Second)} {
		if got := started[id]; got.Before(at) || got.After(at.Add(2500*time.Millisecond)) {
			t.Errorf("batch %s started at +%s, want from +%s", id, got.Sub(start), at.Sub(start))
		}
	}

	// Only a pending batch moves, and within the window of a create.
	var e apiError
	if code, _ := c.do("POST", "/api/v2/batch/"+sooner+"/schedule", map[string]string{"scheduleTime": time.Now().Add(time.Hour).Format(time.RFC3339)}, &e); code != 409 {
		t.Errorf("rescheduling a started batch: %d, want 409", code)
	}
	pending := create(start.Add(time.Hour), true)
	for _, body := range []any{
		map[string]string{"scheduleTime": "tomorrow"},
		map[string]string{"scheduleTime": time.Now().AddDate(2, 0, 0).Format(time.RFC3339)},
		map[string]string{"scheduleTime": time.Now().Add(-time.Hour).Format(time.RFC3339)},
		map[string]string{},
	} {
		if code, _ := c.do("POST", "/api/v2/batch/"+pending+"/schedule", body, &e); code != 422 || e.Error.Details[0].Field != "scheduleTime" {
			t.Errorf("schedule %v: %d %+v, want 422 naming scheduleTime", body, code, e)
		}
	}
	if code, _ := c.do("POST", "/api/v2/batch/"+pending+"/schedule", `{"when": "now"}`, &e); code != 400 {
		t.Errorf("schedule with an unknown field: %d, want 400", code)
	}
}

// An export takes as long as the client takes to read it, past the server's
// write timeout; a client that stops reading is cut off after it. (A write
// waits until the kernel frees a good part of the socket's send buffer, up
// to 4 MiB on loopback: a reader must take about a third of that per write
// timeout, 45 KB/s at the default 30 s.)
func TestLongExportOutlivesTheWriteTimeout(t *testing.T) {
	skipShort(t)
	t.Parallel()
	cfg := testConfig(t)
	// Two seconds, not one: under CI's load a write at one point of the export
	// (where the server reads the next page of recipients) once waited over a
	// second for this process's reader.
	cfg.HTTPWriteTimeout = 2 * time.Second
	c := startMain(t, cfg)
	// Wide rows: 16 MB, several times what the sockets' buffers hold, so
	// that the server's writes wait for the reader for seconds.
	const n = 16000
	rcps := recipients(n)
	for i := range rcps {
		rcps[i].Variables["name"] = strings.Repeat("x", 1000)
	}
	body := batchBody(rcps, "low")
	body["options"] = map[string]any{"autoStart": false}
	id := c.create(body).ID
	// The read models hold every number once the runner has caught up.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var page recipientPage
		c.do("GET", "/api/batch/"+id+"/recipients?status=unsent&limit=1&cursor="+cursorAfter(n-2), nil, &page)
		if len(page.Recipients) == 1 && page.Recipients[0].PhoneNumber != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the recipients read model did not catch up")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// A small receive window, so that the server's writes wait for the reader
	// instead of landing in socket buffers.
	slowClient := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{
		Control: func(_, _ string, rc syscall.RawConn) error {
			var err error
			rc.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10) })
			return err
		},
	}).DialContext}}
	get := func() *http.Response {
		req, _ := http.NewRequestWithContext(context.Background(), "GET", c.base+"/api/batch/"+id+"/export.csv", nil)
		req.Header.Set("Authorization", "Bearer "+acmeKey)
		resp, err := slowClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}

	resp := get()
	began := time.Now()
	var got bytes.Buffer
	buf := make([]byte, 16<<10)
	for {
		k, err := resp.Body.Read(buf)
		got.Write(buf[:k])
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("export cut off after %s and %d bytes: %v", time.Since(began), got.Len(), err)
		}
		time.Sleep(time.Duration(k) * 333 * time.Nanosecond) // 3 MB/s: 5.3 s
	}
	resp.Body.Close()
	took := time.Since(began)
	rows, err := csv.NewReader(&got).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != n+1 || rows[n][0] != fmt.Sprint(n-1) {
		t.Fatalf("export: %d rows, want %d", len(rows)-1, n)
	}
	if took < 2*cfg.HTTPWriteTimeout {
		t.Fatalf("the export took %s: too fast to show the write timeout (%s) lifted", took, cfg.HTTPWriteTimeout)
	}
	t.Logf("a slow reader took %s to read %d rows; the write timeout is %s", took, n, cfg.HTTPWriteTimeout)

	// A reader that stops is cut off.
	resp = get()
	defer resp.Body.Close()
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * cfg.HTTPWriteTimeout)
	if _, err := io.Copy(io.Discard, resp.Body); err == nil {
		t.Fatal("an export whose reader stopped for longer than the write timeout ran to its end")
	}
}

// cursorAfter is the recipients cursor of the page after index i.
func cursorAfter(i int) string {
	return base64.RawURLEncoding.EncodeToString([]byte("r1:" + fmt.Sprint(i)))
}
