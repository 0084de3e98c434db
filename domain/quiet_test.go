package domain

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

const (
	newYork    = "+12125550100" // America/New_York
	losAngeles = "+12135550100" // America/Los_Angeles
)

func TestQuietHoursWindows(t *testing.T) {
	night, err := ParseQuietHours("21:00", "08:00", "")
	if err != nil {
		t.Fatal(err)
	}
	ny, _ := time.LoadLocation("America/New_York")
	at := func(h, m int) time.Time { return time.Date(2026, 12, 1, h, m, 0, 0, ny) }
	tests := []struct {
		name   string
		q      QuietHours
		group  string
		t      time.Time
		quiet  bool
		opensH int // New York hour the window opens, when quiet
	}{
		{"day in New York", night, "America/New_York", at(12, 0), false, 0},
		{"night in New York", night, "America/New_York", at(3, 0), true, 8},
		{"evening in New York", night, "America/New_York", at(21, 0), true, 8 + 24},
		{"09:00 in New York is 06:00 in Los Angeles", night, "America/Los_Angeles", at(9, 0), true, 11},
		{"strictest of two zones", night, "America/Los_Angeles|America/New_York", at(8, 30), true, 11},
		{"a window within the day", QuietHours{Start: "12:00", End: "13:30"}, "America/New_York", at(12, 45), true, 13},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			quiet, opens := tt.q.QuietAt(tt.group, tt.t)
			if quiet != tt.quiet {
				t.Fatalf("quiet %v, want %v", quiet, tt.quiet)
			}
			if !quiet {
				return
			}
			want := time.Date(2026, 12, 1, 0, 0, 0, 0, ny).Add(time.Duration(tt.opensH) * time.Hour)
			if tt.name == "a window within the day" {
				want = at(13, 30)
			}
			if !opens.Equal(want) {
				t.Fatalf("opens at %v, want %v", opens.In(ny), want)
			}
		})
	}
	for _, bad := range [][3]string{{"9pm", "08:00", ""}, {"21:00", "24:00", ""}, {"08:00", "08:00", ""}, {"21:00", "08:00", "Mars/Olympus"}} {
		if _, err := ParseQuietHours(bad[0], bad[1], bad[2]); ErrorCode(err) != EINVALID {
			t.Errorf("quiet hours %v accepted: %v", bad, err)
		}
	}
	if g := night.ZoneGroup(newYork); g != "America/New_York" {
		t.Fatalf("zone group of %s: %q", newYork, g)
	}
	if g := (QuietHours{Start: "21:00", End: "08:00", Timezone: "Europe/Paris"}).ZoneGroup(newYork); g != "Europe/Paris" {
		t.Fatalf("the batch's timezone does not override the number's: %q", g)
	}
}

// A window whose end falls in the hour the clocks skip ends when they jump
// over it, never an hour early: 02:30 does not exist in New York on
// 2026-03-08, and the night's recipients wait until 03:00 EDT.
func TestQuietHoursEndingInTheSpringForwardGap(t *testing.T) {
	q, err := ParseQuietHours("22:00", "02:30", "America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	ny, _ := time.LoadLocation("America/New_York")
	jump := time.Date(2026, 3, 8, 7, 0, 0, 0, time.UTC) // 02:00 EST is 03:00 EDT
	for _, local := range []time.Time{
		time.Date(2026, 3, 7, 23, 0, 0, 0, ny),
		time.Date(2026, 3, 8, 1, 0, 0, 0, ny),
		time.Date(2026, 3, 8, 1, 45, 0, 0, ny),
		time.Date(2026, 3, 8, 1, 59, 59, 0, ny),
	} {
		quiet, opens := q.QuietAt(q.ZoneGroup(newYork), local)
		if !quiet || !opens.Equal(jump) {
			t.Errorf("at %s: quiet %v, opens %s; want quiet until %s",
				local.Format("Jan 2 15:04:05 MST"), quiet, opens.In(ny).Format("Jan 2 15:04 MST"), jump.In(ny).Format("Jan 2 15:04 MST"))
		}
	}
	if quiet, _ := q.QuietAt(q.ZoneGroup(newYork), jump); quiet {
		t.Errorf("still quiet at %s", jump.In(ny).Format("15:04 MST"))
	}
	// East of Greenwich time.Date gives the skipped time after the jump: Berlin
	// springs from 02:00 CET to 03:00 CEST on 2026-03-29.
	berlinQ, err := ParseQuietHours("22:00", "02:30", "Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	berlin, _ := time.LoadLocation("Europe/Berlin")
	berlinJump := time.Date(2026, 3, 29, 1, 0, 0, 0, time.UTC)
	for _, local := range []time.Time{time.Date(2026, 3, 28, 23, 0, 0, 0, berlin), time.Date(2026, 3, 29, 1, 30, 0, 0, berlin)} {
		if quiet, opens := berlinQ.QuietAt(berlinQ.ZoneGroup("+4930123456"), local); !quiet || !opens.Equal(berlinJump) {
			t.Errorf("Berlin at %s: quiet %v, opens %s; want quiet until 03:00 CEST", local.Format("Jan 2 15:04 MST"), quiet, opens.In(berlin).Format("Jan 2 2006 15:04 MST"))
		}
	}
	// The night after, 02:30 exists again.
	next := time.Date(2026, 3, 9, 1, 0, 0, 0, ny)
	if _, opens := q.QuietAt(q.ZoneGroup(newYork), next); !opens.Equal(time.Date(2026, 3, 9, 2, 30, 0, 0, ny)) {
		t.Errorf("the next night opens at %s", opens.In(ny))
	}
}

// On the night the clocks fall back, the hour before the change is lived
// twice, and quiet hours keep the recipient's clock: a window ending in that
// hour ends when the clocks next read its end. In New York its second time
// ended at the first reading, already past, and messages went at once in the
// quiet hours; in Berlin its first time ended at the second reading, an hour
// late; and a window the clocks fall back into ended a day late. New York
// falls back from 02:00 EDT to 01:00 EST on 2026-11-01 (06:00 UTC), Berlin
// from 03:00 CEST to 02:00 CET on 2026-10-25 (01:00 UTC).
func TestQuietHoursEndingInTheFallBackHour(t *testing.T) {
	ny, _ := time.LoadLocation("America/New_York")
	berlin, _ := time.LoadLocation("Europe/Berlin")
	utc := func(h, m int) time.Time { return time.Date(2026, 11, 1, h, m, 0, 0, time.UTC) }
	tests := []struct {
		name, start, end, zone string
		at                     time.Time
		quiet                  bool
		opens                  time.Time
	}{
		{"night, in the first 01:15", "21:00", "01:30", "America/New_York", utc(5, 15), true, utc(5, 30)},
		{"night, in the second 01:15", "21:00", "01:30", "America/New_York", utc(6, 15), true, utc(6, 30)},
		{"night, at the second 01:45", "21:00", "01:30", "America/New_York", utc(6, 45), false, time.Time{}},
		{"a window within the repeated hour, its second time", "01:07", "01:12", "America/New_York", utc(6, 10), true, utc(6, 12)},
		{"a window the clocks fall back into", "01:55", "01:00", "America/New_York", utc(5, 58), true, utc(6, 0)},
		{"Berlin, in the first 02:15", "22:00", "02:30", "Europe/Berlin", time.Date(2026, 10, 25, 0, 15, 0, 0, time.UTC), true, time.Date(2026, 10, 25, 0, 30, 0, 0, time.UTC)},
		{"Berlin, in the second 02:15", "22:00", "02:30", "Europe/Berlin", time.Date(2026, 10, 25, 1, 15, 0, 0, time.UTC), true, time.Date(2026, 10, 25, 1, 30, 0, 0, time.UTC)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, err := ParseQuietHours(tt.start, tt.end, tt.zone)
			if err != nil {
				t.Fatal(err)
			}
			loc := ny
			if tt.zone == "Europe/Berlin" {
				loc = berlin
			}
			quiet, opens := q.QuietAt(tt.zone, tt.at)
			if quiet != tt.quiet || (quiet && !opens.Equal(tt.opens)) {
				t.Errorf("%s-%s at %s: quiet %v, opens %s; want quiet %v, opens %s", tt.start, tt.end,
					tt.at.In(loc).Format("Jan 2 15:04 MST"), quiet, opens.In(loc).Format("Jan 2 15:04 MST"),
					tt.quiet, tt.opens.In(loc).Format("Jan 2 15:04 MST"))
			}
		})
	}
}

// quietBatch is a started batch with quiet hours whose recipients alternate
// between New York and Los Angeles.
func quietBatch(t *testing.T, n int, validUntil *time.Time) (*Batch, func(int) (RecipientInfo, error)) {
	t.Helper()
	tmpl, _ := NewTemplate("Hi", DefaultTemplateLimits)
	q, _ := ParseQuietHours("21:00", "08:00", "")
	b, err := NewBatch(NewBatchParams{ID: "b1", Tenant: "acme", Template: tmpl, AutoStart: true, Total: n, Pages: 1,
		QuietHours: &q, ValidUntil: validUntil}, t0)
	if err != nil {
		t.Fatal(err)
	}
	phone := func(i int) (RecipientInfo, error) {
		if i%2 == 0 {
			return RecipientInfo{Phone: newYork}, nil
		}
		return RecipientInfo{Phone: losAngeles}, nil
	}
	return b, phone
}

func dispatchAt(t *testing.T, b *Batch, now time.Time, recipient func(int) (RecipientInfo, error)) []Dispatch {
	t.Helper()
	r := req("s1", b.LastSlice(), 5)
	r.Deadline, r.Recipient = now.Add(10*time.Second), recipient
	got, err := b.Dispatch(now, r)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// A recipient in its quiet hours waits; the others of the batch are not held
// up, and the waiting ones go once their window opens.
func TestQuietHoursDeferOnlyTheRecipientsInThem(t *testing.T) {
	ny, _ := time.LoadLocation("America/New_York")
	morning := time.Date(2026, 12, 1, 9, 0, 0, 0, ny) // 06:00 in Los Angeles
	var history []Event
	b, phone := quietBatch(t, 6, nil)
	got := dispatchAt(t, b, morning, phone)
	assertDispatched(t, got, []Dispatch{{0, 1}, {2, 1}, {4, 1}})
	b = roundTrip(t, b, &history)
	if b.Waiting() != 3 || b.Cursor() != 6 {
		t.Fatalf("waiting %d cursor %d, want 3 waiting and every recipient passed", b.Waiting(), b.Cursor())
	}
	for _, i := range []int{0, 2, 4} {
		b.RecordSent(morning, SentParams{Index: i, Attempt: 1})
	}
	if b.Status() != StatusProcessing {
		t.Fatalf("status %s with 3 recipients waiting for their window", b.Status())
	}
	opens := time.Date(2026, 12, 1, 11, 0, 0, 0, ny) // 08:00 in Los Angeles
	if next := b.NextDispatchAt(morning, 5, nil); !next.Equal(opens) {
		t.Fatalf("next dispatch at %v, want when Los Angeles wakes, %v", next.In(ny), opens)
	}
	if got := dispatchAt(t, b, opens.Add(-time.Minute), phone); len(got) != 0 {
		t.Fatalf("dispatched %v before the window opened", got)
	}
	got = dispatchAt(t, b, opens, phone)
	assertDispatched(t, got, []Dispatch{{1, 1}, {3, 1}, {5, 1}})
	b = roundTrip(t, b, &history)
	for _, i := range []int{1, 3, 5} {
		b.RecordSent(opens, SentParams{Index: i, Attempt: 1})
	}
	if b.Status() != StatusCompleted || b.Sent() != 6 || b.Waiting() != 0 {
		t.Fatalf("status %s sent %d waiting %d, want completed with all 6 sent once", b.Status(), b.Sent(), b.Waiting())
	}
}

func TestExpiredMessagesAreSkippedNotSent(t *testing.T) {
	ny, _ := time.LoadLocation("America/New_York")
	morning := time.Date(2026, 12, 1, 9, 0, 0, 0, ny)
	until := morning.Add(time.Hour)
	var history []Event
	b, phone := quietBatch(t, 8, &until)
	r := req("s1", b.LastSlice(), 2)
	// Index 0's send may run past validUntil: its answer must decide.
	r.Deadline, r.Recipient = until.Add(time.Minute), phone
	if _, err := b.Dispatch(morning, r); err != nil { // 0 and 2 go, 1 and 3 wait
		t.Fatal(err)
	}
	b.RecordAttemptFailed(morning, FailureParams{Index: 2, Attempt: 1, Category: CategoryUnknown}, morning.Add(time.Minute))
	b = roundTrip(t, b, &history)
	if got := dispatchAt(t, b, until, phone); len(got) != 0 {
		t.Fatalf("dispatched %v after validUntil", got)
	}
	b = roundTrip(t, b, &history)
	// 0 is still in flight: its answer decides. Everything else is expired.
	if b.Skipped() != 7 || b.Status() != StatusProcessing {
		t.Fatalf("skipped %d status %s, want 7 skipped and the one in flight awaited", b.Skipped(), b.Status())
	}
	b.RecordSent(until, SentParams{Index: 0, Attempt: 1})
	if b.Status() != StatusCompleted || b.Sent() != 1 {
		t.Fatalf("status %s sent %d", b.Status(), b.Sent())
	}
	for _, e := range history {
		if sk, ok := e.(MessageSkipped); ok && (sk.Category != CategoryExpired || sk.Phone == "") {
			t.Fatalf("skip %+v, want category expired with the number", sk)
		}
	}
}

func TestOptedOutRecipientsAreSkipped(t *testing.T) {
	b := newTestBatch(t, 4, true, nil)
	stop := func(i int) (RecipientInfo, error) {
		if i == 1 || i == 2 {
			return RecipientInfo{Phone: fmt.Sprint("+1415555010", i), Skip: CategoryOptedOut, Message: "replied STOP"}, nil
		}
		return RecipientInfo{Phone: "+14155550100"}, nil
	}
	got := dispatchAt(t, b, t0, stop)
	assertDispatched(t, got, []Dispatch{{0, 1}, {3, 1}})
	if b.Skipped() != 2 || b.Cursor() != 4 {
		t.Fatalf("skipped %d cursor %d", b.Skipped(), b.Cursor())
	}
	// A page that cannot be read is an error, and nothing is recorded.
	b2 := newTestBatch(t, 2, true, nil)
	broken := errors.New("page unreadable")
	if _, err := b2.Dispatch(t0, DispatchRequest{Slice: "s", PrevSlice: b2.LastSlice(), Max: 1, MaxInFlight: 5,
		Recipient: func(int) (RecipientInfo, error) { return RecipientInfo{}, broken }}); !errors.Is(err, broken) {
		t.Fatalf("dispatch with an unreadable recipient: %v", err)
	}
}

// A quiet-hours zone is an IANA name: "Local", which Go loads as the server's
// own zone, is not the recipients'.
func TestQuietHoursRefuseTheServersLocalZone(t *testing.T) {
	if _, err := ParseQuietHours("21:00", "08:00", "Local"); ErrorCode(err) != EINVALID {
		t.Fatalf("timezone Local: %v, want invalid", err)
	}
	for _, zone := range []string{"UTC", "America/New_York", "Europe/Paris"} {
		if _, err := ParseQuietHours("21:00", "08:00", zone); err != nil {
			t.Errorf("timezone %s: %v", zone, err)
		}
	}
}
