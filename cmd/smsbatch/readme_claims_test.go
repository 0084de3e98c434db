package main

import (
	"bytes"
	"encoding/csv"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The README lists --log-level as debug, info, warn or error, and a wrong
// --log-format is refused; a mistyped level ("warning", "verbose") must be
// refused too rather than silently logging at info.
func TestAnUnknownLogLevelIsRefused(t *testing.T) {
	for _, level := range []string{"warning", "verbose", "trace"} {
		_, err := ParseConfig([]string{"--log-level", level}, func(string) string { return "" })
		if err == nil || !strings.Contains(err.Error(), "log level") {
			t.Errorf("--log-level %s: %v, want refused", level, err)
		}
	}
	for _, level := range []string{"debug", "info", "warn", "error"} {
		if _, err := ParseConfig([]string{"--log-level", level}, func(string) string { return "" }); err != nil {
			t.Errorf("--log-level %s: %v", level, err)
		}
	}
}

// The README: an export "is not bound by --http-write-timeout as a whole: each
// write is, so an export goes on as long as the client keeps reading and is cut
// off when it has not taken a write's 64 KiB for that long". A client with the
// system's default socket buffers that reads steadily, 64 KiB every tenth of a
// second, never pausing, takes far more than 64 KiB per write timeout: it must
// get the whole export.
func TestASteadyReaderGetsTheWholeExport(t *testing.T) {
	skipShort(t)
	cfg := testConfig(t)
	cfg.HTTPWriteTimeout = time.Second
	c := startMain(t, cfg)
	const n = 8000 // 8 MB of rows: more than loopback's socket buffers take
	rcps := recipients(n)
	for i := range rcps {
		rcps[i].Variables["name"] = strings.Repeat("x", 1000)
	}
	body := batchBody(rcps, "low")
	body["options"] = map[string]any{"autoStart": false}
	id := c.create(body).ID

	req, _ := http.NewRequest("GET", c.base+"/api/batch/"+id+"/export.csv", nil)
	req.Header.Set("Authorization", "Bearer "+acmeKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	const rate = 640 << 10 // bytes a second: ten times 64 KiB
	began := time.Now()
	var got bytes.Buffer
	buf := make([]byte, 16<<10)
	for {
		k, err := resp.Body.Read(buf)
		got.Write(buf[:k])
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("a reader taking %d KiB/s (%d KiB per write timeout) was cut off after %s and %d bytes: %v",
				rate>>10, rate>>10*int(cfg.HTTPWriteTimeout/time.Second), time.Since(began).Round(time.Millisecond), got.Len(), err)
		}
		if ahead := time.Duration(float64(got.Len())/rate*float64(time.Second)) - time.Since(began); ahead > 0 {
			time.Sleep(ahead)
		}
	}
	rows, err := csv.NewReader(&got).ReadAll()
	if err != nil || len(rows) != n+1 {
		t.Fatalf("export: %d rows (%v), want %d", len(rows)-1, err, n)
	}
}
