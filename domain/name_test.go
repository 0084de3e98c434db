package domain

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestCheckName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"", true},
		{"Spring sale — week 12 🌸", true},
		{strings.Repeat("é", MaxNameLength), true},
		{strings.Repeat("é", MaxNameLength+1), false},
		{"bell\a", false},
		{"bad \xff byte", false},
		{"two\nlines", true},
	} {
		err := CheckName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("CheckName(%q) = %v, want ok %v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidText) {
			t.Errorf("CheckName(%q) = %v, not ErrInvalidText", tc.name, err)
		}
	}
}

func TestRetryNameStaysWithinTheLimit(t *testing.T) {
	if got := RetryName("Spring sale", "id-1"); got != "Retry of Spring sale" {
		t.Errorf("got %q", got)
	}
	if got := RetryName("", "0193-abc"); got != "Retry of 0193-abc" {
		t.Errorf("got %q", got)
	}
	long := RetryName(strings.Repeat("ü", MaxNameLength), "x")
	if n := utf8.RuneCountInString(long); n != MaxNameLength || CheckName(long) != nil {
		t.Errorf("retry of a longest name: %d characters, CheckName %v", n, CheckName(long))
	}
}

func TestRescheduleOnlyAPendingBatch(t *testing.T) {
	now := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	tmpl, err := NewTemplate("Hi", TemplateLimits{})
	if err != nil {
		t.Fatal(err)
	}
	manual, err := NewBatch(NewBatchParams{ID: "b1", Tenant: "t", Template: tmpl, Total: 1, Pages: 1, Name: "Spring"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if c := manual.Changes()[0].(BatchCreated); c.Name != "Spring" {
		t.Fatalf("BatchCreated name %q", c.Name)
	}
	at := now.Add(time.Hour)
	if err := manual.Reschedule(now, at, "key"); err != nil {
		t.Fatal(err)
	}
	// Scheduling a batch made without autoStart asks it to start then.
	if !manual.ScheduleTime().Equal(at) || !manual.AutoStart() {
		t.Fatalf("after reschedule: schedule %s, autoStart %v", manual.ScheduleTime(), manual.AutoStart())
	}
	if manual.StartIfDue(at.Add(-time.Second)) {
		t.Fatal("started before its new time")
	}
	if !manual.StartIfDue(at) {
		t.Fatal("not started at its new time")
	}
	if err := manual.Reschedule(at, at.Add(time.Hour), "key"); ErrorCode(err) != ECONFLICT {
		t.Fatalf("rescheduling a processing batch: %v, want a conflict", err)
	}
	replayed, err := LoadBatch(manual.Changes())
	if err != nil {
		t.Fatal(err)
	}
	if !replayed.ScheduleTime().Equal(at) || replayed.Status() != StatusProcessing {
		t.Fatalf("replayed: schedule %s, status %s", replayed.ScheduleTime(), replayed.Status())
	}
}

// A reschedule at or after the batch's validUntil would end every recipient
// skipped as expired without one send: refused, as the same schedule is at create.
func TestRescheduleBeyondTheValidityIsRefused(t *testing.T) {
	now := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	tmpl, err := NewTemplate("Hi", TemplateLimits{})
	if err != nil {
		t.Fatal(err)
	}
	valid := now.Add(time.Hour)
	b, err := NewBatch(NewBatchParams{ID: "b1", Tenant: "t", Template: tmpl, Total: 1, Pages: 1, ValidUntil: &valid}, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, at := range []time.Time{valid, valid.Add(time.Hour)} {
		err := b.Reschedule(now, at, "key")
		var e *Error
		if ErrorCode(err) != EINVALID || !errors.As(err, &e) || len(e.Details) != 1 || e.Details[0].Field != "scheduleTime" {
			t.Fatalf("reschedule to %s with validUntil %s: %v, want invalid scheduleTime", at, valid, err)
		}
	}
	if len(b.Changes()) != 1 {
		t.Fatalf("a refused reschedule recorded %d events", len(b.Changes())-1)
	}
	if err := b.Reschedule(now, valid.Add(-time.Minute), "key"); err != nil {
		t.Fatalf("reschedule before the validity: %v", err)
	}
}
