package live

import (
	"testing"

	"github.com/smsbatch/smsbatch/eventstore"
)

// ParsePosition reads what FormatPosition writes and nothing else.
func FuzzParsePosition(f *testing.F) {
	for _, seed := range []string{"0.0", "12.7", "18446744073709551615.0", "18446744073709551616.0", "01.2", "1.", ".1", "1.2.3", "-1.0", "+1.0", " 1.0", "1_0.0", "٣.٣"} {
		f.Add(seed, uint64(0), uint64(0))
	}
	f.Add("", uint64(1<<63), uint64(42))
	f.Fuzz(func(t *testing.T, s string, commit, prepare uint64) {
		if p, err := ParsePosition(s); err == nil && FormatPosition(p) != s {
			t.Fatalf("ParsePosition(%q) = %v, written back as %q", s, p, FormatPosition(p))
		}
		p := eventstore.Position{Commit: commit, Prepare: prepare}
		if back, err := ParsePosition(FormatPosition(p)); err != nil || back != p {
			t.Fatalf("%v round-trips as %v, %v", p, back, err)
		}
	})
}

func TestPositionRoundTrip(t *testing.T) {
	for _, p := range []eventstore.Position{{}, {Commit: 1}, {Commit: 42, Prepare: 7}, {Commit: 1<<64 - 1, Prepare: 1<<64 - 1}} {
		got, err := ParsePosition(FormatPosition(p))
		if err != nil || got != p {
			t.Errorf("%v: round trip gave %v, %v", p, got, err)
		}
	}
}
