package domain

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// Every MessageSent as EncodeEvent writes it takes the quick read, and reads as
// encoding/json reads it.
func TestMessageSentAsStoredTakesTheQuickRead(t *testing.T) {
	at := time.Date(2026, 12, 1, 23, 59, 59, 123456789, time.UTC)
	for _, e := range []MessageSent{
		{EventHeader: EventHeader{BatchID: "0193d5a4-7b1c-7c1e-9f4b-2a1d3c5e7f90", Tenant: "acme", At: at},
			Index: 1234, Attempt: 2, ProviderID: "SM0123456789abcdef", Segments: 3, LatencyMs: 20},
		{EventHeader: EventHeader{BatchID: "b", Tenant: "t", At: at.Truncate(time.Second)}}, // no provider ID: omitted
		{EventHeader: EventHeader{BatchID: "b", Tenant: "t", At: at.In(time.FixedZone("", 3600))}, Index: 0, LatencyMs: -1},
	} {
		_, data, err := EncodeEvent(e)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := readMessageSent(data)
		if !ok {
			t.Fatalf("%s: not read quickly", data)
		}
		var want MessageSent
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: read %+v, encoding/json %+v", data, got, want)
		}
		if dec, err := DecodeEvent(TypeMessageSent, data); err != nil || !reflect.DeepEqual(dec, Event(want)) {
			t.Fatalf("DecodeEvent: %+v, %v", dec, err)
		}
	}
}

// Whatever the quick read accepts, it reads as encoding/json does; what it
// refuses goes to encoding/json.
func FuzzMessageSentQuickRead(f *testing.F) {
	for _, s := range []string{
		`{"batchId":"b-1","tenant":"acme","at":"2026-12-01T23:59:59.123456789Z","index":12,"attempt":1,"providerId":"SM1","segments":1,"latencyMs":20}`,
		`{"batchId":"b-1","tenant":"acme","at":"2026-12-01T23:59:59Z","index":0,"attempt":0,"segments":0,"latencyMs":0}`,
		`{"batchId":"b-1","tenant":"acme","at":"2026-12-01T23:59:59+01:00","index":-0,"attempt":01,"segments":1,"latencyMs":9223372036854775807}`,
		`{"batchId":"b\u00e9","tenant":"acme","at":"2026-12-01T23:59:59Z","index":1,"attempt":1,"segments":1,"latencyMs":1}`,
		`{"batchId":"b","tenant":"acme","at":"2026-12-01T23:59:59Z","index":1e2,"attempt":1,"segments":1,"latencyMs":1}`,
		`{"batchId":"b","tenant":"acme","at":"2026-13-01T23:59:59Z","index":1,"attempt":1,"segments":1,"latencyMs":1}`,
		`{"batchId":"b","tenant":"acme","at":"2026-12-01T23:59:59Z","index":1,"attempt":1,"segments":1,"latencyMs":1} `,
		`{"batchId":"b","tenant":"acme","at":"2026-12-01T23:59:59Z","index":99999999999999999999,"attempt":1,"segments":1,"latencyMs":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, ok := readMessageSent(data)
		if !ok {
			return
		}
		var want MessageSent
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatalf("%q read quickly as %+v, which encoding/json refuses: %v", data, got, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q read quickly as %+v, by encoding/json as %+v", data, got, want)
		}
	})
}

func BenchmarkDecodeMessageSent(b *testing.B) {
	_, data, _ := EncodeEvent(MessageSent{EventHeader: EventHeader{BatchID: "0193d5a4-7b1c-7c1e-9f4b-2a1d3c5e7f90", Tenant: "acme", At: time.Now().UTC()},
		Index: 1234, Attempt: 1, ProviderID: "SM0123456789abcdef0123456789abcdef", Segments: 1, LatencyMs: 20})
	b.Run("quick", func(b *testing.B) {
		for b.Loop() {
			if _, err := DecodeEvent(TypeMessageSent, data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		for b.Loop() {
			if _, err := decode[MessageSent](data); err != nil {
				b.Fatal(err)
			}
		}
	})
}
