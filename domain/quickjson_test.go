package domain

import (
	"encoding/json"
	"reflect"
	"strings"
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
	msgs := make([]Dispatch, 5) // a batch has at most 5 in flight
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

// The quick encoding writes what encoding/json writes, byte for byte, or
// leaves the event to it.
func TestQuickEncodeWritesWhatEncodingJSONWrites(t *testing.T) {
	at := time.Date(2026, 12, 2, 3, 30, 0, 123000000, time.UTC)
	for _, e := range []Event{
		MessageSent{EventHeader: EventHeader{BatchID: "0193d5a4-7b1c-7c1e-9f4b-2a1d3c5e7f90", Tenant: "acme", At: at},
			Index: 1234, Attempt: 2, ProviderID: "SM0123456789abcdef", Segments: 3, LatencyMs: 20},
		MessageSent{EventHeader: EventHeader{BatchID: "b", Tenant: "t", At: at.In(time.FixedZone("", -5*3600))}, LatencyMs: -1},
		MessagesDispatched{EventHeader: EventHeader{BatchID: "b", Tenant: "acme", At: at}, Slice: "s-1", Instance: "host:1",
			Deadline: at.Add(time.Minute), SendAt: at, Messages: []Dispatch{{Index: 1, Attempt: 1}, {Index: 2, Attempt: 3}}},
		MessagesDispatched{EventHeader: EventHeader{BatchID: "b", Tenant: "acme", At: at}, Slice: "s-1", Messages: []Dispatch{}},
		MessagesDispatched{EventHeader: EventHeader{BatchID: "b", Tenant: "acme", At: at}, Slice: "s-1"},
	} {
		quick, ok := quickEncode(e)
		if !ok {
			t.Fatalf("%+v: not encoded quickly", e)
		}
		want, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if string(quick) != string(want) {
			t.Fatalf("quick %s\nwant  %s", quick, want)
		}
	}
	// Left to encoding/json: what it escapes, and times it refuses.
	for _, e := range []Event{
		MessageSent{EventHeader: EventHeader{BatchID: "b<1>", Tenant: "t", At: at}},
		MessageSent{EventHeader: EventHeader{BatchID: "b", Tenant: "tén", At: at}},
		MessagesDispatched{EventHeader: EventHeader{BatchID: "b", Tenant: "t", At: at}, Slice: `s"1`},
		MessagesDispatched{EventHeader: EventHeader{BatchID: "b", Tenant: "t", At: at.AddDate(9000, 0, 0)}, Slice: "s"},
		BatchPaused{EventHeader: EventHeader{BatchID: "b", Tenant: "t", At: at}},
	} {
		if data, ok := quickEncode(e); ok {
			t.Fatalf("%+v encoded quickly as %s", e, data)
		}
		if _, _, err := EncodeEvent(e); err != nil && !strings.Contains(err.Error(), "year outside of range") {
			t.Fatalf("%+v: %v", e, err)
		}
	}
}

// Whatever the quick encoding writes, encoding/json writes the same.
func FuzzQuickEncode(f *testing.F) {
	f.Add("0193d5a4-7b1c-7c1e-9f4b-2a1d3c5e7f90", "acme", int64(1764646200123456789), 12, 1, "SM1", 1, int64(20), "host:1")
	f.Add("b", "", int64(0), 0, 0, "", 0, int64(-1), "")
	f.Add("b&c", "t\u2028", int64(-62135596800000000000/1e9), -1, 1<<40, "\x7f", -3, int64(1)<<62, "<i>")
	f.Fuzz(func(t *testing.T, batch, tenant string, ns int64, index, attempt int, provider string, segments int, latency int64, instance string) {
		at := time.Unix(0, ns).In(time.FixedZone("", (index%48)*1800))
		h := EventHeader{BatchID: batch, Tenant: tenant, At: at}
		for _, e := range []Event{
			MessageSent{EventHeader: h, Index: index, Attempt: attempt, ProviderID: provider, Segments: segments, LatencyMs: latency},
			MessagesDispatched{EventHeader: h, Slice: provider, Instance: instance, Deadline: at.Add(time.Duration(latency)), SendAt: at,
				Messages: []Dispatch{{Index: index, Attempt: attempt}, {Index: segments, Attempt: 1}}},
		} {
			quick, ok := quickEncode(e)
			if !ok {
				continue
			}
			want, err := json.Marshal(e)
			if err != nil {
				t.Fatalf("%+v encoded quickly as %s, which encoding/json refuses: %v", e, quick, err)
			}
			if string(quick) != string(want) {
				t.Fatalf("quick %s\nwant  %s", quick, want)
			}
		}
	})
}

func BenchmarkEncodeMessageSent(b *testing.B) {
	e := MessageSent{EventHeader: EventHeader{BatchID: "0193d5a4-7b1c-7c1e-9f4b-2a1d3c5e7f90", Tenant: "acme", At: time.Now().UTC()},
		Index: 1234, Attempt: 1, ProviderID: "SM0123456789abcdef0123456789abcdef", Segments: 1, LatencyMs: 20}
	b.Run("quick", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := EncodeEvent(e); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		for b.Loop() {
			if _, err := json.Marshal(e); err != nil {
				b.Fatal(err)
			}
		}
	})
}
