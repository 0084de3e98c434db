package bolt

import (
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/projections"
)

// A record reads back as it was written, every field, zero times included.
func TestOutcomeRecordRoundTrips(t *testing.T) {
	at := time.Date(2026, 12, 1, 9, 30, 15, 123456789, time.UTC)
	for _, o := range []projections.RecipientOutcome{
		projections.NewOutcome(0),
		{Index: 7, Status: projections.RecipientPending, Attempts: 2, Category: "provider_unavailable", Code: "503", DispatchedAt: at},
		{Index: 1 << 40, Status: projections.RecipientSent, Attempts: 1, ProviderID: "SM0123", DispatchedAt: at, OutcomeAt: at.Add(time.Millisecond),
			Delivery: projections.DeliveryDelivered, DeliveredAt: at.Add(time.Second)},
		{Index: 3, Status: projections.RecipientFailed, Category: "invalid_number", Code: "21211", OutcomeAt: time.Unix(0, -5).UTC()},
	} {
		got, err := decodeOutcome(encodeOutcome(nil, o))
		if err != nil {
			t.Fatalf("%+v: %v", o, err)
		}
		if got != o {
			t.Fatalf("read back %+v, want %+v", got, o)
		}
	}
}

// No record, however damaged, makes decoding panic; what it accepts
// re-encodes to the same bytes.
func FuzzOutcomeRecord(f *testing.F) {
	at := time.Date(2026, 12, 1, 9, 30, 15, 123456789, time.UTC)
	f.Add(encodeOutcome(nil, projections.RecipientOutcome{Index: 4, Status: projections.RecipientSent, Attempts: 1, ProviderID: "p", OutcomeAt: at}))
	f.Add(encodeOutcome(nil, projections.NewOutcome(9)))
	f.Add([]byte("sent\x00\xff\xff"))
	f.Fuzz(func(t *testing.T, v []byte) {
		o, err := decodeOutcome(v)
		if err != nil {
			return
		}
		again, err := decodeOutcome(encodeOutcome(nil, o))
		if err != nil || again != o {
			t.Fatalf("%q decoded to %+v, which reads back as %+v (%v)", v, o, again, err)
		}
	})
}
