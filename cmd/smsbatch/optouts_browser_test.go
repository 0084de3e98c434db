package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestOptOutsAndReceiptsInABrowser drives the dashboard's opt-out page (view,
// add, remove, the other tenant's list apart); checks that a batch's page
// shows its delivery receipts, which come after the batch completed, and its
// opted-out recipient as skipped; and creates a batch from the form with
// quiet hours, a time zone and a validity, refused at those fields first,
// whose page shows its recipients waiting for the quiet hours to end, and the
// tenant's rate cap holding it.
func TestOptOutsAndReceiptsInABrowser(t *testing.T) {
	skipShort(t)
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("SMSBATCH_REQUIRE_BROWSER") == "1" {
			t.Fatalf("SMSBATCH_REQUIRE_BROWSER=1 but there is no browser: %v", err)
		}
		t.Skipf("no browser at %s (apt-get install -y chromium)", chromiumPath)
	}
	t.Parallel()
	cfg := testConfig(t)
	cfg.SimReceiptDelay = 2 * time.Second
	// Below every priority's rate: a running batch's page says the cap holds it.
	cfg.TenantMaxRate = 1.5
	c := startMain(t, cfg)
	base := dashboardURL(t, c)
	if code, _ := c.do("POST", "/api/optouts", map[string]string{"phoneNumber": "+14155550177"}, nil); code != 201 {
		t.Fatalf("add through the API: %d", code)
	}
	if code, _ := c.as(otherKey).do("POST", "/api/optouts", map[string]string{"phoneNumber": "+14155550199"}, nil); code != 201 {
		t.Fatalf("add for the other tenant: %d", code)
	}
	ctx := newBrowser(t)
	do(t, ctx, 15*time.Second,
		chromedp.Navigate(base+"/#/optouts"),
		chromedp.WaitVisible(chromedp.ID("key-input")),
		chromedp.SendKeys(chromedp.ID("key-input"), acmeKey),
		chromedp.Click(chromedp.CSS(`#key-form button[type=submit]`)),
	)
	waitFor(t, ctx, 10*time.Second, "the list with the number added through the API, not the other tenant's",
		`document.querySelector("#optout-total").textContent === "1" &&
		 !!document.querySelector('#optouts tr[data-phone="+14155550177"]') &&
		 !document.querySelector('#optouts tr[data-phone="+14155550199"]')`)

	// A number that is not one is refused at its field; a national one is
	// normalised.
	do(t, ctx, 5*time.Second,
		chromedp.SendKeys(chromedp.ID("optout-phone"), "12"),
		chromedp.Click(chromedp.ID("optout-add")),
	)
	waitFor(t, ctx, 10*time.Second, "the problem at the field", `document.querySelector("#optout-error").textContent.length > 0`)
	do(t, ctx, 5*time.Second,
		chromedp.Evaluate[chromedp.Void](`document.getElementById("optout-phone").value = ""`),
		chromedp.SendKeys(chromedp.ID("optout-phone"), "(415) 555-0100"),
		chromedp.Click(chromedp.ID("optout-add")),
	)
	waitFor(t, ctx, 10*time.Second, "the number added, in E.164",
		`document.querySelector("#optout-total").textContent === "2" &&
		 !!document.querySelector('#optouts tr[data-phone="+14155550100"]')`)
	saveScreenshot(t, ctx, "optouts.png", "optouts.png")

	do(t, ctx, 5*time.Second, chromedp.Click(chromedp.CSS(`#optouts tr[data-phone="+14155550177"] button`)))
	waitFor(t, ctx, 10*time.Second, "the number removed",
		`document.querySelector("#optout-total").textContent === "1" &&
		 !document.querySelector('#optouts tr[data-phone="+14155550177"]')`)
	var list struct{ Total int }
	if c.do("GET", "/api/optouts", nil, &list); list.Total != 1 {
		t.Fatalf("the API's list after the page's add and remove holds %d numbers, want 1", list.Total)
	}
	if c.as(otherKey).do("GET", "/api/optouts", nil, &list); list.Total != 1 {
		t.Fatalf("the other tenant's list holds %d numbers, want 1", list.Total)
	}

	// A batch's page shows the receipts as they come, after the completion,
	// and the number opted out on the page as skipped, not as left to send.
	body := receiptBatch(6, "+15005550006")
	body["recipients"] = append(body["recipients"].([]recipient), recipient{PhoneNumber: "+14155550100", Variables: map[string]string{"name": "Gone"}})
	st := c.create(body)
	do(t, ctx, 5*time.Second, chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`location.hash = "#/batch/%s"`, st.ID)))
	waitFor(t, ctx, 30*time.Second, "the batch completed",
		`document.querySelector("#batch-status .badge")?.textContent === "completed"`)
	waitFor(t, ctx, 20*time.Second, "5 delivered and 1 undelivered in the legend and the bar",
		`document.querySelector("#count-delivered")?.textContent === "5" &&
		 document.querySelector("#count-undelivered").textContent === "1" &&
		 parseFloat(document.querySelector("#batch-progress .delivered").style.width) > 80 &&
		 parseFloat(document.querySelector("#batch-progress .undelivered").style.width) > 10`)
	waitFor(t, ctx, 10*time.Second, "the delivery rate", `document.querySelector("#delivery-rate").textContent === "83%"`)
	waitFor(t, ctx, 10*time.Second, "1 skipped in the legend and the bar, nothing left to send",
		`document.querySelector("#count-skipped").textContent === "1" &&
		 document.querySelector("#count-remaining").textContent === "0" &&
		 document.querySelector("#count-total").textContent === "7" &&
		 parseFloat(document.querySelector("#batch-progress .skipped").style.width) > 10`)
	if got := c.status(st.ID).Progress; got.Skipped != 1 || got.Completed != 6 {
		t.Fatalf("the API's progress: %+v; want 6 completed and 1 skipped", got)
	}
	saveScreenshot(t, ctx, "batch-receipts.png", "")

	createQuietBatch(t, ctx, c)
}

// createQuietBatch fills the create form with quiet hours that hold now (in
// UTC, from an hour ago to two hours ahead), first with a time zone that is
// none and a validity already past, which the API refuses at those fields,
// then right. The batch's page shows its recipients waiting and its quiet
// hours and validity, and the API has them as entered. The tenant's rate cap
// (1.5/s) holds the batch, and its page says so.
func createQuietBatch(t *testing.T, ctx context.Context, c *client) {
	t.Helper()
	now := time.Now().UTC()
	start, end := now.Add(-time.Hour).Format("15:04"), now.Add(2*time.Hour).Format("15:04")
	// datetime-local is the browser's local time: the page computes the value,
	// and returns the instant it stands for.
	localIn := func(d time.Duration) string {
		return eval[string](t, ctx, fmt.Sprintf(`(() => {
			const d = new Date(Date.now() + %d); d.setSeconds(0, 0);
			const p = (n) => String(n).padStart(2, "0");
			document.getElementById("valid-until-input").value =
				[d.getFullYear(), p(d.getMonth() + 1), p(d.getDate())].join("-") + "T" + p(d.getHours()) + ":" + p(d.getMinutes());
			return d.toISOString(); })()`, d.Milliseconds()))
	}
	do(t, ctx, 10*time.Second,
		chromedp.Evaluate[chromedp.Void](`location.hash = "#/new"`),
		chromedp.WaitVisible(chromedp.ID("template")),
		chromedp.SendKeys(chromedp.ID("template"), "Hi {{name}}, see you tomorrow"),
		chromedp.SetValue(chromedp.ID("quiet-start"), start),
		chromedp.SetValue(chromedp.ID("quiet-end"), end),
		chromedp.SendKeys(chromedp.ID("timezone"), "Mars/Olympus"),
	)
	paste(t, ctx, "recipients", "phoneNumber,name\n+14155550300,Ada\n+14155550301,Grace\n+14155550302,Linus\n")
	localIn(-time.Hour)
	do(t, ctx, 5*time.Second, chromedp.Click(chromedp.ID("create-submit")))
	waitFor(t, ctx, 10*time.Second, "the time zone and the validity refused at their fields",
		`document.querySelector("#timezone-error").textContent.includes("IANA") &&
		 document.querySelector("#timezone").getAttribute("aria-invalid") === "true" &&
		 document.querySelector("#valid-until-error").textContent.includes("past") &&
		 document.querySelector("#valid-until-input").getAttribute("aria-invalid") === "true" &&
		 document.querySelector("#quiet-error").textContent === "" && location.hash === "#/new"`)
	saveScreenshot(t, ctx, "create-quiet-refused.png", "")

	do(t, ctx, 5*time.Second,
		chromedp.Evaluate[chromedp.Void](`document.getElementById("timezone").value = ""`),
		chromedp.SendKeys(chromedp.ID("timezone"), "UTC"),
	)
	validUntil, err := time.Parse(time.RFC3339, localIn(3*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	do(t, ctx, 5*time.Second, chromedp.Click(chromedp.ID("create-submit")))
	waitFor(t, ctx, 10*time.Second, "the batch page", `location.hash.startsWith("#/batch/") && !!document.querySelector("#batch-status .badge")`)
	id := strings.TrimPrefix(eval[string](t, ctx, `location.hash`), "#/batch/")

	var st struct {
		ValidUntil *time.Time `json:"validUntil"`
		QuietHours *struct {
			Start, End, Timezone string
		} `json:"quietHours"`
	}
	if code, _ := c.do("GET", "/api/batch/"+id, nil, &st); code != 200 {
		t.Fatalf("status of %s: %d", id, code)
	}
	if q := st.QuietHours; q == nil || q.Start != start || q.End != end || q.Timezone != "UTC" {
		t.Fatalf("the API's quiet hours: %+v; want %s to %s in UTC", q, start, end)
	}
	if st.ValidUntil == nil || !st.ValidUntil.Equal(validUntil) {
		t.Fatalf("the API's validUntil: %v; want %v", st.ValidUntil, validUntil)
	}

	waitFor(t, ctx, 30*time.Second, "the recipients waiting, in the legend and the bar, and none sent",
		`Number(document.querySelector("#count-waiting").textContent) > 0 &&
		 parseFloat(document.querySelector("#batch-progress .waiting").style.width) > 0 &&
		 !document.querySelector("#count-waiting").parentElement.hidden &&
		 document.querySelector("#count-completed").textContent === "0"`)
	waitFor(t, ctx, 10*time.Second, "the quiet hours and the validity in the stats",
		fmt.Sprintf(`document.querySelector("#quiet-hours").textContent === %q &&
		 document.querySelector("#valid-until").textContent !== "–"`, start+"–"+end+"UTC"))
	waitFor(t, ctx, 10*time.Second, "the rate cap's note",
		`!document.querySelector("#cap-note").hidden &&
		 document.querySelector("#cap-note").textContent.startsWith("Held to 1.5/s by the account's rate cap")`)
	if p := c.status(id).Progress; p.Waiting == 0 || p.Completed != 0 {
		t.Fatalf("the API's progress: %+v; want recipients waiting and none sent", p)
	}
	saveScreenshot(t, ctx, "batch-quiet.png", "")
}
