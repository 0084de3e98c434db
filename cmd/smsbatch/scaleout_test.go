package main

import (
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/internal/pgtest"
	"github.com/smsbatch/smsbatch/processors/sms/simulator"
)

// startSimulatorBinary runs `smsbatch simulator` as its own process, with
// extra flags.
func startSimulatorBinary(t testing.TB, dataDir, addr string, extra ...string) {
	t.Helper()
	args := append([]string{"simulator", "--addr", addr, "--data-dir", dataDir,
		"--sms-account-sid", "ACtest", "--sim-latency", "30ms", "--log-level", "warn"}, extra...)
	startProcess(t, "simulator", args...)
	waitListening(t, addr)
}

// acceptedOnce returns the first accepted call of each message, as outbox
// entries, failing on a message accepted twice unless its first call was in
// flight when an instance was SIGKILLed (the one case DESIGN allows).
func acceptedOnce(t testing.TB, calls []simulator.Call, killedAt time.Time) map[string]simulator.OutboxEntry {
	t.Helper()
	sort.Slice(calls, func(i, j int) bool { return calls[i].Start.Before(calls[j].Start) })
	first := map[string]simulator.Call{}
	out := map[string]simulator.OutboxEntry{}
	for _, c := range calls {
		if c.Outcome != "accepted" {
			continue
		}
		if f, dup := first[c.Key]; dup {
			// In flight at the kill: its answer may have come back to an
			// instance that died before recording it.
			if !f.Start.Before(killedAt) || f.End.Before(killedAt.Add(-time.Second)) {
				t.Fatalf("the provider accepted %s twice (calls at %s and %s), not in flight at the SIGKILL (%s)",
					c.Key, f.Start.Format("15:04:05.000"), c.Start.Format("15:04:05.000"), killedAt.Format("15:04:05.000"))
			}
			continue
		}
		first[c.Key] = c
		out[c.Key] = simulator.OutboxEntry{Key: c.Key, To: c.To, Time: c.End}
	}
	return out
}

// Three instances share one PostgreSQL, one NATS and one standalone simulator;
// one is killed mid-way and the others finish its work.
func TestThreeInstancesSurviveOneKilled(t *testing.T) {
	skipShort(t)
	url := pgtest.Database(t)
	nurl := natsURL(t)
	ns := natsNamespace(t, nurl)
	t.Setenv("SMSBATCH_SMS_AUTH_TOKEN", "sim-secret-token-0123456789")
	simDir := t.TempDir()
	simAddr := freeAddr(t)
	// It ignores idempotency keys and records every call, as the real provider
	// bills them: a message sent twice shows.
	startSimulatorBinary(t, simDir, simAddr, "--sim-record-every-call")

	shared := append(instanceArgs(url, nurl, ns, simAddr), "--stall-timeout", "4s")
	var procs []*process
	var clients []*client
	for range 3 {
		p, c := startBinary(t, t.TempDir(), freeAddr(t), shared...)
		procs = append(procs, p)
		clients = append(clients, c)
	}
	type batch struct {
		id   string
		n    int
		rate float64
	}
	var batches []batch
	for i, spec := range []struct {
		n        int
		priority string
		rate     float64
	}{{30, "high", 8}, {24, "high", 8}, {20, "normal", 5}, {20, "normal", 5}, {10, "low", 2}} {
		st := clients[i%3].create(batchBody(recipients(spec.n), spec.priority))
		batches = append(batches, batch{st.ID, spec.n, spec.rate})
	}
	// A WebSocket client on instance 0 follows every batch, whichever instance
	// created or works it.
	final := followAll(t, clients[0])
	time.Sleep(2 * time.Second)
	if err := procs[1].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	procs[1].wait(t, 10*time.Second)
	killedAt := time.Now()

	// Pause on one instance, resume on another: the low batch is still running.
	low := batches[4]
	if code, _ := clients[0].do("POST", "/api/v2/batch/"+low.id+"/pause", nil, nil); code != 200 {
		t.Fatalf("pause through instance 0: %d", code)
	}
	clients[2].waitStatus(low.id, 20*time.Second, "paused")
	time.Sleep(500 * time.Millisecond)
	before := clients[2].status(low.id)
	time.Sleep(1500 * time.Millisecond)
	if after := clients[2].status(low.id); after.Status != "paused" || after.sending() != before.sending() {
		t.Fatalf("paused through instance 0, instance 2 sees %s %+v -> %+v", after.Status, before.Progress, after.Progress)
	}
	if code, _ := clients[2].do("POST", "/api/v2/batch/"+low.id+"/resume", nil, nil); code != 200 {
		t.Fatalf("resume through instance 2: %d", code)
	}

	for _, b := range batches {
		done := clients[2].waitStatus(b.id, 90*time.Second, "completed")
		if done.Progress.Completed != b.n {
			t.Fatalf("batch %s: %+v, want %d sent", b.id, done.Progress, b.n)
		}
	}
	t.Logf("all batches completed %s after the kill", time.Since(killedAt).Round(time.Millisecond))
	calls := providerCalls(t, simDir)
	for _, b := range batches {
		sent := acceptedOnce(t, calls[b.id], killedAt)
		if len(sent) != b.n {
			t.Fatalf("batch %s: the provider accepted %d messages, want %d", b.id, len(sent), b.n)
		}
		// Outbox times are taken in another process after an HTTP round trip and
		// the simulator's latency, with four race-enabled processes and PostgreSQL
		// sharing two cores: one send landing late by up to ~50 ms next to one on
		// time is measurement jitter, so the window is shortened by 60 ms. A second
		// worker sending for the batch would double its rate and still show.
		if most := maxInWindow(sendTimes(sent), time.Second-60*time.Millisecond); most > int(b.rate) {
			ts := sendTimes(sent)
			var gaps []string
			for i := 1; i < len(ts); i++ {
				gaps = append(gaps, ts[i].Sub(ts[i-1]).Round(time.Millisecond).String())
			}
			t.Fatalf("batch %s at %v/s: %d sends within one second; gaps %v (killed at %s, first send %s)", b.id, b.rate, most, gaps, killedAt.Format("15:04:05.000"), ts[0].Format("15:04:05.000"))
		}
	}
	for _, b := range batches {
		if got := final(b.id, 10*time.Second); got != "completed" {
			t.Fatalf("the WebSocket on instance 0 last saw batch %s as %q", b.id, got)
		}
	}
	for _, p := range []*process{procs[0], procs[2]} {
		p.cmd.Process.Signal(syscall.SIGTERM)
		p.wait(t, 30*time.Second)
	}
	events := pgEvents(t, url)
	for _, b := range batches {
		assertExactlyOneOutcome(t, events, b.id, b.n)
	}
}

// followAll opens GET /api/ws on the instance and records the last status seen of
// each batch; the returned function waits until a batch's last status is final.
func followAll(t *testing.T, c *client) func(id string, timeout time.Duration) string {
	t.Helper()
	conn := dialAll(t, c)
	var mu sync.Mutex
	last := map[string]string{}
	go func() {
		for {
			var msg struct {
				Type  string `json:"type"`
				Batch struct {
					ID     string `json:"id"`
					Status string `json:"status"`
				} `json:"batch"`
			}
			if err := conn.ReadJSON(&msg); err != nil {
				return
			}
			if msg.Type == "batch.status" {
				mu.Lock()
				last[msg.Batch.ID] = msg.Batch.Status
				mu.Unlock()
			}
		}
	}()
	return func(id string, timeout time.Duration) string {
		deadline := time.Now().Add(timeout)
		for {
			mu.Lock()
			got := last[id]
			mu.Unlock()
			if got == "completed" || time.Now().After(deadline) {
				return got
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// instanceArgs are the flags of an instance sharing PostgreSQL, NATS and the
// standalone simulator (which takes SMSBATCH_SMS_AUTH_TOKEN from the environment).
func instanceArgs(pgURL, natsURL, namespace, simAddr string) []string {
	return []string{
		"--event-store", "postgres", "--event-store-url", pgURL, "--read-store", "postgres",
		"--nats-url", natsURL, "--nats-namespace", namespace,
		"--sms-provider", "http", "--sms-url", "http://" + simAddr, "--sms-account-sid", "ACtest",
	}
}
