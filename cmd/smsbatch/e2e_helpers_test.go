package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/bolt"
	"github.com/smsbatch/smsbatch/processors"
	"github.com/smsbatch/smsbatch/processors/sms/simulator"
)

// testHTTP is the tests' and benchmarks' HTTP client: http.DefaultClient's,
// but keeping a connection for each of many clients at once, as that many
// real clients would. The default keeps two idle a host, so with dozens of
// concurrent requests every one after the first two dialed a new connection:
// in BenchmarkEndToEnd40x2500 the dials and accepts took about 6% of the CPU
// the server shares with them.
var testHTTP = &http.Client{Transport: func() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 256
	return t
}()}

const (
	acmeKey  = "acme-key-0123456789abcdef"
	otherKey = "other-key-0123456789abcdef"
)

// testConfig is the configuration of an end-to-end test: the defaults of `serve`
// with a temporary data directory, a free port and two tenants.
func testConfig(t testing.TB) Config {
	t.Helper()
	cfg, err := ParseConfig(nil, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	cfg.Addr = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.APIKeys = "acme:" + acmeKey + ",other:" + otherKey
	cfg.SimLatency = 20 * time.Millisecond
	cfg.Slice = time.Second
	cfg.BackoffInit = 50 * time.Millisecond
	cfg.BackoffMax = 200 * time.Millisecond
	cfg.LogLevel = "warn"
	// The simulator ignores idempotency keys and writes every message it takes
	// to the outbox, as the real provider bills them: outbox() fails on a
	// message sent twice.
	cfg.SimRecordEveryCall = true
	return cfg
}

// startMain runs the real program in-process, waits until it is ready, and stops
// it when the test ends.
func startMain(t testing.TB, cfg Config) *client {
	t.Helper()
	c, err := runMain(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.waitReady()
	return c
}

// runMain is startMain without waiting for readiness; it returns Run's error.
func runMain(t testing.TB, cfg Config) (*client, error) {
	t.Helper()
	return runMainWith(t, cfg, nil)
}

// runMainWith is runMain with the event store wrapped by wrap (when not nil).
func runMainWith(t testing.TB, cfg Config, wrap func(eventstore.Store) eventstore.Store) (*client, error) {
	t.Helper()
	m := NewMain(cfg, &testWriter{t: t})
	m.wrapStore = wrap
	if err := m.Run(context.Background()); err != nil {
		m.Close()
		return nil, err
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			m.Close()
		}
	})
	c := &client{t: t, base: "http://" + m.Addr(), key: acmeKey, main: m, stop: func() {
		stopped = true
		if err := m.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}}
	return c, nil
}

type testWriter struct{ t testing.TB }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

type client struct {
	t    testing.TB
	base string
	key  string
	main *Main
	stop func()
	// header is sent with every request (an Idempotency-Key...).
	header http.Header
}

// do sends a request and decodes a JSON answer into out (when not nil).
func (c *client) do(method, path string, body any, out any) (int, http.Header) {
	c.t.Helper()
	code, header, data := c.raw(method, path, body)
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			c.t.Fatalf("%s %s: %d %s: %v", method, path, code, data, err)
		}
	}
	return code, header
}

// raw sends a request and returns the answer as it is. Every request and
// answer is checked against the OpenAPI document (checkOpenAPI).
func (c *client) raw(method, path string, body any) (int, http.Header, []byte) {
	c.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			c.t.Fatal(err)
		}
		r = bytes.NewReader(data)
	}
	var sent []byte
	if r != nil {
		var err error
		if sent, err = io.ReadAll(r); err != nil {
			c.t.Fatal(err)
		}
		r = bytes.NewReader(sent)
	}
	req, err := http.NewRequest(method, c.base+path, r)
	if err != nil {
		c.t.Fatal(err)
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range c.header {
		req.Header[k] = v
	}
	resp, err := testHTTP.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	checkOpenAPI(c.t, req, sent, resp, data)
	return resp.StatusCode, resp.Header, data
}

func (c *client) as(key string) *client {
	cc := *c
	cc.key = key
	return &cc
}

func (c *client) waitReady() {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if code, _ := c.do("GET", "/readyz", nil, nil); code == 200 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatal("service not ready")
}

type status struct {
	ID       string `json:"id"`
	Status   string `json:"status"`
	Priority string `json:"priority"`
	Progress struct {
		Total, Pending, Completed, Failed, Skipped, Delivered, Undelivered, Waiting int
	} `json:"progress"`
	Metrics struct {
		MessagesPerSecond float64 `json:"messagesPerSecond"`
		SuccessRate       float64 `json:"successRate"`
	} `json:"metrics"`
	PauseInfo *struct {
		PauseTime  time.Time  `json:"pauseTime"`
		ResumeTime *time.Time `json:"resumeTime"`
	} `json:"pauseInfo"`
}

type apiError struct {
	Error struct {
		Code    string                `json:"code"`
		Message string                `json:"message"`
		Details []domain.FieldProblem `json:"details"`
	} `json:"error"`
}

type recipient struct {
	PhoneNumber string            `json:"phoneNumber"`
	Variables   map[string]string `json:"variables"`
}

func recipients(n int) []recipient {
	out := make([]recipient, n)
	for i := range out {
		out[i] = recipient{PhoneNumber: fmt.Sprintf("+1415%03d%04d", 200+i/10000, i%10000), Variables: map[string]string{"name": fmt.Sprint("Ada ", i)}}
	}
	return out
}

func batchBody(rcps []recipient, priority string) map[string]any {
	return map[string]any{
		"text":       "Hello {{name}}, your code is ready",
		"recipients": rcps,
		"options":    map[string]any{"priority": priority},
	}
}

func (c *client) create(body any) status {
	c.t.Helper()
	var st status
	var e apiError
	var raw json.RawMessage
	code, hdr := c.do("POST", "/api/batch", body, &raw)
	if code != http.StatusCreated {
		json.Unmarshal(raw, &e)
		c.t.Fatalf("create: %d %+v", code, e)
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		c.t.Fatal(err)
	}
	if hdr.Get("Location") != "/api/batch/"+st.ID {
		c.t.Fatalf("Location %q, want /api/batch/%s", hdr.Get("Location"), st.ID)
	}
	return st
}

// sending is the part of a batch's progress that moves only when it sends:
// delivery receipts may still arrive while it is paused.
func (s status) sending() [4]int {
	p := s.Progress
	return [4]int{p.Pending, p.Completed, p.Failed, p.Skipped}
}

func (c *client) status(id string) status {
	c.t.Helper()
	var st status
	if code, _ := c.do("GET", "/api/batch/"+id, nil, &st); code != 200 {
		c.t.Fatalf("status of %s: %d", id, code)
	}
	return st
}

// waitStatus polls until the batch reaches one of the statuses.
func (c *client) waitStatus(id string, timeout time.Duration, want ...string) status {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := c.status(id)
		for _, w := range want {
			if st.Status == w {
				return st
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("batch %s is %s after %s, want %v (progress %+v)", id, st.Status, timeout, want, st.Progress)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// outbox returns the simulator's accepted messages of one batch by index, failing
// the test if any recipient was sent twice.
func outbox(t testing.TB, dataDir, batchID string) map[string]simulator.OutboxEntry {
	t.Helper()
	entries, err := simulator.ReadOutbox(filepath.Join(dataDir, "sim-outbox.jsonl"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	out := map[string]simulator.OutboxEntry{}
	for _, e := range entries {
		if !strings.HasPrefix(e.Key, batchID+":") {
			continue
		}
		if _, dup := out[e.Key]; dup {
			t.Fatalf("the outbox holds %s twice", e.Key)
		}
		out[e.Key] = e
	}
	return out
}

// sendTimes are the outbox times of a batch's messages, in order.
func sendTimes(entries map[string]simulator.OutboxEntry) []time.Time {
	var ts []time.Time
	for _, e := range entries {
		ts = append(ts, e.Time)
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
	return ts
}

// maxInWindow is the most sends within any window of length w.
func maxInWindow(ts []time.Time, w time.Duration) int {
	most := 0
	for i := range ts {
		n := 0
		for j := i; j < len(ts) && ts[j].Sub(ts[i]) < w; j++ {
			n++
		}
		most = max(most, n)
	}
	return most
}

// storedEvents opens a stopped program's event store and returns every event.
func storedEvents(t testing.TB, dataDir string) []eventstore.Event {
	t.Helper()
	store, err := bolt.Open(filepath.Join(dataDir, "events.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	return allEvents(t, store)
}

// allEvents reads every event of a store in global order.
func allEvents(t testing.TB, store eventstore.Store) []eventstore.Event {
	t.Helper()
	var all []eventstore.Event
	pos := eventstore.Start
	for {
		page, err := store.ReadAll(context.Background(), pos, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			return all
		}
		all = append(all, page...)
		pos = page[len(page)-1].Position
	}
}

// assertExactlyOneOutcome checks guarantee 1 on the stored events of a batch.
func assertExactlyOneOutcome(t testing.TB, events []eventstore.Event, batchID string, total int) {
	t.Helper()
	outcomes := map[int]int{}
	for _, se := range events {
		if se.Stream != domain.BatchStream(batchID) {
			continue
		}
		e, err := domain.DecodeEvent(se.Type, se.Data)
		if err != nil {
			t.Fatal(err)
		}
		switch e := e.(type) {
		case domain.MessageSent:
			outcomes[e.Index]++
		case domain.MessageFailed:
			outcomes[e.Index]++
		}
	}
	if len(outcomes) != total {
		t.Fatalf("%d recipients have an outcome, want %d", len(outcomes), total)
	}
	for i, n := range outcomes {
		if n != 1 {
			t.Fatalf("recipient %d has %d outcomes", i, n)
		}
	}
}

// natsURL is the NATS server with JetStream the scale-out tests use:
// TEST_NATS_URL, or the machine's default port. Without one the test skips,
// unless SMSBATCH_REQUIRE_NATS=1 (CI) makes that a failure.
func natsURL(t testing.TB) string {
	t.Helper()
	url := os.Getenv("TEST_NATS_URL")
	if url == "" {
		url = "nats://127.0.0.1:4222"
	}
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(url, "nats://"), time.Second)
	if err != nil {
		if os.Getenv("SMSBATCH_REQUIRE_NATS") == "1" {
			t.Fatalf("NATS required at %s: %v", url, err)
		}
		t.Skipf("no NATS at %s: %v", url, err)
	}
	conn.Close()
	return url
}

// natsNamespace returns a namespace of the test's own on the NATS server and
// deletes its streams when the test ends (after the program has stopped).
func natsNamespace(t testing.TB, url string) string {
	t.Helper()
	ns := fmt.Sprintf("t%d-", time.Now().UnixNano())
	t.Cleanup(func() {
		nc, err := nats.Connect(url)
		if err != nil {
			return
		}
		defer nc.Close()
		if js, err := nc.JetStream(); err == nil {
			js.DeleteStream(ns + processors.TopicBatchEvents)
			js.DeleteStream(ns + processors.TopicWork)
		}
	})
	return ns
}
