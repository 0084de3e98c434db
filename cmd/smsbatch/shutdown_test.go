package main

import (
	"context"
	"fmt"
	"net"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/processors/sms/simulator"
)

// A graceful stop while one request is still running (an upload arriving
// slowly) records the outcome of every send in flight: the request must not
// use up the shutdown's time, or the store closes under the sends and the
// restart sends them again. The provider records every call.
func TestAGracefulStopWithARequestOpenRecordsTheSendsInFlight(t *testing.T) {
	skipShort(t)
	simDir := t.TempDir()
	sim, err := simulator.New(simulator.Config{OutboxPath: filepath.Join(simDir, "outbox.jsonl"),
		Latency: 1500 * time.Millisecond, RecordEveryCall: true, CallsPath: filepath.Join(simDir, "calls.jsonl")})
	if err != nil {
		t.Fatal(err)
	}
	const token = "sim-secret-token-0123456789"
	handler, err := simulator.NewServer(sim, simulator.ServerConfig{AccountSID: "ACtest", AuthToken: token})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(handler)
	defer srv.Close()
	cfg := testConfig(t)
	cfg.SMSProvider, cfg.SMSURL, cfg.SMSAccountSID, cfg.SMSAuthToken = "http", srv.URL, "ACtest", token
	cfg.RateUnlimited = true
	cfg.ShutdownTimeout = 3 * time.Second
	c, err := runMain(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.waitReady()
	st := c.create(batchBody(recipients(40), "normal"))
	// An upload that will not finish within the shutdown's time.
	conn, err := net.Dial("tcp", c.main.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /api/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{\"text\":\"Hi {{name}}\",\"recipients\":[", acmeKey)
	time.Sleep(700 * time.Millisecond) // sends in flight, 1.5 s each
	c.stop = func() {}
	t.Logf("close: %v", c.main.Close())

	assertStopRecordedEverySend(t, storedEvents(t, cfg.DataDir), st.ID)
	conn.Close()

	c2 := startMain(t, cfg)
	c2.waitStatus(st.ID, 60*time.Second, "completed")
	c2.stop()
	sim.Close()
	calls, err := simulator.ReadCalls(filepath.Join(simDir, "calls.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	per := map[string]int{}
	for _, call := range calls {
		per[call.Key]++
	}
	for k, n := range per {
		if n > 1 {
			t.Errorf("the provider was called %d times for %s around a graceful stop", n, k)
		}
	}
}

// A graceful stop of the embedded default mid-campaign logs no error: the work
// its last slices hand on is not published into a closed GoChannel.
func TestAGracefulStopLogsNoErrors(t *testing.T) {
	skipShort(t)
	cfg := testConfig(t)
	cfg.SimLatency = 300 * time.Millisecond
	var out lockedBuffer
	m := NewMain(cfg, &out)
	if err := m.Run(context.Background()); err != nil {
		m.Close()
		t.Fatal(err)
	}
	c := &client{t: t, base: "http://" + m.Addr(), key: acmeKey, main: m}
	c.waitReady()
	c.create(batchBody(recipients(40), "high"))
	time.Sleep(1500 * time.Millisecond) // mid-way
	if err := m.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	var errs []string
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.Contains(line, "level=ERROR") {
			errs = append(errs, line)
		}
	}
	if len(errs) > 0 {
		t.Errorf("a graceful stop logged errors:\n%s", strings.Join(errs, "\n"))
	}
}
