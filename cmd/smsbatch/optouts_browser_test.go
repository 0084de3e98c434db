package main

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestOptOutsAndReceiptsInABrowser drives the dashboard's opt-out page (view,
// add, remove, the other tenant's list apart) and checks that a batch's page
// shows its delivery receipts, which come after the batch completed.
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

	// A batch's page shows the receipts as they come, after the completion.
	st := c.create(receiptBatch(6, "+15005550006"))
	do(t, ctx, 5*time.Second, chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`location.hash = "#/batch/%s"`, st.ID)))
	waitFor(t, ctx, 30*time.Second, "the batch completed",
		`document.querySelector("#batch-status .badge")?.textContent === "completed"`)
	waitFor(t, ctx, 20*time.Second, "5 delivered and 1 undelivered in the legend and the bar",
		`document.querySelector("#count-delivered")?.textContent === "5" &&
		 document.querySelector("#count-undelivered").textContent === "1" &&
		 parseFloat(document.querySelector("#batch-progress .delivered").style.width) > 80 &&
		 parseFloat(document.querySelector("#batch-progress .undelivered").style.width) > 10`)
	waitFor(t, ctx, 10*time.Second, "the delivery rate", `document.querySelector("#delivery-rate").textContent === "83%"`)
	saveScreenshot(t, ctx, "batch-receipts.png", "")
}
