package simulator_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/processors/sms"
	"github.com/smsbatch/smsbatch/processors/sms/simulator"
)

const okNumber = "+14155550100"

func newSim(t testing.TB, cfg simulator.Config) *simulator.Simulator {
	t.Helper()
	if cfg.OutboxPath == "" {
		cfg.OutboxPath = filepath.Join(t.TempDir(), "sim-outbox.jsonl")
	}
	s, err := simulator.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func outboxPath(t testing.TB) string {
	return filepath.Join(t.TempDir(), "sim-outbox.jsonl")
}

func readOutbox(t testing.TB, path string) []simulator.OutboxEntry {
	t.Helper()
	entries, err := simulator.ReadOutbox(path)
	if err != nil {
		t.Fatalf("ReadOutbox: %v", err)
	}
	return entries
}

func msg(key, to string) sms.Message {
	return sms.Message{IdempotencyKey: key, To: to, Body: "hello"}
}

func TestTwilioTestNumbersFailAsTwilioDoes(t *testing.T) {
	tests := []struct {
		to       string
		category domain.ErrorCategory
		code     string
	}{
		{"+15005550001", domain.CategoryInvalidNumber, "21211"},
		{"+15005550002", domain.CategoryUnroutable, "21612"},
		{"+15005550003", domain.CategoryUnroutable, "21408"},
		{"+15005550004", domain.CategoryBlocked, "21610"},
		{"+15005550009", domain.CategoryNotSMSCapable, "21614"},
		{"", domain.CategoryInvalidNumber, "21211"},
		{"14155550100", domain.CategoryInvalidNumber, "21211"},
		{"+1415abc0100", domain.CategoryInvalidNumber, "21211"},
	}
	path := outboxPath(t)
	// A failure rate of 1 must not hide a number's own answer.
	s := newSim(t, simulator.Config{OutboxPath: path, TransientFailureRate: 1})
	for i, tt := range tests {
		t.Run(tt.to, func(t *testing.T) {
			_, err := s.Send(t.Context(), msg(fmt.Sprintf("b:%d", i), tt.to))
			var se *sms.Error
			if !errors.As(err, &se) {
				t.Fatalf("Send to %q: got %v, want *sms.Error", tt.to, err)
			}
			if se.Category != tt.category || se.Code != tt.code {
				t.Errorf("Send to %q: got %s/%s, want %s/%s", tt.to, se.Category, se.Code, tt.category, tt.code)
			}
			if se.Message == "" {
				t.Error("the error has no message for the user")
			}
		})
	}
	if got := readOutbox(t, path); len(got) != 0 {
		t.Errorf("failed sends wrote %d outbox lines, want 0", len(got))
	}
	st := s.Stats()
	if st.Failed[domain.CategoryInvalidNumber] != 4 || st.Failed[domain.CategoryUnroutable] != 2 || st.Accepted != 0 {
		t.Errorf("Stats = %+v, want 4 invalid_number, 2 unroutable, 0 accepted", st)
	}
}

func TestSendWritesOneOutboxLine(t *testing.T) {
	path := outboxPath(t)
	now := time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)
	s := newSim(t, simulator.Config{OutboxPath: path, Clock: func() time.Time { return now }})

	body := "Hi <Ann> & co, your code is 42"
	r, err := s.Send(t.Context(), sms.Message{IdempotencyKey: "b1:0", To: okNumber, Body: body})
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if r.Duplicate || !strings.HasPrefix(r.ProviderID, "SM") {
		t.Errorf("receipt = %+v, want a fresh SM... provider ID", r)
	}

	want := simulator.OutboxEntry{Key: "b1:0", To: okNumber, Body: body, ProviderID: r.ProviderID, Time: now}
	got := readOutbox(t, path)
	if len(got) != 1 || got[0] != want {
		t.Fatalf("outbox = %+v, want [%+v]", got, want)
	}

	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	line := string(raw)
	if !strings.HasSuffix(line, "}\n") || strings.Count(line, "\n") != 1 {
		t.Errorf("outbox file = %q, want one newline-terminated JSON object", line)
	}
	for _, field := range []string{`"key":"b1:0"`, `"providerId":`, `"time":"2025-03-01T12:00:00.123456789Z"`, `<Ann> & co`} {
		if !strings.Contains(line, field) {
			t.Errorf("outbox line %q lacks %s", line, field)
		}
	}
}

func TestSameKeyTwiceWritesOnce(t *testing.T) {
	path := outboxPath(t)
	s := newSim(t, simulator.Config{OutboxPath: path})

	first, err := s.Send(t.Context(), msg("b1:7", okNumber))
	if err != nil {
		t.Fatal(err)
	}
	second, err := s.Send(t.Context(), msg("b1:7", okNumber))
	if err != nil {
		t.Fatal(err)
	}
	if first.Duplicate || !second.Duplicate || second.ProviderID != first.ProviderID {
		t.Errorf("receipts %+v then %+v, want the second a duplicate of the first", first, second)
	}
	if got := readOutbox(t, path); len(got) != 1 {
		t.Errorf("outbox has %d lines, want 1", len(got))
	}
	if st := s.Stats(); st.Accepted != 1 || st.Duplicates != 1 {
		t.Errorf("Stats = %+v, want 1 accepted, 1 duplicate", st)
	}
}

// With RecordEveryCall the simulator is a provider that ignores keys, as Twilio's
// Messages API does: a second send of a key is a second SMS, and the calls file
// shows every call with its times, so tests can see real duplicates.
func TestRecordEveryCallCountsEverySendAsAMessage(t *testing.T) {
	dir := t.TempDir()
	out, calls := filepath.Join(dir, "sim-outbox.jsonl"), filepath.Join(dir, "sim-calls.jsonl")
	// Keys already in the outbox are not honoured either.
	seed := newSim(t, simulator.Config{OutboxPath: out})
	if _, err := seed.Send(t.Context(), msg("b1:7", okNumber)); err != nil {
		t.Fatal(err)
	}
	seed.Close()
	s := newSim(t, simulator.Config{OutboxPath: out, RecordEveryCall: true, CallsPath: calls, Latency: 5 * time.Millisecond})
	var ids []string
	for range 2 {
		r, err := s.Send(t.Context(), msg("b1:7", okNumber))
		if err != nil || r.Duplicate {
			t.Fatalf("send: %+v %v, want a new message each time", r, err)
		}
		ids = append(ids, r.ProviderID)
	}
	if _, err := s.Send(t.Context(), msg("b1:8", "+15005550001")); err == nil {
		t.Fatal("a test number succeeded")
	}
	s.Close()
	if got := readOutbox(t, out); len(got) != 3 {
		t.Fatalf("outbox has %d lines, want 3 (one before, two now)", len(got))
	}
	got, err := simulator.ReadCalls(calls)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Key != "b1:7" || got[1].Key != "b1:7" || got[2].Outcome != string(domain.CategoryInvalidNumber) {
		t.Fatalf("calls %+v, want two accepted calls of b1:7 and one invalid_number", got)
	}
	for _, c := range got {
		if c.End.Sub(c.Start) < 5*time.Millisecond {
			t.Fatalf("call %+v ended before its latency", c)
		}
	}
	// Each accepted call names the message id it was answered with, so a test
	// can tell which of two sends the sender recorded.
	if got[0].ProviderID != ids[0] || got[1].ProviderID != ids[1] || ids[0] == ids[1] || got[2].ProviderID != "" {
		t.Fatalf("calls name ids %q %q %q, want %q %q and none for the failure", got[0].ProviderID, got[1].ProviderID, got[2].ProviderID, ids[0], ids[1])
	}
}

func TestConcurrentSendsOfOneKeyWriteOnce(t *testing.T) {
	path := outboxPath(t)
	s := newSim(t, simulator.Config{OutboxPath: path, Latency: time.Millisecond, LatencyJitter: time.Millisecond})

	const n = 50
	receipts := make([]sms.Receipt, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { receipts[i], errs[i] = s.Send(t.Context(), msg("b1:3", okNumber)) })
	}
	wg.Wait()

	fresh := 0
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("send %d: %v", i, errs[i])
		}
		if !receipts[i].Duplicate {
			fresh++
		}
		if receipts[i].ProviderID != receipts[0].ProviderID {
			t.Errorf("send %d got provider ID %s, send 0 got %s", i, receipts[i].ProviderID, receipts[0].ProviderID)
		}
	}
	if fresh != 1 {
		t.Errorf("%d sends were not duplicates, want exactly 1", fresh)
	}
	if got := readOutbox(t, path); len(got) != 1 {
		t.Errorf("outbox has %d lines, want 1", len(got))
	}
}

func TestDifferentKeysSendInParallel(t *testing.T) {
	const latency = 100 * time.Millisecond
	path := outboxPath(t)
	s := newSim(t, simulator.Config{OutboxPath: path, Latency: latency})

	start := time.Now()
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			if _, err := s.Send(t.Context(), msg(fmt.Sprintf("b1:%d", i), okNumber)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if elapsed := time.Since(start); elapsed > 10*latency {
		t.Errorf("20 parallel sends of %s took %s: sends are serialised", latency, elapsed)
	}
	if got := readOutbox(t, path); len(got) != 20 {
		t.Errorf("outbox has %d lines, want 20", len(got))
	}
}

func TestRestartHonoursKeysAlreadyInTheOutbox(t *testing.T) {
	path := outboxPath(t)
	before, err := simulator.New(simulator.Config{OutboxPath: path})
	if err != nil {
		t.Fatal(err)
	}
	first, err := before.Send(t.Context(), msg("b1:0", okNumber))
	if err != nil {
		t.Fatal(err)
	}
	if err := before.Close(); err != nil {
		t.Fatal(err)
	}

	after := newSim(t, simulator.Config{OutboxPath: path})
	again, err := after.Send(t.Context(), msg("b1:0", okNumber))
	if err != nil {
		t.Fatal(err)
	}
	if !again.Duplicate || again.ProviderID != first.ProviderID {
		t.Errorf("re-send after restart = %+v, want duplicate of %s", again, first.ProviderID)
	}
	if _, err := after.Send(t.Context(), msg("b1:1", okNumber)); err != nil {
		t.Fatal(err)
	}
	if got := readOutbox(t, path); len(got) != 2 {
		t.Errorf("outbox has %d lines, want 2 (b1:0 once, b1:1 once)", len(got))
	}
	if st := after.Stats(); st.Restored != 1 || st.Duplicates != 1 || st.Accepted != 1 {
		t.Errorf("Stats = %+v, want 1 restored, 1 duplicate, 1 accepted", st)
	}
}

func TestTornLastLineIsSkipped(t *testing.T) {
	path := outboxPath(t)
	whole := `{"key":"b1:0","to":"+14155550100","body":"hello","providerId":"SM1","time":"2025-03-01T12:00:00Z"}` + "\n"
	torn := `{"key":"b1:1","to":"+1415555`
	if err := os.WriteFile(path, []byte(whole+torn), 0o644); err != nil {
		t.Fatal(err)
	}

	s, err := simulator.New(simulator.Config{OutboxPath: path})
	if err != nil {
		t.Fatalf("New on a torn outbox: %v", err)
	}
	if r, err := s.Send(t.Context(), msg("b1:0", okNumber)); err != nil || !r.Duplicate || r.ProviderID != "SM1" {
		t.Errorf("send of the whole line's key = %+v, %v; want duplicate of SM1", r, err)
	}
	r, err := s.Send(t.Context(), msg("b1:1", okNumber))
	if err != nil || r.Duplicate {
		t.Errorf("send of the torn line's key = %+v, %v; want a fresh acceptance", r, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(raw), whole+torn+"\n{") {
		t.Errorf("outbox = %q: the new line does not start on a line of its own", raw)
	}
	got := readOutbox(t, path)
	if len(got) != 2 || got[0].Key != "b1:0" || got[1].Key != "b1:1" {
		t.Errorf("outbox entries = %+v, want b1:0 and b1:1", got)
	}

	// The fragment is now in the middle of the file; a second restart still reads it.
	s2 := newSim(t, simulator.Config{OutboxPath: path})
	if st := s2.Stats(); st.Restored != 2 {
		t.Errorf("second restart restored %d keys, want 2", st.Restored)
	}
}

func TestTransientFailureRate(t *testing.T) {
	tests := []struct {
		rate     float64
		wantFail bool
	}{
		{rate: 1, wantFail: true},
		{rate: 0, wantFail: false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.rate), func(t *testing.T) {
			path := outboxPath(t)
			s := newSim(t, simulator.Config{OutboxPath: path, TransientFailureRate: tt.rate, Seed: 7})
			for i := range 100 {
				key := fmt.Sprintf("b1:%d", i%10) // retries of the same key too
				_, err := s.Send(t.Context(), msg(key, okNumber))
				if !tt.wantFail {
					if err != nil {
						t.Fatalf("send %d: %v", i, err)
					}
					continue
				}
				var se *sms.Error
				if !errors.As(err, &se) || se.Category != domain.CategoryProviderUnavailable || se.Code != "503" {
					t.Fatalf("send %d: got %v, want provider_unavailable 503", i, err)
				}
				if !se.Category.Retryable() {
					t.Fatal("a simulated transient failure must be retryable")
				}
			}
			wantLines := 10
			if tt.wantFail {
				wantLines = 0
			}
			if got := readOutbox(t, path); len(got) != wantLines {
				t.Errorf("outbox has %d lines, want %d", len(got), wantLines)
			}
		})
	}
}

// outcomes sends each of 100 keys until it is accepted (at most 10 tries) and
// returns, per key, how many attempts failed.
func outcomes(t *testing.T, seed int64) []int {
	t.Helper()
	s := newSim(t, simulator.Config{TransientFailureRate: 0.5, Seed: seed})
	failures := make([]int, 100)
	for i := range failures {
		key := fmt.Sprintf("b1:%d", i)
		for range 10 {
			_, err := s.Send(t.Context(), msg(key, okNumber))
			if err == nil {
				break
			}
			failures[i]++
		}
	}
	return failures
}

func TestTransientFailuresAreDeterministic(t *testing.T) {
	a, b := outcomes(t, 42), outcomes(t, 42)
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Errorf("same seed, different failures:\n%v\n%v", a, b)
	}
	if c := outcomes(t, 43); fmt.Sprint(a) == fmt.Sprint(c) {
		t.Error("seeds 42 and 43 fail the same attempts; the seed has no effect")
	}

	firstFailed, retried := 0, 0
	for _, f := range a {
		if f > 0 {
			firstFailed++
		}
		if f > 1 {
			retried++
		}
		if f == 10 {
			t.Error("a key failed 10 tries in a row at rate 0.5: retries do not get a fresh chance")
		}
	}
	// At rate 0.5 about half the first attempts fail, and a quarter of the keys
	// fail twice; the bounds are loose enough never to flake for a fixed seed.
	if firstFailed < 30 || firstFailed > 70 || retried < 10 || retried > 40 {
		t.Errorf("%d of 100 first attempts and %d second attempts failed at rate 0.5", firstFailed, retried)
	}
}

func TestLatency(t *testing.T) {
	const latency = 30 * time.Millisecond
	s := newSim(t, simulator.Config{Latency: latency})
	start := time.Now()
	if _, err := s.Send(t.Context(), msg("b1:0", okNumber)); err != nil {
		t.Fatal(err)
	}
	if elapsed := time.Since(start); elapsed < latency {
		t.Errorf("Send returned after %s, want at least %s", elapsed, latency)
	}
}

func TestCancelDuringLatencyReturnsPromptlyAndSendsNothing(t *testing.T) {
	path := outboxPath(t)
	s := newSim(t, simulator.Config{OutboxPath: path, Latency: 10 * time.Second})

	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(20*time.Millisecond, cancel)
	start := time.Now()
	_, err := s.Send(ctx, msg("b1:0", okNumber))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Send = %v, want context.Canceled", err)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("Send returned %s after the cancel", elapsed)
	}
	if got := readOutbox(t, path); len(got) != 0 {
		t.Errorf("a cancelled send wrote %d outbox lines", len(got))
	}
}

func TestSendAfterCloseFails(t *testing.T) {
	s, err := simulator.New(simulator.Config{OutboxPath: outboxPath(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Send(t.Context(), msg("b1:0", okNumber)); !errors.Is(err, simulator.ErrClosed) {
		t.Errorf("Send after Close = %v, want ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
}

func TestConfigValidate(t *testing.T) {
	valid := simulator.Config{OutboxPath: "x.jsonl"}
	tests := []struct {
		name    string
		change  func(*simulator.Config)
		wantErr []string
	}{
		{"valid", func(*simulator.Config) {}, nil},
		{"valid rate 1", func(c *simulator.Config) { c.TransientFailureRate = 1 }, nil},
		{"no outbox", func(c *simulator.Config) { c.OutboxPath = "" }, []string{"OutboxPath"}},
		{"negative latency", func(c *simulator.Config) { c.Latency = -time.Second }, []string{"Latency"}},
		{"negative jitter", func(c *simulator.Config) { c.LatencyJitter = -time.Second }, []string{"LatencyJitter"}},
		{"rate above 1", func(c *simulator.Config) { c.TransientFailureRate = 1.5 }, []string{"TransientFailureRate"}},
		{"rate below 0", func(c *simulator.Config) { c.TransientFailureRate = -0.1 }, []string{"TransientFailureRate"}},
		{"rate NaN", func(c *simulator.Config) { c.TransientFailureRate = math.NaN() }, []string{"TransientFailureRate"}},
		{"all at once", func(c *simulator.Config) {
			*c = simulator.Config{Latency: -1, TransientFailureRate: 2}
		}, []string{"OutboxPath", "Latency", "TransientFailureRate"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := valid
			tt.change(&cfg)
			err := cfg.Validate()
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Errorf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate = nil, want errors about %v", tt.wantErr)
			}
			for _, field := range tt.wantErr {
				if !strings.Contains(err.Error(), field) {
					t.Errorf("Validate = %q, does not mention %s", err, field)
				}
			}
			if _, err := simulator.New(cfg); err == nil {
				t.Error("New accepted an invalid config")
			}
		})
	}
}

func BenchmarkSend(b *testing.B) {
	s := newSim(b, simulator.Config{})
	ctx := b.Context()
	i := 0
	for b.Loop() {
		if _, err := s.Send(ctx, msg(fmt.Sprintf("b1:%d", i), okNumber)); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// Only the most recent keys are remembered, and a restart reads them back from
// the end of the outbox without reading all of it.
func TestRecentKeysAreRememberedAcrossARestart(t *testing.T) {
	path := outboxPath(t)
	s := newSim(t, simulator.Config{OutboxPath: path})
	body := strings.Repeat("x", 1000) // 300 lines of ~1 KiB span several read chunks
	for i := range 300 {
		if _, err := s.Send(t.Context(), sms.Message{IdempotencyKey: fmt.Sprintf("b1:%d", i), To: okNumber, Body: body}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	// A torn last line, as a crash mid-write leaves.
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"key":"b1:torn","to":"+1`)
	f.Close()

	r := newSim(t, simulator.Config{OutboxPath: path, RememberKeys: 100})
	if st := r.Stats(); st.Restored != 100 {
		t.Fatalf("restored %d keys, want the last 100", st.Restored)
	}
	again, err := r.Send(t.Context(), msg("b1:299", okNumber))
	if err != nil || !again.Duplicate {
		t.Fatalf("the last key sent again: %+v %v, want a duplicate", again, err)
	}
	old, err := r.Send(t.Context(), msg("b1:0", okNumber))
	if err != nil || old.Duplicate {
		t.Fatalf("a key older than the last 100: %+v %v, want a new message", old, err)
	}
	r.Close()
	entries := readOutbox(t, path)
	if len(entries) != 301 || entries[300].Key != "b1:0" {
		t.Fatalf("outbox has %d entries ending %+v, want 301 ending with b1:0 written after the torn line", len(entries), entries[len(entries)-1].Key)
	}
}

// A restart reads each outbox line's key and ID as they stand when they need
// no unescaping, and decodes the line otherwise; a line that is not whole JSON
// counts as never sent, even when its fragment holds both fields and ends in a
// brace, as a crash in the middle of a later line's write can leave it.
func TestRestartReadsEveryShapeOfOutboxLine(t *testing.T) {
	path := outboxPath(t)
	lines := []string{
		`{"key":"b1:0","to":"+14155550100","body":"plain","providerId":"SM0123456789abcdef0123456789abcdef","time":"2025-03-01T12:00:00Z"}`,
		// A key json.Marshal escapes, and an ID of another provider's shape.
		`{"key":"b\u003c2:1","to":"+14155550100","body":"escaped","providerId":"MM-other","time":"2025-03-01T12:00:01Z"}`,
		// Torn after its fields, by a crash; the restart after it began a new line.
		`{"key":"b1:2","to":"+14155550100","body":"a}","providerId":"SM11111111111111111111111111111111","time":"2025-03-01T1}`,
		// No key: not deduplicated, and not counted.
		`{"key":"","to":"+14155550100","body":"keyless","providerId":"SM22222222222222222222222222222222","time":"2025-03-01T12:00:02Z"}`,
		// Fields in another order, and an upper-case ID kept as it is.
		`{"providerId":"SMABCDEF0123456789ABCDEF0123456789","time":"2025-03-01T12:00:03Z","key":"b1:3","to":"+14155550100","body":"x"}`,
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := newSim(t, simulator.Config{OutboxPath: path})
	if st := s.Stats(); st.Restored != 3 {
		t.Errorf("restored %d keys, want 3 (b1:0, b<2:1, b1:3)", st.Restored)
	}
	for key, want := range map[string]string{
		"b1:0":  "SM0123456789abcdef0123456789abcdef",
		"b<2:1": "MM-other",
		"b1:3":  "SMABCDEF0123456789ABCDEF0123456789",
	} {
		r, err := s.Send(t.Context(), msg(key, okNumber))
		if err != nil || !r.Duplicate || r.ProviderID != want {
			t.Errorf("send of %q = %+v, %v; want a duplicate of %s", key, r, err, want)
		}
	}
	r, err := s.Send(t.Context(), msg("b1:2", okNumber))
	if err != nil || r.Duplicate {
		t.Errorf("send of the torn line's key = %+v, %v; want a fresh acceptance", r, err)
	}
}

// BenchmarkRestoreKeys is a restart's read of the outbox's last 200,000 keys
// (the default RememberKeys), as after a long history.
func BenchmarkRestoreKeys(b *testing.B) {
	path := filepath.Join(b.TempDir(), "sim-outbox.jsonl")
	var buf bytes.Buffer
	for i := range 200_000 {
		fmt.Fprintf(&buf, `{"key":"01a2300b-4799-75e2-b164-b472a65e02aa:%d","to":"+14152000000","body":"Hi N%d, code %d","providerId":"SM%032x","time":"2026-12-01T05:19:35.343541054Z"}`+"\n", i, i, i, i)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		s, err := simulator.New(simulator.Config{OutboxPath: path})
		if err != nil {
			b.Fatal(err)
		}
		if st := s.Stats(); st.Restored != 200_000 {
			b.Fatalf("restored %d", st.Restored)
		}
		s.Close()
	}
}

// A simulator that records every call and fails some transiently (the
// standalone provider of the multi-instance tests, left running) keeps in
// memory only the keys still failing, not one entry for every message it ever
// accepted.
func TestRecordEveryCallWithFailuresDoesNotGrowWithEveryMessage(t *testing.T) {
	if testing.Short() {
		t.Skip("sends 100,000 messages")
	}
	dir := t.TempDir()
	s := newSim(t, simulator.Config{OutboxPath: filepath.Join(dir, "sim-outbox.jsonl"), RecordEveryCall: true,
		CallsPath: filepath.Join(dir, "sim-calls.jsonl"), TransientFailureRate: 0.01, Seed: 3})
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	const n = 100_000
	for i := range n {
		key := fmt.Sprintf("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b:%d", i)
		for range 10 {
			if _, err := s.Send(t.Context(), msg(key, okNumber)); err == nil {
				break
			}
		}
	}
	grown := int64(heap()) - int64(before)
	// A few bytes a message would be noise; what it held was near 100.
	if grown > 1<<20 {
		t.Errorf("the heap grew by %d KiB over %d accepted messages (%d bytes a message)", grown>>10, n, grown/n)
	}
	runtime.KeepAlive(s)
}
