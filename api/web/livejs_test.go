package web

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A reconnect the server refuses (409: too much happened after the position
// to replay, which a browser sees only as a socket closed before it opened)
// must not be retried with the same position for ever: the page then never
// gets live updates again and every retry costs a ticket (an event appended)
// and a replay scan of up to 100,000 events.
func TestLiveJSDropsThePositionAfterARefusedReconnect(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("SMSBATCH_REQUIRE_NODE") != "" {
			t.Fatal("node is not installed, and SMSBATCH_REQUIRE_NODE is set")
		}
		t.Skip("node not installed")
	}
	src, err := os.ReadFile("static/js/live.js")
	if err != nil {
		t.Fatal(err)
	}
	js := strings.Replace(string(src), `import { api } from "./api.js";`, `const api = globalThis.api;`, 1)
	if js == string(src) {
		t.Fatal("import line not found")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "live.mjs"), []byte(js), 0o600); err != nil {
		t.Fatal(err)
	}
	harness := `
const realSetTimeout = globalThis.setTimeout;
globalThis.setTimeout = (fn) => realSetTimeout(fn, 1); // no backoff waits
globalThis.location = { protocol: "http:", host: "example.test" };
globalThis.api = { ticket: async () => ({ ticket: "t" }) };
const urls = [];
globalThis.WebSocket = class {
  constructor(url) {
    this.url = url;
    urls.push(url);
    const n = urls.length;
    realSetTimeout(() => {
      if (n === 1) {
        // The first socket opens, gets a message, then the network drops it.
        this.onopen();
        this.onmessage({ data: JSON.stringify({ type: "batch.status", position: "5.0", batch: {} }) });
        this.onclose();
      } else {
        // Every reconnect with ?after= is refused (409 before the upgrade).
        if (url.includes("after=")) this.onclose(); else this.onopen();
      }
    }, 1);
  }
  close() {}
};
const { follow } = await import("./live.mjs");
const stop = follow({ path: "/api/ws", onMessage: () => {}, poll: async () => {} });
await new Promise((r) => realSetTimeout(r, 300));
stop();
console.log(JSON.stringify(urls.slice(0, 8)));
`
	if err := os.WriteFile(filepath.Join(dir, "harness.mjs"), []byte(harness), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, "harness.mjs")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	t.Logf("socket URLs: %s", out)
	var refused int
	for _, u := range strings.Split(strings.Trim(strings.TrimSpace(string(out)), "[]"), ",") {
		if strings.Contains(u, "after=") {
			refused++
		} else if refused > 0 {
			return // it gave up the position and reconnected without it
		}
	}
	t.Fatalf("after %d refused reconnects the page still reconnects with the same ?after=: it never gets live updates again", refused)
}
