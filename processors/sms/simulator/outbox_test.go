package simulator

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// encoderLine is an outbox line as a json.Encoder that does not escape HTML
// writes it: what the outbox held before its lines were written out by hand.
func encoderLine(t testing.TB, e OutboxEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(e); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// FuzzOutboxLine holds every outbox line to the encoder's, byte for byte:
// readers of the outbox (people, tests, the bench scripts) see no change.
func FuzzOutboxLine(f *testing.F) {
	for _, s := range []string{
		"", "b-1:0", "+14155550100", "Hi Ann, your code is 1234",
		`quote " and backslash \ and slash /`, "<b>Tom & Jerry</b>",
		"tab\tnew line\ncarriage\rbell\a nul\x00 del\x7f",
		"héllo wörld ✓ 😀", "line\u2028separator\u2029", "bad utf-8 \xff\xfe end", "\xe2\x82",
	} {
		f.Add(s, int64(1764633600123456789))
	}
	f.Add("x", int64(-62135596800000000)) // 0001-01-01
	f.Fuzz(func(t *testing.T, s string, ns int64) {
		tm := time.Unix(0, ns).UTC()
		if tm.Year() < 1 || tm.Year() > 9999 {
			t.Skip() // not a time the simulator stamps
		}
		e := OutboxEntry{Key: s + ":3", To: "+1" + s, Body: s, ProviderID: "SM" + s, Time: tm}
		got, err := e.appendLine(nil)
		if err != nil {
			t.Fatal(err)
		}
		if want := encoderLine(t, e); !bytes.Equal(got, want) {
			t.Fatalf("line\n%q\nwant the encoder's\n%q", got, want)
		}
	})
}

func BenchmarkOutboxLine(b *testing.B) {
	e := OutboxEntry{Key: "0193d5a4-7b1c-7c1e-9f4b-2a1d3c5e7f90:1234", To: "+14155551234", Body: "Hello N1234, your order is ready",
		ProviderID: "SM0123456789abcdef0123456789abcdef", Time: time.Now().UTC()}
	b.Run("by hand", func(b *testing.B) {
		buf := make([]byte, 0, 256)
		for b.Loop() {
			buf, _ = e.appendLine(buf[:0])
		}
	})
	b.Run("encoder", func(b *testing.B) {
		for b.Loop() {
			_ = encoderLine(b, e)
		}
	})
}
