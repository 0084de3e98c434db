package bolt

import (
	"testing"

	"github.com/smsbatch/smsbatch/eventstore"
)

// BenchmarkRecordDecode: what verifying a record's checksum adds to decoding it,
// for a record the size of a MessageSent event. Both run in the same process,
// so the comparison holds on a busy machine where the store benchmarks, which
// fsync, do not.
func BenchmarkRecordDecode(b *testing.B) {
	rec := encodeRecord(123456, "batch-0196a3c4-5b7e-7c1d-9e2f-3a4b5c6d7e8f", 42, 1_700_000_000_000_000_000, eventstore.EventData{
		ID: "0196a3c4-5b7e-7c1d-9e2f-3a4b5c6d7e90", Type: "MessageSent", Metadata: []byte(`{"tenant":"acme"}`),
		Data: []byte(`{"batchId":"0196a3c4-5b7e-7c1d-9e2f-3a4b5c6d7e8f","index":123456,"to":"+15005550006","providerMessageId":"SM0123456789abcdef0123456789abcdef","attempt":1}`),
	})
	b.Run("checked", func(b *testing.B) {
		for range b.N {
			if _, err := decodeRecord(123456, rec); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("unchecked", func(b *testing.B) {
		for range b.N {
			if _, err := decodeBody(123456, rec[recordHeader:]); err != nil {
				b.Fatal(err)
			}
		}
	})
}
