package projections_test

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/projections"
	"github.com/smsbatch/smsbatch/projections/projectionstest"
)

var t0 = time.Date(2025, 6, 2, 9, 0, 0, 0, time.UTC)

// project folds events into a batch state the way a store does.
func project(t *testing.T, events []eventstore.Event) (*projections.BatchState, []projections.ErrorEntry) {
	t.Helper()
	st := &projections.BatchState{}
	var errs []projections.ErrorEntry
	for _, e := range events {
		_, payload, ok, err := projections.Decode(e)
		if err != nil {
			t.Fatalf("decode %s: %v", e.Type, err)
		}
		if !ok {
			continue
		}
		st.Apply(e, payload)
		if entry, ok := projections.ErrorEntryOf(payload); ok {
			errs = append(errs, entry)
		}
	}
	return st, errs
}

func at(d time.Duration) *time.Time {
	t := t0.Add(d)
	return &t
}

func TestApply(t *testing.T) {
	type want struct {
		status    string
		progress  projections.Progress
		pause     *projections.PauseInfo
		metrics   projections.Metrics
		totals    projections.Totals
		errorCats map[string]int
		retryCats map[string]int
		errors    []projections.ErrorEntry
	}
	cases := []struct {
		name  string
		build func(b *projectionstest.Batch)
		want  want
	}{{
		name:  "created",
		build: func(b *projectionstest.Batch) { b.Created(10) },
		want:  want{status: "pending", progress: projections.Progress{Total: 10}},
	}, {
		name: "started",
		build: func(b *projectionstest.Batch) {
			b.Created(10)
			b.Advance(time.Second).Started()
		},
		want: want{status: "processing", progress: projections.Progress{Total: 10}},
	}, {
		name: "dispatched messages are pending",
		build: func(b *projectionstest.Batch) {
			b.Created(10)
			b.Advance(time.Second).Started()
			b.Advance(time.Second).Dispatched(0, 1, 2)
		},
		want: want{status: "processing", progress: projections.Progress{Total: 10, Pending: 3}},
	}, {
		name: "sent",
		build: func(b *projectionstest.Batch) {
			b.Created(10)
			b.Advance(time.Second).Started()
			b.Advance(time.Second).Dispatched(0, 1, 2)
			b.Advance(time.Second).SentSegments(0, 1, 3, 100*time.Millisecond)
		},
		want: want{
			status:   "processing",
			progress: projections.Progress{Total: 10, Pending: 2, Completed: 1},
			// One outcome in the two seconds since the start.
			metrics: projections.Metrics{MessagesPerSecond: 0.5, SuccessRate: 1},
			totals:  projections.Totals{Sent: 1, Segments: 3},
		},
	}, {
		name: "an attempt failed, retried and sent",
		build: func(b *projectionstest.Batch) {
			b.Created(10)
			b.Advance(time.Second).Started()
			b.Advance(time.Second).Dispatched(0)
			b.Advance(time.Second).AttemptFailed(0, 1, domain.CategoryTimeout)
			b.Advance(time.Second).DispatchedAt(domain.Dispatch{Index: 0, Attempt: 2})
			b.Advance(time.Second).AttemptFailed(0, 2, domain.CategoryRateLimited)
			b.Advance(time.Second).DispatchedAt(domain.Dispatch{Index: 0, Attempt: 3})
			b.Advance(time.Second).Sent(0, 3, 100*time.Millisecond)
		},
		want: want{
			status:    "processing",
			progress:  projections.Progress{Total: 10, Completed: 1},
			metrics:   projections.Metrics{MessagesPerSecond: 1.0 / 6, SuccessRate: 1},
			totals:    projections.Totals{Sent: 1, Retries: 2, Segments: 1},
			retryCats: map[string]int{"timeout": 1, "rate_limited": 1},
		},
	}, {
		name: "a failed attempt waits for its retry as pending",
		build: func(b *projectionstest.Batch) {
			b.Created(10)
			b.Advance(time.Second).Started()
			b.Advance(time.Second).Dispatched(0, 1)
			b.Advance(time.Second).AttemptFailed(1, 1, domain.CategoryProviderUnavailable)
		},
		want: want{
			status:    "processing",
			progress:  projections.Progress{Total: 10, Pending: 2},
			totals:    projections.Totals{Retries: 1},
			retryCats: map[string]int{"provider_unavailable": 1},
		},
	}, {
		name: "a message in doubt re-sent counts once",
		build: func(b *projectionstest.Batch) {
			b.Created(10)
			b.Advance(time.Second).Started()
			b.Advance(time.Second).Dispatched(0, 1)
			b.Advance(time.Second).DispatchedAt(domain.Dispatch{Index: 0, Attempt: 2}, domain.Dispatch{Index: 1, Attempt: 2})
			b.Advance(time.Second).Sent(0, 2, 100*time.Millisecond)
		},
		want: want{
			status:   "processing",
			progress: projections.Progress{Total: 10, Pending: 1, Completed: 1},
			metrics:  projections.Metrics{MessagesPerSecond: 1.0 / 3, SuccessRate: 1},
			totals:   projections.Totals{Sent: 1, Segments: 1},
		},
	}, {
		name: "failed with a category",
		build: func(b *projectionstest.Batch) {
			b.Created(10)
			b.Advance(time.Second).Started()
			b.Advance(time.Second).Dispatched(0, 1, 2, 3)
			b.Advance(time.Second).Sent(0, 1, 100*time.Millisecond)
			b.Failed(1, 1, domain.CategoryBlocked)
			b.AttemptFailed(2, 1, domain.CategoryTimeout)
			b.Failed(3, 1, domain.CategoryInvalidNumber)
			b.Advance(time.Second).DispatchedAt(domain.Dispatch{Index: 2, Attempt: 2})
			b.Advance(time.Second).AttemptFailed(2, 2, domain.CategoryTimeout)
			b.Advance(time.Second).DispatchedAt(domain.Dispatch{Index: 2, Attempt: 3})
			b.Advance(time.Second).Failed(2, 3, domain.CategoryTimeout)
		},
		want: want{
			status:   "processing",
			progress: projections.Progress{Total: 10, Completed: 1, Failed: 3},
			// Four outcomes from 3 s to 7 s: three intervals in four seconds.
			metrics:   projections.Metrics{MessagesPerSecond: 3.0 / 4, SuccessRate: 0.25},
			totals:    projections.Totals{Sent: 1, Failed: 3, Retries: 2, Segments: 1},
			errorCats: map[string]int{"blocked": 1, "invalid_number": 1, "timeout": 1},
			retryCats: map[string]int{"timeout": 2},
			errors: []projections.ErrorEntry{
				{Index: 1, PhoneNumber: projectionstest.Phone(1), Category: "blocked", Code: "E-blocked", Message: "failed: blocked", Attempts: 1, Time: t0.Add(3 * time.Second)},
				{Index: 3, PhoneNumber: projectionstest.Phone(3), Category: "invalid_number", Code: "E-invalid_number", Message: "failed: invalid_number", Attempts: 1, Time: t0.Add(3 * time.Second)},
				{Index: 2, PhoneNumber: projectionstest.Phone(2), Category: "timeout", Code: "E-timeout", Message: "failed: timeout", Attempts: 3, Time: t0.Add(7 * time.Second)},
			},
		},
	}, {
		name: "paused with a message in flight",
		build: func(b *projectionstest.Batch) {
			b.Created(10)
			b.Advance(time.Second).Started()
			b.Advance(time.Second).Dispatched(0, 1)
			b.Advance(time.Second).Sent(0, 1, 100*time.Millisecond)
			b.Advance(time.Second).Paused()
		},
		want: want{
			status:   "paused",
			progress: projections.Progress{Total: 10, Pending: 1, Completed: 1},
			pause:    &projections.PauseInfo{PauseTime: t0.Add(4 * time.Second)},
			// Active from the start to the pause: three seconds.
			metrics: projections.Metrics{MessagesPerSecond: 1.0 / 3, SuccessRate: 1},
			totals:  projections.Totals{Sent: 1, Segments: 1},
		},
	}, {
		name: "paused, then the message in flight is sent",
		build: func(b *projectionstest.Batch) {
			b.Created(10)
			b.Advance(time.Second).Started()
			b.Advance(time.Second).Dispatched(0, 1)
			b.Advance(time.Second).Sent(0, 1, 100*time.Millisecond)
			b.Advance(time.Second).Paused()
			b.Advance(time.Second).Sent(1, 1, 100*time.Millisecond)
			b.Advance(time.Hour)
		},
		want: want{
			status:   "paused",
			progress: projections.Progress{Total: 10, Completed: 2},
			pause:    &projections.PauseInfo{PauseTime: t0.Add(4 * time.Second)},
			metrics:  projections.Metrics{MessagesPerSecond: 2.0 / 3, SuccessRate: 1},
			totals:   projections.Totals{Sent: 2, Segments: 2},
		},
	}, {
		name: "resumed",
		build: func(b *projectionstest.Batch) {
			b.Created(10)
			b.Advance(time.Second).Started()
			b.Advance(time.Second).Dispatched(0, 1)
			b.Advance(time.Second).Sent(0, 1, 100*time.Millisecond)
			b.Advance(time.Second).Paused()
			b.Advance(time.Second).Sent(1, 1, 100*time.Millisecond)
			b.Advance(10 * time.Second).Resumed()
			b.Advance(time.Second).Dispatched(2)
		},
		want: want{
			status:   "processing",
			progress: projections.Progress{Total: 10, Pending: 1, Completed: 2},
			pause:    &projections.PauseInfo{PauseTime: t0.Add(4 * time.Second), ResumeTime: at(15 * time.Second)},
			// No outcome since the resume: the active time is still three seconds.
			metrics: projections.Metrics{MessagesPerSecond: 2.0 / 3, SuccessRate: 1},
			totals:  projections.Totals{Sent: 2, Segments: 2},
		},
	}, {
		name: "paused again after a resume",
		build: func(b *projectionstest.Batch) {
			b.Created(10)
			b.Advance(time.Second).Started()
			b.Advance(time.Second).Paused()
			b.Advance(time.Second).Resumed()
			b.Advance(time.Second).Paused()
		},
		want: want{
			status:   "paused",
			progress: projections.Progress{Total: 10},
			pause:    &projections.PauseInfo{PauseTime: t0.Add(4 * time.Second)},
		},
	}, {
		name: "completed",
		build: func(b *projectionstest.Batch) {
			b.Created(3)
			b.Advance(time.Second).Started()
			b.Advance(time.Second).Dispatched(0, 1)
			b.Advance(time.Second).Sent(0, 1, 100*time.Millisecond)
			b.Advance(time.Second).Paused()
			b.Advance(time.Second).Sent(1, 1, 100*time.Millisecond)
			b.Advance(10 * time.Second).Resumed()
			b.Advance(time.Second).Dispatched(2)
			b.Advance(2*time.Second).Failed(2, 1, domain.CategoryBlocked)
			b.Completed(2, 1)
		},
		want: want{
			status:   "completed",
			progress: projections.Progress{Total: 3, Completed: 2, Failed: 1},
			pause:    &projections.PauseInfo{PauseTime: t0.Add(4 * time.Second), ResumeTime: at(15 * time.Second)},
			// Three outcomes in 3s before the pause and 3s after the resume.
			metrics:   projections.Metrics{MessagesPerSecond: 0.5, SuccessRate: 2.0 / 3},
			totals:    projections.Totals{Sent: 2, Failed: 1, Segments: 2},
			errorCats: map[string]int{"blocked": 1},
			errors: []projections.ErrorEntry{
				{Index: 2, PhoneNumber: projectionstest.Phone(2), Category: "blocked", Code: "E-blocked", Message: "failed: blocked", Attempts: 1, Time: t0.Add(18 * time.Second)},
			},
		},
	}, {
		name: "cancelled while paused",
		build: func(b *projectionstest.Batch) {
			b.Created(3)
			b.Advance(time.Second).Started()
			b.Advance(time.Second).Dispatched(0)
			b.Advance(time.Second).Sent(0, 1, 100*time.Millisecond)
			b.Advance(time.Second).Paused()
			b.Advance(time.Minute).Cancelled()
		},
		want: want{
			status:   "cancelled",
			progress: projections.Progress{Total: 3, Completed: 1},
			pause:    &projections.PauseInfo{PauseTime: t0.Add(4 * time.Second)},
			metrics:  projections.Metrics{MessagesPerSecond: 1.0 / 3, SuccessRate: 1},
			totals:   projections.Totals{Sent: 1, Segments: 1},
		},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := projectionstest.NewEvents()
			b := h.Batch("acme", "b1", t0)
			c.build(b)
			st, errs := project(t, h.List())
			status, analytics := st.StatusView(), st.AnalyticsView()

			if status.ID != "b1" || status.Tenant != "acme" || status.Priority != "normal" || !status.CreatedAt.Equal(t0) {
				t.Errorf("identity: %s/%s %s created %s; want acme/b1 normal created %s", status.Tenant, status.ID, status.Priority, status.CreatedAt, t0)
			}
			if last := h.List()[h.Len()-1]; !status.UpdatedAt.Equal(last.Time) {
				t.Errorf("updated at %s, want the last event's time %s", status.UpdatedAt, last.Time)
			}
			if status.Status != c.want.status {
				t.Errorf("status %q, want %q", status.Status, c.want.status)
			}
			if status.Progress != c.want.progress {
				t.Errorf("progress %+v, want %+v", status.Progress, c.want.progress)
			}
			if !reflect.DeepEqual(status.PauseInfo, c.want.pause) {
				t.Errorf("pause info %s, want %s", jsonOf(status.PauseInfo), jsonOf(c.want.pause))
			}
			if !near(status.Metrics.MessagesPerSecond, c.want.metrics.MessagesPerSecond) || !near(status.Metrics.SuccessRate, c.want.metrics.SuccessRate) {
				t.Errorf("metrics %+v, want %+v", status.Metrics, c.want.metrics)
			}
			if analytics.BatchID != "b1" || analytics.Totals != c.want.totals {
				t.Errorf("analytics of %q: totals %+v, want b1, %+v", analytics.BatchID, analytics.Totals, c.want.totals)
			}
			if !sameCounts(analytics.ErrorCategories, c.want.errorCats) || !sameCounts(analytics.RetriedCategories, c.want.retryCats) {
				t.Errorf("categories: failed %v, retried %v; want %v, %v",
					analytics.ErrorCategories, analytics.RetriedCategories, c.want.errorCats, c.want.retryCats)
			}
			if !reflect.DeepEqual(errs, c.want.errors) {
				t.Errorf("errors:\n got %s\nwant %s", jsonOf(errs), jsonOf(c.want.errors))
			}
			// Maps and slices show as {} and [], never null.
			if analytics.ErrorCategories == nil || analytics.RetriedCategories == nil || analytics.Throughput == nil {
				t.Errorf("analytics has nil maps or slices: %s", jsonOf(analytics))
			}
		})
	}
}

func near(got, want float64) bool { return math.Abs(got-want) < 1e-9 }

func sameCounts(got, want map[string]int) bool {
	return len(got) == len(want) && (len(want) == 0 || reflect.DeepEqual(got, want))
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestApplySchedule(t *testing.T) {
	h := projectionstest.NewEvents()
	when := time.Date(2025, 7, 1, 8, 0, 0, 0, time.FixedZone("CEST", 2*3600))
	h.Batch("acme", "b1", t0).CreatedWith(domain.BatchCreated{Priority: domain.PriorityHigh, ScheduleTime: &when, Total: 5})
	st, _ := project(t, h.List())
	status := st.StatusView()
	if status.ScheduleTime == nil || !status.ScheduleTime.Equal(when) || status.ScheduleTime.Location() != time.UTC || status.Priority != "high" {
		t.Errorf("scheduled batch: schedule %v, priority %s; want %s in UTC, high", status.ScheduleTime, status.Priority, when)
	}
}

func TestApplyIgnores(t *testing.T) {
	h := projectionstest.NewEvents()
	b := h.Batch("acme", "b1", t0)
	orphan := b.Advance(time.Second).Started() // before the creation: no batch yet
	b.Created(5)
	started := b.Advance(time.Second).Started()
	b.Advance(time.Second).Dispatched(0)
	sent := b.Advance(time.Second).Sent(0, 1, 50*time.Millisecond)
	events := h.List()
	st, _ := project(t, events)
	want := jsonOf(st)

	// The same events again, and a second creation, change nothing.
	for _, e := range []eventstore.Event{orphan, started, sent, events[1]} {
		_, payload, _, err := projections.Decode(e)
		if err != nil {
			t.Fatal(err)
		}
		st.Apply(e, payload)
	}
	again := h.Batch("acme", "b1", t0.Add(time.Hour)).Created(99)
	_, payload, _, _ := projections.Decode(again)
	st.Apply(again, payload)
	if got := jsonOf(st); got != want {
		t.Errorf("state changed by events already applied:\n got %s\nwant %s", got, want)
	}
	if st.StatusView().Progress != (projections.Progress{Total: 5, Completed: 1}) {
		t.Errorf("progress %+v, want 5 total, 1 sent", st.StatusView().Progress)
	}

	for _, e := range []eventstore.Event{
		{Stream: domain.RecipientsStream("b1"), Type: domain.TypeRecipientsPageAdded, Data: []byte(`{}`)},
		{Stream: domain.BatchStream("b1"), Type: "BatchArchived", Data: []byte(`{}`)},
		{Stream: "invoice-1", Type: domain.TypeBatchStarted, Data: []byte(`{}`)},
	} {
		if _, _, ok, err := projections.Decode(e); ok || err != nil {
			t.Errorf("decode %s in %s: ok %v, error %v; want skipped", e.Type, e.Stream, ok, err)
		}
	}
	if _, _, _, err := projections.Decode(eventstore.Event{Stream: "batch-b1", Type: domain.TypeMessageSent, Data: []byte(`{"index":"x"}`)}); err == nil {
		t.Error("decode a malformed MessageSent: no error")
	}
}

// TestStateSurvivesJSON checks that a store may keep the state as JSON between
// pages: a state written and read back goes on exactly as one kept in memory.
func TestStateSurvivesJSON(t *testing.T) {
	h := projectionstest.NewEvents()
	h.Campaign("acme", "b1", t0, 300)
	events := h.List()
	whole, _ := project(t, events)

	st := &projections.BatchState{}
	for i, e := range events {
		if i%7 == 0 {
			data, err := json.Marshal(st)
			if err != nil {
				t.Fatal(err)
			}
			st = &projections.BatchState{}
			if err := json.Unmarshal(data, st); err != nil {
				t.Fatal(err)
			}
		}
		_, payload, _, err := projections.Decode(e)
		if err != nil {
			t.Fatal(err)
		}
		st.Apply(e, payload)
	}
	if got, want := jsonOf(st.StatusView()), jsonOf(whole.StatusView()); got != want {
		t.Errorf("status through JSON:\n got %s\nwant %s", got, want)
	}
	if got, want := jsonOf(st.AnalyticsView()), jsonOf(whole.AnalyticsView()); got != want {
		t.Errorf("analytics through JSON:\n got %s\nwant %s", got, want)
	}
	if st.StatusView().Tenant != "acme" {
		t.Errorf("tenant through JSON: %q", st.StatusView().Tenant)
	}
}

func TestLatencyPercentiles(t *testing.T) {
	uniform := make([]int64, 1000)
	for i := range uniform {
		uniform[i] = int64(i + 1)
	}
	rand.New(rand.NewPCG(5, 6)).Shuffle(len(uniform), func(i, j int) { uniform[i], uniform[j] = uniform[j], uniform[i] })
	bimodal := make([]int64, 0, 1000)
	for i := range 1000 {
		if i%10 == 0 {
			bimodal = append(bimodal, 2000)
		} else {
			bimodal = append(bimodal, 100)
		}
	}
	cases := []struct {
		name      string
		latencies []int64
		want      projections.Latency
		tolerance float64 // relative
	}{
		{"none", nil, projections.Latency{}, 0},
		{"all the same", []int64{200, 200, 200, 200}, projections.Latency{P50: 200, P95: 200, P99: 200}, 0},
		{"all instant", []int64{0, 0, 0}, projections.Latency{}, 0},
		{"one", []int64{1234}, projections.Latency{P50: 1234, P95: 1234, P99: 1234}, 0},
		{"uniform 1..1000ms", uniform, projections.Latency{P50: 500, P95: 950, P99: 990}, 0.05},
		{"10% slow", bimodal, projections.Latency{P50: 100, P95: 2000, P99: 2000}, 0.05},
		{"beyond the last bucket", []int64{150_000, 300_000}, projections.Latency{P50: 150_000, P95: 300_000, P99: 300_000}, 0.6},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var h projections.LatencyHistogram
			for _, ms := range c.latencies {
				h.Add(ms)
			}
			got := h.Percentiles()
			for _, p := range []struct {
				name      string
				got, want float64
			}{{"p50", got.P50, c.want.P50}, {"p95", got.P95, c.want.P95}, {"p99", got.P99, c.want.P99}} {
				if math.Abs(p.got-p.want) > c.tolerance*p.want {
					t.Errorf("%s = %v, want %v within %.0f%%", p.name, p.got, p.want, c.tolerance*100)
				}
			}
			if got.P50 > got.P95 || got.P95 > got.P99 {
				t.Errorf("percentiles out of order: %+v", got)
			}
		})
	}
}

func TestThroughput(t *testing.T) {
	cases := []struct {
		name string
		// outcomes at t0 + i*every for i < n; every third one failed.
		n          int
		every      time.Duration
		wantPoints int
		wantWidth  time.Duration
	}{
		{"a few seconds", 7, 700 * time.Millisecond, 5, time.Second},
		{"exactly 120 seconds", 240, 500 * time.Millisecond, 120, time.Second},
		{"over 1000 seconds", 2000, 500 * time.Millisecond, 0, 0},
		{"over a day", 3000, 30 * time.Second, 0, 0},
		{"over a month", 5000, 10 * time.Minute, 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var tp projections.Throughput
			sent, failed := 0, 0
			for i := range c.n {
				ok := i%3 != 0
				tp.Add(t0.Add(time.Duration(i)*c.every), ok)
				if ok {
					sent++
				} else {
					failed++
				}
			}
			points := tp.Points(projections.MaxThroughputPoints)
			if len(points) == 0 || len(points) > projections.MaxThroughputPoints {
				t.Fatalf("%d points, want 1..%d", len(points), projections.MaxThroughputPoints)
			}
			if c.wantPoints > 0 && len(points) != c.wantPoints {
				t.Errorf("%d points, want %d", len(points), c.wantPoints)
			}
			width := time.Second
			if len(points) > 1 {
				width = points[1].Time.Sub(points[0].Time)
			}
			if c.wantWidth > 0 && width != c.wantWidth {
				t.Errorf("points %s wide, want %s", width, c.wantWidth)
			}
			gotSent, gotFailed := 0, 0
			for i, p := range points {
				if i > 0 && p.Time.Sub(points[i-1].Time) != width {
					t.Fatalf("point %d is %s after the one before, want %s: widths must be even", i, p.Time.Sub(points[i-1].Time), width)
				}
				if p.Time.Location() != time.UTC || p.Time.Nanosecond() != 0 || width%time.Second != 0 {
					t.Fatalf("point %d at %s, %s wide: want whole UTC seconds", i, p.Time, width)
				}
				gotSent += p.Sent
				gotFailed += p.Failed
			}
			if gotSent != sent || gotFailed != failed {
				t.Errorf("points count %d sent, %d failed; want %d, %d", gotSent, gotFailed, sent, failed)
			}
			first, last := t0, t0.Add(time.Duration(c.n-1)*c.every)
			if points[0].Time.After(first) || !points[len(points)-1].Time.Add(width).After(last) {
				t.Errorf("points cover [%s, %s), want the outcomes' [%s, %s]", points[0].Time, points[len(points)-1].Time.Add(width), first, last)
			}
			// The state a store keeps stays small however long the batch runs.
			if data, _ := json.Marshal(tp); len(data) > 20_000 {
				t.Errorf("throughput state is %d bytes of JSON", len(data))
			}
		})
	}
	var empty projections.Throughput
	if points := empty.Points(projections.MaxThroughputPoints); points == nil || len(points) != 0 {
		t.Errorf("no outcomes: %v, want an empty list", points)
	}
}

// The live hub skips decoding events of a batch it already has news of unless
// MayBeError says they may carry an error entry: it must say so for every
// type ErrorEntryOf reads one from.
func TestMayBeErrorCoversEveryErrorEntry(t *testing.T) {
	for _, typ := range projections.ProjectedTypes() {
		e, err := domain.DecodeEvent(typ, []byte(`{}`))
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		if _, ok := projections.ErrorEntryOf(e); ok != projections.MayBeError(typ) {
			t.Errorf("%s: ErrorEntryOf finds an entry: %v, MayBeError: %v", typ, ok, projections.MayBeError(typ))
		}
	}
}

// A stopped batch's recipients wait for nothing: a cancelled batch shows no
// recipient waiting for its quiet hours, and, its retries ended skipped
// (cancelled) as the aggregate records them, none pending.
func TestACancelledBatchShowsNothingPendingOrWaiting(t *testing.T) {
	h := projectionstest.NewEvents()
	at := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	b := h.Batch("acme", "b1", at)
	b.Created(4)
	b.Advance(time.Second).Started()
	b.Advance(time.Second).Dispatched(0, 1)
	b.Advance(time.Second).Sent(0, 1, 10*time.Millisecond)
	b.Advance(time.Second).AttemptFailed(1, 1, domain.CategoryTimeout)
	h.Append(domain.RecipientsDeferred{EventHeader: domain.EventHeader{BatchID: "b1", Tenant: "acme", At: at.Add(5 * time.Second)},
		Cursor: 4, Ranges: []domain.DeferredRange{{Group: "UTC", From: 2, To: -1, Next: 2, Waiting: 2, OpensAt: at.Add(8 * time.Hour)}}})
	if v := stateOf(t, h).StatusView(); v.Progress.Waiting != 2 || v.Progress.Pending != 1 {
		t.Fatalf("before the cancel: %+v", v.Progress)
	}
	b.Advance(10 * time.Second).Cancelled()
	b.Skipped(1, domain.CategoryCancelled)
	v := stateOf(t, h).StatusView()
	if v.Status != string(domain.StatusCancelled) || v.Progress.Pending != 0 || v.Progress.Waiting != 0 || v.Progress.Skipped != 1 {
		t.Fatalf("cancelled batch shows %s %+v: pending and waiting that will never go", v.Status, v.Progress)
	}
}

func stateOf(t *testing.T, h *projectionstest.Events) *projections.BatchState {
	t.Helper()
	st, _ := project(t, h.List())
	return st
}
