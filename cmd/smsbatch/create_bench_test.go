package main

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"testing"
	"time"
)

// BenchmarkCreate1M times one create of 1,000,000 recipients through HTTP on
// the embedded default, and how long until the read models (the recipients'
// numbers among them) have caught up with it: the read models' work at create
// time must not hold the create up. Only with SMSBATCH_BENCH_BIG=1 (make bench).
func BenchmarkCreate1M(b *testing.B) {
	if os.Getenv("SMSBATCH_BENCH_BIG") != "1" {
		b.Skip("SMSBATCH_BENCH_BIG=1 runs it")
	}
	c := benchMain(b, func(cfg *Config) {})
	body := bodyOf(1_000_000, false)
	for b.Loop() {
		start := time.Now()
		req, _ := http.NewRequest("POST", c.base+"/api/batch", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+c.key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			b.Fatalf("create: %d", resp.StatusCode)
		}
		created := time.Since(start)
		for {
			more, err := c.main.store.ReadAll(b.Context(), c.main.runner.Position(), 1)
			if err != nil {
				b.Fatal(err)
			}
			if len(more) == 0 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		b.ReportMetric(created.Seconds(), "create-s")
		b.ReportMetric(time.Since(start).Seconds(), "caught-up-s")
	}
}
