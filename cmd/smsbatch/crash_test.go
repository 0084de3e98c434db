package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	// binDir is where binary builds: the temporary directory as the process
	// started, since a test may point TMPDIR at its own, removed when it ends,
	// and may be the first to ask for the binary.
	binDir = os.TempDir()
)

// binary builds the real smsbatch binary once for the tests that kill it.
func binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp(binDir, "smsbatch-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "smsbatch")
		out, err := exec.Command("go", "build", "-race", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// process is the binary running as its own process.
type process struct {
	cmd  *exec.Cmd
	done chan error
}

// startProcess runs the binary with args; its output goes to the test log (exec
// copies it, and Wait returns only once the copy is done, so nothing is logged
// after the test). The process is killed when the test ends.
func startProcess(t testing.TB, name string, args ...string) *process {
	t.Helper()
	return startCommand(t, name, exec.Command(binary(t), args...))
}

// startCommand is startProcess for a command that runs the binary some other way
// (under prlimit, say).
func startCommand(t testing.TB, name string, cmd *exec.Cmd) *process {
	t.Helper()
	cmd.Env = append(os.Environ(), "GORACE=halt_on_error=1")
	out := &prefixWriter{t: t, prefix: name + ": "}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
	})
	return p
}

// prefixWriter logs each line written to it.
type prefixWriter struct {
	t      testing.TB
	prefix string
	mu     sync.Mutex
	buf    []byte
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.t.Log(w.prefix + string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
}

// waitListening waits until something accepts connections on addr.
func waitListening(t testing.TB, addr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if conn, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startBinary runs `smsbatch serve` and returns it with a client once it is ready.
func startBinary(t testing.TB, dataDir, addr string, extra ...string) (*process, *client) {
	t.Helper()
	args := append([]string{"serve", "--addr", addr, "--data-dir", dataDir,
		"--api-keys", "acme:" + acmeKey, "--sim-latency", "30ms", "--work-slice", "1s",
		"--stall-timeout", "3s", "--log-level", "warn"}, extra...)
	p := startProcess(t, "smsbatch", args...)
	waitListening(t, addr)
	c := &client{t: t, base: "http://" + addr, key: acmeKey}
	c.waitReady()
	return p, c
}

func (p *process) wait(t testing.TB, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(timeout):
		t.Fatal("process did not exit")
		return nil
	}
}

func TestCrashWithSIGKILLMidBatchFinishesOnRestart(t *testing.T) {
	skipShort(t)
	dataDir := t.TempDir()
	id := crashAndRestart(t, dataDir)
	assertExactlyOneOutcome(t, storedEvents(t, dataDir), id, 30)
}

// crashAndRestart kills the binary with SIGKILL in the middle of a batch of 30,
// starts it again on the same data, waits for the batch to complete with every
// recipient in the outbox once, stops it and returns the batch's ID.
func crashAndRestart(t *testing.T, dataDir string, extra ...string) string {
	t.Helper()
	addr := freeAddr(t)
	p, c := startBinary(t, dataDir, addr, extra...)
	st := c.create(batchBody(recipients(30), "high")) // ~3.6 s at 8/s
	time.Sleep(1500 * time.Millisecond)
	mid := c.status(st.ID)
	if mid.Progress.Completed == 0 || mid.Progress.Completed >= 30 {
		t.Fatalf("not mid-batch when killed: %+v", mid.Progress)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.wait(t, 10*time.Second)

	p, c = startBinary(t, dataDir, addr, extra...)
	done := c.waitStatus(st.ID, 60*time.Second, "completed")
	if done.Progress.Completed != 30 {
		t.Fatalf("after restart: %+v, want 30 sent", done.Progress)
	}
	if n := len(outbox(t, dataDir, st.ID)); n != 30 {
		t.Fatalf("outbox holds %d distinct recipients, want 30", n)
	}
	// Stop it gracefully: the bolt file is locked while the binary runs.
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.wait(t, 30*time.Second)
	return st.ID
}

func TestSIGTERMFinishesInFlightSends(t *testing.T) {
	skipShort(t)
	dataDir := t.TempDir()
	addr := freeAddr(t)
	p, c := startBinary(t, dataDir, addr, "--sim-latency", "400ms", "--rate-unlimited", "--sim-record-every-call")
	st := c.create(batchBody(recipients(40), "normal"))
	time.Sleep(600 * time.Millisecond)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t, 30*time.Second); err != nil {
		t.Fatalf("graceful shutdown exited with %v", err)
	}
	// Every message handed to the provider before the signal has its outcome.
	outcomes := assertStopRecordedEverySend(t, storedEvents(t, dataDir), st.ID)
	if n := len(outbox(t, dataDir, st.ID)); n != outcomes {
		t.Fatalf("outbox %d, outcomes %d", n, outcomes)
	}
}

// assertStopRecordedEverySend fails unless every message of batch id
// dispatched before a graceful stop has its outcome among events, and returns
// how many outcomes it has.
func assertStopRecordedEverySend(t *testing.T, events []eventstore.Event, id string) int {
	t.Helper()
	dispatched, outcomes := map[int]bool{}, map[int]bool{}
	for _, se := range events {
		if se.Stream != domain.BatchStream(id) {
			continue
		}
		e, err := domain.DecodeEvent(se.Type, se.Data)
		if err != nil {
			continue
		}
		switch e := e.(type) {
		case domain.MessagesDispatched:
			for _, d := range e.Messages {
				dispatched[d.Index] = true
			}
		case domain.MessageSent:
			outcomes[e.Index] = true
		case domain.MessageFailed:
			outcomes[e.Index] = true
		}
	}
	if len(dispatched) == 0 {
		t.Fatal("nothing was dispatched before the stop")
	}
	for i := range dispatched {
		if !outcomes[i] {
			t.Errorf("message %d was dispatched but has no outcome after a graceful stop", i)
		}
	}
	return len(outcomes)
}

// A batch cancelled with messages at the provider, its process then killed:
// nothing was left to end those messages, and the cancelled campaign showed
// them pending for good (the work messages died with the process, and start-up
// looked only at batches still processing). They end after the restart.
func TestACancelledBatchKilledWithSendsInFlightLeavesNothingPending(t *testing.T) {
	skipShort(t)
	dataDir := t.TempDir()
	addr := freeAddr(t)
	flags := []string{"--sim-latency", "4s", "--rate-unlimited", "--send-timeout", "6s"}
	p, c := startBinary(t, dataDir, addr, flags...)
	st := c.create(batchBody(recipients(10), "high"))
	for deadline := time.Now().Add(10 * time.Second); c.status(st.ID).Progress.Pending == 0; {
		if time.Now().After(deadline) {
			t.Fatal("nothing dispatched")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, _ := c.do("POST", "/api/v2/batch/"+st.ID+"/cancel", nil, nil); code != http.StatusOK {
		t.Fatalf("cancel: %d", code)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.wait(t, 10*time.Second)
	p, c = startBinary(t, dataDir, addr, flags...)
	defer func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		p.wait(t, 30*time.Second)
	}()
	var got status
	var pending struct {
		Recipients []struct{ Index int } `json:"recipients"`
	}
	// Well past every dispatch's deadline (decision + 1 s + 6 s + 2 s).
	for deadline := time.Now().Add(20 * time.Second); ; {
		got = c.status(st.ID)
		c.do("GET", "/api/batch/"+st.ID+"/recipients?status=pending", nil, &pending)
		if got.Progress.Pending == 0 && len(pending.Recipients) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got.Status != "cancelled" || got.Progress.Pending != 0 || len(pending.Recipients) != 0 {
		t.Fatalf("cancelled batch after the restart: %s with %d pending (recipients pending: %d); want none pending",
			got.Status, got.Progress.Pending, len(pending.Recipients))
	}
	if got.Progress.Skipped == 0 {
		t.Fatalf("cancelled batch after the restart: %+v; want its messages in flight ended skipped", got.Progress)
	}
}
