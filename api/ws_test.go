package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	esmemory "github.com/smsbatch/smsbatch/eventstore/memory"
	"github.com/smsbatch/smsbatch/live"
	"github.com/smsbatch/smsbatch/projections"
	"github.com/smsbatch/smsbatch/projections/memory"
	"github.com/smsbatch/smsbatch/projections/projectionstest"
)

const (
	liveAcmeKey   = "acme-key-0123456789abcdef"
	liveGlobexKey = "globex-key-0123456789abcdef"
	liveWait      = 5 * time.Second
)

var liveT0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// liveEnv is the API with a running hub over an in-memory event store, read
// models and projections runner.
type liveEnv struct {
	es     *esmemory.Store
	rm     *memory.Store
	runner *projections.Runner
	hub    *live.Hub
	srv    *httptest.Server
	events *projectionstest.Events
	mu     sync.Mutex // guards events
}

func newLive(t *testing.T, tweak func(*liveTweaks)) *liveEnv {
	t.Helper()
	es := esmemory.New()
	t.Cleanup(func() { es.Close() }) // after the env's own cleanup
	return newLiveOn(t, es, tweak)
}

// newLiveOn is newLive over a given event store: several "instances" may share one.
// liveTweaks are the settings a test may change: the hub's and the API's.
type liveTweaks struct {
	Hub *live.Config
	API *Config
}

func newLiveOn(t *testing.T, es *esmemory.Store, tweak func(*liveTweaks)) *liveEnv {
	t.Helper()
	rm := memory.New()
	runner, err := projections.NewRunner(projections.RunnerConfig{Events: es, Store: rm})
	if err != nil {
		t.Fatal(err)
	}
	hcfg := live.Config{Events: es, ReadModels: rm, Projections: runner}
	acfg := Config{ReadModels: rm, Projections: runner, RateLimit: RateLimit{Requests: -1}}
	if tweak != nil {
		tweak(&liveTweaks{Hub: &hcfg, API: &acfg})
	}
	hub, err := live.NewHub(hcfg)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := commands.NewRepository(es, 100)
	if err != nil {
		t.Fatal(err)
	}
	cmds, err := commands.New(es, repo, nil)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := ParseKeys("acme:" + liveAcmeKey + ",globex:" + liveGlobexKey)
	if err != nil {
		t.Fatal(err)
	}
	acfg.Commands, acfg.Keys, acfg.Live = cmds, keys, hub
	handler, err := NewHandler(acfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = runner.Run(ctx) }()
	go func() {
		defer wg.Done()
		if err := hub.Run(ctx); err != nil {
			t.Errorf("hub: %v", err)
		}
	}()
	srv := httptest.NewUnstartedServer(handler)
	srv.Listener = smallSendBuffers{srv.Listener}
	srv.Start()
	env := &liveEnv{es: es, rm: rm, runner: runner, hub: hub, srv: srv, events: projectionstest.NewEvents()}
	t.Cleanup(func() {
		env.srv.Close()
		cancel()
		wg.Wait()
	})
	liveEventually(t, "hub running", hub.Running)
	return env
}

// smallSendBuffers keeps the kernel from absorbing megabytes for a client that
// does not read, so that the hub's own queue is what fills.
type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if tcp, ok := conn.(*net.TCPConn); ok {
		_ = tcp.SetWriteBuffer(32 << 10)
	}
	return conn, err
}

func liveEventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(liveWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// batch returns a writer of a new batch's events.
func (env *liveEnv) batch(tenant string) *projectionstest.Batch {
	env.mu.Lock()
	defer env.mu.Unlock()
	return env.events.Batch(tenant, uuid.NewString(), liveT0)
}

// add appends the events build returns (under the builder's lock); settle
// waits until the read models include them.
func (env *liveEnv) add(t *testing.T, build func() []eventstore.Event) eventstore.Position {
	t.Helper()
	pos, err := env.tryAdd(build)
	if err != nil {
		t.Fatal(err)
	}
	return pos
}

// tryAdd is add for goroutines other than the test's.
func (env *liveEnv) tryAdd(build func() []eventstore.Event) (eventstore.Position, error) {
	env.mu.Lock()
	events := build()
	env.mu.Unlock()
	return projectionstest.AppendTo(context.Background(), env.es, events)
}

func (env *liveEnv) settle(t *testing.T, pos eventstore.Position) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), liveWait)
	defer cancel()
	if err := env.runner.WaitFor(ctx, pos); err != nil {
		t.Fatal(err)
	}
}

func (env *liveEnv) clients() int {
	return env.hub.Clients()
}

func (env *liveEnv) wsURL(path string) string {
	return "ws" + strings.TrimPrefix(env.srv.URL, "http") + path
}

func liveBearer(key string) http.Header {
	return http.Header{"Authorization": {"Bearer " + key}}
}

// getJSON answers GET path as the key's tenant, decoded as plain JSON.
func (env *liveEnv) getJSON(t *testing.T, path, key string) any {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, env.srv.URL+path, nil)
	req.Header = liveBearer(key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", path, resp.StatusCode)
	}
	var v any
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

type liveMsg struct {
	Type     string                  `json:"type"`
	Position string                  `json:"position"`
	Batch    json.RawMessage         `json:"batch"`
	BatchID  string                  `json:"batchId"`
	Error    *projections.ErrorEntry `json:"error"`
	status   projections.BatchStatus
	at       time.Time
}

func (m liveMsg) pos(t *testing.T) eventstore.Position {
	t.Helper()
	p, err := live.ParsePosition(m.Position)
	if err != nil {
		t.Fatalf("liveMsg position %q: %v", m.Position, err)
	}
	return p
}

func (m liveMsg) batchJSON(t *testing.T) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(m.Batch, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// wsClient reads its connection in the background when reading.
type wsClient struct {
	conn     *websocket.Conn
	messages chan liveMsg
	closed   chan error // the error that ended reading
}

func liveDial(t *testing.T, url string, header http.Header) *wsClient {
	t.Helper()
	conn, resp, err := websocket.DefaultDialer.Dial(url, header)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (HTTP %d)", url, err, status)
	}
	t.Cleanup(func() { conn.Close() })
	return &wsClient{conn: conn}
}

// dialStatus dials expecting the handshake to be refused, and returns the
// HTTP status and error code of the answer.
func liveDialStatus(t *testing.T, url string, header http.Header) (int, string) {
	t.Helper()
	conn, resp, err := websocket.DefaultDialer.Dial(url, header)
	if err == nil {
		conn.Close()
		t.Fatalf("dial %s: connected, want refused", url)
	}
	if resp == nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	defer resp.Body.Close()
	var body errorBody
	data, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(data, &body); err != nil {
		t.Fatalf("dial %s: HTTP %d, body %q is not a JSON error", url, resp.StatusCode, data)
	}
	return resp.StatusCode, body.Error.Code
}

func (c *wsClient) read() *wsClient {
	c.messages = make(chan liveMsg, 10000)
	c.closed = make(chan error, 1)
	go func() {
		for {
			_, data, err := c.conn.ReadMessage()
			if err != nil {
				c.closed <- err
				close(c.messages)
				return
			}
			var m liveMsg
			if err := json.Unmarshal(data, &m); err != nil {
				c.closed <- err
				close(c.messages)
				return
			}
			m.at = time.Now()
			if m.Type == live.MessageBatchStatus {
				_ = json.Unmarshal(m.Batch, &m.status)
			}
			c.messages <- m
		}
	}()
	return c
}

func (c *wsClient) next(t *testing.T) liveMsg {
	t.Helper()
	select {
	case m, ok := <-c.messages:
		if !ok {
			t.Fatalf("connection ended: %v", <-c.closed)
		}
		return m
	case <-time.After(liveWait):
		t.Fatal("no liveMsg")
	}
	panic("unreachable")
}

// until reads messages until one satisfies done, returning all of them.
func (c *wsClient) until(t *testing.T, done func(liveMsg) bool) []liveMsg {
	t.Helper()
	var got []liveMsg
	for {
		m := c.next(t)
		got = append(got, m)
		if done(m) {
			return got
		}
	}
}

// quiet asserts no liveMsg arrives for d.
func (c *wsClient) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case m, ok := <-c.messages:
		if ok {
			t.Fatalf("unexpected liveMsg %s at %s: %s", m.Type, m.Position, m.Batch)
		}
	case <-time.After(d):
	}
}

func liveSameJSON(t *testing.T, what string, got, want any) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		t.Fatalf("%s:\n got  %s\n want %s", what, g, w)
	}
}

// checkOrder asserts that positions never go back and a batch's progress never
// shrinks.
func liveCheckOrder(t *testing.T, msgs []liveMsg) {
	t.Helper()
	var last eventstore.Position
	done := map[string]int{}
	for i, m := range msgs {
		p := m.pos(t)
		if p.Less(last) {
			t.Fatalf("liveMsg %d at %s after %s", i, p, last)
		}
		last = p
		if m.Type == live.MessageBatchStatus {
			n := m.status.Progress.Completed + m.status.Progress.Failed
			if n < done[m.status.ID] {
				t.Fatalf("liveMsg %d: batch %s progress went back from %d to %d", i, m.status.ID, done[m.status.ID], n)
			}
			done[m.status.ID] = n
		}
	}
}

func TestLiveBatchSendsStatusThenChanges(t *testing.T) {
	env := newLive(t, nil)
	b := env.batch("acme")
	env.settle(t, env.add(t, func() []eventstore.Event {
		return []eventstore.Event{b.Created(3), b.Started(), b.Dispatched(0, 1, 2)}
	}))
	path := "/api/batch/" + b.ID

	c := liveDial(t, env.wsURL(path+"/ws"), liveBearer(liveAcmeKey)).read()
	first := c.next(t)
	if first.Type != live.MessageBatchStatus {
		t.Fatalf("first liveMsg %q, want %s", first.Type, live.MessageBatchStatus)
	}
	liveSameJSON(t, "first status", first.batchJSON(t), env.getJSON(t, path, liveAcmeKey))

	env.add(t, func() []eventstore.Event {
		return []eventstore.Event{b.Sent(0, 1, time.Millisecond), b.Failed(1, 1, domain.CategoryInvalidNumber)}
	})
	got := c.until(t, func(m liveMsg) bool { return m.status.Progress.Failed == 1 && m.status.Progress.Completed == 1 })
	liveCheckOrder(t, append([]liveMsg{first}, got...))
	var errs []liveMsg
	for _, m := range got {
		if m.Type == live.MessageBatchError {
			errs = append(errs, m)
		}
	}
	if len(errs) != 1 || errs[0].BatchID != b.ID || errs[0].Error.Index != 1 || errs[0].Error.PhoneNumber != projectionstest.Phone(1) {
		t.Fatalf("batch.error messages %+v, want one for index 1", errs)
	}
	entries := env.getJSON(t, path+"/errors", liveAcmeKey).(map[string]any)["errors"].([]any)
	var sent any
	_ = json.Unmarshal(liveMustJSON(t, errs[0].Error), &sent)
	liveSameJSON(t, "error entry", sent, entries[0])

	// A pause right after is delivered as the latest status.
	env.add(t, func() []eventstore.Event { return []eventstore.Event{b.Paused()} })
	last := c.until(t, func(m liveMsg) bool { return m.status.Status == string(domain.StatusPaused) })
	liveSameJSON(t, "paused status", last[len(last)-1].batchJSON(t), env.getJSON(t, path, liveAcmeKey))
}

func liveMustJSON(t *testing.T, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestLiveCoalescesBurstAndSendsFinalState(t *testing.T) {
	env := newLive(t, nil)
	b := env.batch("acme")
	const n = 200
	env.settle(t, env.add(t, func() []eventstore.Event { return []eventstore.Event{b.Created(n), b.Started()} }))
	path := "/api/batch/" + b.ID
	c := liveDial(t, env.wsURL(path+"/ws"), liveBearer(liveAcmeKey)).read()
	first := c.next(t)

	start := time.Now()
	for i := range n {
		env.add(t, func() []eventstore.Event {
			return []eventstore.Event{b.Dispatched(i), b.Sent(i, 1, time.Millisecond)}
		})
		if i%20 == 19 {
			time.Sleep(40 * time.Millisecond) // spread the burst over about half a second
		}
	}
	env.add(t, func() []eventstore.Event { return []eventstore.Event{b.Completed(n, 0)} })
	got := c.until(t, func(m liveMsg) bool { return m.status.Status == string(domain.StatusCompleted) })
	elapsed := time.Since(start)
	liveCheckOrder(t, append([]liveMsg{first}, got...))
	if want := int(elapsed/(100*time.Millisecond)) + 2; len(got) > want {
		t.Errorf("%d status messages for %d events in %v, want at most %d (10 a second)", len(got), 2*n+1, elapsed, want)
	}
	for i := 1; i < len(got); i++ {
		if gap := got[i].at.Sub(got[i-1].at); gap < 50*time.Millisecond {
			t.Errorf("status messages %d and %d only %v apart", i-1, i, gap)
		}
	}
	final := got[len(got)-1]
	if final.status.Progress.Completed != n {
		t.Errorf("final status completed %d, want %d", final.status.Progress.Completed, n)
	}
	liveSameJSON(t, "final status", final.batchJSON(t), env.getJSON(t, path, liveAcmeKey))
	c.quiet(t, 300*time.Millisecond)
	t.Logf("%d events in %v gave %d status messages", 2*n+1, elapsed, len(got))
}

func TestLiveAllBatchesOfTenant(t *testing.T) {
	env := newLive(t, nil)
	a1, a2, g := env.batch("acme"), env.batch("acme"), env.batch("globex")
	env.settle(t, env.add(t, func() []eventstore.Event {
		return []eventstore.Event{a1.Created(2), g.Created(2), a2.Created(2)}
	}))
	c := liveDial(t, env.wsURL("/api/ws"), liveBearer(liveAcmeKey)).read()
	seen := map[string]bool{}
	for range 2 {
		m := c.next(t)
		seen[m.status.ID] = true
	}
	if !seen[a1.ID] || !seen[a2.ID] {
		t.Fatalf("first statuses for %v, want both acme batches", seen)
	}
	env.add(t, func() []eventstore.Event { return []eventstore.Event{g.Started(), a2.Started()} })
	m := c.next(t)
	if m.status.ID != a2.ID || m.status.Status != string(domain.StatusProcessing) {
		t.Fatalf("got %s %s, want acme's batch started", m.status.ID, m.status.Status)
	}
	c.quiet(t, 300*time.Millisecond) // nothing of globex's
}

func TestLiveDropsSlowClientOnly(t *testing.T) {
	env := newLive(t, func(c *liveTweaks) { c.Hub.BufferSize = 64; c.API.WebSocket.WriteWait = liveWait })
	b := env.batch("acme")
	env.settle(t, env.add(t, func() []eventstore.Event { return []eventstore.Event{b.Created(100000), b.Started()} }))
	url := env.wsURL("/api/batch/" + b.ID + "/ws")

	// The slow client takes a small receive buffer and never reads, so the
	// server's writes to it stall and its queue fills.
	dialer := websocket.Dialer{NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if tcp, ok := conn.(*net.TCPConn); ok {
			_ = tcp.SetReadBuffer(64 << 10)
		}
		return conn, err
	}}
	slow, _, err := dialer.Dial(url, liveBearer(liveAcmeKey))
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fast := liveDial(t, url, liveBearer(liveAcmeKey)).read()
	fast.next(t)
	liveEventually(t, "two clients", func() bool { return env.clients() == 2 })

	// Large failures, 10 per 40ms: well within a fast client's queue.
	long := strings.Repeat("x", 2000)
	failed := 0
	deadline := time.Now().Add(20 * time.Second)
	for env.clients() == 2 {
		if time.Now().After(deadline) {
			t.Fatalf("slow client not dropped after %d failures", failed)
		}
		env.add(t, func() []eventstore.Event {
			var events []eventstore.Event
			for range 10 {
				events = append(events, env.events.Append(domain.MessageFailed{
					EventHeader: domain.EventHeader{BatchID: b.ID, Tenant: "acme", At: liveT0},
					Index:       failed, Attempt: 1, Phone: projectionstest.Phone(failed),
					Category: domain.CategoryInvalidNumber, Code: "21211", Message: long,
				}))
				failed++
			}
			return events
		})
		time.Sleep(40 * time.Millisecond)
	}
	// The fast client keeps receiving: every failure, and the status after the last.
	pos := env.add(t, func() []eventstore.Event { return []eventstore.Event{b.Paused()} })
	errs := map[int]int{}
	fast.until(t, func(m liveMsg) bool {
		if m.Type == live.MessageBatchError {
			errs[m.Error.Index]++
		}
		return m.Type == live.MessageBatchStatus && m.status.Status == string(domain.StatusPaused)
	})
	if len(errs) != failed {
		t.Errorf("fast client got %d distinct failures, want %d", len(errs), failed)
	}
	for i, n := range errs {
		if n != 1 {
			t.Errorf("failure %d sent %d times", i, n)
		}
	}
	env.settle(t, pos)

	// The slow client, reading at last, finds why it was closed.
	_ = slow.SetReadDeadline(time.Now().Add(liveWait))
	read := 0
	for {
		_, _, err := slow.ReadMessage()
		if err == nil {
			read++
			continue
		}
		t.Logf("slow client read %d messages of %d failures", read, failed)
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation || ce.Text != "too slow: buffer full" {
			t.Fatalf("slow client ended with %v, want close 1008 \"too slow: buffer full\"", err)
		}
		break
	}
	t.Logf("slow client dropped after %d failures", failed)
}

func TestLiveReconnectReplaysWhatWasMissed(t *testing.T) {
	env := newLive(t, nil)
	b := env.batch("acme")
	env.settle(t, env.add(t, func() []eventstore.Event {
		return []eventstore.Event{b.Created(10), b.Started(), b.Dispatched(0, 1, 2, 3, 4)}
	}))
	url := env.wsURL("/api/batch/" + b.ID + "/ws")
	c := liveDial(t, url, liveBearer(liveAcmeKey)).read()
	env.add(t, func() []eventstore.Event { return []eventstore.Event{b.Failed(0, 1, domain.CategoryBlocked)} })
	seen := c.until(t, func(m liveMsg) bool { return m.status.Progress.Failed == 1 })
	lastSeen := seen[len(seen)-1].Position
	c.conn.Close()
	liveEventually(t, "client gone", func() bool { return env.clients() == 0 })

	// Missed while away: two failures and a send.
	env.settle(t, env.add(t, func() []eventstore.Event {
		return []eventstore.Event{b.Failed(1, 1, domain.CategoryBlocked), b.Sent(2, 1, time.Millisecond), b.Failed(3, 1, domain.CategoryUnroutable)}
	}))

	c = liveDial(t, url+"?after="+lastSeen, liveBearer(liveAcmeKey)).read()
	replayed := c.until(t, func(m liveMsg) bool { return m.Type == live.MessageBatchStatus })
	if len(replayed) != 3 || replayed[0].Error.Index != 1 || replayed[1].Error.Index != 3 {
		t.Fatalf("replayed %d messages %+v, want errors 1 and 3 then the status", len(replayed), replayed)
	}
	liveSameJSON(t, "replayed status", replayed[2].batchJSON(t), env.getJSON(t, "/api/batch/"+b.ID, liveAcmeKey))

	env.add(t, func() []eventstore.Event { return []eventstore.Event{b.Failed(4, 1, domain.CategoryBlocked)} })
	after := c.until(t, func(m liveMsg) bool { return m.Type == live.MessageBatchStatus })
	if len(after) != 2 || after[0].Error == nil || after[0].Error.Index != 4 {
		t.Fatalf("live %+v, want error 4 once then the status", after)
	}
	liveCheckOrder(t, append(replayed, after...))

	// Nothing changed after the last position: nothing is sent.
	c2 := liveDial(t, url+"?after="+after[1].Position, liveBearer(liveAcmeKey)).read()
	c2.quiet(t, 300*time.Millisecond)
}

// While failures keep coming, a client reconnecting with a position gets every
// failure after it exactly once: no gap and no duplicate at the seam between
// replay and live.
func TestLiveReconnectSeamUnderLoad(t *testing.T) {
	// The queue is not what this test is about: a burst of failures in one
	// flush must not fill it.
	env := newLive(t, func(c *liveTweaks) { c.Hub.BufferSize = 1024 })
	b := env.batch("acme")
	const n = 300
	env.settle(t, env.add(t, func() []eventstore.Event { return []eventstore.Event{b.Created(n), b.Started()} }))
	var after eventstore.Position
	var afterIndex atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			pos, err := env.tryAdd(func() []eventstore.Event { return []eventstore.Event{b.Failed(i, 1, domain.CategoryBlocked)} })
			if err != nil {
				t.Error(err)
				return
			}
			if i == n/3 {
				after = pos
				afterIndex.Store(int64(i))
			}
			time.Sleep(time.Millisecond)
		}
	}()
	liveEventually(t, "a third appended", func() bool { return afterIndex.Load() > 0 })
	c := liveDial(t, env.wsURL("/api/ws?after="+live.FormatPosition(after)), liveBearer(liveAcmeKey)).read()
	<-done
	got := map[int]int{}
	// The status read for a flush may already count failures whose errors
	// the next flush carries (the read models can be ahead of the events the
	// hub has gathered): read until both the final status and the last
	// failure have come, whichever comes first.
	final := false
	msgs := c.until(t, func(m liveMsg) bool {
		if m.Type == live.MessageBatchError {
			got[m.Error.Index]++
		}
		final = final || (m.Type == live.MessageBatchStatus && m.status.Progress.Failed == n)
		return final && got[n-1] > 0
	})
	liveCheckOrder(t, msgs)
	for i := n/3 + 1; i < n; i++ {
		if got[i] != 1 {
			t.Errorf("failure %d delivered %d times", i, got[i])
		}
	}
	if len(got) != n-n/3-1 {
		t.Errorf("got %d failures, want %d (those after the position)", len(got), n-n/3-1)
	}
}

func TestLiveAuthentication(t *testing.T) {
	now := liveT0
	var clock sync.Mutex
	env := newLive(t, func(c *liveTweaks) {
		c.API.Tickets.now = func() time.Time { clock.Lock(); defer clock.Unlock(); return now }
	})
	b := env.batch("acme")
	env.settle(t, env.add(t, func() []eventstore.Event { return []eventstore.Event{b.Created(1)} }))
	url := env.wsURL("/api/batch/" + b.ID + "/ws")

	ticket := func(key string) string {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, env.srv.URL+"/api/ws/ticket", nil)
		if key != "" {
			req.Header = liveBearer(key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if key == "" {
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("ticket without a key: %d, want 401", resp.StatusCode)
			}
			return ""
		}
		var a ticketAnswer
		if err := json.NewDecoder(resp.Body).Decode(&a); err != nil || resp.StatusCode != http.StatusOK || a.Ticket == "" {
			t.Fatalf("ticket: %d %+v %v", resp.StatusCode, a, err)
		}
		if want := now.Add(30 * time.Second); !a.ExpiresAt.Equal(want) {
			t.Fatalf("ticket expires at %v, want %v", a.ExpiresAt, want)
		}
		if strings.Contains(a.Ticket, liveAcmeKey) {
			t.Fatal("ticket contains the key")
		}
		return a.Ticket
	}
	ticket("")

	// Bearer works; nothing at all is a 401.
	liveDial(t, url, liveBearer(liveAcmeKey)).read().next(t)
	for _, path := range []string{"/api/batch/" + b.ID + "/ws", "/api/ws"} {
		if status, code := liveDialStatus(t, env.wsURL(path), nil); status != http.StatusUnauthorized || code != domain.EUNAUTHORIZED {
			t.Errorf("%s without credentials: %d %s, want 401", path, status, code)
		}
	}
	if status, _ := liveDialStatus(t, url, liveBearer("not-a-key-0123456789")); status != http.StatusUnauthorized {
		t.Errorf("unknown key: %d, want 401", status)
	}

	// A ticket is good once.
	tk := ticket(liveAcmeKey)
	m := liveDial(t, url+"?ticket="+tk, nil).read().next(t)
	if m.status.ID != b.ID {
		t.Fatalf("ticket connection got %+v", m)
	}
	if status, _ := liveDialStatus(t, url+"?ticket="+tk, nil); status != http.StatusUnauthorized {
		t.Errorf("ticket used twice: %d, want 401", status)
	}
	// ... and not after 30 s.
	tk = ticket(liveAcmeKey)
	clock.Lock()
	now = now.Add(31 * time.Second)
	clock.Unlock()
	if status, _ := liveDialStatus(t, url+"?ticket="+tk, nil); status != http.StatusUnauthorized {
		t.Errorf("expired ticket: %d, want 401", status)
	}
	// A forged one is refused.
	if status, _ := liveDialStatus(t, url+"?ticket="+tk[:len(tk)-2]+"AA", nil); status != http.StatusUnauthorized {
		t.Errorf("forged ticket: %d, want 401", status)
	}
	// Another tenant's batch is not found, by ticket or by key, before upgrading.
	if status, code := liveDialStatus(t, url+"?ticket="+ticket(liveGlobexKey), nil); status != http.StatusNotFound || code != domain.ENOTFOUND {
		t.Errorf("globex ticket on acme's batch: %d %s, want 404", status, code)
	}
	if status, _ := liveDialStatus(t, url, liveBearer(liveGlobexKey)); status != http.StatusNotFound {
		t.Errorf("globex key on acme's batch: %d, want 404", status)
	}
	if status, _ := liveDialStatus(t, url+"?after=0.0", liveBearer(liveGlobexKey)); status != http.StatusNotFound {
		t.Errorf("globex key on acme's batch with a position: %d, want 404", status)
	}
	if status, _ := liveDialStatus(t, env.wsURL("/api/batch/not-a-uuid/ws"), liveBearer(liveAcmeKey)); status != http.StatusNotFound {
		t.Errorf("malformed batch id: %d, want 404", status)
	}
	// A bad position is a 400.
	for _, bad := range []string{"", "1", "1.", ".1", "01.0", "-1.0", "1.0.0", "1/0", "x.y", "18446744073709551616.0", "%201.0", "1.0%20"} {
		if status, code := liveDialStatus(t, url+"?after="+bad, liveBearer(liveAcmeKey)); status != http.StatusBadRequest || code != domain.EMALFORMED {
			t.Errorf("after=%q: %d %s, want 400", bad, status, code)
		}
	}
}

// Cause 9: a ticket redeemed on one instance is refused by every other one.
func TestTicketsAreSingleUseAcrossInstances(t *testing.T) {
	es := esmemory.New()
	t.Cleanup(func() { es.Close() })
	repo, _ := commands.NewRepository(es, 10)
	cmds, _ := commands.New(es, repo, nil)
	secret := []byte(strings.Repeat("s", 32))
	shared := func(c *liveTweaks) { c.API.Tickets.Secret, c.API.Tickets.Redeem = secret, cmds.RedeemOnce }
	a, b := newLiveOn(t, es, shared), newLiveOn(t, es, shared)
	batch := a.batch("acme")
	a.settle(t, a.add(t, func() []eventstore.Event { return []eventstore.Event{batch.Created(1)} }))
	b.settle(t, a.runnerPosition())

	req, _ := http.NewRequest(http.MethodPost, a.srv.URL+"/api/ws/ticket", nil)
	req.Header = liveBearer(liveAcmeKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var tk ticketAnswer
	json.NewDecoder(resp.Body).Decode(&tk)
	resp.Body.Close()

	path := "/api/batch/" + batch.ID + "/ws?ticket=" + tk.Ticket
	if m := liveDial(t, b.wsURL(path), nil).read().next(t); m.status.ID != batch.ID {
		t.Fatalf("ticket from instance a on instance b: %+v", m)
	}
	for name, env := range map[string]*liveEnv{"a": a, "b": b} {
		if status, _ := liveDialStatus(t, env.wsURL(path), nil); status != http.StatusUnauthorized {
			t.Errorf("ticket used on b, then again on %s: %d, want 401", name, status)
		}
	}
}

func TestLivePingsAndDropsDeadClients(t *testing.T) {
	env := newLive(t, func(c *liveTweaks) {
		c.API.WebSocket.PingInterval = 20 * time.Millisecond
		c.API.WebSocket.PongWait = 150 * time.Millisecond
	})
	b := env.batch("acme")
	env.settle(t, env.add(t, func() []eventstore.Event { return []eventstore.Event{b.Created(1)} }))
	url := env.wsURL("/api/batch/" + b.ID + "/ws")

	alive := liveDial(t, url, liveBearer(liveAcmeKey)).read() // reading answers pings
	alive.next(t)
	dead := liveDial(t, url, liveBearer(liveAcmeKey)) // never reads, so never answers
	_ = dead
	liveEventually(t, "the silent client dropped", func() bool { return env.clients() == 1 })
	time.Sleep(300 * time.Millisecond)
	if env.clients() != 1 {
		t.Fatal("the live client was dropped too")
	}
	env.add(t, func() []eventstore.Event { return []eventstore.Event{b.Started()} })
	if m := alive.next(t); m.status.Status != string(domain.StatusProcessing) {
		t.Fatalf("alive client got %+v", m)
	}
}

func TestLiveRefusesReplayTooLong(t *testing.T) {
	env := newLive(t, func(c *liveTweaks) { c.Hub.MaxReplay = 2 })
	b := env.batch("acme")
	created := env.add(t, func() []eventstore.Event { return []eventstore.Event{b.Created(3), b.Started()} })
	env.settle(t, env.add(t, func() []eventstore.Event {
		return []eventstore.Event{b.Failed(0, 1, domain.CategoryBlocked), b.Failed(1, 1, domain.CategoryBlocked), b.Failed(2, 1, domain.CategoryBlocked)}
	}))
	url := env.wsURL("/api/batch/" + b.ID + "/ws?after=" + live.FormatPosition(created))
	liveEventually(t, "hub caught up", func() bool { return !env.hub.Flushed().Less(env.runnerPosition()) })
	if status, code := liveDialStatus(t, url, liveBearer(liveAcmeKey)); status != http.StatusConflict || code != domain.ECONFLICT {
		t.Fatalf("replay of 3 failures with MaxReplay 2: %d %s, want 409", status, code)
	}
}

func (env *liveEnv) runnerPosition() eventstore.Position { return env.runner.Position() }
