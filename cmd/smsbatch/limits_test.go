package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// leftoverUploads lists upload spool files under the directories.
func leftoverUploads(t testing.TB, dirs ...string) []string {
	t.Helper()
	var found []string
	for _, dir := range dirs {
		filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && strings.HasPrefix(d.Name(), "smsbatch-upload-") {
				found = append(found, path)
			}
			return nil
		})
	}
	return found
}

// rawConn is a client connection written by hand, to behave as no HTTP client
// library would.
type rawConn struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawConn{t: t, conn: conn, r: bufio.NewReader(conn)}
}

// closedWithin reads until the server closes the connection and returns what it
// answered; it fails the test if the connection stays open longer than d.
func (c *rawConn) closedWithin(d time.Duration) (*http.Response, error) {
	c.conn.SetReadDeadline(time.Now().Add(d))
	var resp *http.Response
	if r, err := http.ReadResponse(c.r, nil); err == nil {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(strings.NewReader(string(body)))
		resp = r
	}
	_, err := io.Copy(io.Discard, c.r)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return resp, fmt.Errorf("connection still open after %s", d)
	}
	return resp, nil
}

// Slow uploads, slow headers, silent and idle connections are all cut off in
// bounded time, and an upload cut off leaves no temp file behind. Here with
// timeouts of a second; the defaults are in the README.
func TestSlowClientsAreCutOff(t *testing.T) {
	skipShort(t)
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // where uploads were spooled before they moved under the data directory
	cfg := testConfig(t)
	cfg.HTTPReadTimeout = time.Second
	cfg.HTTPIdleTimeout = time.Second
	cfg.UploadMinRate = 1024
	cfg.UploadRateWindow = time.Second
	const each = 10
	cfg.UploadsPerKey = each // all of them run, to be cut off by the rate
	c := startMain(t, cfg)
	addr := strings.TrimPrefix(c.base, "http://")

	bound := 4 * time.Second
	type result struct {
		kind string
		resp *http.Response
		err  error
	}
	results := make(chan result, 4*each)
	var wg sync.WaitGroup
	start := time.Now()
	for range each {
		// An upload that sends one byte every two seconds.
		wg.Go(func() {
			rc := dialRaw(t, addr)
			fmt.Fprintf(rc.conn, "POST /api/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"recipients\": [", acmeKey)
			stop := make(chan struct{})
			go func() {
				for {
					select {
					case <-stop:
						return
					case <-time.After(2 * time.Second):
						rc.conn.Write([]byte(" "))
					}
				}
			}()
			resp, err := rc.closedWithin(bound)
			close(stop)
			results <- result{"slow upload", resp, err}
		})
		// Headers that never end.
		wg.Go(func() {
			rc := dialRaw(t, addr)
			rc.conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n"))
			_, err := rc.closedWithin(bound)
			results <- result{"slow headers", nil, err}
		})
		// A connection that never says anything.
		wg.Go(func() {
			rc := dialRaw(t, addr)
			_, err := rc.closedWithin(bound)
			results <- result{"silent connection", nil, err}
		})
		// A kept-alive connection left idle after one request.
		wg.Go(func() {
			rc := dialRaw(t, addr)
			rc.conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
			resp, err := http.ReadResponse(rc.r, nil)
			if err != nil || resp.StatusCode != 200 {
				results <- result{"idle connection", resp, fmt.Errorf("first request: %v", err)}
				return
			}
			io.Copy(io.Discard, resp.Body)
			_, err = rc.closedWithin(bound)
			results <- result{"idle connection", nil, err}
		})
	}
	wg.Wait()
	close(results)
	for r := range results {
		if r.err != nil {
			t.Errorf("%s: %v", r.kind, r.err)
			continue
		}
		if r.kind != "slow upload" {
			continue
		}
		if r.resp == nil || r.resp.StatusCode != http.StatusRequestTimeout {
			t.Errorf("slow upload answered %v, want 408", r.resp)
			continue
		}
		var e apiError
		if err := json.NewDecoder(r.resp.Body).Decode(&e); err != nil || e.Error.Code != "too_slow" {
			t.Errorf("slow upload: %+v (%v), want the envelope with too_slow", e, err)
		}
	}
	t.Logf("%d connections cut off within %s", 4*each, time.Since(start).Round(100*time.Millisecond))
	if files := leftoverUploads(t, cfg.DataDir, tmp); len(files) > 0 {
		t.Fatalf("slow uploads left %v", files)
	}
	// The service is none the worse.
	c.create(batchBody(recipients(2), "normal"))
}

// An upload that takes longer than the read and write timeouts, but sends
// faster than the minimum rate, is accepted: the timeouts are for ordinary
// requests, the rate for uploads.
func TestLongUploadOutlivesReadAndWriteTimeouts(t *testing.T) {
	skipShort(t)
	t.Parallel()
	cfg := testConfig(t)
	cfg.HTTPReadTimeout = time.Second
	cfg.HTTPWriteTimeout = time.Second
	cfg.UploadMinRate = 1024
	cfg.UploadRateWindow = time.Second
	c := startMain(t, cfg)

	data, err := json.Marshal(batchBody(recipients(3000), "normal"))
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	go func() {
		// About 3 s in all, far above 1 KiB/s.
		chunk := len(data)/30 + 1
		for i := 0; i < len(data); i += chunk {
			pw.Write(data[i:min(i+chunk, len(data))])
			time.Sleep(100 * time.Millisecond)
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", c.base+"/api/batch", pr)
	req.Header.Set("Authorization", "Bearer "+acmeKey)
	began := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st status
	json.NewDecoder(resp.Body).Decode(&st)
	if resp.StatusCode != http.StatusCreated || st.Progress.Total != 3000 {
		t.Fatalf("after %s: %d %+v, want 201 with 3000 recipients", time.Since(began), resp.StatusCode, st)
	}
	if took := time.Since(began); took < 2*time.Second {
		t.Fatalf("the upload took only %s: not longer than the timeouts", took)
	}
}

// --http-rate-limit 0 turns the per-key limit off, as its help says.
func TestHTTPRateLimitZeroDisablesIt(t *testing.T) {
	skipShort(t)
	t.Parallel()
	cfg := testConfig(t)
	cfg.HTTPRateLimit = 0
	c := startMain(t, cfg)
	for i := range 650 {
		code, hdr := c.do("GET", "/api/batch", nil, nil)
		if code != 200 || hdr.Get("X-RateLimit-Limit") != "" {
			t.Fatalf("request %d: %d, X-RateLimit-Limit %q: want 200 and no limit", i+1, code, hdr.Get("X-RateLimit-Limit"))
		}
	}
}

// Failed authentications are limited per client address: past the limit even
// the right key is a 429 from that address, so keys cannot be guessed at speed.
func TestFailedAuthenticationsAreRateLimited(t *testing.T) {
	skipShort(t)
	t.Parallel()
	cfg := testConfig(t)
	cfg.AuthFailureLimit = 3
	c := startMain(t, cfg)
	for i := range 3 {
		if code, _ := c.as(fmt.Sprintf("guess-%d-0123456789abcdef", i)).do("GET", "/api/batch", nil, nil); code != 401 {
			t.Fatalf("failure %d: %d, want 401", i+1, code)
		}
	}
	for _, key := range []string{"guess-3-0123456789abcdef", acmeKey} {
		var e apiError
		code, hdr := c.as(key).do("GET", "/api/batch", nil, &e)
		if code != 429 || e.Error.Code != "rate_limited" || hdr.Get("Retry-After") == "" {
			t.Fatalf("after 3 failures: %d %+v Retry-After %q, want 429 rate_limited", code, e, hdr.Get("Retry-After"))
		}
	}
	// Health checks need no key and are not limited.
	if code, _ := c.as("").do("GET", "/healthz", nil, nil); code != 200 {
		t.Fatalf("healthz: %d", code)
	}
}

// Uploads are spooled under the data directory, never in the system's temp
// directory: a SIGKILL mid-upload leaves nothing there, and what an earlier
// run left under the data directory is removed at start.
func TestKilledUploadLeavesNoDebris(t *testing.T) {
	skipShort(t)
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	dataDir := t.TempDir()
	stale := filepath.Join(dataDir, "uploads", "smsbatch-upload-1234.jsonl")
	if err := os.MkdirAll(filepath.Dir(stale), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stale, []byte(`{"p":"+14155550100"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	p, _ := startBinary(t, dataDir, addr)
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("a stale upload file survived the start: %v", err)
	}

	// An upload in progress: 300 recipients sent, more announced.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	part, _ := json.Marshal(recipients(300))
	fmt.Fprintf(conn, "POST /api/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 10000000\r\n\r\n{\"text\": \"Hi {{name}}\", \"recipients\": %s", acmeKey, part[:len(part)-1])
	time.Sleep(time.Second)
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.wait(t, 10*time.Second)
	if files := leftoverUploads(t, dataDir, tmp); len(files) > 0 {
		t.Fatalf("a killed upload left %v", files)
	}
}
