package web

import (
	"strings"
	"testing"
)

// The batches page shows the first page of the list (20 newest). The live feed
// on /api/ws opens by sending the status of the tenant's 100 newest batches;
// those the page does not show (the 21st to the 100th newest) must not be put
// on top of the list, let alone in reverse order.
func TestListPageKeepsNewestFirstWhenTheFeedSendsItsSnapshot(t *testing.T) {
	out := runDashboardJS(t, `
const { onFetch, jsonResponse, sockets, tick, text } = dom;
localStorage.setItem("smsbatch.apiKey", "k");
const batch = (i) => ({
  id: "00000000-0000-4000-8000-0000000000" + String(i).padStart(2, "0"),
  name: "batch " + String(i).padStart(2, "0"),
  status: "completed", priority: "normal",
  createdAt: new Date(Date.UTC(2026, 0, 1, 0, 60 - i)).toISOString(),
  progress: { total: 1, completed: 1, failed: 0, pending: 0 },
});
const all = Array.from({ length: 30 }, (_, i) => batch(i + 1)); // newest first
onFetch((r) => {
  if (r.method === "POST" && r.path === "/api/ws/ticket") return jsonResponse(200, { ticket: "t" });
  if (r.method === "GET" && r.path.startsWith("/api/batch?")) return jsonResponse(200, { batches: all.slice(0, 20), nextCursor: "c20" });
  return jsonResponse(404, {});
});
const { render } = await import("./js/list.js");
const main = document.createElement("main");
const stop = render(main);
await tick(20);
const ws = sockets[0];
ws.open();
// The hub's first messages: the status of the 100 newest (here all 30), newest first.
for (const b of all) ws.send({ type: "batch.status", position: "9.9", batch: b });
await tick(20);
stop();
const rows = main.querySelectorAll("tr[data-id]").map((tr) => text(tr.querySelector(".batch-link")));
console.log(rows.join("|"));
`)
	rows := strings.Split(out, "|")
	t.Logf("rows shown: %d, first five %v", len(rows), rows[:min(5, len(rows))])
	if rows[0] != "batch 01" {
		t.Fatalf("the top row is %q, want the newest batch, \"batch 01\"; the rows: %v", rows[0], rows)
	}
	for i := 1; i < len(rows); i++ {
		if rows[i] < rows[i-1] {
			t.Fatalf("row %d (%q) is above row %d (%q): the list is not newest first: %v", i-1, rows[i-1], i, rows[i], rows)
		}
	}
}

// A batch created while the page is open still comes on top, from the feed.
func TestListPagePutsANewBatchOnTop(t *testing.T) {
	out := runDashboardJS(t, `
const { onFetch, jsonResponse, sockets, tick, text } = dom;
localStorage.setItem("smsbatch.apiKey", "k");
const batch = (i) => ({
  id: "00000000-0000-4000-8000-0000000000" + String(i).padStart(2, "0"),
  name: "batch " + String(i).padStart(2, "0"),
  status: "processing", priority: "normal",
  createdAt: new Date(Date.UTC(2026, 0, 1, 0, 60 - i)).toISOString(),
  updatedAt: new Date(Date.UTC(2026, 0, 1, 0, 60 - i)).toISOString(),
  progress: { total: 1, completed: 0, failed: 0, pending: 0 },
});
const all = Array.from({ length: 30 }, (_, i) => batch(i + 1));
onFetch((r) => {
  if (r.method === "POST" && r.path === "/api/ws/ticket") return jsonResponse(200, { ticket: "t" });
  if (r.method === "GET" && r.path.startsWith("/api/batch?")) return jsonResponse(200, { batches: all.slice(0, 20), nextCursor: "c20" });
  return jsonResponse(404, {});
});
const { render } = await import("./js/list.js");
const main = document.createElement("main");
const stop = render(main);
await tick(20);
const ws = sockets[0];
ws.open();
for (const b of all) ws.send({ type: "batch.status", position: "9.9", batch: b });
ws.send({ type: "batch.status", position: "10.0", batch: batch(0) }); // created just now
await tick(20);
stop();
console.log(main.querySelectorAll("tr[data-id]").map((tr) => text(tr.querySelector(".batch-link"))).join("|"));
`)
	rows := strings.Split(out, "|")
	if len(rows) != 21 || rows[0] != "batch 00" || rows[1] != "batch 01" || rows[20] != "batch 20" {
		t.Fatalf("rows %v, want the new batch 00 on top of the first page, 01 to 20", rows)
	}
}
