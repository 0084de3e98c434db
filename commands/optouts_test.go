package commands

import (
	"context"
	"testing"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/internal/storetest"
	"github.com/smsbatch/smsbatch/optouts"
)

func optOutCommands(t *testing.T, store eventstore.Store) (*OptOuts, *optouts.List) {
	t.Helper()
	list, err := optouts.New(optouts.Config{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	o, err := NewOptOuts(store, list, nil)
	if err != nil {
		t.Fatal(err)
	}
	return o, list
}

func streamLen(t *testing.T, store eventstore.Store, tenant string) int {
	t.Helper()
	events, err := store.ReadStream(context.Background(), domain.OptOutStream(tenant), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	return len(events)
}

func TestOptOutChangesAreIdempotent(t *testing.T) {
	storetest.Each(t, func(t *testing.T, store eventstore.Store) {
		o, list := optOutCommands(t, store)
		ctx := context.Background()
		stop := ChangeOptOut{Tenant: "acme", Phone: "+14155550100", OptOut: true, Source: domain.OptOutByAPI, By: "acme/k"}
		for i, want := range []bool{true, false} {
			changed, err := o.Change(ctx, stop)
			if err != nil || changed != want {
				t.Fatalf("opt-out %d: changed %v, %v; want %v", i, changed, err, want)
			}
		}
		if n := streamLen(t, store, "acme"); n != 1 {
			t.Fatalf("%d events after opting out twice, want 1", n)
		}
		if s, _ := list.Suppressed(ctx, "acme", "+14155550100"); !s {
			t.Fatal("not suppressed")
		}
		if s, _ := list.Suppressed(ctx, "globex", "+14155550100"); s {
			t.Fatal("suppressed for another tenant")
		}
		start := stop
		start.OptOut = false
		if changed, err := o.Change(ctx, start); !changed || err != nil {
			t.Fatalf("opt-in: %v %v", changed, err)
		}
		if s, _ := list.Suppressed(ctx, "acme", "+14155550100"); s {
			t.Fatal("still suppressed after opting in")
		}
	})
}

// A replayed inbound STOP (the same provider message) changes nothing, even
// after the number opted back in since.
func TestAReplayedInboundChangeChangesNothing(t *testing.T) {
	storetest.Each(t, func(t *testing.T, store eventstore.Store) {
		o, list := optOutCommands(t, store)
		ctx := context.Background()
		stop := ChangeOptOut{Tenant: "acme", Phone: "+14155550100", OptOut: true, Source: domain.OptOutByKeyword,
			Keyword: "STOP", EventID: domain.InboundChangeID("acme", "SMstop1")}
		start := ChangeOptOut{Tenant: "acme", Phone: "+14155550100", Source: domain.OptOutByKeyword,
			Keyword: "START", EventID: domain.InboundChangeID("acme", "SMstart1")}
		for _, c := range []ChangeOptOut{stop, start} {
			if changed, err := o.Change(ctx, c); !changed || err != nil {
				t.Fatalf("%s: %v %v", c.Keyword, changed, err)
			}
		}
		if changed, err := o.Change(ctx, stop); changed || err != nil {
			t.Fatalf("replayed STOP: changed %v, %v", changed, err)
		}
		if s, _ := list.Suppressed(ctx, "acme", "+14155550100"); s {
			t.Fatal("the replayed STOP opted the number out again")
		}
		if n := streamLen(t, store, "acme"); n != 2 {
			t.Fatalf("%d events, want 2", n)
		}
	})
}

// Two instances deciding at once: each list is behind the other's change, and
// the append at the expected revision sorts it out.
func TestConcurrentChangesOnTwoInstances(t *testing.T) {
	_, h := setup(t)
	store := h.store
	a, _ := optOutCommands(t, store)
	b, listB := optOutCommands(t, store)
	ctx := context.Background()
	listB.Suppressed(ctx, "acme", "+14155550100") // B has read the empty list
	if changed, err := a.Change(ctx, ChangeOptOut{Tenant: "acme", Phone: "+14155550100", OptOut: true, Source: domain.OptOutByAPI}); !changed || err != nil {
		t.Fatal(changed, err)
	}
	if changed, err := b.Change(ctx, ChangeOptOut{Tenant: "acme", Phone: "+14155550101", OptOut: true, Source: domain.OptOutByAPI}); !changed || err != nil {
		t.Fatal(changed, err)
	}
	if changed, err := b.Change(ctx, ChangeOptOut{Tenant: "acme", Phone: "+14155550100", OptOut: true, Source: domain.OptOutByAPI}); changed || err != nil {
		t.Fatalf("B opting out what A did: changed %v, %v", changed, err)
	}
	if n := streamLen(t, store, "acme"); n != 2 {
		t.Fatalf("%d events, want 2", n)
	}
}
