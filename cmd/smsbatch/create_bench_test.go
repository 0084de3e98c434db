package main

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"testing"
	"time"
)

// BenchmarkCreate1M times one create of 1,000,000 recipients through HTTP, on
// the embedded default and on PostgreSQL, each served by its own process so the
// figure includes its peak resident memory (VmHWM): the upload, the numbers'
// checks and the append (the goal: at most 10 s and 200 MB). Only with
// SMSBATCH_BENCH_BIG=1 (make bench).
func BenchmarkCreate1M(b *testing.B) {
	if os.Getenv("SMSBATCH_BENCH_BIG") != "1" {
		b.Skip("SMSBATCH_BENCH_BIG=1 runs it")
	}
	body := bodyOf(1_000_000, false)
	for _, store := range []string{"bolt", "postgres"} {
		b.Run("store="+store, func(b *testing.B) {
			s := newBenchServer(b, storeArgs(b, store)...)
			for b.Loop() {
				start := time.Now()
				req, _ := http.NewRequest("POST", "http://"+s.addr+"/api/batch", bytes.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+acmeKey)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusCreated {
					b.Fatalf("create: %d", resp.StatusCode)
				}
				b.ReportMetric(time.Since(start).Seconds(), "create-s")
			}
			b.ReportMetric(s.peakRSSMiB(), "peak-rss-MiB")
		})
	}
}
