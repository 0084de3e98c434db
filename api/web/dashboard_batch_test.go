package web

import (
	"strings"
	"testing"
)

// batchPagePrelude sets up the batch page of batch id "B" with a fake API:
// GET /api/batch/B answers from the queue gets (each a deferred the test
// resolves), POST /api/ws/ticket answers a ticket, POST /api/v2/batch/B/<action>
// waits for a deferred in acts.
const batchPagePrelude = `
const { onFetch, jsonResponse, sockets, tick, text, deferred, requests } = dom;
localStorage.setItem("smsbatch.apiKey", "k");
const status = (st, completed, extra = {}) => ({
  id: "B", name: "Spring sale", text: "hi", status: st, priority: "normal",
  createdAt: "2026-01-01T00:00:00Z",
  progress: { total: 10, completed, failed: 0, pending: 0, delivered: extra.delivered ?? 0, undelivered: 0 },
  metrics: {}, ...extra,
});
const gets = [];
const acts = [];
onFetch((r) => {
  if (r.method === "POST" && r.path === "/api/ws/ticket") return jsonResponse(200, { ticket: "t" });
  if (r.method === "GET" && r.path === "/api/batch/B") { const d = deferred(); gets.push(d); return d.promise; }
  if (r.method === "POST" && r.path.startsWith("/api/v2/batch/B/")) { const d = deferred(); acts.push(d); return d.promise; }
  if (r.method === "GET" && r.path.startsWith("/api/batch/B/errors")) return jsonResponse(200, { errors: [] });
  if (r.method === "GET" && r.path.startsWith("/api/batch/B/analytics")) return jsonResponse(200, {});
  return jsonResponse(404, {});
});
const { render } = await import("./js/batch.js");
const main = document.createElement("main");
document.body.append(main);
const stop = render(main, "B");
const shown = () => text(main.querySelector("#batch-status")) + " " + text(main.querySelector("#count-completed")) + "/" + text(main.querySelector("#count-total"));
`

// A status the page already has from the live feed is not replaced by an
// older one from a GET that was answered earlier but arrived later: the page
// would show a finished batch as still sending, and, having stopped following
// a finished batch, never correct it.
func TestBatchPageIgnoresAStaleStatusAfterANewerOne(t *testing.T) {
	out := runDashboardJS(t, batchPagePrelude+`
await tick(20);
// The feed opens and says the batch is done: every message sent and delivered.
const ws = sockets[0];
ws.open();
ws.send({ type: "batch.status", position: "7.0", batch: status("completed", 10, { delivered: 10, updatedAt: "2026-01-01T00:05:00Z" }) });
await tick(10);
console.log("after feed: " + shown() + " " + text(main.querySelector(".live")));
// Then the page's GETs (the first load, and the catch-up on open), read by
// the server a moment before the batch finished, arrive.
for (const d of gets) d.resolve(jsonResponse(200, status("processing", 6, { updatedAt: "2026-01-01T00:04:59Z" })));
await tick(50);
console.log("after GETs: " + shown() + " " + text(main.querySelector(".live")) + " pause enabled=" + !main.querySelector("#action-pause").disabled);
stop();
`)
	t.Log(out)
	if !strings.Contains(out, "after GETs: completed 10/10") {
		t.Fatalf("an older status from a late GET replaced the newer one from the feed:\n%s", out)
	}
}

// Clicking Pause twice (the second click after a live update re-enabled the
// button, while the first command was still in flight) sends one command, not
// two with different Idempotency-Keys.
func TestBatchPageSendsOnePauseForTwoClicks(t *testing.T) {
	out := runDashboardJS(t, batchPagePrelude+`
await tick(20);
for (const d of gets.splice(0)) d.resolve(jsonResponse(200, status("processing", 2, { updatedAt: "2026-01-01T00:01:00Z" })));
const ws = sockets[0];
ws.open();
await tick(20);
for (const d of gets.splice(0)) d.resolve(jsonResponse(200, status("processing", 2, { updatedAt: "2026-01-01T00:01:00Z" })));
await tick(20);
const pause = main.querySelector("#action-pause");
pause.click();                       // the first click: POST .../pause in flight
await tick(5);
// The batch keeps sending while the command travels: the feed says so.
ws.send({ type: "batch.status", position: "8.0", batch: status("processing", 3, { updatedAt: "2026-01-01T00:01:01Z" }) });
await tick(5);
pause.click();                       // the user clicks again, or double-clicked
await tick(5);
const posts = requests.filter((r) => r.method === "POST" && r.path === "/api/v2/batch/B/pause");
console.log("pause requests: " + posts.length + " keys: " + posts.map((r) => r.headers["Idempotency-Key"]).join(","));
// The first pauses the batch; the second, a different command, is refused.
acts[0]?.resolve(jsonResponse(200, status("paused", 3, { updatedAt: "2026-01-01T00:01:02Z" })));
acts[1]?.resolve(jsonResponse(409, { error: { code: "conflict", message: "batch is paused, not processing" } }));
await tick(30);
for (const d of gets.splice(0)) d.resolve(jsonResponse(200, status("paused", 3, { updatedAt: "2026-01-01T00:01:02Z" })));
await tick(30);
console.log("shown: " + shown() + " | message: " + text(main.querySelector(".alert") || document.createElement("p")));
stop();
`)
	t.Log(out)
	if !strings.Contains(out, "pause requests: 1 ") {
		t.Fatalf("two clicks on Pause sent two commands:\n%s", out)
	}
}

// A double click on Pause pauses the batch and nothing more. The first click's
// answer (or the feed) shows the batch paused at once, and Resume takes Pause's
// place in the actions group (the group is right-aligned, Pause and Resume are
// never shown together, and Cancel and Export keep their places): the second
// click of the double click must not land on an enabled Resume.
func TestBatchPageDoubleClickOnPauseDoesNotResume(t *testing.T) {
	out := runDashboardJS(t, batchPagePrelude+`
await tick(20);
for (const d of gets.splice(0)) d.resolve(jsonResponse(200, status("processing", 2, { updatedAt: "2026-01-01T00:01:00Z" })));
await tick(20);
const slot = () => main.querySelector("[aria-label='Batch actions']") || main.querySelectorAll("div").find((d) => d.getAttribute("aria-label") === "Batch actions");
const firstVisible = () => slot().children.find((b) => !b.hidden);
const first = firstVisible();
console.log("first click on: " + text(first));
first.click();
await tick(2);
// The server pauses at once and answers.
acts[0].resolve(jsonResponse(200, status("paused", 2, { updatedAt: "2026-01-01T00:01:01Z" })));
await tick(2);
const second = firstVisible();
console.log("second click on: " + text(second) + " enabled=" + !second.disabled);
second.click(2); // the double click's second click
await tick(10);
const posts = requests.filter((r) => r.method === "POST" && r.path.startsWith("/api/v2/batch/B/")).map((r) => r.path.split("/").pop());
console.log("commands sent: " + posts.join(","));
stop();
`)
	t.Log(out)
	if !strings.Contains(out, "commands sent: pause\n") && !strings.HasSuffix(out, "commands sent: pause") {
		t.Fatalf("a double click on Pause sent more than the pause:\n%s", out)
	}
}

// "Retry failed" creates a batch sending the failed recipients again. When its
// request fails for the network, the button comes back; clicking it again is
// the same request and must carry the same Idempotency-Key, or a first request
// that did reach the server leaves two retry batches, and every failed
// recipient is sent to twice.
func TestBatchPageRetryFailedAgainAfterANetworkErrorIsTheSameRequest(t *testing.T) {
	out := runDashboardJS(t, batchPagePrelude+`
await tick(20);
for (const d of gets.splice(0)) d.resolve(jsonResponse(200, status("completed", 8, { progress: { total: 10, completed: 8, failed: 2, pending: 0 }, updatedAt: "2026-01-01T00:01:00Z" })));
await tick(20);
const retry = main.querySelector("#action-retry");
console.log("retry shown=" + !retry.hidden);
let n = 0;
acts.length = 0;
// Every try of the first click fails for the network.
const failNext = async () => { for (;;) { await tick(1); if (acts[n]) { acts[n++].reject(new TypeError("Failed to fetch")); } if (n >= 3) break; } };
retry.click();
await failNext();
await tick(20);
console.log("message: " + text(main.querySelector(".alert") || document.createElement("p")) + " retry enabled=" + !retry.disabled);
retry.click();
await tick(10);
acts[n]?.resolve(jsonResponse(201, { id: "R2", status: "processing" }));
await tick(10);
const keys = [...new Set(requests.filter((r) => r.method === "POST" && r.path.endsWith("/retry-failed")).map((r) => r.headers["Idempotency-Key"]))];
console.log("distinct keys: " + keys.length);
stop();
`)
	t.Log(out)
	if !strings.Contains(out, "distinct keys: 1") {
		t.Fatalf("clicking Retry failed again after a network error sent a new Idempotency-Key:\n%s", out)
	}
}

// A command whose request never returns (a proxy holding it, a connection
// gone silent) gives up, and the page's actions come back: they stayed
// disabled until a reload.
func TestBatchPageActionsComeBackAfterACommandThatNeverReturns(t *testing.T) {
	out := runDashboardJS(t, batchPagePrelude+`
await tick(20);
for (const d of gets.splice(0)) d.resolve(jsonResponse(200, status("processing", 2, { revision: 5 })));
await tick(20);
main.querySelector("#action-pause").click(); // its request is never answered
await tick(7500); // three tries, each cut off after its timeout (2 s here)
console.log("pause requests: " + requests.filter((r) => r.path === "/api/v2/batch/B/pause").length +
  " pause enabled=" + !main.querySelector("#action-pause").disabled +
  " message: " + text(main.querySelector(".alert") || document.createElement("p")));
stop();
`)
	t.Log(out)
	if !strings.Contains(out, "pause enabled=true") {
		t.Fatalf("the actions stayed disabled after a command that never returned:\n%s", out)
	}
}
