package bolt

import (
	"errors"
	"testing"

	"github.com/smsbatch/smsbatch/eventstore"
)

// TestRecordChecksum: any flipped bit, a cut record, or a record read under
// another key fails the checksum; the record itself decodes as written.
func TestRecordChecksum(t *testing.T) {
	const seq = 5
	rec := encodeRecord(seq, "batch-1", 3, 1_700_000_000_123_456_789, eventstore.EventData{
		ID: "e-1", Type: "MessageSent", Data: []byte(`{"index":1}`), Metadata: []byte(`{"tenant":"acme"}`),
	})
	e, err := decodeRecord(seq, rec)
	if err != nil || e.Stream != "batch-1" || e.Revision != 3 || e.ID != "e-1" || string(e.Data) != `{"index":1}` ||
		string(e.Metadata) != `{"tenant":"acme"}` || e.Time.UnixNano() != 1_700_000_000_123_456_789 {
		t.Fatalf("decode: %+v, %v", e, err)
	}
	for bit := range len(rec) * 8 {
		bad := append([]byte(nil), rec...)
		bad[bit/8] ^= 1 << (bit % 8)
		if _, err := decodeRecord(seq, bad); !errors.Is(err, eventstore.ErrCorrupt) {
			t.Fatalf("bit %d flipped: %v; want ErrCorrupt", bit, err)
		}
	}
	for _, n := range []int{0, 1, recordHeader, len(rec) - 1} {
		if _, err := decodeRecord(seq, rec[:n]); !errors.Is(err, eventstore.ErrCorrupt) {
			t.Errorf("record cut to %d bytes: %v; want ErrCorrupt", n, err)
		}
	}
	for _, other := range []uint64{4, 6, 1<<32 + seq, 1 << 40} {
		if _, err := decodeRecord(other, rec); !errors.Is(err, eventstore.ErrCorrupt) {
			t.Errorf("record %d read as %d: %v; want ErrCorrupt", uint64(seq), other, err)
		}
	}
}
