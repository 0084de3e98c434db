package main

import (
	"syscall"
	"testing"
	"time"
)

// The provider goes away for 20 s in the middle of a batch. The batch must hold,
// say why in its status and over the WebSocket, and complete once the provider is back, with no
// recipient failed for the outage.
func TestProviderOutageHoldsTheBatchThenItCompletes(t *testing.T) {
	skipShort(t)
	t.Setenv("SMSBATCH_SMS_AUTH_TOKEN", "sim-secret-token-0123456789")
	simDir, simAddr := t.TempDir(), freeAddr(t)
	sim := startProcess(t, "simulator", "simulator", "--addr", simAddr, "--data-dir", simDir,
		"--sms-account-sid", "ACtest", "--sim-latency", "20ms", "--log-level", "warn")
	waitListening(t, simAddr)
	_, c := startBinary(t, t.TempDir(), freeAddr(t),
		"--sms-provider", "http", "--sms-url", "http://"+simAddr, "--sms-account-sid", "ACtest",
		"--send-timeout", "2s", "--max-attempts", "3", "--backoff-max", "1s",
		"--breaker-threshold", "3", "--breaker-probe-after", "1s")
	seen := followProgress(t, c)
	const n = 60
	st := c.create(batchBody(recipients(n), "high"))
	deadline := time.Now().Add(20 * time.Second)
	for c.status(st.ID).Progress.Completed < 10 {
		if time.Now().After(deadline) {
			t.Fatal("the batch did not start sending")
		}
		time.Sleep(50 * time.Millisecond)
	}

	sim.cmd.Process.Signal(syscall.SIGKILL)
	sim.wait(t, 10*time.Second)
	down := time.Now()
	var held holdStatus
	for {
		held = holdStatus{}
		c.do("GET", "/api/batch/"+st.ID, nil, &held)
		if held.Hold != nil {
			break
		}
		if time.Since(down) > 15*time.Second {
			t.Fatalf("the batch never showed a hold while the provider was down: %+v", held)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if held.Hold.Reason != "provider_outage" || held.Status != "processing" {
		t.Fatalf("held batch %+v, want processing with hold reason provider_outage", held)
	}
	waitLive(t, seen, st.ID, 10*time.Second, func(p liveProgress) bool { return p.Held == "provider_outage" && p.Status == "processing" })
	time.Sleep(time.Until(down.Add(20 * time.Second)))
	mid := c.status(st.ID)
	if mid.Progress.Failed != 0 || mid.Status != "processing" {
		t.Fatalf("after 20 s of outage: %+v, want processing with nobody failed", mid)
	}

	startProcess(t, "simulator", "simulator", "--addr", simAddr, "--data-dir", simDir,
		"--sms-account-sid", "ACtest", "--sim-latency", "20ms", "--log-level", "warn")
	waitListening(t, simAddr)
	done := c.waitStatus(st.ID, 60*time.Second, "completed")
	if done.Progress.Completed != n || done.Progress.Failed != 0 {
		t.Fatalf("after the outage: %+v, want all %d sent and none failed", done.Progress, n)
	}
	held = holdStatus{}
	c.do("GET", "/api/batch/"+st.ID, nil, &held)
	if held.Hold != nil {
		t.Fatalf("a completed batch still shows a hold: %+v", held.Hold)
	}
	waitLive(t, seen, st.ID, 10*time.Second, func(p liveProgress) bool { return p.Status == "completed" && p.Held == "" })
	var an struct {
		RetriedCategories map[string]int `json:"retriedCategories"`
	}
	c.do("GET", "/api/batch/"+st.ID+"/analytics", nil, &an)
	if an.RetriedCategories["provider_unavailable"] == 0 {
		t.Fatalf("analytics show no provider_unavailable attempts: %v", an.RetriedCategories)
	}
	// Every recipient once in the outbox: the held sends were not lost or doubled.
	if sent := outbox(t, simDir, st.ID); len(sent) != n {
		t.Fatalf("outbox holds %d of the batch's messages, want %d", len(sent), n)
	}
}

type holdStatus struct {
	Status string `json:"status"`
	Hold   *struct {
		Reason string    `json:"reason"`
		Since  time.Time `json:"since"`
	} `json:"hold"`
}
