package web

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// liveJSURLs runs live.js's follow under node against a fake WebSocket whose
// n-th socket (from 1) does what behave says, and returns the URLs the page
// opened sockets at.
func liveJSURLs(t *testing.T, behave string) []string {
	t.Helper()
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
` + behave + `
    }, 1);
  }
  close() {}
};
const { follow } = await import("./live.mjs");
const stop = follow({ path: "/api/ws", onMessage: () => {}, poll: async () => {} });
await new Promise((r) => realSetTimeout(r, 300));
stop();
console.log(JSON.stringify(urls.slice(0, 12)));
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
	return strings.Split(strings.Trim(strings.TrimSpace(string(out)), "[]"), ",")
}

// The first socket opens, gets a message at position 5.0, then drops.
const openThenDrop = `
      if (n === 1) {
        this.onopen();
        this.onmessage({ data: JSON.stringify({ type: "batch.status", position: "5.0", batch: {} }) });
        this.onclose();
        return;
      }`

// A reconnect the server refuses (409: too much happened after the position
// to replay, which a browser sees only as a socket closed before it opened)
// is not retried with the same position for ever: the page would never get
// live updates again, and every retry costs a ticket and a replay scan.
func TestLiveJSDropsThePositionAfterRefusedReconnects(t *testing.T) {
	urls := liveJSURLs(t, openThenDrop+`
      // Every reconnect with ?after= is refused (409 before the upgrade).
      if (this.url.includes("after=")) this.onclose(); else this.onopen();`)
	refused := 0
	for _, u := range urls {
		if strings.Contains(u, "after=") {
			refused++
		} else if refused > 0 {
			return // it gave up the position and reconnected without it
		}
	}
	t.Fatalf("after %d refused reconnects the page still reconnects with the same ?after=: it never gets live updates again", refused)
}

// One reconnect failing before it opens (the instance still starting: 503)
// does not cost the position: the next one still asks for what was missed.
func TestLiveJSKeepsThePositionAfterOneFailedReconnect(t *testing.T) {
	urls := liveJSURLs(t, openThenDrop+`
      if (n === 2) { this.onclose(); return; }
      this.onopen();`)
	if len(urls) < 3 || !strings.Contains(urls[2], "after=5.0") {
		t.Fatalf("socket URLs %v: the third lost the position after one failed try; the errors in between are never replayed", urls)
	}
}
