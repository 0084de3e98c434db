package eventstoretest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/eventstore"
)

// timeout bounds every wait in the suite, so that a broken adapter fails a test
// instead of hanging it.
const timeout = 10 * time.Second

// fixture is one subtest's store and the stream names it owns. Streams carry a
// random prefix, and reads of the global order keep only events of those streams,
// so the suite also holds against a shared server whose $all has other events.
type fixture struct {
	t      *testing.T
	s      eventstore.Store
	ctx    context.Context
	prefix string
}

func newFixture(t *testing.T, s eventstore.Store) *fixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	t.Cleanup(cancel)
	return &fixture{t: t, s: s, ctx: ctx, prefix: "contract" + randomHex(6) + "-"}
}

// stream returns the name of one of the fixture's streams.
func (f *fixture) stream(name string) string { return f.prefix + name }

func (f *fixture) ours(e eventstore.Event) bool { return strings.HasPrefix(e.Stream, f.prefix) }

// mark appends one event and returns its position: every event the test appends
// afterwards comes after it in the global order.
func (f *fixture) mark() eventstore.Position {
	f.t.Helper()
	return f.append(f.stream("marker-"+randomHex(4)), eventstore.NoStream(), events("Marker", 1)...).Position
}

func (f *fixture) append(stream string, expected eventstore.ExpectedRevision, evs ...eventstore.EventData) eventstore.AppendResult {
	f.t.Helper()
	res, err := f.s.Append(f.ctx, stream, expected, evs)
	if err != nil {
		f.t.Fatalf("append %d events to %s at %s: %v", len(evs), stream, expected, err)
	}
	return res
}

// conflict asserts that the append fails with ErrConcurrency.
func (f *fixture) conflict(stream string, expected eventstore.ExpectedRevision, evs ...eventstore.EventData) {
	f.t.Helper()
	_, err := f.s.Append(f.ctx, stream, expected, evs)
	if !errors.Is(err, eventstore.ErrConcurrency) {
		f.t.Fatalf("append to %s at %s: got error %v, want ErrConcurrency", stream, expected, err)
	}
}

// readStream reads the whole stream in small pages.
func (f *fixture) readStream(stream string) []eventstore.Event {
	f.t.Helper()
	var all []eventstore.Event
	for {
		page, err := f.s.ReadStream(f.ctx, stream, uint64(len(all)), 100)
		if err != nil {
			f.t.Fatalf("read stream %s from %d: %v", stream, len(all), err)
		}
		if len(page) == 0 {
			return all
		}
		all = append(all, page...)
	}
}

// readAll reads the global order after the position to its end and keeps the
// fixture's events, checking on the way that positions strictly increase.
func (f *fixture) readAll(after eventstore.Position, pageSize int) []eventstore.Event {
	f.t.Helper()
	var ours []eventstore.Event
	pos := after
	for {
		page, err := f.s.ReadAll(f.ctx, pos, pageSize)
		if err != nil {
			f.t.Fatalf("read all after %s: %v", pos, err)
		}
		if len(page) > pageSize {
			f.t.Fatalf("read all after %s with max %d returned %d events", pos, pageSize, len(page))
		}
		if len(page) == 0 {
			return ours
		}
		for _, e := range page {
			if !pos.Less(e.Position) {
				f.t.Fatalf("read all: event %s at %s does not come after %s", e.ID, e.Position, pos)
			}
			pos = e.Position
			if f.ours(e) {
				ours = append(ours, e)
			}
		}
	}
}

// events returns n new events of type typ with distinct IDs and JSON data; every
// other one has metadata, to check that both round-trip.
func events(typ string, n int) []eventstore.EventData {
	out := make([]eventstore.EventData, n)
	for i := range out {
		out[i] = eventstore.EventData{
			ID:   newID(),
			Type: typ,
			Data: fmt.Appendf(nil, `{"n":%d}`, i),
		}
		if i%2 == 0 {
			out[i].Metadata = fmt.Appendf(nil, `{"tenant":"t%d"}`, i)
		}
	}
	return out
}

// checkStored asserts that got holds want, stored in stream from revision first on.
func checkStored(t *testing.T, got []eventstore.Event, stream string, first uint64, want []eventstore.EventData) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("stream %s: got %d events, want %d", stream, len(got), len(want))
	}
	for i, e := range got {
		w := want[i]
		if e.ID != w.ID || e.Type != w.Type || e.Stream != stream || e.Revision != first+uint64(i) ||
			!bytes.Equal(e.Data, w.Data) || !bytes.Equal(e.Metadata, w.Metadata) {
			t.Fatalf("stream %s, event %d:\n got  id=%s type=%s stream=%s rev=%d data=%s meta=%s\n want id=%s type=%s stream=%s rev=%d data=%s meta=%s",
				stream, i, e.ID, e.Type, e.Stream, e.Revision, e.Data, e.Metadata,
				w.ID, w.Type, stream, first+uint64(i), w.Data, w.Metadata)
		}
	}
}

// checkSame asserts that two reads returned the same events, field by field.
func checkSame(t *testing.T, got, want []eventstore.Event) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d events, want %d", len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.ID != w.ID || g.Stream != w.Stream || g.Type != w.Type || g.Revision != w.Revision ||
			g.Position != w.Position || !g.Time.Equal(w.Time) ||
			!bytes.Equal(g.Data, w.Data) || !bytes.Equal(g.Metadata, w.Metadata) {
			t.Fatalf("event %d differs:\n got  %+v\n want %+v", i, g, w)
		}
	}
}

func ids(evs []eventstore.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.ID
	}
	return out
}

func dataIDs(evs []eventstore.EventData) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.ID
	}
	return out
}

// collector gathers the fixture's events handed to a subscription.
type collector struct {
	f *fixture

	mu     sync.Mutex
	events []eventstore.Event
	more   chan struct{} // signalled (without blocking) when events arrive
}

func newCollector(f *fixture) *collector { return &collector{f: f, more: make(chan struct{}, 1)} }

func (c *collector) handle(_ context.Context, page []eventstore.Event) error {
	c.mu.Lock()
	for _, e := range page {
		if c.f.ours(e) {
			c.events = append(c.events, e)
		}
	}
	c.mu.Unlock()
	select {
	case c.more <- struct{}{}:
	default:
	}
	return nil
}

func (c *collector) got() []eventstore.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]eventstore.Event(nil), c.events...)
}

// waitFor waits until the collector holds at least n events.
func (c *collector) waitFor(n int) []eventstore.Event {
	c.f.t.Helper()
	deadline := time.After(timeout)
	for {
		if got := c.got(); len(got) >= n {
			return got
		}
		select {
		case <-c.more:
		case <-deadline:
			c.f.t.Fatalf("subscription delivered %d of the test's events within %s, want %d", len(c.got()), timeout, n)
		}
	}
}

// waitErr waits for an error from a goroutine the test started.
func waitErr(t *testing.T, what string, errs <-chan error) error {
	t.Helper()
	select {
	case err := <-errs:
		return err
	case <-time.After(timeout):
		t.Fatalf("%s did not return within %s", what, timeout)
		return nil
	}
}

// newID returns a random UUID (version 4): stores such as KurrentDB require event
// IDs to be UUIDs.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// decodeData decodes an event's JSON data into v or fails the test.
func decodeData(t *testing.T, e eventstore.Event, v any) {
	t.Helper()
	if err := json.Unmarshal(e.Data, v); err != nil {
		t.Fatalf("event %s: data %s: %v", e.ID, e.Data, err)
	}
}
