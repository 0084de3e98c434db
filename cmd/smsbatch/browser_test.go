package main

import (
	"context"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/smsbatch/smsbatch/domain"
)

// chromiumPath is where Debian's chromium package puts the browser; CI installs it
// with `apt-get install -y chromium`.
const chromiumPath = "/usr/bin/chromium"

// TestDashboardInABrowser drives the embedded dashboard in headless Chromium
// against the real program: key prompt, create form, live progress, pause with a
// count that stops, resume to completion, and the batches list. It saves
// screenshots of both pages (and refreshes docs/screenshots with
// SMSBATCH_UPDATE_SCREENSHOTS=1).
func TestDashboardInABrowser(t *testing.T) {
	skipWithoutBrowser(t)
	t.Parallel()
	cfg := testConfig(t)
	// Slower than the default 8/s, so that 25 messages take long enough to watch
	// the bar move and to pause half way.
	cfg.Rates.High = 3
	c := startMain(t, cfg)
	base := dashboardURL(t, c)
	ctx := newBrowser(t)

	// The key prompt comes first; the key is remembered.
	do(t, ctx, 15*time.Second,
		chromedp.Navigate(base+"/#/new"),
		chromedp.WaitVisible(chromedp.ID("key-input")),
		chromedp.SendKeys(chromedp.ID("key-input"), acmeKey),
		chromedp.Click(chromedp.CSS(`#key-form button[type=submit]`)),
		chromedp.WaitVisible(chromedp.ID("template")),
	)
	if key := eval[string](t, ctx, `localStorage.getItem("smsbatch.apiKey")`); key != acmeKey {
		t.Fatalf("stored key %q, want the one typed in", key)
	}

	// The template's variables and segments show as it is typed.
	do(t, ctx, 10*time.Second, chromedp.SendKeys(chromedp.ID("template"), "Hello {{name}}, your code is ready"))
	waitFor(t, ctx, 5*time.Second, "the template's variable and segment count",
		`document.querySelector("#template-vars").textContent === "name" &&
		 document.querySelector("#template-segments").textContent.includes("1 segment")`)

	// A bad row is refused, and the problem names its CSV row.
	var rows strings.Builder
	rows.WriteString("phoneNumber,name\n")
	for i := range 25 {
		fmt.Fprintf(&rows, "+1415555%04d,\"Ada, %d\"\n", 100+i, i)
	}
	good := rows.String()
	bad := good + "not-a-number,Bob\n"
	paste(t, ctx, "recipients", bad)
	do(t, ctx, 5*time.Second,
		chromedp.SetValue(chromedp.ID("priority"), "high"),
		chromedp.Click(chromedp.ID("create-submit")),
	)
	waitFor(t, ctx, 10*time.Second, "the bad row to be reported with its CSV row number",
		`document.querySelector("#recipient-problems").textContent.includes("Row 27")`)
	saveScreenshot(t, ctx, "create-refused.png", "")
	var before struct{ Batches []status }
	if code, _ := c.do("GET", "/api/batch", nil, &before); code != 200 {
		t.Fatalf("list: %d", code)
	}
	if len(before.Batches) != 0 {
		t.Fatalf("a refused batch was stored: %+v", before.Batches)
	}

	// Fixed, it is created and the page moves to the batch.
	paste(t, ctx, "recipients", good)
	do(t, ctx, 5*time.Second, chromedp.Click(chromedp.ID("create-submit")))
	waitFor(t, ctx, 10*time.Second, "the batch page", `location.hash.startsWith("#/batch/") && !!document.querySelector("#batch-status .badge")`)
	id := strings.TrimPrefix(eval[string](t, ctx, `location.hash`), "#/batch/")
	if st := c.status(id); st.Priority != "high" || st.Progress.Total != 25 {
		t.Fatalf("created batch: priority %s, total %d; want high, 25", st.Priority, st.Progress.Total)
	}
	if got := eval[string](t, ctx, `document.querySelector("#count-total").textContent`); got != "25" {
		t.Fatalf("total shown %q, want 25", got)
	}
	// The page sent its create with an Idempotency-Key, so a retry after a lost
	// answer makes no second batch: the key's stream is in the store.
	keyed := false
	for _, e := range allEvents(t, c.main.store) {
		keyed = keyed || strings.HasPrefix(e.Stream, domain.IdempotencyStreamPrefix)
	}
	if !keyed {
		t.Fatal("the dashboard's create carried no Idempotency-Key")
	}

	// The bar advances without a reload: the page itself is never loaded again.
	do(t, ctx, 5*time.Second, chromedp.Evaluate[chromedp.Void](`window.__sameDocument = true`))
	first := waitCount(t, ctx, 15*time.Second, "count-completed", func(n int) bool { return n > 0 && n < 25 })
	waitCount(t, ctx, 10*time.Second, "count-completed", func(n int) bool { return n > first && n < 25 })
	waitFor(t, ctx, 5*time.Second, "the bar to have a completed part",
		`parseFloat(document.querySelector("#batch-progress .completed").style.width) > 0`)

	// Pause: the state shows, and the count stops.
	do(t, ctx, 5*time.Second, chromedp.Click(chromedp.ID("action-pause")))
	waitFor(t, ctx, 10*time.Second, "the paused state",
		`document.querySelector("#batch-status .badge").textContent === "paused" &&
		 !document.querySelector("#pause-note").hidden &&
		 document.querySelector("#pause-note").textContent.startsWith("Paused at") &&
		 !document.querySelector("#action-resume").disabled &&
		 document.querySelector("#action-pause").hidden`)
	time.Sleep(time.Second) // messages already handed over finish while paused
	paused := count(t, ctx, "count-completed")
	time.Sleep(1500 * time.Millisecond)
	if again := count(t, ctx, "count-completed"); again != paused || paused >= 25 || paused == 0 {
		t.Fatalf("while paused the count went from %d to %d (of 25)", paused, again)
	}
	if st := c.status(id); st.Status != "paused" || st.Progress.Completed != paused {
		t.Fatalf("the page shows %d completed and paused; the API says %s with %d", paused, st.Status, st.Progress.Completed)
	}
	saveScreenshot(t, ctx, "batch-paused.png", "")

	// Resume: it completes, still on the same page.
	do(t, ctx, 5*time.Second, chromedp.Click(chromedp.ID("action-resume")))
	waitFor(t, ctx, 30*time.Second, "the batch to complete",
		`document.querySelector("#batch-status .badge").textContent === "completed" &&
		 document.querySelector("#count-completed").textContent === "25"`)
	waitFor(t, ctx, 5*time.Second, "the resumed note and no action left but the export",
		`document.querySelector("#pause-note").textContent.includes("resumed at") &&
		 [...document.querySelectorAll("[id^=action-]:not(#action-export)")].every(b => b.disabled || b.hidden) &&
		 document.querySelector("#action-pause").hidden && document.querySelector("#action-cancel").hidden`)
	if !eval[bool](t, ctx, `window.__sameDocument === true`) {
		t.Fatal("the page was reloaded")
	}
	// The chart and latency catch up within the page's 2 s analytics throttle.
	waitFor(t, ctx, 10*time.Second, "the throughput chart and totals",
		`document.querySelectorAll("#throughput rect").length > 0 &&
		 document.querySelector("#total-sent").textContent === "25"`)
	saveScreenshot(t, ctx, "batch.png", "batch.png")

	// The list shows the batch, complete.
	do(t, ctx, 5*time.Second, chromedp.Evaluate[chromedp.Void](`location.hash = "#/"`))
	waitFor(t, ctx, 10*time.Second, "the batch in the list",
		fmt.Sprintf(`(() => { const r = document.querySelector('#batches tr[data-id=%q]');
		  return !!r && r.querySelector(".badge").textContent === "completed" && r.textContent.includes("25 / 25"); })()`, id))
	saveScreenshot(t, ctx, "list.png", "list.png")
}

// dashboardURL is where the browser opens the dashboard: the program itself once
// it serves web.Handler() at "/". Until then the test puts the same handler in
// front of the program, passing everything else (WebSocket upgrades included)
// through, so that the page still talks to the real API.
func dashboardURL(t *testing.T, c *client) string {
	t.Helper()
	resp, err := http.Get(c.base + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode == 200 && mt == "text/html" && strings.Contains(string(body), "/static/js/app.js") {
		return c.base
	}
	t.Fatalf("the program does not serve the dashboard at / (%d %s)", resp.StatusCode, mt)
	return ""
}

// newBrowser starts a headless Chromium with a fresh profile for this test and
// fails the test on any uncaught exception or security (CSP) message of the page.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	profile := t.TempDir() // removed after the browser has exited (cleanups run last-in first-out)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1280, 900),
	)
	ctx, cancel := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf))
	// Start the browser on a context without a deadline: it lives as long as ctx.
	if err := chromedp.Do(ctx); err != nil {
		cancel()
		cancelAlloc()
		t.Fatalf("start %s: %v", chromiumPath, err)
	}
	var (
		mu       sync.Mutex
		problems []string
		done     = make(chan struct{})
	)
	messages := chromedp.Console(ctx)
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.IsException() || m.Source == "security" {
				mu.Lock()
				problems = append(problems, m.String())
				mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, p := range problems {
			t.Errorf("browser console: %s", p)
		}
	})
	return ctx
}

func do(t *testing.T, ctx context.Context, timeout time.Duration, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatal(err)
	}
}

func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	return v
}

// waitFor waits until the JavaScript expression is true in the page.
func waitFor(t *testing.T, ctx context.Context, timeout time.Duration, what, expr string) {
	t.Helper()
	ctx2, cancel := context.WithTimeout(ctx, timeout+time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx2, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(timeout)))
	if err != nil {
		saveScreenshot(t, ctx, "failure.png", "")
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		page, _ := chromedp.Run(pctx, chromedp.Evaluate[string](`document.body.innerText.slice(0, 1500)`))
		t.Fatalf("waiting for %s: %v\nthe page shows:\n%s", what, err, page)
	}
}

func count(t *testing.T, ctx context.Context, id string) int {
	t.Helper()
	s := eval[string](t, ctx, fmt.Sprintf(`document.getElementById(%q).textContent`, id))
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("#%s shows %q, not a number", id, s)
	}
	return n
}

// waitCount waits until the number shown in the element satisfies ok and returns it.
func waitCount(t *testing.T, ctx context.Context, timeout time.Duration, id string, ok func(int) bool) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n := count(t, ctx, id)
		if ok(n) {
			return n
		}
		if time.Now().After(deadline) {
			saveScreenshot(t, ctx, "failure.png", "")
			t.Fatalf("#%s still shows %d after %s", id, n, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// paste puts text in a textarea as a paste does: the value changes and an input
// event fires.
func paste(t *testing.T, ctx context.Context, id, text string) {
	t.Helper()
	do(t, ctx, 5*time.Second,
		chromedp.SetValue(chromedp.ID(id), text),
		chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`document.getElementById(%q).dispatchEvent(new Event("input", {bubbles: true}))`, id)),
	)
}

// saveScreenshot writes a full-page PNG to the test's artifacts ($SMSBATCH_ARTIFACTS
// or a temporary folder) and, with SMSBATCH_UPDATE_SCREENSHOTS=1, to
// docs/screenshots/<docName> when docName is not empty.
func saveScreenshot(t *testing.T, ctx context.Context, name, docName string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Errorf("screenshot %s: %v", name, err)
		return
	}
	dir := os.Getenv("SMSBATCH_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
	if docName != "" && os.Getenv("SMSBATCH_UPDATE_SCREENSHOTS") == "1" {
		doc := filepath.Join("..", "..", "docs", "screenshots", docName)
		if err := os.WriteFile(doc, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("updated %s", doc)
	}
}
