package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/eventstore/bolt"
	"github.com/smsbatch/smsbatch/internal/faultfs"
)

// The embedded store's faults, end to end: a store file emptied, truncated, or with
// flipped bytes is refused at start or reported (readiness red, sending stopped, a
// 503 naming the cause), never served as empty or half running; a full disk is a
// 503 `unavailable` with Retry-After; an upload that never finished leaves pages
// nobody reads or counts.

// heldMarker is a variable value only the held batch's recipients page holds, so
// a test can find that record's bytes in the store file.
func heldMarker(i int) string { return fmt.Sprintf("HeldMarker-%04d", i) }

// heldBody is a batch that waits for /start, whose recipients carry heldMarker.
func heldBody(n int) map[string]any {
	rcps := recipients(n)
	for i := range rcps {
		rcps[i].Variables["name"] = heldMarker(i)
	}
	body := batchBody(rcps, "normal")
	body["options"] = map[string]any{"autoStart": false}
	return body
}

// storeWithHistory runs the program once in dataDir: one batch sent in full and
// one held (pending); it returns their IDs once the program has stopped.
func storeWithHistory(t *testing.T, dataDir string) (done, held string) {
	t.Helper()
	cfg := testConfig(t)
	cfg.DataDir = dataDir
	cfg.RateUnlimited = true
	c := startMain(t, cfg)
	done = c.create(batchBody(recipients(40), "normal")).ID
	c.waitStatus(done, 30*time.Second, "completed")
	held = c.create(heldBody(30)).ID
	c.stop()
	return done, held
}

// runToExit runs the binary with args and returns its exit code and output; it
// fails the test when the binary is still running after the timeout.
func runToExit(t *testing.T, timeout time.Duration, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), args...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("smsbatch %s still running after %s:\n%s", strings.Join(args, " "), timeout, out)
	}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return exit.ExitCode(), string(out)
	case err != nil:
		t.Fatal(err)
	}
	return 0, string(out)
}

// wantRefusedAtStart starts `smsbatch serve` on dataDir and wants it to exit with
// an error naming the store file and saying what is wrong, without a panic.
func wantRefusedAtStart(t *testing.T, dataDir string, says string) {
	t.Helper()
	code, out := runToExit(t, time.Minute, "serve", "--addr", freeAddr(t), "--data-dir", dataDir,
		"--api-keys", "acme:"+acmeKey, "--log-level", "warn")
	t.Logf("serve:\n%s", out)
	file := filepath.Join(dataDir, "events.db")
	if code == 0 || !strings.Contains(out, file) || !strings.Contains(out, says) {
		t.Errorf("serve on a damaged store: exit %d; want non-zero with an error naming %s and saying %q", code, file, says)
	}
	for _, crash := range []string{"panic", "goroutine ", "SIGBUS", "fatal error"} {
		if strings.Contains(out, crash) {
			t.Errorf("serve on a damaged store crashed (%q in its output)", crash)
		}
	}
	if strings.Contains(out, "serving") {
		t.Error("serve on a damaged store started serving")
	}
}

// wantCheck runs `smsbatch check --data-dir dataDir` and wants its exit code and
// every one of says in its output.
func wantCheck(t *testing.T, dataDir string, wantCode int, says ...string) {
	t.Helper()
	code, out := runToExit(t, time.Minute, "check", "--data-dir", dataDir)
	t.Logf("check:\n%s", out)
	if code != wantCode {
		t.Errorf("smsbatch check: exit %d, want %d", code, wantCode)
	}
	for _, s := range says {
		if !strings.Contains(out, s) {
			t.Errorf("smsbatch check does not say %q", s)
		}
	}
}

func TestEmptiedStoreIsRefusedAtStart(t *testing.T) {
	skipShort(t)
	dataDir := t.TempDir()
	storeWithHistory(t, dataDir)
	file := filepath.Join(dataDir, "events.db")
	if err := os.Truncate(file, 0); err != nil {
		t.Fatal(err)
	}
	wantRefusedAtStart(t, dataDir, "empty (0 bytes)")
	if info, err := os.Stat(file); err != nil || info.Size() != 0 {
		t.Errorf("the refused store file was changed: %v", err)
	}
	wantCheck(t, dataDir, 1, file, "empty (0 bytes)", "DAMAGED")
}

func TestTruncatedStoreIsRefusedAtStart(t *testing.T) {
	skipShort(t)
	dataDir := t.TempDir()
	storeWithHistory(t, dataDir)
	file := filepath.Join(dataDir, "events.db")
	info, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(file, info.Size()/2); err != nil {
		t.Fatal(err)
	}
	wantRefusedAtStart(t, dataDir, "truncated")
	wantCheck(t, dataDir, 1, file, "truncated", "DAMAGED")
}

func TestReplacedStoreIsRefusedAtStart(t *testing.T) {
	skipShort(t)
	dataDir, otherDir := t.TempDir(), t.TempDir()
	storeWithHistory(t, dataDir)
	storeWithHistory(t, otherDir)
	data, err := os.ReadFile(filepath.Join(otherDir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dataDir, "events.db"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	wantRefusedAtStart(t, dataDir, "replaced")
}

// wantDamageReported checks what a client sees of a store that met corrupt data:
// readiness red naming it, a 503 that says so for a create and for a command on
// an existing batch, and a status that is not a 404.
func wantDamageReported(t *testing.T, c *client, existing string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var ready map[string]string
	for {
		code, _ := c.do("GET", "/readyz", nil, &ready)
		if code == http.StatusServiceUnavailable && strings.Contains(ready["reason"], "damaged") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz %d %v; want 503 saying the event store is damaged", code, ready)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("/readyz: %v", ready)
	if !strings.Contains(ready["reason"], "checksum mismatch") {
		t.Errorf("/readyz reason %q does not say what is damaged", ready["reason"])
	}

	var e apiError
	code, hdr := c.do("POST", "/api/batch", batchBody(recipients(3), "normal"), &e)
	if code != http.StatusServiceUnavailable || e.Error.Code != "unavailable" || !strings.Contains(e.Error.Message, "damaged") {
		t.Errorf("create on a damaged store: %d %+v; want 503 unavailable saying the store is damaged", code, e)
	}
	if hdr.Get("Content-Type") != "application/json" {
		t.Errorf("create on a damaged store: Content-Type %q, want the JSON envelope", hdr.Get("Content-Type"))
	}
	e = apiError{}
	code, _ = c.do("POST", "/api/v2/batch/"+existing+"/pause", nil, &e)
	if code != http.StatusServiceUnavailable || e.Error.Code != "unavailable" {
		t.Errorf("pause on a damaged store: %d %+v; want 503 unavailable", code, e)
	}
	if code, _ := c.do("GET", "/api/batch/"+existing, nil, nil); code == http.StatusNotFound || code == http.StatusInternalServerError {
		t.Errorf("an existing batch on a damaged store: %d; want its status or a 503, never 404 or 500", code)
	}
}

func TestFlippedRecordIsReportedAtStart(t *testing.T) {
	skipShort(t)
	dataDir := t.TempDir()
	done, held := storeWithHistory(t, dataDir)
	faultfs.Flip(t, filepath.Join(dataDir, "events.db"), heldMarker(7))
	sentBefore := len(outbox(t, dataDir, done)) + len(outbox(t, dataDir, held))

	cfg := testConfig(t)
	cfg.DataDir = dataDir
	// Start-up reads no history (the read models and the forwarder go on from
	// their checkpoint), so the damage is met when something reads the record:
	// here the held batch, started, reading its recipients. Should a reader meet
	// it before the program is up, the start is refused instead; either is a
	// clear answer, never an empty or half-running service.
	c, err := runMain(t, cfg)
	if err != nil {
		if !errors.Is(err, eventstore.ErrCorrupt) || !strings.Contains(err.Error(), "checksum mismatch") {
			t.Fatalf("start on a store with a flipped record: %v; want it refused as corrupt, saying what", err)
		}
		t.Logf("refused at start: %v", err)
		wantCheck(t, dataDir, 1, "DAMAGED", "checksum mismatch", domain.RecipientsStream(held))
		return
	}
	c.do("POST", "/api/v2/batch/"+held+"/start", nil, nil)
	wantDamageReported(t, c, held)
	time.Sleep(time.Second)
	if sent := len(outbox(t, dataDir, done)) + len(outbox(t, dataDir, held)); sent != sentBefore {
		t.Errorf("%d messages sent from a damaged store", sent-sentBefore)
	}
	c.stop()
	wantCheck(t, dataDir, 1, "DAMAGED", "checksum mismatch", domain.RecipientsStream(held))
}

func TestFlippedRecordWhileRunningStopsSending(t *testing.T) {
	skipShort(t)
	cfg := testConfig(t)
	cfg.Rates.Low = 4
	c := startMain(t, cfg)
	held := c.create(heldBody(30)).ID
	running := c.create(batchBody(recipients(200), "low")).ID
	for len(outbox(t, cfg.DataDir, running)) < 3 {
		time.Sleep(50 * time.Millisecond)
	}

	// The held batch's recipients are damaged under the running program; starting
	// it reads them.
	faultfs.Flip(t, filepath.Join(cfg.DataDir, "events.db"), heldMarker(7))
	if code, _ := c.do("POST", "/api/v2/batch/"+held+"/start", nil, nil); code != http.StatusOK {
		t.Fatalf("start: %d", code)
	}
	wantDamageReported(t, c, running)

	// Sends already handed to the provider may land; nothing after them.
	time.Sleep(time.Second)
	sent := len(outbox(t, cfg.DataDir, running))
	time.Sleep(3 * time.Second)
	if now := len(outbox(t, cfg.DataDir, running)); now != sent {
		t.Errorf("the running batch kept sending on a damaged store: %d messages, then %d", sent, now)
	}
	if n := len(outbox(t, cfg.DataDir, held)); n != 0 {
		t.Errorf("%d messages of the batch with damaged recipients were sent", n)
	}
	if sent >= 200 {
		t.Fatal("the running batch finished before the damage was met: the test proves nothing")
	}
}

// TestFullDiskCreateIs503: a create on a full disk answers 503 `unavailable` with
// Retry-After and leaves no batch; once there is room, creates work again.
func TestFullDiskCreateIs503(t *testing.T) {
	skipShort(t)
	cfg := testConfig(t)
	cfg.DataDir = faultfs.Mount(t, 2<<20)
	cfg.RateUnlimited = true
	c := startMain(t, cfg)
	first := c.create(batchBody(recipients(20), "normal")).ID
	c.waitStatus(first, 30*time.Second, "completed")

	filler := faultfs.Fill(t, cfg.DataDir)
	var e apiError
	code, hdr := c.do("POST", "/api/batch", batchBody(recipients(1500), "normal"), &e)
	if code != http.StatusServiceUnavailable || e.Error.Code != "unavailable" || hdr.Get("Retry-After") == "" {
		t.Fatalf("create on a full disk: %d %+v, Retry-After %q; want 503 unavailable with Retry-After", code, e, hdr.Get("Retry-After"))
	}
	t.Logf("create on a full disk: %d %+v", code, e)
	wantBatches(t, c, first)

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	c.waitReady()
	second := c.create(batchBody(recipients(30), "normal")).ID
	c.waitStatus(second, 30*time.Second, "completed")
	if n := len(outbox(t, cfg.DataDir, second)); n != 30 {
		t.Errorf("after the disk had room again: %d of 30 sent", n)
	}
	wantBatches(t, c, second, first)
}

// TestFileSizeLimitCreateIs503 is the full disk without a tmpfs: a file size
// limit (RLIMIT_FSIZE) stops the store file from growing. Writes past it fail with
// EFBIG, not ENOSPC (the Go runtime ignores SIGXFSZ), and bbolt reports it from
// growing the file; the client sees the same 503.
func TestFileSizeLimitCreateIs503(t *testing.T) {
	skipShort(t)
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skipf("TestFileSizeLimitCreateIs503 needs prlimit (util-linux) to limit the file size: %v", err)
	}
	dataDir, addr := t.TempDir(), freeAddr(t)
	startCommand(t, "smsbatch", exec.Command(prlimit, "--fsize=1048576", "--", binary(t), "serve", "--addr", addr, "--data-dir", dataDir,
		"--api-keys", "acme:"+acmeKey, "--log-level", "warn"))
	waitListening(t, addr)
	c := &client{t: t, base: "http://" + addr, key: acmeKey}
	c.waitReady()

	var created []string
	for range 100 {
		body := batchBody(recipients(1000), "normal")
		body["options"] = map[string]any{"autoStart": false}
		var raw json.RawMessage
		code, hdr := c.do("POST", "/api/batch", body, &raw)
		if code == http.StatusCreated {
			var st status
			json.Unmarshal(raw, &st)
			created = append(created, st.ID)
			continue
		}
		var e apiError
		json.Unmarshal(raw, &e)
		if code != http.StatusServiceUnavailable || e.Error.Code != "unavailable" || hdr.Get("Retry-After") == "" {
			t.Fatalf("create past the file size limit: %d %s; want 503 unavailable with Retry-After", code, raw)
		}
		if len(created) == 0 {
			t.Fatal("not even one batch fitted under the limit")
		}
		if code, _ := c.do("GET", "/readyz", nil, nil); code != 200 {
			t.Errorf("/readyz %d after a refused create: the store is full, not damaged", code)
		}
		slices.Reverse(created)
		wantBatches(t, c, created...)
		return
	}
	t.Fatal("100 batches of 1,000 recipients fitted in 1 MiB: the limit did not apply")
}

// wantBatches wants the tenant's batch list to be exactly ids, newest first.
func wantBatches(t *testing.T, c *client, ids ...string) {
	t.Helper()
	var page struct {
		Batches []status `json:"batches"`
	}
	if code, _ := c.do("GET", "/api/batch?limit=100", nil, &page); code != 200 {
		t.Fatalf("list: %d", code)
	}
	var got []string
	for _, b := range page.Batches {
		got = append(got, b.ID)
	}
	if strings.Join(got, ",") != strings.Join(ids, ",") {
		t.Errorf("batches %v, want %v", got, ids)
	}
}

// failBatchCreated is an event store whose disk fills up just before a batch's
// BatchCreated: its recipients pages are stored, the batch is not.
type failBatchCreated struct{ eventstore.Store }

func (s failBatchCreated) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
	if strings.HasPrefix(stream, domain.BatchStreamPrefix) {
		return eventstore.AppendResult{}, fmt.Errorf("append to %s: the disk is full: %w", stream, eventstore.ErrUnavailable)
	}
	return s.Store.Append(ctx, stream, expected, events)
}

// TestOrphanRecipientsAreNeverReadNorCounted: pages of a batch whose creation
// never finished (the disk filled before BatchCreated, or a crash mid-upload) stay
// in the log, but nothing reads or counts them, across restarts; check notes them.
func TestOrphanRecipientsAreNeverReadNorCounted(t *testing.T) {
	skipShort(t)
	dataDir := t.TempDir()
	store, err := bolt.Open(filepath.Join(dataDir, "events.db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	broken := failBatchCreated{store}
	repo, err := commands.NewRepository(broken, 0)
	if err != nil {
		t.Fatal(err)
	}
	cmds, err := commands.New(broken, repo, nil)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := domain.NewTemplate("Hello {{name}}", domain.TemplateLimits{})
	if err != nil {
		t.Fatal(err)
	}
	orphan := uuid.Must(uuid.NewV7()).String()
	_, err = cmds.CreateBatch(context.Background(), commands.CreateBatch{
		ID: orphan, Tenant: "acme", Template: tmpl, Priority: domain.PriorityNormal, AutoStart: true,
		Recipients: func(yield func(domain.Recipient, error) bool) {
			for i := range 1500 {
				if !yield(domain.Recipient{Phone: fmt.Sprintf("+1415555%04d", i), Values: []string{"Orphan"}}, nil) {
					return
				}
			}
		},
	})
	if !errors.Is(err, eventstore.ErrUnavailable) {
		t.Fatalf("create with the disk filling before BatchCreated: %v", err)
	}
	pages, err := store.ReadStream(context.Background(), domain.RecipientsStream(orphan), 0, 10)
	if err != nil || len(pages) != 2 {
		t.Fatalf("the orphan's pages: %d, %v; want the 2 written", len(pages), err)
	}
	store.Close()

	cfg := testConfig(t)
	cfg.DataDir = dataDir
	cfg.RateUnlimited = true
	cfg.StallTimeout = time.Second
	var real []string // newest first
	for restart := range 2 {
		c := startMain(t, cfg)
		if code, _ := c.do("GET", "/api/batch/"+orphan, nil, nil); code != http.StatusNotFound {
			t.Errorf("restart %d: the orphan's ID answers %d, want 404", restart, code)
		}
		if code, _ := c.do("POST", "/api/v2/batch/"+orphan+"/start", nil, nil); code != http.StatusNotFound {
			t.Errorf("restart %d: start of the orphan answers %d, want 404", restart, code)
		}
		id := c.create(batchBody(recipients(10), "normal")).ID
		real = append([]string{id}, real...)
		c.waitStatus(id, 30*time.Second, "completed")
		time.Sleep(2 * cfg.StallTimeout) // recovery had its chance to pick anything up
		wantBatches(t, c, real...)
		if n := len(outbox(t, dataDir, orphan)); n != 0 {
			t.Fatalf("restart %d: %d messages of the orphan were sent", restart, n)
		}
		wantMetric(t, c, "smsbatch_messages_sent_total 10\n")
		c.stop()
		wantCheck(t, dataDir, 0, "clean", "1 recipients stream(s) without a batch", domain.RecipientsStream(orphan))
	}
}

// wantMetric wants line among the program's /metrics.
func wantMetric(t *testing.T, c *client, line string) {
	t.Helper()
	req, _ := http.NewRequest("GET", c.base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+c.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), line) {
		t.Errorf("/metrics lacks %q", line)
	}
}

func TestCheckCommand(t *testing.T) {
	skipShort(t)
	dataDir := t.TempDir()
	_, held := storeWithHistory(t, dataDir)
	file := filepath.Join(dataDir, "events.db")
	wantCheck(t, dataDir, 0, file, "clean", "layout 3")

	faultfs.Flip(t, file, heldMarker(3))
	wantCheck(t, dataDir, 1, file, "DAMAGED: 1 problem(s)", "stream "+domain.RecipientsStream(held)+" revision 0: event",
		"checksum mismatch", "damaged streams (1): "+domain.RecipientsStream(held), "damaged events (1, by global position)")

	// A directory named as an argument is refused, not ignored for ./data:
	// the store the operator meant would be reported clean unchecked.
	if code, out := runToExit(t, time.Minute, "check", dataDir); code == 0 || !strings.Contains(out, "--data-dir") {
		t.Errorf("check %s: exit %d, %q; want non-zero pointing at --data-dir", dataDir, code, out)
	}

	// A store in use is not checked under the running program's feet.
	running := t.TempDir()
	addr := freeAddr(t)
	startProcess(t, "smsbatch", "serve", "--addr", addr, "--data-dir", running, "--api-keys", "acme:"+acmeKey)
	waitListening(t, addr)
	code, out := runToExit(t, time.Minute, "check", "--data-dir", running)
	if code == 0 || !strings.Contains(out, "in use") {
		t.Errorf("check of a store in use: exit %d, %q; want non-zero saying it is in use", code, out)
	}
}
