package main

import (
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/internal/pgtest"
	"github.com/smsbatch/smsbatch/processors/sms/simulator"
)

// BenchmarkScaleOut: messages per second end to end with one and with three
// instances sharing PostgreSQL and NATS, the rate limit lifted, a simulator
// answering in 20 ms over HTTP, 20 batches of 100 running at once.
func BenchmarkScaleOut(b *testing.B) {
	for _, instances := range []int{1, 3} {
		b.Run(fmt.Sprintf("instances=%d", instances), func(b *testing.B) {
			url := pgtest.Database(b)
			nurl := natsURL(b)
			ns := natsNamespace(b, nurl)
			sim, err := simulator.New(simulator.Config{OutboxPath: filepath.Join(b.TempDir(), "outbox.jsonl"), Latency: 20 * time.Millisecond})
			if err != nil {
				b.Fatal(err)
			}
			defer sim.Close()
			h, err := simulator.NewServer(sim, simulator.ServerConfig{AccountSID: "ACbench", AuthToken: "bench-token"})
			if err != nil {
				b.Fatal(err)
			}
			srv := httptest.NewServer(h)
			defer srv.Close()

			var clients []*client
			for range instances {
				cfg := testConfig(b)
				cfg.EventStore, cfg.EventStoreURL, cfg.ReadStore, cfg.ReadStoreURL = "postgres", url, "postgres", url
				cfg.NATSURL, cfg.NATSNamespace = nurl, ns
				cfg.SMSProvider, cfg.SMSURL, cfg.SMSAccountSID, cfg.SMSAuthToken = "http", srv.URL, "ACbench", "bench-token"
				cfg.RateUnlimited = true
				cfg.HTTPRateLimit = -1
				cfg.LogLevel = "error"
				clients = append(clients, startMain(b, cfg))
			}
			const batches, perBatch = 20, 100
			body := batchBody(recipients(perBatch), "normal")
			b.ResetTimer()
			sent := 0
			start := time.Now()
			for range b.N {
				sent += sendSpread(clients, body, batches)
			}
			b.ReportMetric(float64(sent)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}

// BenchmarkFailover: the time from an instance's death (SIGKILL) to every batch it
// left behind sending again, with two instances on PostgreSQL and NATS.
func BenchmarkFailover(b *testing.B) {
	url := pgtest.Database(b)
	nurl := natsURL(b)
	ns := natsNamespace(b, nurl)
	b.Setenv("SMSBATCH_SMS_AUTH_TOKEN", "sim-secret-token-0123456789")
	simDir := b.TempDir()
	simAddr := freeAddr(b)
	startSimulatorBinary(b, simDir, simAddr)
	shared := append(instanceArgs(url, nurl, ns, simAddr), "--log-level", "error")
	var total time.Duration
	for range b.N {
		victim, vc := startBinary(b, b.TempDir(), freeAddr(b), shared...)
		_, survivor := startBinary(b, b.TempDir(), freeAddr(b), shared...)
		var ids []string
		for range 6 {
			ids = append(ids, vc.create(batchBody(recipients(200), "high")).ID)
		}
		time.Sleep(2 * time.Second)
		victim.cmd.Process.Signal(syscall.SIGKILL)
		victim.wait(b, 10*time.Second)
		killed := time.Now()
		at := map[string]int{}
		for _, id := range ids {
			at[id] = survivor.status(id).Progress.Completed
		}
		for len(at) > 0 {
			if time.Since(killed) > 2*time.Minute {
				b.Fatalf("%d batches did not move again", len(at))
			}
			for id, n := range at {
				if survivor.status(id).Progress.Completed > n+1 { // past anything in flight at the kill
					delete(at, id)
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		total += time.Since(killed)
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "failover-s")
}

// sendSpread creates n batches of body at once, spread over the instances'
// clients in turn, and waits for each to complete; it returns the messages sent.
func sendSpread(clients []*client, body any, n int) int {
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() { ids[i] = clients[i%len(clients)].create(body).ID })
	}
	wg.Wait()
	sent := 0
	for i, id := range ids {
		sent += clients[i%len(clients)].waitStatus(id, 10*time.Minute, "completed").Progress.Completed
	}
	return sent
}
