package memory_test

import (
	"context"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/eventstoretest"
	"github.com/smsbatch/smsbatch/eventstore/memory"
)

func TestContract(t *testing.T) {
	eventstoretest.Run(t, func(*testing.T) eventstore.Store { return memory.New() })
}

func TestClockStampsEvents(t *testing.T) {
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.FixedZone("CET", 3600))
	s := memory.NewWithClock(func() time.Time { return at })
	defer s.Close()
	ctx := context.Background()
	if _, err := s.Append(ctx, "s", eventstore.NoStream(), []eventstore.EventData{{ID: "1", Type: "T"}}); err != nil {
		t.Fatal(err)
	}
	got, err := s.ReadStream(ctx, "s", 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !got[0].Time.Equal(at) || got[0].Time.Location() != time.UTC {
		t.Errorf("event time %s, want %s in UTC", got[0].Time, at)
	}
	if got[0].Position != (eventstore.Position{Commit: 1}) {
		t.Errorf("first event at %s, want 1/0", got[0].Position)
	}
}

func TestReusedEventIDIsRefused(t *testing.T) {
	s := memory.New()
	defer s.Close()
	eventstoretest.ReusedIDIsRefused(t, s)
}
