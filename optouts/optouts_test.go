package optouts

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/memory"
)

var t0 = time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC)

// record appends a change to tenant's stream as the commands do, at the
// stream's revision.
func record(t testing.TB, s eventstore.Store, tenant, phone string, out bool) {
	t.Helper()
	c := domain.OptOutChange{OptedOut: out, Tenant: tenant, Phone: phone, Source: domain.OptOutByKeyword, Keyword: "STOP", At: t0}
	data, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	stream := domain.OptOutStream(tenant)
	have, err := s.ReadStreamBackward(context.Background(), stream, eventstore.StreamEnd, 1)
	if err != nil {
		t.Fatal(err)
	}
	expected := eventstore.NoStream()
	if len(have) > 0 {
		expected = eventstore.Exact(have[0].Revision)
	}
	if _, err := s.Append(context.Background(), stream, expected, []eventstore.EventData{{ID: uuid.NewString(), Type: c.EventType(), Data: data}}); err != nil {
		t.Fatal(err)
	}
}

func newList(t testing.TB, s eventstore.Store) *List {
	t.Helper()
	l, err := New(Config{Store: s})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func suppressed(t testing.TB, l *List, tenant, phone string) bool {
	t.Helper()
	got, err := l.Suppressed(context.Background(), tenant, phone)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestAListIsReadFromItsStreamAndTenantsAreApart(t *testing.T) {
	s := memory.New()
	record(t, s, "acme", "+14155550100", true)
	record(t, s, "acme", "+14155550101", true)
	record(t, s, "acme", "+14155550101", false) // opted back in
	record(t, s, "globex", "+14155550102", true)
	l := newList(t, s)
	for _, c := range []struct {
		tenant, phone string
		want          bool
	}{
		{"acme", "+14155550100", true},
		{"acme", "+14155550101", false},
		{"acme", "+14155550102", false}, // globex's
		{"globex", "+14155550102", true},
		{"globex", "+14155550100", false},
		{"initech", "+14155550100", false},
		{"acme", "not a number", false},
	} {
		if got := suppressed(t, l, c.tenant, c.phone); got != c.want {
			t.Errorf("%s %s: suppressed %v, want %v", c.tenant, c.phone, got, c.want)
		}
	}
}

func TestChangesOnAnotherInstanceArriveThroughTheLog(t *testing.T) {
	s := memory.New()
	record(t, s, "acme", "+14155550100", true)
	l := newList(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	if !suppressed(t, l, "acme", "+14155550100") {
		t.Fatal("not suppressed after load")
	}
	// The follower replays what the load read (from the start of the log here):
	// applying it again must not undo the opt-in that follows.
	record(t, s, "acme", "+14155550100", false)
	record(t, s, "acme", "+14155550199", true)
	waitFor(t, func() bool {
		return !suppressed(t, l, "acme", "+14155550100") && suppressed(t, l, "acme", "+14155550199")
	})
	if err := l.Health(); err != nil {
		t.Fatal(err)
	}
}

func TestAGapIsFilledFromTheStream(t *testing.T) {
	s := memory.New()
	l := newList(t, s)
	if suppressed(t, l, "acme", "+14155550100") {
		t.Fatal("suppressed in an empty list")
	}
	record(t, s, "acme", "+14155550100", true)
	record(t, s, "acme", "+14155550101", true)
	events, _ := s.ReadStream(context.Background(), domain.OptOutStream("acme"), 1, 1)
	// The follower hands over revision 1 without revision 0 (as if it came
	// from before the list was read): the list reads revision 0 itself.
	if err := l.apply(context.Background(), events); err != nil {
		t.Fatal(err)
	}
	if !suppressed(t, l, "acme", "+14155550100") || !suppressed(t, l, "acme", "+14155550101") {
		t.Fatal("the gap was not filled")
	}
}

func TestLookupSeesWhatTheStreamHolds(t *testing.T) {
	s := memory.New()
	l := newList(t, s)
	listed, n, err := l.Lookup(context.Background(), "acme", "+14155550100")
	if err != nil || listed || n != 0 {
		t.Fatalf("empty list: listed %v, %d events, %v", listed, n, err)
	}
	record(t, s, "acme", "+14155550100", true) // no follower running
	listed, n, err = l.Lookup(context.Background(), "acme", "+14155550100")
	if err != nil || !listed || n != 1 {
		t.Fatalf("after an opt-out: listed %v, %d events, %v", listed, n, err)
	}
	e, listed, err := l.Get(context.Background(), "acme", "+14155550100")
	if err != nil || !listed {
		t.Fatalf("Get: %v %v", listed, err)
	}
	if e.PhoneNumber != "+14155550100" || e.Source != domain.OptOutByKeyword || !e.Since.Equal(t0) {
		t.Errorf("entry %+v", e)
	}
}

// Random changes, enough to compact many times, agree with a plain map, in
// Suppressed and in the pages.
func TestListAgreesWithAMapThroughCompactions(t *testing.T) {
	s := memory.New()
	l := newList(t, s)
	rng := rand.New(rand.NewPCG(1, 2))
	want := map[string]bool{}
	phone := func() string { return fmt.Sprintf("+1415555%04d", rng.IntN(6000)) }
	// Load while empty, so that every change goes through the delta.
	suppressed(t, l, "acme", "+14155550000")
	var events []eventstore.EventData
	for i := range 20000 {
		p, out := phone(), rng.IntN(3) > 0
		want[p] = out
		c := domain.OptOutChange{OptedOut: out, Tenant: "acme", Phone: p, Source: domain.OptOutByAPI, At: t0.Add(time.Duration(i) * time.Second)}
		data, _ := json.Marshal(c)
		events = append(events, eventstore.EventData{ID: uuid.NewString(), Type: c.EventType(), Data: data})
	}
	for start := 0; start < len(events); start += 500 {
		if _, err := s.Append(context.Background(), domain.OptOutStream("acme"), eventstore.After(uint64(start)), events[start:start+500]); err != nil {
			t.Fatal(err)
		}
	}
	stored, _ := s.ReadStream(context.Background(), domain.OptOutStream("acme"), 0, len(events))
	for start := 0; start < len(stored); start += 300 {
		if err := l.apply(context.Background(), stored[start:min(start+300, len(stored))]); err != nil {
			t.Fatal(err)
		}
	}
	var listed []string
	for p, out := range want {
		if got := suppressed(t, l, "acme", p); got != out {
			t.Fatalf("%s: suppressed %v, want %v", p, got, out)
		}
		if out {
			listed = append(listed, p)
		}
	}
	slices.SortFunc(listed, func(a, b string) int { return int(mustEncode(a)) - int(mustEncode(b)) })
	var paged []string
	cursor := ""
	for {
		p, err := l.Page(context.Background(), "acme", cursor, 700)
		if err != nil {
			t.Fatal(err)
		}
		if p.Total != len(listed) {
			t.Fatalf("total %d, want %d", p.Total, len(listed))
		}
		for _, e := range p.Entries {
			paged = append(paged, e.PhoneNumber)
		}
		if cursor = p.NextCursor; cursor == "" {
			break
		}
	}
	if !slices.Equal(paged, listed) {
		t.Fatalf("pages hold %d numbers, want the %d listed, in order", len(paged), len(listed))
	}
}

func TestPageRefusesAForeignCursor(t *testing.T) {
	l := newList(t, memory.New())
	if _, err := l.Page(context.Background(), "acme", "abc", 10); domain.ErrorCode(err) != domain.EINVALID {
		t.Fatalf("cursor abc: %v, want invalid", err)
	}
}

func TestEncode(t *testing.T) {
	for _, c := range []struct {
		in string
		ok bool
	}{{"+14155550100", true}, {"+999999999999999", true}, {"+1234567890123456", false}, {"14155550100", false},
		{"+", false}, {"+0123", false}, {"+1-415", false}, {"++1", false}, {"", false}} {
		n, ok := encode(c.in)
		if ok != c.ok || ok && decode(n) != c.in {
			t.Errorf("encode(%q) = %d, %v", c.in, n, ok)
		}
	}
}

func mustEncode(p string) uint64 {
	n, _ := encode(p)
	return n
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A list read before Run takes its start position (a send waiting from before
// a restart, or Preload) covers its stream only up to that read: a STOP
// committed after it and at or before the start position reaches the list all
// the same, when Run starts, not only when the tenant's next change comes.
func TestAChangeBetweenALoadAndRunsStartIsNotLost(t *testing.T) {
	s := memory.New()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var from eventstore.Position
	l, err := New(Config{Store: s, From: func(context.Context) (eventstore.Position, error) { return from, nil }})
	if err != nil {
		t.Fatal(err)
	}
	if suppressed(t, l, "acme", "+14155550100") {
		t.Fatal("suppressed in an empty list")
	}
	record(t, s, "acme", "+14155550100", true)
	last, err := s.ReadStreamBackward(ctx, domain.OptOutStream("acme"), eventstore.StreamEnd, 1)
	if err != nil || len(last) != 1 {
		t.Fatal(err)
	}
	from = last[0].Position // the read models have applied the STOP
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	deadline := time.Now().Add(2 * time.Second)
	for !suppressed(t, l, "acme", "+14155550100") {
		if time.Now().After(deadline) {
			t.Fatal("the STOP recorded before Run started never reached the list: the number is still sent to")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// An event of one tenant's list that this version cannot read holds that
// tenant's sends (its list answers an error) and nobody else's: the other
// tenants' changes go on arriving through the log.
func TestOneTenantsDamagedEventDoesNotBlindTheOthers(t *testing.T) {
	s := memory.New()
	l := newList(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	suppressed(t, l, "acme", "+14155550100")
	suppressed(t, l, "globex", "+14155550100")
	if _, err := s.Append(ctx, domain.OptOutStream("acme"), eventstore.NoStream(),
		[]eventstore.EventData{{ID: uuid.NewString(), Type: "NumberOptedOutV2", Data: []byte(`{}`)}}); err != nil {
		t.Fatal(err)
	}
	record(t, s, "globex", "+14155550100", true)
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := l.Suppressed(ctx, "globex", "+14155550100")
		if err != nil {
			t.Fatalf("globex's list: %v", err)
		}
		if out {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("globex's STOP never reached the list behind acme's damaged event")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := l.Suppressed(ctx, "acme", "+14155550100"); err == nil {
		t.Fatal("acme's list answers as if whole, with an event it cannot read")
	}
	if err := l.Health(); err != nil {
		t.Fatalf("the lists' follower reports %v: it stopped on one tenant's event", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// slowOptOutReads delays reads of opt-out streams once armed: a store under load.
type slowOptOutReads struct {
	eventstore.Store
	slow atomic.Bool
}

func (s *slowOptOutReads) ReadStream(ctx context.Context, stream string, from uint64, n int) ([]eventstore.Event, error) {
	if s.slow.Load() && strings.HasPrefix(stream, domain.OptOutStreamPrefix) {
		time.Sleep(2 * time.Second)
	}
	return s.Store.ReadStream(ctx, stream, from, n)
}

// Suppressed is asked between every send's rate slot and its provider call:
// it must not wait for the store. Run's start (catchUpHeld) reads a loaded
// tenant's stream holding the tenant's write lock, so every lookup of that
// tenant waits for the read.
func TestSuppressedDoesNotWaitForRunsCatchUpRead(t *testing.T) {
	s := &slowOptOutReads{Store: memory.New()}
	l := newList(t, s)
	if suppressed(t, l, "acme", "+14155550100") { // loaded, as a dispatch would
		t.Fatal("suppressed in an empty list")
	}
	s.slow.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = l.Run(ctx) }()
	time.Sleep(100 * time.Millisecond) // Run is reading acme's stream on
	start := time.Now()
	suppressed(t, l, "acme", "+14155550100")
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("a lookup of a loaded list took %s: it waited for a store read under the tenant's lock", d.Round(time.Millisecond))
	}
}
