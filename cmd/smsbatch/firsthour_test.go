package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// A newcomer's first hour, through the real binary: help that lists the
// commands, the simulator's own flags, `make run` with ADDR and DATA, the dev
// key's variable the same in the banner and the README, and the send
// processor's page reads in the log.

func TestHelpListsTheCommands(t *testing.T) {
	skipShort(t)
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		out, err := exec.Command(binary(t), args...).CombinedOutput()
		if err != nil {
			t.Fatalf("smsbatch %v: %v\n%s", args, err, out)
		}
		for _, cmd := range []string{"smsbatch serve", "smsbatch migrate", "smsbatch projections rebuild", "smsbatch simulator"} {
			if !bytes.Contains(out, []byte(cmd)) {
				t.Errorf("smsbatch %v does not list %q:\n%s", args, cmd, out)
			}
		}
		if bytes.Contains(out, []byte("-rate-high")) {
			t.Errorf("smsbatch %v lists serve's flags instead of the commands:\n%s", args, out)
		}
	}
}

func TestSimulatorHelpListsOnlyItsFlags(t *testing.T) {
	skipShort(t)
	out, err := exec.Command(binary(t), "simulator", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("smsbatch simulator --help: %v\n%s", err, out)
	}
	for _, flag := range simulatorFlags {
		if !regexp.MustCompile(`(?m)^\s+-` + regexp.QuoteMeta(flag) + `(\s|$)`).Match(out) {
			t.Errorf("simulator --help does not list -%s:\n%s", flag, out)
		}
	}
	for _, flag := range []string{"-rate-high", "-event-store", "-read-store", "-nats-url", "-api-keys", "-http-write-timeout"} {
		if bytes.Contains(out, []byte(flag)) {
			t.Errorf("simulator --help lists serve's %s:\n%s", flag, out)
		}
	}
	// A serve flag is refused, not silently taken.
	if out, err := exec.Command(binary(t), "simulator", "--rate-high", "3").CombinedOutput(); err == nil {
		t.Errorf("simulator --rate-high 3 was accepted:\n%s", out)
	}
}

func TestMakeRunTakesAddrAndData(t *testing.T) {
	skipShort(t)
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	out, err := exec.Command("make", "-s", "-n", "-C", "../..", "run", "ADDR=127.0.0.1:9123", "DATA=/tmp/sms data").CombinedOutput()
	if err != nil {
		t.Fatalf("make -n run: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "serve --addr '127.0.0.1:9123' --data-dir '/tmp/sms data'") {
		t.Errorf("make run ADDR=… DATA=… runs:\n%s", out)
	}
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestFirstRunBannerREADMEAndPageLogs(t *testing.T) {
	skipShort(t)
	t.Parallel()
	dir := t.TempDir()
	addr := freeAddr(t)
	var out lockedBuffer
	cmd := exec.Command(binary(t), "serve", "--addr", addr, "--data-dir", dir, "--rate-unlimited", "--http-rate-limit", "0", "--sim-latency", "1ms")
	// As a newcomer runs it: no keys configured, nothing set.
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	waitListening(t, addr)

	banner := regexp.MustCompile(`export (SMSBATCH_\w+)=(\S+)`).FindStringSubmatch(out.String())
	if banner == nil {
		t.Fatalf("no export line in the start-up banner:\n%s", out.String())
	}
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "export "+banner[1]+"=") || !strings.Contains(string(readme), "$"+banner[1]) {
		t.Errorf("the banner says export %s=…, the README does not use %s", banner[1], banner[1])
	}
	if strings.Contains(string(readme), "export KEY=") {
		t.Error("the README still exports KEY")
	}

	// On the embedded default serve runs two of the runtime's processors a
	// core, so that sends due while one is held still start on time
	// (procsPerCore); a CPU quota below the cores would keep Go's own.
	if runtime.GOMAXPROCS(0) == runtime.NumCPU() {
		serving := regexp.MustCompile(`msg="smsbatch is serving".* gomaxprocs=(\d+)`)
		procs := serving.FindStringSubmatch(out.String())
		for deadline := time.Now().Add(10 * time.Second); procs == nil && time.Now().Before(deadline); procs = serving.FindStringSubmatch(out.String()) {
			time.Sleep(20 * time.Millisecond)
		}
		if want := strconv.Itoa(procsPerCore * runtime.NumCPU()); procs == nil || procs[1] != want {
			t.Errorf("serving line's gomaxprocs: got %v, want %s:\n%s", procs, want, out.String())
		}
	}

	c := &client{t: t, base: "http://" + addr, key: banner[2]}
	c.waitReady()
	body := batchBody(recipients(1500), "high")
	st := c.create(body)
	c.waitStatus(st.ID, 60*time.Second, "completed")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		logs := out.String()
		if strings.Contains(logs, fmt.Sprintf("batch=%s page=1 count=500", st.ID)) {
			if n := strings.Count(logs, "recipients page read"); n < 2 {
				t.Errorf("%d page reads logged, want one per page", n)
			}
			if !regexp.MustCompile(`level=INFO msg="recipients page read" batch=` + st.ID + ` page=0 count=1000`).MatchString(logs) {
				t.Errorf("page 0 not logged at info with batch, page and count:\n%s", logs)
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no info line for the second page of %s in the log:\n%s", st.ID, out.String())
}
