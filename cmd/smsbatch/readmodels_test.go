package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	projbolt "github.com/smsbatch/smsbatch/projections/bolt"
)

// readAll is everything the API shows of a tenant's batches: the list, and the
// status, analytics and errors of each batch.
func (c *client) readAll(ids ...string) map[string]json.RawMessage {
	c.t.Helper()
	out := map[string]json.RawMessage{}
	var raw json.RawMessage
	if code, _ := c.do("GET", "/api/batch?limit=100", nil, &raw); code != 200 {
		c.t.Fatalf("list: %d %s", code, raw)
	}
	out["list"] = raw
	for _, id := range ids {
		for _, path := range []string{"", "/analytics", "/errors?limit=2", "/errors?category=blocked"} {
			var raw json.RawMessage
			if code, _ := c.do("GET", "/api/batch/"+id+path, nil, &raw); code != 200 {
				c.t.Fatalf("GET %s%s: %d %s", id, path, code, raw)
			}
			out[id+path] = raw
		}
	}
	return out
}

func sameReads(t *testing.T, what string, got, want map[string]json.RawMessage) {
	t.Helper()
	for key, w := range want {
		if string(got[key]) != string(w) {
			t.Errorf("%s: %s differs:\n got %s\nwant %s", what, key, got[key], w)
		}
	}
}

// TestEmbeddedReadModelsPersistAndRebuild follows the embedded read models
// through what an operator does: restart, upgrade from a version that kept
// them in memory (no file yet), and rebuild them with the command.
func TestEmbeddedReadModelsPersistAndRebuild(t *testing.T) {
	skipShort(t)
	cfg := testConfig(t)
	if cfg.ReadStore != "bolt" {
		t.Fatalf("default read store %q, want bolt", cfg.ReadStore)
	}
	c := startMain(t, cfg)
	rcps := append(recipients(4),
		recipient{PhoneNumber: "+15005550004", Variables: map[string]string{"name": "blocked"}},
		recipient{PhoneNumber: "+15005550001", Variables: map[string]string{"name": "invalid"}})
	first := c.create(batchBody(rcps, "high"))
	second := c.create(batchBody(rcps[2:], "high"))
	c.waitStatus(first.ID, 30*time.Second, "completed")
	c.waitStatus(second.ID, 30*time.Second, "completed")
	// The delivery receipts come after the completion: read once they are in,
	// so that they are part of what must survive.
	c.waitReceipts(first.ID, 20*time.Second)
	c.waitReceipts(second.ID, 20*time.Second)
	want := c.readAll(first.ID, second.ID)
	if !strings.Contains(string(want[first.ID+"/errors?category=blocked"]), "+15005550004") {
		t.Fatalf("no blocked error to compare: %s", want[first.ID+"/errors?category=blocked"])
	}

	// While the service runs, the command refuses and says why.
	var out strings.Builder
	err := rebuildProjections(context.Background(), cfg, "all", &out)
	if err == nil || !strings.Contains(err.Error(), "stop the service first") {
		t.Fatalf("rebuild while the service runs: %v, want an error saying to stop it first", err)
	}
	c.stop()

	path := filepath.Join(cfg.DataDir, projbolt.FileName)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("no read models in the data directory: %v", err)
	}
	c = startMain(t, cfg)
	sameReads(t, "after a restart", c.readAll(first.ID, second.ID), want)
	c.stop()

	// A data directory of the version that kept the read models in memory.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	c = startMain(t, cfg)
	sameReads(t, "built from the events of a data directory without read models", c.readAll(first.ID, second.ID), want)
	c.stop()

	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := rebuildProjections(context.Background(), cfg, "all", &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "rebuild: ") || !strings.Contains(out.String(), "events/s") {
		t.Fatalf("rebuild printed no progress: %q", out.String())
	}
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if os.SameFile(before, after) {
		t.Error("the rebuild did not put a new file in place")
	}
	if _, err := os.Stat(path + ".rebuild"); !os.IsNotExist(err) {
		t.Errorf("the rebuild left its file behind: %v", err)
	}
	c = startMain(t, cfg)
	sameReads(t, "after the rebuild command", c.readAll(first.ID, second.ID), want)

	// A mistyped data directory is an error, not an empty rebuild.
	typo := cfg
	typo.DataDir = filepath.Join(t.TempDir(), "dta")
	if err := rebuildProjections(context.Background(), typo, "all", &out); err == nil || !strings.Contains(err.Error(), "no event store") {
		t.Errorf("rebuild in a data directory without events: %v, want an error", err)
	}
	if _, err := os.Stat(typo.DataDir); !os.IsNotExist(err) {
		t.Errorf("the rebuild created the data directory it did not find: %v", err)
	}
}
