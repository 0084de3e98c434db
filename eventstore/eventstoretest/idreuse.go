package eventstoretest

import (
	"context"
	"errors"
	"testing"

	"github.com/smsbatch/smsbatch/eventstore"
)

// ReusedIDIsRefused checks, on a fresh store, the rule of adapters whose event IDs
// are unique across the whole store (memory, bolt, postgres): an ID stored once
// may come again only as an exact retry of its append. The same ID in another
// stream, or with other data, fails with ErrConcurrency and stores nothing.
// KurrentDB only deduplicates IDs within a stream, so it is not part of Run.
func ReusedIDIsRefused(t *testing.T, s eventstore.Store) {
	t.Helper()
	ctx := context.Background()
	ev := eventstore.EventData{ID: "id-1", Type: "T", Data: []byte(`{}`)}
	if _, err := s.Append(ctx, "a", eventstore.NoStream(), []eventstore.EventData{ev}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, "b", eventstore.NoStream(), []eventstore.EventData{ev}); !errors.Is(err, eventstore.ErrConcurrency) {
		t.Errorf("same ID in another stream: %v, want ErrConcurrency", err)
	}
	changed := ev
	changed.Data = []byte(`{"x":1}`)
	if _, err := s.Append(ctx, "a", eventstore.Any(), []eventstore.EventData{changed}); !errors.Is(err, eventstore.ErrConcurrency) {
		t.Errorf("same ID with other data: %v, want ErrConcurrency", err)
	}
	if got, _ := s.ReadAll(ctx, eventstore.Start, 10); len(got) != 1 {
		t.Errorf("store holds %d events, want 1", len(got))
	}
}
