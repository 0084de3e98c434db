package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/processors/sms"
	"github.com/smsbatch/smsbatch/processors/sms/httpprovider"
	"github.com/smsbatch/smsbatch/processors/sms/simulator"
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

// The README's scale-out example starts one standalone simulator "that they
// all send to, so a duplicate across instances would show in its one outbox".
// Started with the README's own arguments, a message two instances both send
// (one key: batch and index) must be in that outbox twice.
func TestTheREADMEsSharedSimulatorShowsADuplicateAcrossInstances(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`(?m)^\./bin/smsbatch simulator (.*?)\s*&?\s*$`).FindSubmatch(readme)
	if line == nil {
		t.Fatal("the README starts no standalone simulator")
	}
	const token = "change-me-sim-token"
	env := func(name string) string {
		if name == "SMSBATCH_SMS_AUTH_TOKEN" {
			return token
		}
		return ""
	}
	cfg, rest, err := parseConfig("smsbatch simulator", strings.Fields(string(line[1])), env, simulatorFlags...)
	if err != nil || len(rest) > 0 {
		t.Fatalf("the README's simulator arguments %q: %v %v", line[1], err, rest)
	}
	cfg.Addr, cfg.DataDir = freeAddr(t), t.TempDir()
	cfg.LogLevel = "warn"
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- runSimulator(ctx, cfg, io.Discard) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	waitListening(t, cfg.Addr)

	msg := sms.Message{IdempotencyKey: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b:7", To: "+14155550100", Body: "hello",
		BatchID: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", Index: 7}
	for instance := range 2 {
		p, err := httpprovider.New(httpprovider.Config{BaseURL: "http://" + cfg.Addr, AccountSID: cfg.SMSAccountSID, AuthToken: token})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Send(t.Context(), msg); err != nil {
			t.Fatalf("instance %d: %v", instance, err)
		}
	}
	entries, err := simulator.ReadOutbox(filepath.Join(cfg.DataDir, "sim-outbox.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Fatalf("one message sent by two instances is in the shared simulator's outbox %d times, want 2 (the README: a duplicate across instances would show there)", len(entries))
	}
}
