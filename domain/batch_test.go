package domain

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func newTestBatch(t *testing.T, total int, autoStart bool, schedule *time.Time) *Batch {
	t.Helper()
	tmpl, err := NewTemplate("Hi {{name}}", DefaultTemplateLimits)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewBatch(NewBatchParams{
		ID: "b1", Tenant: "acme", Template: tmpl, Priority: PriorityNormal,
		ScheduleTime: schedule, AutoStart: autoStart, Total: total, Pages: 1,
	}, t0)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// roundTrip stores b's changes as JSON and loads a fresh batch from them, as the
// repository does, so every test also checks that events replay to the same state.
func roundTrip(t *testing.T, b *Batch, history *[]Event) *Batch {
	t.Helper()
	for _, e := range b.Changes() {
		typ, data, err := EncodeEvent(e)
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeEvent(typ, data)
		if err != nil {
			t.Fatal(err)
		}
		*history = append(*history, back)
	}
	b.ClearChanges()
	loaded, err := LoadBatch(*history)
	if err != nil {
		t.Fatal(err)
	}
	return loaded
}

func TestNewBatchStarts(t *testing.T) {
	future := t0.Add(time.Hour)
	past := t0.Add(-time.Hour)
	tests := []struct {
		name      string
		autoStart bool
		schedule  *time.Time
		want      Status
	}{
		{"auto start now", true, nil, StatusProcessing},
		{"auto start, schedule passed", true, &past, StatusProcessing},
		{"auto start, scheduled later", true, &future, StatusPending},
		{"no auto start", false, nil, StatusPending},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newTestBatch(t, 3, tt.autoStart, tt.schedule)
			if b.Status() != tt.want {
				t.Fatalf("status %s, want %s", b.Status(), tt.want)
			}
		})
	}
}

func TestNewBatchRejectsEmpty(t *testing.T) {
	tmpl, _ := NewTemplate("x", DefaultTemplateLimits)
	_, err := NewBatch(NewBatchParams{ID: "b", Tenant: "t", Template: tmpl, Total: 0}, t0)
	if ErrorCode(err) != EINVALID {
		t.Fatalf("got %v, want an EINVALID error", err)
	}
}

func TestScheduledBatchStartsWhenDue(t *testing.T) {
	at := t0.Add(time.Minute)
	b := newTestBatch(t, 1, true, &at)
	if b.StartIfDue(t0) {
		t.Fatal("started before its time")
	}
	if !b.StartIfDue(at) || b.Status() != StatusProcessing {
		t.Fatalf("not started at its time: %s", b.Status())
	}
	manual := newTestBatch(t, 1, false, &at)
	if manual.StartIfDue(at.Add(time.Hour)) {
		t.Fatal("a batch without autoStart started by schedule")
	}
}

func TestTransitions(t *testing.T) {
	type step func(b *Batch) error
	start := func(b *Batch) error { return b.Start(t0, "t") }
	pause := func(b *Batch) error { return b.Pause(t0, "t") }
	resume := func(b *Batch) error { return b.Resume(t0, "t") }
	cancel := func(b *Batch) error { return b.Cancel(t0, "t", nil) }
	tests := []struct {
		name      string
		autoStart bool
		steps     []step
		wantErr   bool // of the last step
		want      Status
	}{
		{"start pending", false, []step{start}, false, StatusProcessing},
		{"start processing", true, []step{start}, true, StatusProcessing},
		{"pause processing", true, []step{pause}, false, StatusPaused},
		{"pause pending", false, []step{pause}, true, StatusPending},
		{"pause paused", true, []step{pause, pause}, true, StatusPaused},
		{"resume paused", true, []step{pause, resume}, false, StatusProcessing},
		{"resume processing", true, []step{resume}, true, StatusProcessing},
		{"cancel pending", false, []step{cancel}, false, StatusCancelled},
		{"cancel paused", true, []step{pause, cancel}, false, StatusCancelled},
		{"cancel cancelled", true, []step{cancel, cancel}, true, StatusCancelled},
		{"resume cancelled", true, []step{cancel, resume}, true, StatusCancelled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newTestBatch(t, 2, tt.autoStart, nil)
			var err error
			for _, s := range tt.steps {
				err = s(b)
			}
			if (err != nil) != tt.wantErr {
				t.Fatalf("last step error %v, want error %v", err, tt.wantErr)
			}
			if err != nil && ErrorCode(err) != ECONFLICT {
				t.Fatalf("error code %s, want %s", ErrorCode(err), ECONFLICT)
			}
			if b.Status() != tt.want {
				t.Fatalf("status %s, want %s", b.Status(), tt.want)
			}
		})
	}
}

// deadline is when the sends of a test dispatch decided at t0 have all ended.
var deadline = t0.Add(10 * time.Second)

func req(slice, prev string, max int) DispatchRequest {
	return DispatchRequest{Slice: slice, PrevSlice: prev, Instance: "i1", Deadline: deadline, Max: max, MaxInFlight: 5}
}

func TestDispatchBoundsInFlight(t *testing.T) {
	b := newTestBatch(t, 12, true, nil)
	prev := b.LastSlice()
	got, err := b.Dispatch(t0, req("s1", prev, 100))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 5 || got[0].Index != 0 || got[4].Index != 4 {
		t.Fatalf("dispatched %v, want indexes 0..4", got)
	}
	if more, _ := b.Dispatch(t0, req("s1", prev, 100)); len(more) != 0 {
		t.Fatalf("dispatched %v past 5 in flight", more)
	}
	if err := b.RecordSent(t0, SentParams{Index: 2, Attempt: 1}); err != nil {
		t.Fatal(err)
	}
	got, _ = b.Dispatch(t0, req("s1", prev, 100))
	if len(got) != 1 || got[0].Index != 5 {
		t.Fatalf("after one answer dispatched %v, want [5]", got)
	}
	if b.Cursor() != 6 {
		t.Fatalf("cursor %d, want 6", b.Cursor())
	}
}

func TestPauseIsABarrier(t *testing.T) {
	b := newTestBatch(t, 10, true, nil)
	prev := b.LastSlice()
	if _, err := b.Dispatch(t0, req("s1", prev, 2)); err != nil {
		t.Fatal(err)
	}
	if err := b.Pause(t0, "t"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Dispatch(t0, req("s1", prev, 1)); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("dispatch while paused: %v, want ErrNotRunning", err)
	}
	// Messages in flight at the pause still get their outcomes.
	if err := b.RecordSent(t0, SentParams{Index: 0, Attempt: 1}); err != nil {
		t.Fatalf("outcome while paused: %v", err)
	}
	if b.Sent() != 1 || b.Cursor() != 2 {
		t.Fatalf("sent %d cursor %d, want 1 and 2", b.Sent(), b.Cursor())
	}
	if err := b.Resume(t0, "t"); err != nil {
		t.Fatal(err)
	}
	// The old chain ended at the pause; the resume starts a new one.
	if _, err := b.Dispatch(t0, req("s2", prev, 1)); !errors.Is(err, ErrSuperseded) {
		t.Fatalf("old chain dispatched after resume: %v", err)
	}
	r := req("s2", b.LastSlice(), 5)
	r.Deadline = deadline.Add(time.Minute)
	got, err := b.Dispatch(t0, r)
	if err != nil {
		t.Fatal(err)
	}
	// Index 1 is still in flight from before the pause and may still be being
	// sent: it keeps its slot and is not sent again; the cursor goes on at 2.
	assertDispatched(t, got, []Dispatch{{2, 1}, {3, 1}, {4, 1}, {5, 1}})
	// Once its deadline has passed without an answer it is in doubt, and goes
	// again under a new attempt.
	b.RecordSent(t0, SentParams{Index: 2, Attempt: 1})
	got, _ = b.Dispatch(deadline, req("s2", "s2", 5))
	assertDispatched(t, got, []Dispatch{{1, 2}, {6, 1}})
}

func assertDispatched(t *testing.T, got, want []Dispatch) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("dispatched %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("dispatched %v, want %v", got, want)
		}
	}
}

// A message whose send may still be running somewhere is never dispatched
// again, whoever asks, until its deadline passes or the asker knows the send
// ended (its own instance not sending it, or the sending instance gone).
func TestInFlightMessagesAreResentOnlyWhenNoSendCanBeRunning(t *testing.T) {
	tests := []struct {
		name    string
		at      time.Time
		settled Settled
		want    []Dispatch
	}{
		{"before the deadline", deadline.Add(-time.Millisecond), nil, nil},
		{"before the deadline, instance alive", deadline.Add(-time.Millisecond), func(Outstanding) bool { return false }, nil},
		{"at the deadline", deadline, nil, []Dispatch{{0, 2}, {1, 2}}},
		{"instance known gone", t0, func(o Outstanding) bool { return o.Instance == "i1" }, []Dispatch{{0, 2}, {1, 2}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var history []Event
			b := newTestBatch(t, 2, true, nil)
			if _, err := b.Dispatch(t0, req("s1", b.LastSlice(), 2)); err != nil {
				t.Fatal(err)
			}
			b = roundTrip(t, b, &history) // the deadline and instance survive storage
			r := req("s2", "s1", 5)
			r.Instance, r.Settled = "i2", tt.settled
			got, err := b.Dispatch(tt.at, r)
			if err != nil {
				t.Fatal(err)
			}
			assertDispatched(t, got, tt.want)
			next := b.NextDispatchAt(tt.at, 5, tt.settled)
			if tt.want == nil && !next.Equal(deadline) {
				t.Fatalf("next dispatch at %v, want the deadline %v", next, deadline)
			}
		})
	}
}

func TestThrottleHoldsDispatchAndSurvivesStorage(t *testing.T) {
	var history []Event
	b := newTestBatch(t, 3, true, nil)
	until := t0.Add(3 * time.Second)
	if err := b.SlowDown(t0, until, 2.5); err != nil {
		t.Fatal(err)
	}
	b = roundTrip(t, b, &history)
	if th := b.Throttle(); !th.Until.Equal(until) || th.Rate != 2.5 {
		t.Fatalf("throttle %+v after replay, want until %v at 2.5/s", th, until)
	}
	if got, _ := b.Dispatch(until.Add(-time.Millisecond), req("s1", b.LastSlice(), 1)); len(got) != 0 {
		t.Fatalf("dispatched %v during the hold", got)
	}
	if next := b.NextDispatchAt(t0, 5, nil); !next.Equal(until) {
		t.Fatalf("next dispatch %v, want the end of the hold %v", next, until)
	}
	// A shorter hold does not cut the current one short.
	b.SlowDown(t0, t0.Add(time.Second), 1)
	if !b.Throttle().Until.Equal(until) {
		t.Fatalf("hold shortened to %v", b.Throttle().Until)
	}
	if got, _ := b.Dispatch(until, req("s1", b.LastSlice(), 1)); len(got) != 1 {
		t.Fatalf("dispatched %v after the hold, want one", got)
	}
}

func TestRacingSlicesOnlyOneDispatches(t *testing.T) {
	b := newTestBatch(t, 10, true, nil)
	prev := b.LastSlice()
	if _, err := b.Dispatch(t0, req("a", prev, 1)); err != nil {
		t.Fatal(err)
	}
	// Slice b came from the same work message (a duplicate delivery).
	if _, err := b.Dispatch(t0, req("b", prev, 1)); !errors.Is(err, ErrSuperseded) {
		t.Fatalf("second slice of one work message dispatched: %v", err)
	}
	// The winner keeps going, and its successor may continue from it.
	if _, err := b.Dispatch(t0, req("a", prev, 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Dispatch(t0, req("c", "a", 1)); err != nil {
		t.Fatalf("successor of the winner: %v", err)
	}
}

func TestRetriesAndStaleOutcomes(t *testing.T) {
	var history []Event
	b := newTestBatch(t, 1, true, nil)
	prev := b.LastSlice()
	b.Dispatch(t0, req("s1", prev, 1))
	retryAt := t0.Add(2 * time.Second)
	fail := FailureParams{Index: 0, Attempt: 1, Phone: "+15551234567", Category: CategoryProviderUnavailable, Code: "503"}
	if err := b.RecordAttemptFailed(t0, fail, retryAt); err != nil {
		t.Fatal(err)
	}
	b = roundTrip(t, b, &history)
	if got, _ := b.Dispatch(t0.Add(time.Second), req("s1", "s1", 1)); len(got) != 0 {
		t.Fatalf("retried before its time: %v", got)
	}
	if !b.NextRetryAt().Equal(retryAt) {
		t.Fatalf("next retry %v, want %v", b.NextRetryAt(), retryAt)
	}
	got, _ := b.Dispatch(retryAt, req("s1", "s1", 1))
	if len(got) != 1 || got[0] != (Dispatch{Index: 0, Attempt: 2}) {
		t.Fatalf("retry dispatched %v, want index 0 attempt 2", got)
	}
	// A late answer to attempt 1 is stale; the answer to attempt 2 counts.
	if err := b.RecordSent(retryAt, SentParams{Index: 0, Attempt: 1}); !errors.Is(err, ErrStaleOutcome) {
		t.Fatalf("stale outcome accepted: %v", err)
	}
	if err := b.RecordSent(retryAt, SentParams{Index: 0, Attempt: 2}); err != nil {
		t.Fatal(err)
	}
	if err := b.RecordSent(retryAt, SentParams{Index: 0, Attempt: 2}); !errors.Is(err, ErrStaleOutcome) {
		t.Fatalf("second outcome for one message accepted: %v", err)
	}
	b = roundTrip(t, b, &history)
	if b.Status() != StatusCompleted || b.Sent() != 1 || b.Failed() != 0 {
		t.Fatalf("status %s sent %d failed %d, want completed 1 0", b.Status(), b.Sent(), b.Failed())
	}
}

func TestEveryRecipientGetsOneOutcome(t *testing.T) {
	var history []Event
	b := newTestBatch(t, 23, true, nil)
	prev := b.LastSlice()
	slice := "s1"
	outcomes := map[int]int{}
	for round := 0; !b.Status().Final(); round++ {
		if round > 100 {
			t.Fatal("batch did not complete")
		}
		got, err := b.Dispatch(t0, req(slice, prev, 3))
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range got {
			if d.Index%4 == 0 {
				b.RecordFailed(t0, FailureParams{Index: d.Index, Attempt: d.Attempt, Category: CategoryBlocked})
			} else {
				b.RecordSent(t0, SentParams{Index: d.Index, Attempt: d.Attempt})
			}
			outcomes[d.Index]++
		}
		b = roundTrip(t, b, &history)
		prev = slice
	}
	if b.Status() != StatusCompleted || b.Sent()+b.Failed() != 23 || len(outcomes) != 23 {
		t.Fatalf("status %s, %d sent + %d failed, %d distinct", b.Status(), b.Sent(), b.Failed(), len(outcomes))
	}
	for i, n := range outcomes {
		if n != 1 {
			t.Fatalf("recipient %d has %d outcomes", i, n)
		}
	}
	if b.Failed() != 6 {
		t.Fatalf("failed %d, want 6 (every fourth)", b.Failed())
	}
}

func TestPausedBatchCompletesWithLastOutcome(t *testing.T) {
	b := newTestBatch(t, 2, true, nil)
	b.Dispatch(t0, req("s", b.LastSlice(), 2))
	b.Pause(t0, "t")
	b.RecordSent(t0, SentParams{Index: 0, Attempt: 1})
	if b.Status() != StatusPaused {
		t.Fatalf("status %s, want paused", b.Status())
	}
	b.RecordSent(t0, SentParams{Index: 1, Attempt: 1})
	if b.Status() != StatusCompleted {
		t.Fatalf("status %s, want completed once every recipient has an outcome", b.Status())
	}
}

func TestLoadBatchNeedsCreatedFirst(t *testing.T) {
	if _, err := LoadBatch([]Event{BatchStarted{}}); err == nil {
		t.Fatal("loaded a batch without BatchCreated")
	}
}

func TestSkipEndsARecipientWithoutSendingIt(t *testing.T) {
	var history []Event
	b := newTestBatch(t, 3, true, nil)
	if _, err := b.Dispatch(t0, req("s1", b.LastSlice(), 1)); err != nil {
		t.Fatal(err)
	}
	// In flight and maybe being sent: only its answer decides.
	if err := b.Skip(t0, SkipParams{Index: 0, Category: CategoryOptedOut}, nil); !errors.Is(err, ErrStaleOutcome) {
		t.Fatalf("skip of a message in flight: %v", err)
	}
	// Beyond the cursor: not the next one.
	if err := b.Skip(t0, SkipParams{Index: 2, Category: CategoryOptedOut}, nil); !errors.Is(err, ErrStaleOutcome) {
		t.Fatalf("skip past the cursor: %v", err)
	}
	if err := b.Skip(t0, SkipParams{Index: 1, Phone: "+14155550101", Category: CategoryOptedOut}, nil); err != nil {
		t.Fatal(err)
	}
	b = roundTrip(t, b, &history)
	if b.Cursor() != 2 || b.Skipped() != 1 {
		t.Fatalf("cursor %d skipped %d, want 2 and 1", b.Cursor(), b.Skipped())
	}
	// A message waiting for its retry may be skipped (its validity ran out).
	b.RecordAttemptFailed(t0, FailureParams{Index: 0, Attempt: 1, Category: CategoryTimeout}, t0.Add(time.Minute))
	if err := b.Skip(t0, SkipParams{Index: 0, Category: CategoryExpired}, nil); err != nil {
		t.Fatal(err)
	}
	b.Skip(t0, SkipParams{Index: 2, Category: CategoryExpired}, nil)
	b = roundTrip(t, b, &history)
	if b.Status() != StatusCompleted || b.Skipped() != 3 || b.Sent()+b.Failed() != 0 {
		t.Fatalf("status %s skipped %d sent %d failed %d, want completed with 3 skipped", b.Status(), b.Skipped(), b.Sent(), b.Failed())
	}
}

func TestChainRevisionReadsTheToken(t *testing.T) {
	if rev, ok := ChainRevision(ChainToken(42)); !ok || rev != 42 {
		t.Fatalf("ChainRevision(ChainToken(42)) = %d, %v", rev, ok)
	}
	for _, s := range []string{"", "0190e5f4-8a1b-7c3d-9e2f-1a2b3c4d5e6f", "rev-", "rev-x"} {
		if _, ok := ChainRevision(s); ok {
			t.Fatalf("ChainRevision(%q) reads a revision", s)
		}
	}
}

// A stopped batch retries nothing, so every message it dispatched still ends
// with one outcome: those waiting for a retry end skipped (cancelled), an
// answer in flight is recorded, a failure answered after the stop is final,
// and a send that gave up before reaching the provider ends skipped too.
func TestAStoppedBatchLeavesNoMessageOutstanding(t *testing.T) {
	for _, stop := range []struct {
		name string
		do   func(b *Batch, now time.Time) error
	}{
		{"cancelled", func(b *Batch, now time.Time) error {
			return b.Cancel(now, "t", func(i int) string { return fmt.Sprintf("+1415555%04d", i) })
		}},
		{"failed", func(b *Batch, now time.Time) error { return b.Fail(now, "recipients unreadable") }},
	} {
		t.Run(stop.name, func(t *testing.T) {
			b := newTestBatch(t, 5, true, nil)
			if _, err := b.Dispatch(t0, req("s1", b.LastSlice(), 4)); err != nil {
				t.Fatal(err)
			}
			mustDo(t, b.RecordSent(t0, SentParams{Index: 0, Attempt: 1}))
			mustDo(t, b.RecordAttemptFailed(t0, FailureParams{Index: 1, Attempt: 1, Category: CategoryTimeout}, t0.Add(time.Minute)))
			mustDo(t, stop.do(b, t0.Add(time.Second)))
			if o, ok := b.OutstandingAt(1); ok {
				t.Fatalf("the message waiting for its retry is still outstanding: %+v", o)
			}
			// Answers in flight at the stop are recorded; a retryable failure is final.
			mustDo(t, b.RecordSent(t0.Add(2*time.Second), SentParams{Index: 2, Attempt: 1}))
			mustDo(t, b.RecordAttemptFailed(t0.Add(2*time.Second), FailureParams{Index: 3, Attempt: 1, Category: CategoryTimeout}, t0.Add(time.Hour)))
			if b.OutstandingCount() != 0 {
				t.Fatalf("%d messages left outstanding for good: %+v", b.OutstandingCount(), b.Outstanding())
			}
			if b.Sent() != 2 || b.Failed() != 1 || b.Skipped() != 1 {
				t.Fatalf("sent %d, failed %d, skipped %d; want 2, 1 (the failure after the stop) and 1 (the retry)", b.Sent(), b.Failed(), b.Skipped())
			}
			var skipped MessageSkipped
			for _, e := range b.Changes() {
				if s, ok := e.(MessageSkipped); ok {
					skipped = s
				}
			}
			if skipped.Index != 1 || skipped.Category != CategoryCancelled || (stop.name == "cancelled" && skipped.Phone != "+14155550001") {
				t.Fatalf("the retry ended as %+v", skipped)
			}
			if b.Status() == StatusCompleted {
				t.Fatal("a stopped batch completed")
			}
		})
	}
}

// A send of a stopped batch that gave up before reaching the provider ends
// skipped; while the batch may still send, it goes again instead.
func TestEndUnsentOnlyOnAStoppedBatch(t *testing.T) {
	b := newTestBatch(t, 2, true, nil)
	if _, err := b.Dispatch(t0, req("s1", b.LastSlice(), 2)); err != nil {
		t.Fatal(err)
	}
	if err := b.EndUnsent(t0, 0, 1, "+14155550000"); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("ending a running batch's message: %v, want ErrNotRunning", err)
	}
	mustDo(t, b.Cancel(t0, "t", nil))
	mustDo(t, b.EndUnsent(t0, 0, 1, "+14155550000"))
	if err := b.EndUnsent(t0, 0, 1, "+14155550000"); !errors.Is(err, ErrStaleOutcome) {
		t.Fatalf("ending it twice: %v", err)
	}
	if _, ok := b.OutstandingAt(0); ok || b.Skipped() != 1 {
		t.Fatalf("outstanding after EndUnsent; skipped %d", b.Skipped())
	}
}

func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A stop also ends the messages in flight whose deadline has passed: no send of
// them can still be running (their instance is gone), and no slice runs for a
// stopped batch to find them.
func TestAStopEndsTheMessagesInDoubt(t *testing.T) {
	b := newTestBatch(t, 3, true, nil)
	r := req("s1", b.LastSlice(), 3)
	r.Deadline = t0.Add(10 * time.Second)
	if _, err := b.Dispatch(t0, r); err != nil {
		t.Fatal(err)
	}
	mustDo(t, b.RecordSent(t0, SentParams{Index: 0, Attempt: 1}))
	mustDo(t, b.Cancel(t0.Add(time.Hour), "user", nil))
	var history []Event
	b = roundTrip(t, b, &history)
	if n := b.OutstandingCount(); n != 0 {
		t.Fatalf("the cancelled batch keeps %d messages outstanding for good, their deadlines an hour past", n)
	}
	if b.Sent() != 1 || b.Skipped() != 2 {
		t.Fatalf("sent %d, skipped %d", b.Sent(), b.Skipped())
	}
	// Before their deadline they may still be sending: they wait for their answers.
	b = newTestBatch(t, 1, true, nil)
	r = req("s1", b.LastSlice(), 1)
	r.Deadline = t0.Add(10 * time.Second)
	if _, err := b.Dispatch(t0, r); err != nil {
		t.Fatal(err)
	}
	mustDo(t, b.Cancel(t0.Add(time.Second), "user", nil))
	if b.OutstandingCount() != 1 {
		t.Fatal("a message whose send may still be running was ended")
	}
}
