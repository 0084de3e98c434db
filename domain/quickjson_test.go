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

// Every MessagesDispatched as EncodeEvent writes it takes the quick read, and
// reads as encoding/json reads it.
func TestMessagesDispatchedAsStoredTakesTheQuickRead(t *testing.T) {
	at := time.Date(2026, 12, 2, 2, 10, 0, 987654321, time.UTC)
	many := make([]Dispatch, 300)
	for i := range many {
		many[i] = Dispatch{Index: 1000 + i, Attempt: 1 + i%3}
	}
	for _, e := range []MessagesDispatched{
		{EventHeader: EventHeader{BatchID: "0193d5a4-7b1c-7c1e-9f4b-2a1d3c5e7f90", Tenant: "acme", At: at},
			Slice: "0193d5a4-slice-7", Instance: "host-1:4242", Deadline: at.Add(time.Minute), SendAt: at.Add(time.Second),
			Messages: []Dispatch{{Index: 12, Attempt: 1}}},
		{EventHeader: EventHeader{BatchID: "b", Tenant: "t", At: at}, Slice: "s", // no instance: omitted
			Deadline: at, SendAt: at.In(time.FixedZone("", -7200)), Messages: many},
		{EventHeader: EventHeader{BatchID: "b", Tenant: "t", At: at}, Slice: "s", Messages: []Dispatch{}},
	} {
		_, data, err := EncodeEvent(e)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := readMessagesDispatched(data)
		if !ok {
			t.Fatalf("%s: not read quickly", data)
		}
		var want MessagesDispatched
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: read %+v, encoding/json %+v", data, got, want)
		}
		if dec, err := DecodeEvent(TypeMessagesDispatched, data); err != nil || !reflect.DeepEqual(dec, Event(want)) {
			t.Fatalf("DecodeEvent: %+v, %v", dec, err)
		}
	}
	// Written otherwise, it still decodes, by encoding/json.
	other := `{"messages":[{"a":1,"i":7}],"batchId":"b","tenant":"t","slice":"s","at":"2026-12-02T02:10:00Z","deadline":"2026-12-02T02:11:00Z","sendAt":"2026-12-02T02:10:01Z"}`
	if _, ok := readMessagesDispatched([]byte(other)); ok {
		t.Fatal("keys in another order read quickly")
	}
	dec, err := DecodeEvent(TypeMessagesDispatched, []byte(other))
	if err != nil || len(dec.(MessagesDispatched).Messages) != 1 || dec.(MessagesDispatched).Messages[0] != (Dispatch{Index: 7, Attempt: 1}) {
		t.Fatalf("written otherwise: %+v, %v", dec, err)
	}
}

// Whatever the quick read accepts, it reads as encoding/json does.
func FuzzMessagesDispatchedQuickRead(f *testing.F) {
	for _, s := range []string{
		`{"batchId":"b-1","tenant":"acme","at":"2026-12-02T02:10:00.5Z","slice":"s1","instance":"h:1","deadline":"2026-12-02T02:11:00Z","sendAt":"2026-12-02T02:10:01Z","messages":[{"i":0,"a":1},{"i":1,"a":2}]}`,
		`{"batchId":"b-1","tenant":"acme","at":"2026-12-02T02:10:00Z","slice":"s1","deadline":"0001-01-01T00:00:00Z","sendAt":"0001-01-01T00:00:00Z","messages":[]}`,
		`{"batchId":"b-1","tenant":"acme","at":"2026-12-02T02:10:00Z","slice":"s1","deadline":"2026-12-02T02:11:00Z","sendAt":"2026-12-02T02:10:01Z","messages":null}`,
		`{"batchId":"b-1","tenant":"acme","at":"2026-12-02T02:10:00Z","slice":"s1","deadline":"2026-12-02T02:11:00Z","sendAt":"2026-12-02T02:10:01Z","messages":[{"i":1,"a":1},]}`,
		`{"batchId":"b-1","tenant":"acme","at":"2026-12-02T02:10:00Z","slice":"s1","deadline":"2026-12-02T02:11:00Z","sendAt":"2026-12-02T02:10:01Z","messages":[{"i":-0,"a":01}]}`,
		`{"batchId":"b-1","tenant":"acme","at":"2026-12-02T02:10:00Z","slice":"s1","deadline":"2026-12-02T02:11:00Z","sendAt":"2026-12-02T02:10:01Z","messages":[{"i":1,"a":1}{"i":2,"a":1}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, ok := readMessagesDispatched(data)
		if !ok {
			return
		}
		var want MessagesDispatched
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatalf("%q read quickly as %+v, which encoding/json refuses: %v", data, got, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q read quickly as %+v, by encoding/json as %+v", data, got, want)
		}
	})
}

func BenchmarkDecodeMessagesDispatched(b *testing.B) {
	at := time.Now().UTC()
	msgs := make([]Dispatch, 64)
	for i := range msgs {
		msgs[i] = Dispatch{Index: 1200 + i, Attempt: 1}
	}
	_, data, _ := EncodeEvent(MessagesDispatched{EventHeader: EventHeader{BatchID: "0193d5a4-7b1c-7c1e-9f4b-2a1d3c5e7f90", Tenant: "acme", At: at},
		Slice: "0193d5a4-7b1c-7c1e-9f4b-2a1d3c5e7f91", Instance: "host-1:4242", Deadline: at.Add(time.Minute), SendAt: at, Messages: msgs})
	b.Run("quick", func(b *testing.B) {
		for b.Loop() {
			if _, err := DecodeEvent(TypeMessagesDispatched, data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		for b.Loop() {
			if _, err := decode[MessagesDispatched](data); err != nil {
				b.Fatal(err)
			}
		}
	})
}
