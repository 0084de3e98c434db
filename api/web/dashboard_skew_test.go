package web

import (
	"strings"
	"testing"
)

// Two instances whose clocks differ by 50 ms (any NTP-synced cluster comes
// close): the processor on one recorded the batch's last answer, the user's
// Pause ran on the other a moment later, its event stamped with the earlier
// clock. updatedAt, each event's own clock, goes back: the page takes both the
// Pause's answer and the feed's "paused" status for stale, keeps showing the
// batch processing with Pause enabled (a second click: 409), and, with nothing
// in flight to make a later event, never shows the pause.
func TestBatchPageShowsAPauseStampedByAClockBehind(t *testing.T) {
	out := runDashboardJS(t, batchPagePrelude+`
await tick(20);
const ws = sockets[0];
ws.open();
await tick(20);
for (const d of gets.splice(0)) d.resolve(jsonResponse(200, status("processing", 3, { revision: 20, updatedAt: "2026-01-01T00:01:00.050Z" })));
await tick(20);
main.querySelector("#action-pause").click();
await tick(5);
acts[0]?.resolve(jsonResponse(200, status("paused", 3, { revision: 21, updatedAt: "2026-01-01T00:01:00.020Z" })));
await tick(20);
ws.send({ type: "batch.status", position: "9.0", batch: status("paused", 3, { revision: 21, updatedAt: "2026-01-01T00:01:00.020Z" }) });
await tick(20);
for (const d of gets.splice(0)) d.resolve(jsonResponse(200, status("paused", 3, { revision: 21, updatedAt: "2026-01-01T00:01:00.020Z" })));
await tick(20);
console.log("shown: " + shown() + " pause enabled=" + !main.querySelector("#action-pause").disabled + " pause hidden=" + main.querySelector("#action-pause").hidden);
stop();
`)
	t.Log(out)
	if !strings.Contains(out, "shown: paused") {
		t.Fatalf("the page does not show the pause it was answered:\n%s", out)
	}
}
