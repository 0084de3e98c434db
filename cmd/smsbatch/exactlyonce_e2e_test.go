package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/internal/pgtest"
	"github.com/smsbatch/smsbatch/processors/sms/simulator"
)

// The provider of these tests ignores idempotency keys, as Twilio's Messages API
// does, and writes down every call with its times: a key accepted twice is an SMS
// a customer got twice, and overlapping calls of a batch are calls in flight at
// once.

// startRecordingSimulator runs the standalone simulator as a provider that
// deduplicates nothing, answering 429 above rateLimit requests a second.
func startRecordingSimulator(t testing.TB, dir, addr string, latency time.Duration, rateLimit float64) {
	t.Helper()
	startProcess(t, "simulator", "simulator", "--addr", addr, "--data-dir", dir,
		"--sms-account-sid", "ACtest", "--sim-latency", latency.String(), "--sim-record-every-call",
		"--sim-rate-limit", strconv.FormatFloat(rateLimit, 'f', -1, 64), "--log-level", "warn")
	waitListening(t, addr)
}

// providerCalls reads the calls the simulator recorded, by batch.
func providerCalls(t testing.TB, dir string) map[string][]simulator.Call {
	t.Helper()
	calls, err := simulator.ReadCalls(filepath.Join(dir, "sim-calls.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	byBatch := map[string][]simulator.Call{}
	for _, c := range calls {
		batch, _, ok := strings.Cut(c.Key, ":")
		if ok {
			byBatch[batch] = append(byBatch[batch], c)
		}
	}
	return byBatch
}

// callReport is what the provider saw of one batch.
type callReport struct {
	calls      int
	accepted   map[string]int // by key
	duplicates []string       // keys accepted more than once
	overlaps   []string       // keys with two calls at once
	peak       int            // most calls in flight at once
	busiest    int            // most calls starting within one second (less jitter)
}

func analyse(calls []simulator.Call, window time.Duration) callReport {
	r := callReport{calls: len(calls), accepted: map[string]int{}}
	byKey := map[string][]simulator.Call{}
	for _, c := range calls {
		byKey[c.Key] = append(byKey[c.Key], c)
		if c.Outcome == "accepted" {
			r.accepted[c.Key]++
		}
	}
	for key, n := range r.accepted {
		if n > 1 {
			r.duplicates = append(r.duplicates, key)
		}
	}
	for key, cs := range byKey {
		sort.Slice(cs, func(i, j int) bool { return cs[i].Start.Before(cs[j].Start) })
		for i := 1; i < len(cs); i++ {
			if cs[i].Start.Before(cs[i-1].End) {
				r.overlaps = append(r.overlaps, key)
				break
			}
		}
	}
	type edge struct {
		at    time.Time
		delta int
	}
	var edges []edge
	var starts []time.Time
	for _, c := range calls {
		edges = append(edges, edge{c.Start, 1}, edge{c.End, -1})
		starts = append(starts, c.Start)
	}
	// An answer and the next call at the same instant are not both in flight.
	sort.Slice(edges, func(i, j int) bool {
		if edges[i].at.Equal(edges[j].at) {
			return edges[i].delta < edges[j].delta
		}
		return edges[i].at.Before(edges[j].at)
	})
	n := 0
	for _, e := range edges {
		n += e.delta
		r.peak = max(r.peak, n)
	}
	slices.SortFunc(starts, func(a, b time.Time) int { return a.Compare(b) })
	r.busiest = maxInWindow(starts, window)
	return r
}

// chaosSeed is the seed of the randomized schedule; SMSBATCH_CHAOS_SEED replays one.
func chaosSeed(t *testing.T) uint64 {
	if s := os.Getenv("SMSBATCH_CHAOS_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return seed
	}
	return uint64(time.Now().UnixNano())
}

// Three instances on PostgreSQL and NATS send to a provider that deduplicates
// nothing, 300 ms a call, answering 429 in bursts when the batches together
// exceed its limit. While they send, instances join and restart with SIGTERM, and
// batches are paused on one instance and resumed at once on another, in an order
// and at moments drawn from a seed. The provider must see no message twice, at most
// five calls of a batch at once and no second with more calls than the batch's
// rate; every recipient ends with exactly one outcome. Then an instance is
// SIGKILLed: only the messages in flight at that moment may go out twice.
func TestExactlyOnceAtTheProviderWhileInstancesComeAndGo(t *testing.T) {
	skipShort(t)
	seed := chaosSeed(t)
	rng := rand.New(rand.NewPCG(seed, seed>>1))
	t.Logf("chaos seed %d (SMSBATCH_CHAOS_SEED replays it)", seed)

	url := pgtest.Database(t)
	nurl := natsURL(t)
	ns := natsNamespace(t, nurl)
	t.Setenv("SMSBATCH_SMS_AUTH_TOKEN", "sim-secret-token-0123456789")
	simDir := t.TempDir()
	simAddr := freeAddr(t)
	startRecordingSimulator(t, simDir, simAddr, 300*time.Millisecond, 24)

	// The test polls statuses often: no per-key request limit.
	shared := append(instanceArgs(url, nurl, ns, simAddr), "--stall-timeout", "4s", "--sim-latency", "300ms", "--http-rate-limit", "0")
	type instance struct {
		proc   *process
		client *client
		addr   string
	}
	start := func() *instance {
		addr := freeAddr(t)
		p, c := startBinary(t, t.TempDir(), addr, shared...)
		return &instance{p, c, addr}
	}
	var live []*instance
	for range 3 {
		live = append(live, start())
	}
	pick := func() *instance { return live[rng.IntN(len(live))] }

	type batch struct {
		id   string
		n    int
		rate float64
	}
	specs := []struct {
		n        int
		priority string
		rate     float64
	}{{96, "high", 8}, {80, "high", 8}, {60, "normal", 5}, {50, "normal", 5}, {24, "low", 2}, {20, "low", 2}}
	var batches []batch
	for _, spec := range specs {
		st := pick().client.create(batchBody(recipients(spec.n), spec.priority))
		batches = append(batches, batch{st.ID, spec.n, spec.rate})
	}

	// The schedule: each step at a random moment, in a random order.
	type step struct {
		name string
		do   func()
	}
	restart := func() {
		i := rng.IntN(len(live))
		old := live[i]
		t.Logf("SIGTERM %s", old.addr)
		old.proc.cmd.Process.Signal(syscall.SIGTERM)
		if err := old.proc.wait(t, 40*time.Second); err != nil {
			t.Fatalf("instance %s after SIGTERM: %v", old.addr, err)
		}
		live[i] = start()
	}
	pauseResume := func() {
		b := batches[rng.IntN(len(batches))]
		from, to := pick(), pick()
		if code, _ := from.client.do("POST", "/api/v2/batch/"+b.id+"/pause", nil, nil); code != 200 {
			return // already finished
		}
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		code, _, body := to.client.raw("POST", "/api/v2/batch/"+b.id+"/resume", nil)
		if code == 409 && strings.Contains(string(body), "is completed") {
			// The outcomes of the sends in flight when it was paused were its
			// last: a paused batch with nothing left to send completes.
			t.Logf("paused %s on %s; it completed before the resume", b.id, from.addr)
			return
		}
		if code != 200 {
			t.Fatalf("resume of %s on %s: %d %s", b.id, to.addr, code, body)
		}
		t.Logf("paused %s on %s, resumed on %s", b.id, from.addr, to.addr)
	}
	steps := []step{
		{"join", func() { live = append(live, start()); t.Logf("joined %s", live[len(live)-1].addr) }},
		{"restart", restart},
		{"restart", restart},
		{"pause/resume", pauseResume},
		{"pause/resume", pauseResume},
		{"pause/resume", pauseResume},
	}
	rng.Shuffle(len(steps), func(i, j int) { steps[i], steps[j] = steps[j], steps[i] })
	for _, s := range steps {
		time.Sleep(time.Duration(500+rng.IntN(2000)) * time.Millisecond)
		s.do()
	}
	for _, b := range batches {
		live[0].client.waitStatus(b.id, 120*time.Second, "completed")
	}

	calls := providerCalls(t, simDir)
	events := pgEvents(t, url)
	limited := 0
	for _, b := range batches {
		r := analyse(calls[b.id], time.Second-60*time.Millisecond)
		for _, c := range calls[b.id] {
			if c.Outcome == "rate_limited" {
				limited++
			}
		}
		t.Logf("batch %s at %v/s: %d calls, %d accepted, peak in flight %d, busiest second %d",
			b.id, b.rate, r.calls, len(r.accepted), r.peak, r.busiest)
		switch {
		case len(r.duplicates) > 0:
			t.Errorf("batch %s: %d messages accepted twice by the provider: %v", b.id, len(r.duplicates), r.duplicates)
		case len(r.overlaps) > 0:
			t.Errorf("batch %s: two calls at once for %v", b.id, r.overlaps)
		case r.peak > 5:
			t.Errorf("batch %s: %d calls in flight at once, want at most 5", b.id, r.peak)
		case r.busiest > int(b.rate):
			t.Errorf("batch %s: %d calls within one second, rate %v", b.id, r.busiest, b.rate)
		case len(r.accepted)+failedFor(events, b.id) != b.n:
			t.Errorf("batch %s: %d accepted, want every recipient sent or failed", b.id, len(r.accepted))
		}
	}
	t.Logf("the provider answered 429 %d times", limited)
	for _, b := range batches {
		assertExactlyOneOutcome(t, events, b.id, b.n)
	}
	if t.Failed() {
		return
	}

	// SIGKILL: what was in flight at that moment may go out twice, nothing else.
	victim := live[rng.IntN(len(live))]
	var survivor *instance
	for _, in := range live {
		if in != victim {
			survivor = in
			break
		}
	}
	var killed []batch
	for _, spec := range specs[:3] {
		st := survivor.client.create(batchBody(recipients(spec.n/2), spec.priority))
		killed = append(killed, batch{st.ID, spec.n / 2, spec.rate})
	}
	time.Sleep(time.Duration(2000+rng.IntN(2000)) * time.Millisecond)
	killedAt := time.Now().UTC()
	victim.proc.cmd.Process.Signal(syscall.SIGKILL)
	victim.proc.wait(t, 10*time.Second)
	// Requests the process wrote before it died may still be read by the
	// provider a moment after it is reaped, on a loaded machine.
	lastWords := time.Now().UTC().Add(time.Second)
	t.Logf("SIGKILL %s", victim.addr)
	for _, b := range killed {
		survivor.client.waitStatus(b.id, 120*time.Second, "completed")
	}
	calls = providerCalls(t, simDir)
	events = pgEvents(t, url)
	recorded := recordedProviderIDs(t, events)
	for _, b := range killed {
		// In flight at the kill: calls the provider was answering, and requests
		// already on their way, which the provider reads a moment later.
		inFlight := map[string]bool{}
		// Answered but not recorded: the provider accepted the call shortly
		// before the kill, and the victim died holding the answer, so the
		// message was in doubt and rightly sent again after its deadline. No
		// provider takes a key, so nothing can close this window but a
		// faster record; answerRecordedWithin bounds how long it may stay open.
		inDoubt := map[string]bool{}
		for _, c := range calls[b.id] {
			if !c.Start.After(lastWords) && !c.End.Before(killedAt) {
				inFlight[c.Key] = true
			}
			if c.Outcome == "accepted" && !recorded[c.ProviderID] && c.End.Before(killedAt) && killedAt.Sub(c.End) <= answerRecordedWithin {
				inDoubt[c.Key] = true
			}
		}
		r := analyse(calls[b.id], time.Second-60*time.Millisecond)
		t.Logf("batch %s: %d calls in flight at the kill, %d answers not recorded, %d messages accepted twice", b.id, len(inFlight), len(inDoubt), len(r.duplicates))
		for _, key := range r.duplicates {
			if !inFlight[key] && !inDoubt[key] {
				var times []string
				for _, c := range calls[b.id] {
					if c.Key == key {
						times = append(times, fmt.Sprintf("%s..%s %s %s recorded=%v", c.Start.Sub(killedAt), c.End.Sub(killedAt), c.Outcome, c.ProviderID, recorded[c.ProviderID]))
					}
				}
				t.Errorf("batch %s: %s accepted twice although it was neither in flight nor in doubt at the kill (calls relative to the kill: %v)", b.id, key, times)
			}
		}
		if r.peak > 5+len(inFlight) {
			t.Errorf("batch %s: %d calls in flight at once", b.id, r.peak)
		}
	}
	for _, b := range killed {
		assertExactlyOneOutcome(t, events, b.id, b.n)
	}
}

// answerRecordedWithin is how long after the provider's answer an instance
// may still be recording it on a loaded machine: an answer gathers for a few
// milliseconds, then waits for its append's commit.
const answerRecordedWithin = time.Second

// recordedProviderIDs is the set of provider message ids the store recorded
// as sent.
func recordedProviderIDs(t testing.TB, events []eventstore.Event) map[string]bool {
	t.Helper()
	ids := map[string]bool{}
	for _, se := range events {
		if se.Type != domain.TypeMessageSent {
			continue
		}
		e, err := domain.DecodeEvent(se.Type, se.Data)
		if err != nil {
			t.Fatal(err)
		}
		if sent, ok := e.(domain.MessageSent); ok && sent.ProviderID != "" {
			ids[sent.ProviderID] = true
		}
	}
	return ids
}

// failedFor counts the recipients of a batch that failed for good.
func failedFor(events []eventstore.Event, batchID string) int {
	n := 0
	for _, e := range events {
		if e.Stream == "batch-"+batchID && e.Type == "MessageFailed" {
			n++
		}
	}
	return n
}

// The tenant rate cap holds across two instances: two high-priority batches of
// one tenant (8/s each) created on two instances send 6/s together, and their
// status says they are capped.
func TestTenantRateCapAcrossInstances(t *testing.T) {
	skipShort(t)
	url := pgtest.Database(t)
	nurl := natsURL(t)
	ns := natsNamespace(t, nurl)
	t.Setenv("SMSBATCH_SMS_AUTH_TOKEN", "sim-secret-token-0123456789")
	simDir, simAddr := t.TempDir(), freeAddr(t)
	startRecordingSimulator(t, simDir, simAddr, 30*time.Millisecond, 0)
	shared := append(instanceArgs(url, nurl, ns, simAddr), "--tenant-max-rate", "6", "--http-rate-limit", "0")
	_, a := startBinary(t, t.TempDir(), freeAddr(t), shared...)
	_, b := startBinary(t, t.TempDir(), freeAddr(t), shared...)
	one := a.create(batchBody(recipients(30), "high"))
	two := b.create(batchBody(recipients(30), "high"))
	capped := false
	deadline := time.Now().Add(60 * time.Second)
	for _, id := range []string{one.ID, two.ID} {
		for {
			var st struct {
				Status  string
				RateCap *struct{ Rate float64 } `json:"rateCap"`
			}
			a.do("GET", "/api/batch/"+id, nil, &st)
			if st.RateCap != nil && st.RateCap.Rate == 3 {
				capped = true
			}
			if st.Status == "completed" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("batch %s is %s after 60 s", id, st.Status)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if !capped {
		t.Fatal("no status showed the batches held to 3/s by the tenant's cap")
	}
	calls := providerCalls(t, simDir)
	var starts []time.Time
	for _, id := range []string{one.ID, two.ID} {
		for _, c := range calls[id] {
			starts = append(starts, c.Start)
		}
	}
	slices.SortFunc(starts, func(x, y time.Time) int { return x.Compare(y) })
	if len(starts) != 60 {
		t.Fatalf("%d calls, want 60", len(starts))
	}
	// Each batch's sends are paced at 3/s; one that starts late on a loaded
	// machine can land within a second of its successor, which keeps to the
	// schedule: one more than the cap in a second, not a burst.
	if most := maxInWindow(starts, time.Second-60*time.Millisecond); most > 6+1 {
		t.Fatalf("%d sends of the tenant within one second, cap 6", most)
	}
	// And over the whole campaign the cap held: 60 sends at 6/s take ten
	// seconds (without it, two batches at 8/s each would take four).
	if span := starts[len(starts)-1].Sub(starts[0]); span < 9*time.Second {
		t.Fatalf("60 sends took %s, want at least 9 s at 6/s", span)
	}
}
