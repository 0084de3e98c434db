package domain

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"
)

// snapshotJSON stores and reads s as the repository does.
func snapshotJSON(t *testing.T, s BatchSnapshot) BatchSnapshot {
	t.Helper()
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back BatchSnapshot
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	return back
}

// field returns b's field i, settable and readable although unexported: the test
// must reach every field, including those added after it was written.
func field(v reflect.Value, i int) reflect.Value {
	f := v.Field(i)
	return reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem()
}

// notState lists the Batch fields a snapshot does not carry, and why.
var notState = map[string]string{
	"changes": "unsaved changes; Snapshot refuses a batch that has any",
}

// filler sets every field it is given to a value that is not the zero value and
// differs from the other fields', so that a field the snapshot drops, or mixes up
// with another, shows.
type filler struct {
	t *testing.T
	n int
}

func (f *filler) fill(v reflect.Value, path string) {
	f.n++
	switch v.Kind() {
	case reflect.String:
		v.SetString(fmt.Sprintf("%s-%d", path, f.n))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(f.n))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(uint64(f.n))
	case reflect.Float32, reflect.Float64:
		v.SetFloat(float64(f.n) + 0.5)
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			v.Set(reflect.ValueOf(t0.Add(time.Duration(f.n)*time.Second + time.Duration(f.n))))
			return
		}
		for i := range v.NumField() {
			f.fill(field(v, i), path+"."+v.Type().Field(i).Name)
		}
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		f.fill(v.Elem(), path)
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 2, 2))
		for i := range 2 {
			f.fill(v.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
	case reflect.Map:
		v.Set(reflect.MakeMap(v.Type()))
		for i := range 2 {
			k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
			f.fill(k, fmt.Sprintf("%s.key%d", path, i))
			f.fill(e, fmt.Sprintf("%s[%d]", path, i))
			v.SetMapIndex(k, e)
		}
	default:
		f.t.Fatalf("%s is a %s: teach the filler in snapshot_test.go to fill it", path, v.Kind())
	}
}

// TestSnapshotCarriesEveryField fills every field of a Batch, and of the
// Outstanding messages in it, and checks that Snapshot, JSON and RestoreBatch
// bring back each one. A field added to Batch or Outstanding without its place in
// BatchSnapshot (and SnapshotFormat bumped) fails here, by name.
func TestSnapshotCarriesEveryField(t *testing.T) {
	b := &Batch{}
	v := reflect.ValueOf(b).Elem()
	fl := &filler{t: t}
	for i := range v.NumField() {
		name := v.Type().Field(i).Name
		if _, skip := notState[name]; !skip {
			fl.fill(field(v, i), name)
		}
	}
	// What RestoreBatch checks must make sense; every other value stays as filled.
	b.status = StatusPaused
	b.cursor, b.total = 1000, 2000
	for i := range b.outstanding {
		b.outstanding[i].Index %= b.cursor
	}
	slices.SortFunc(b.outstanding, func(x, y Outstanding) int { return x.Index - y.Index })
	if len(b.outstanding) != 2 {
		t.Fatalf("filled %d outstanding messages, want 2", len(b.outstanding))
	}

	s, err := b.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	got, err := RestoreBatch(snapshotJSON(t, s))
	if err != nil {
		t.Fatal(err)
	}
	gv := reflect.ValueOf(got).Elem()
	for i := range v.NumField() {
		name := v.Type().Field(i).Name
		if _, skip := notState[name]; skip {
			continue
		}
		want, have := field(v, i).Interface(), field(gv, i).Interface()
		if !reflect.DeepEqual(want, have) {
			t.Errorf("Batch.%s is not carried by the snapshot: restored %#v, want %#v\n"+
				"add it to BatchSnapshot (and Snapshot, RestoreBatch), and bump SnapshotFormat", name, have, want)
		}
	}
}

// snapshotShapes is the shape of BatchSnapshot in each format, as shape() writes
// it. A format number is never reused: when the shape changes, bump SnapshotFormat
// and add a line; keep the old ones.
var snapshotShapes = map[int]string{
	1: "format int; version uint64; id string; tenant string; status domain.Status; priority domain.Priority; " +
		"text string; variables []string; total int; pages int; autoStart bool; schedule time.Time; createdAt time.Time; " +
		"cursor int; outstanding []{index int; attempt int; slice string; retryAt time.Time}; sent int; failed int; " +
		"lastSlice string; lastDispatchAt time.Time; lastEventAt time.Time; pausedAt time.Time; resumedAt time.Time",
	2: "format int; version uint64; id string; tenant string; status domain.Status; priority domain.Priority; " +
		"text string; variables []string; total int; pages int; autoStart bool; schedule time.Time; createdAt time.Time; " +
		"cursor int; outstanding []{index int; attempt int; slice string; instance string; deadline time.Time; retryAt time.Time; failures int}; " +
		"sent int; failed int; lastSlice string; lastDispatchAt time.Time; lastSendAt time.Time; " +
		"throttleUntil time.Time; throttleRate float64; holdReason string; holdSince time.Time; " +
		"lastEventAt time.Time; pausedAt time.Time; resumedAt time.Time",
	3: "format int; version uint64; id string; tenant string; status domain.Status; priority domain.Priority; " +
		"text string; variables []string; total int; pages int; autoStart bool; schedule time.Time; createdAt time.Time; " +
		"cursor int; outstanding []{index int; attempt int; slice string; instance string; deadline time.Time; retryAt time.Time; failures int}; " +
		"sent int; failed int; skipped int; lastSlice string; lastDispatchAt time.Time; lastSendAt time.Time; " +
		"throttleUntil time.Time; throttleRate float64; holdReason string; holdSince time.Time; " +
		"lastEventAt time.Time; pausedAt time.Time; resumedAt time.Time",
	4: "format int; version uint64; id string; tenant string; status domain.Status; priority domain.Priority; " +
		"text string; variables []string; total int; pages int; autoStart bool; schedule time.Time; createdAt time.Time; " +
		"validUntil time.Time; quiet *domain.QuietHours; " +
		"deferred []{group string; from int; to int; next int; waiting int; opensAt time.Time}; " +
		"cursor int; outstanding []{index int; attempt int; slice string; instance string; deadline time.Time; retryAt time.Time; failures int}; " +
		"sent int; failed int; skipped int; lastSlice string; lastDispatchAt time.Time; lastSendAt time.Time; " +
		"throttleUntil time.Time; throttleRate float64; holdReason string; holdSince time.Time; " +
		"lastEventAt time.Time; pausedAt time.Time; resumedAt time.Time",
	5: "format int; version uint64; id string; tenant string; status domain.Status; priority domain.Priority; " +
		"text string; variables []string; total int; pages int; autoStart bool; schedule time.Time; createdAt time.Time; " +
		"validUntil time.Time; quiet *domain.QuietHours; " +
		"deferred []{group string; from int; to int; next int; waiting int; opensAt time.Time}; " +
		"cursor int; outstanding []{index int; attempt int; slice string; instance string; deadline time.Time; retryAt time.Time; failures int}; " +
		"sent int; failed int; skipped int; lastSlice string; lastDispatchAt time.Time; lastSendAt time.Time; " +
		"throttleUntil time.Time; throttleRate float64; holdReason string; holdSince time.Time; cappedRate float64; " +
		"lastEventAt time.Time; pausedAt time.Time; resumedAt time.Time",
	6: "format int; version uint64; id string; tenant string; status domain.Status; priority domain.Priority; " +
		"text string; variables []string; total int; pages int; autoStart bool; schedule time.Time; createdAt time.Time; " +
		"validUntil time.Time; quiet *domain.QuietHours; " +
		"deferred []{group string; from int; to int; next int; waiting int; opensAt time.Time}; " +
		"cursor int; outstanding []{index int; attempt int; slice string; instance string; deadline time.Time; retryAt time.Time; failures int}; " +
		"sent int; failed int; skipped int; lastSlice string; lastDispatchAt time.Time; lastSendAt time.Time; " +
		"throttleUntil time.Time; throttleRate float64; holdReason string; holdSince time.Time; cappedRate float64; " +
		"lastEventAt time.Time; pausedAt time.Time; resumedAt time.Time; receiptIds int",
}

// shape describes a type's JSON fields, nested structs inline.
func shape(t reflect.Type) string {
	var parts []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		typ := f.Type
		prefix := ""
		if typ.Kind() == reflect.Slice {
			prefix, typ = "[]", typ.Elem()
		}
		desc := typ.String()
		if typ.Kind() == reflect.Struct && typ != reflect.TypeFor[time.Time]() {
			desc = "{" + shape(typ) + "}"
		}
		parts = append(parts, name+" "+prefix+desc)
	}
	return strings.Join(parts, "; ")
}

// TestSnapshotFormatFollowsItsShape: a snapshot stored by an older build must not
// be restored as if it had fields it lacks, so a change of BatchSnapshot's shape
// must come with a new SnapshotFormat.
func TestSnapshotFormatFollowsItsShape(t *testing.T) {
	got := shape(reflect.TypeFor[BatchSnapshot]())
	want, ok := snapshotShapes[SnapshotFormat]
	if !ok || got != want {
		t.Fatalf("BatchSnapshot's shape is not the one recorded for format %d:\n got  %s\n want %s\n"+
			"bump SnapshotFormat and add the new shape to snapshotShapes", SnapshotFormat, got, want)
	}
	seen := map[string]int{}
	for format, s := range snapshotShapes {
		if other, dup := seen[s]; dup {
			t.Errorf("formats %d and %d have the same shape", other, format)
		}
		seen[s] = format
	}
}

// randomHistory plays random decisions on a new batch and returns the events
// they recorded, stored and read back as JSON.
func randomHistory(t *testing.T, r *rand.Rand) []Event {
	t.Helper()
	tmpl, err := NewTemplate("Hi {{name}}, {{code}}", DefaultTemplateLimits)
	if err != nil {
		t.Fatal(err)
	}
	now := t0
	var schedule *time.Time
	if r.IntN(4) == 0 {
		at := now.Add(time.Minute)
		schedule = &at
	}
	b, err := NewBatch(NewBatchParams{
		ID: "b1", Tenant: "acme", Template: tmpl, Priority: PriorityHigh,
		ScheduleTime: schedule, AutoStart: r.IntN(3) > 0, Total: 1 + r.IntN(40), Pages: 1,
	}, now)
	if err != nil {
		t.Fatal(err)
	}
	slices := 0
	for range r.IntN(120) {
		now = now.Add(time.Duration(r.IntN(3000)) * time.Millisecond)
		var inFlight []Outstanding
		for _, o := range b.Outstanding() {
			if o.InFlight() {
				inFlight = append(inFlight, o)
			}
		}
		pick := func() (Outstanding, bool) {
			if len(inFlight) == 0 {
				return Outstanding{}, false
			}
			return inFlight[r.IntN(len(inFlight))], true
		}
		// Refused decisions record nothing, so errors are part of the play.
		switch r.IntN(20) {
		case 0:
			_ = b.Start(now, "user")
		case 1:
			b.StartIfDue(now.Add(time.Minute))
		case 2:
			_ = b.Pause(now, "user")
		case 3, 4:
			_ = b.Resume(now, "user")
		case 5:
			if r.IntN(5) == 0 {
				_ = b.Cancel(now, "user", nil)
			}
		case 6, 7, 8, 9:
			slice := b.LastSlice()
			if r.IntN(3) == 0 {
				slices++
				slice = fmt.Sprint("s", slices)
			}
			_, _ = b.Dispatch(now, DispatchRequest{
				Slice: slice, PrevSlice: b.LastSlice(), Instance: fmt.Sprint("i", r.IntN(3)),
				Deadline: now.Add(time.Duration(r.IntN(8)) * time.Second), SendAt: now.Add(time.Duration(r.IntN(300)) * time.Millisecond),
				Max: 1 + r.IntN(5), MaxInFlight: 5,
			})
		case 10, 11, 12, 13:
			if o, ok := pick(); ok {
				_ = b.RecordSent(now, SentParams{Index: o.Index, Attempt: o.Attempt, Segments: 1})
			}
		case 14, 15:
			if o, ok := pick(); ok {
				_ = b.RecordAttemptFailed(now, FailureParams{Index: o.Index, Attempt: o.Attempt, Category: CategoryTimeout}, now.Add(time.Second))
			}
		case 16:
			if o, ok := pick(); ok && r.IntN(2) == 0 {
				_ = b.RecordFailed(now, FailureParams{Index: o.Index, Attempt: o.Attempt, Category: CategoryBlocked})
			} else {
				_ = b.Skip(now, SkipParams{Index: b.Cursor(), Category: CategoryOptedOut}, nil)
			}
		case 17:
			if r.IntN(10) == 0 {
				_ = b.Fail(now, "recipients unreadable")
			}
		case 18:
			_ = b.SlowDown(now, now.Add(time.Duration(r.IntN(5))*time.Second), float64(r.IntN(5)))
		case 19:
			if r.IntN(2) == 0 {
				b.HoldFor(now, HoldReasonProviderOutage)
			} else {
				b.Unhold(now)
			}
		}
	}
	var history []Event
	roundTrip(t, b, &history)
	return history
}

// TestSnapshotThenReplayEqualsFullReplay is the property loading relies on: for
// random histories and every place a snapshot may be taken in them, restoring
// the snapshot and replaying the rest gives the batch a full replay gives.
func TestSnapshotThenReplayEqualsFullReplay(t *testing.T) {
	for seed := range uint64(300) {
		r := rand.New(rand.NewPCG(seed, 1))
		history := randomHistory(t, r)
		want, err := LoadBatch(history)
		if err != nil {
			t.Fatal(err)
		}
		for k := 1; k <= len(history); k++ {
			base, err := LoadBatch(history[:k])
			if err != nil {
				t.Fatal(err)
			}
			s, err := base.Snapshot()
			if err != nil {
				t.Fatalf("seed %d, snapshot after %d events: %v", seed, k, err)
			}
			if s.Version != uint64(k) {
				t.Fatalf("seed %d: snapshot after %d events has version %d", seed, k, s.Version)
			}
			got, err := RestoreBatch(snapshotJSON(t, s))
			if err != nil {
				t.Fatalf("seed %d, restore the snapshot after %d events: %v", seed, k, err)
			}
			for _, e := range history[k:] {
				if err := got.Replay(e); err != nil {
					t.Fatal(err)
				}
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("seed %d: snapshot after %d of %d events, then replay:\n got  %+v\n want %+v", seed, k, len(history), got, want)
			}
		}
	}
}

// TestRandomHistoriesCoverTheStates keeps the property test honest: its histories
// must reach the states that matter, or it proves little.
func TestRandomHistoriesCoverTheStates(t *testing.T) {
	seen := map[string]bool{}
	for seed := range uint64(300) {
		b, err := LoadBatch(randomHistory(t, rand.New(rand.NewPCG(seed, 1))))
		if err != nil {
			t.Fatal(err)
		}
		seen[string(b.Status())] = true
		if b.NextRetryAt() != (time.Time{}) {
			seen["waiting retry"] = true
		}
		if b.Sent() > 0 && b.Failed() > 0 {
			seen["sent and failed"] = true
		}
		if !b.PausedAt().IsZero() && !b.ResumedAt().IsZero() {
			seen["paused and resumed"] = true
		}
		if len(b.Outstanding()) > 0 {
			seen["outstanding"] = true
		}
		if !b.Throttle().Until.IsZero() {
			seen["throttled"] = true
		}
		if b.Hold().Reason != "" {
			seen["held"] = true
		}
	}
	for _, want := range []string{"pending", "processing", "paused", "completed", "cancelled", "failed",
		"waiting retry", "sent and failed", "paused and resumed", "outstanding", "throttled", "held"} {
		if !seen[want] {
			t.Errorf("no random history ends %s", want)
		}
	}
}

func TestSnapshotRefusals(t *testing.T) {
	b := newTestBatch(t, 3, true, nil)
	if _, err := b.Snapshot(); err == nil {
		t.Error("snapshot of a batch with unsaved changes succeeded")
	}
	if _, err := (&Batch{}).Snapshot(); err == nil {
		t.Error("snapshot of a batch without events succeeded")
	}
	b.ClearChanges()
	good, err := b.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := RestoreBatch(good); err != nil {
		t.Fatalf("restore a good snapshot: %v", err)
	}
	tests := []struct {
		name   string
		change func(s *BatchSnapshot)
	}{
		{"older format", func(s *BatchSnapshot) { s.Format = SnapshotFormat - 1 }},
		{"newer format", func(s *BatchSnapshot) { s.Format = SnapshotFormat + 1 }},
		{"no format (not a snapshot)", func(s *BatchSnapshot) { s.Format = 0 }},
		{"no id", func(s *BatchSnapshot) { s.ID = "" }},
		{"version 0", func(s *BatchSnapshot) { s.Version = 0 }},
		{"unknown status", func(s *BatchSnapshot) { s.Status = "archived" }},
		{"cursor past total", func(s *BatchSnapshot) { s.Cursor = s.Total + 1 }},
		{"outstanding never dispatched", func(s *BatchSnapshot) {
			s.Outstanding = []OutstandingSnapshot{{Index: s.Cursor, Attempt: 1}}
		}},
	}
	for _, tt := range tests {
		s := good
		tt.change(&s)
		_, err := RestoreBatch(s)
		if err == nil {
			t.Errorf("%s: restored", tt.name)
		}
		if strings.Contains(tt.name, "format") && !errors.Is(err, ErrSnapshotFormat) {
			t.Errorf("%s: %v, want ErrSnapshotFormat", tt.name, err)
		}
	}
}

func TestSnapshotStreamIsNotABatchStream(t *testing.T) {
	if strings.HasPrefix(SnapshotStream("x"), BatchStreamPrefix) || strings.HasPrefix(SnapshotStream("x"), RecipientsStreamPrefix) {
		t.Fatalf("snapshot stream %q would be taken for a batch's events or recipients", SnapshotStream("x"))
	}
}
