package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"
)

// TestDashboardCampaigns drives the dashboard's campaign pages in headless
// Chromium against the real program: a named batch with its text, a finished
// batch without pause or cancel, the recipients tab filtered by status and
// searched by number, the export downloaded, retry-failed making a linked
// batch, cancel asking first, and every page at 390 px wide without
// horizontal scrolling. Screenshots go to docs/screenshots with
// SMSBATCH_UPDATE_SCREENSHOTS=1.
func TestDashboardCampaigns(t *testing.T) {
	skipWithoutBrowser(t)
	t.Parallel()
	cfg := testConfig(t)
	cfg.RateUnlimited = true
	cfg.HTTPRateLimit = 0
	c := startMain(t, cfg)
	base := dashboardURL(t, c)

	sale := c.create(campaignBody(12, "Spring Sale"))
	c.waitStatus(sale.ID, 30*time.Second, "completed")
	later := batchBody(recipients(4), "low")
	later["options"] = map[string]any{"name": "Autumn preview", "scheduleTime": time.Now().Add(time.Hour).Format(time.RFC3339)}
	pending := c.create(later)

	ctx := newBrowser(t)
	downloads := t.TempDir()
	do(t, ctx, 15*time.Second,
		chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
			_, err := chromedp.CallBrowser(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
				Behavior: browser.SetDownloadBehaviorBehaviorAllow, DownloadPath: downloads})
			return err
		}),
		chromedp.Navigate(base+"/#/batch/"+sale.ID),
		chromedp.WaitVisible(chromedp.ID("key-input")),
		chromedp.SendKeys(chromedp.ID("key-input"), acmeKey),
		chromedp.Click(chromedp.CSS(`#key-form button[type=submit]`)),
	)

	// The name, the text; a finished batch offers no pause or cancel.
	waitFor(t, ctx, 10*time.Second, "the batch's name, text and state",
		`document.querySelector("#batch-name").textContent === "Spring Sale" &&
		 document.querySelector("#batch-text").textContent === "Hi {{name}}, spring sale ends Sunday" &&
		 document.querySelector("#batch-status .badge").textContent === "completed"`)
	waitFor(t, ctx, 5*time.Second, "no pause or cancel, a retry and an export",
		`document.querySelector("#action-pause").hidden && document.querySelector("#action-cancel").hidden &&
		 !document.querySelector("#action-retry").hidden && !document.querySelector("#action-export").hidden`)

	// The recipients tab: every recipient, by status, by number.
	do(t, ctx, 5*time.Second, chromedp.Click(chromedp.ID("tab-recipients")))
	waitFor(t, ctx, 10*time.Second, "12 recipients listed",
		`document.querySelectorAll("#recipients tbody tr[data-index]").length === 12`)
	do(t, ctx, 5*time.Second,
		chromedp.SetValue(chromedp.ID("recipient-status"), "failed"),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("recipient-status").dispatchEvent(new Event("change"))`),
	)
	waitFor(t, ctx, 10*time.Second, "the two failed recipients",
		`(() => { const rows = [...document.querySelectorAll("#recipients tbody tr[data-index]")];
		  return rows.length === 2 && rows.every(r => r.dataset.status === "failed") &&
		    rows[0].textContent.includes("blocked") && rows[1].textContent.includes("invalid_number"); })()`)
	saveScreenshot(t, ctx, "recipients.png", "recipients.png")
	do(t, ctx, 5*time.Second,
		chromedp.SetValue(chromedp.ID("recipient-status"), ""),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("recipient-status").dispatchEvent(new Event("change"))`),
		chromedp.SendKeys(chromedp.ID("recipient-phone"), "+14152000005"),
	)
	waitFor(t, ctx, 10*time.Second, "the one recipient with that number",
		`(() => { const rows = [...document.querySelectorAll("#recipients tbody tr[data-index]")];
		  return rows.length === 1 && rows[0].dataset.index === "5" && rows[0].dataset.status === "sent"; })()`)

	// The export downloads as a file, by a link with a single-use ticket.
	do(t, ctx, 5*time.Second, chromedp.Click(chromedp.ID("action-export")))
	file := filepath.Join(downloads, "batch-"+sale.ID+".csv")
	deadline := time.Now().Add(15 * time.Second)
	for {
		data, err := os.ReadFile(file)
		if err == nil && strings.Count(string(data), "\n") == 13 {
			if !strings.HasPrefix(string(data), "index,phoneNumber,status,") || !strings.Contains(string(data), ",blocked,") {
				t.Fatalf("the downloaded export:\n%s", data)
			}
			break
		}
		if time.Now().After(deadline) {
			entries, _ := os.ReadDir(downloads)
			t.Fatalf("no export downloaded into %s (%v): %v", downloads, entries, err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Retry the failed recipients: a new batch, linked both ways.
	do(t, ctx, 5*time.Second, chromedp.Click(chromedp.ID("action-retry")))
	waitFor(t, ctx, 10*time.Second, "the retry's page",
		fmt.Sprintf(`location.hash.startsWith("#/batch/") && location.hash !== "#/batch/%s" &&
		 document.querySelector("#batch-name").textContent === "Retry of Spring Sale" &&
		 document.querySelector("#batch-links").textContent.startsWith("Retry of")`, sale.ID))
	retryID := strings.TrimPrefix(eval[string](t, ctx, `location.hash`), "#/batch/")
	if st := c.campaign(retryID); st.RetryOf != sale.ID || st.Progress.Total != 2 {
		t.Fatalf("the retry made from the dashboard: %+v", st)
	}
	// The server first, so a failure tells a batch that did not finish from a
	// page that was not told.
	c.waitStatus(retryID, 30*time.Second, "completed")
	waitFor(t, ctx, 10*time.Second, "the page to show the retry finished", `document.querySelector("#batch-status .badge").textContent === "completed"`)
	saveScreenshot(t, ctx, "retry.png", "retry.png")
	do(t, ctx, 5*time.Second, chromedp.Click(chromedp.CSS("#batch-links a")))
	waitFor(t, ctx, 10*time.Second, "the original, naming its retry",
		fmt.Sprintf(`document.querySelector("#batch-name").textContent === "Spring Sale" &&
		 document.querySelector("#batch-links").textContent.includes("Retried as") &&
		 document.querySelector("#batch-links .retry-link").getAttribute("href") === "#/batch/%s"`, retryID))

	// Cancel asks first; keeping the batch leaves it as it was.
	do(t, ctx, 5*time.Second, chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`location.hash = "#/batch/%s"`, pending.ID)))
	waitFor(t, ctx, 10*time.Second, "the scheduled batch",
		`document.querySelector("#batch-name").textContent === "Autumn preview" &&
		 document.querySelector("#schedule").textContent !== "–" &&
		 !document.querySelector("#action-cancel").disabled`)
	do(t, ctx, 5*time.Second, chromedp.Click(chromedp.ID("action-cancel")))
	waitFor(t, ctx, 5*time.Second, "the confirmation", `document.querySelector("#confirm-cancel").open &&
		document.querySelector("#confirm-text").textContent.includes("4 recipients")`)
	saveScreenshot(t, ctx, "cancel-confirm.png", "")
	do(t, ctx, 5*time.Second, chromedp.Click(chromedp.ID("confirm-keep")))
	time.Sleep(500 * time.Millisecond)
	if st := c.campaign(pending.ID); st.Status != "pending" {
		t.Fatalf("keeping the batch made it %s", st.Status)
	}
	do(t, ctx, 5*time.Second, chromedp.Click(chromedp.ID("action-cancel")), chromedp.Click(chromedp.ID("confirm-yes")))
	waitFor(t, ctx, 10*time.Second, "the cancelled batch, without a cancel button",
		`document.querySelector("#batch-status .badge").textContent === "cancelled" && document.querySelector("#action-cancel").hidden`)

	// 390 px wide: every page fits without horizontal scrolling.
	do(t, ctx, 5*time.Second, chromedp.EmulateViewport(390, 844))
	fits := `document.documentElement.scrollWidth <= window.innerWidth && document.body.scrollWidth <= window.innerWidth`
	for _, page := range []struct{ hash, ready, shot string }{
		{"#/", `document.querySelectorAll("#batches tbody tr[data-id]").length === 3`, "narrow-list.png"},
		{"#/batch/" + sale.ID, `document.querySelector("#batch-name").textContent === "Spring Sale" && document.querySelectorAll("#errors tbody tr").length === 2`, "narrow-batch.png"},
		{"#/new", `!!document.querySelector("#template")`, ""},
	} {
		do(t, ctx, 5*time.Second, chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`location.hash = %q`, page.hash)))
		waitFor(t, ctx, 10*time.Second, page.hash+" at 390 px", page.ready)
		if page.hash == "#/batch/"+sale.ID {
			do(t, ctx, 5*time.Second, chromedp.Click(chromedp.ID("tab-recipients")))
			waitFor(t, ctx, 10*time.Second, "the recipients at 390 px", `document.querySelectorAll("#recipients tbody tr[data-index]").length === 12`)
		}
		if !eval[bool](t, ctx, fits) {
			saveScreenshot(t, ctx, "failure.png", "")
			t.Fatalf("%s scrolls sideways at 390 px: %d px wide", page.hash, eval[int](t, ctx, `document.documentElement.scrollWidth`))
		}
		if page.shot != "" {
			saveScreenshot(t, ctx, page.shot, page.shot)
		}
	}
}

// skipWithoutBrowser skips a browser test in -short mode or without Chromium,
// unless SMSBATCH_REQUIRE_BROWSER=1 (CI) makes the missing browser a failure.
func skipWithoutBrowser(t *testing.T) {
	t.Helper()
	skipShort(t)
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("SMSBATCH_REQUIRE_BROWSER") == "1" {
			t.Fatalf("SMSBATCH_REQUIRE_BROWSER=1 but there is no browser: %v (apt-get install -y chromium)", err)
		}
		t.Skipf("no browser at %s (apt-get install -y chromium); SMSBATCH_REQUIRE_BROWSER=1 makes this a failure", chromiumPath)
	}
}
