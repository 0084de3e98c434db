package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/internal/pgtest"
)

var (
	benchBuildOnce sync.Once
	benchBinPath   string
	benchBuildErr  error
)

// benchBinary builds smsbatch without the race detector, for figures: the
// tests' binary runs several times slower.
func benchBinary(b *testing.B) string {
	b.Helper()
	benchBuildOnce.Do(func() {
		dir, err := os.MkdirTemp(binDir, "smsbatch-bench-")
		if err != nil {
			benchBuildErr = err
			return
		}
		benchBinPath = filepath.Join(dir, "smsbatch")
		if out, err := exec.Command("go", "build", "-o", benchBinPath, ".").CombinedOutput(); err != nil {
			benchBuildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if benchBuildErr != nil {
		b.Fatal(benchBuildErr)
	}
	return benchBinPath
}

// cpuSeconds is the user and system CPU a process has used so far.
func cpuSeconds(b *testing.B, p *process) float64 {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		b.Skipf("no /proc here: %v", err)
	}
	// The fields after the command name, which is in parentheses.
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ
}

// BenchmarkPostgresEndToEnd is issue 12's PostgreSQL row: 100 batches of 200
// recipients created at once through the API of one instance, and of three
// sharing PostgreSQL and NATS (batches spread over them), the rate lifted, a
// standalone simulator answering in 20 ms over HTTP. Each instance is its own
// process, built without the race detector; msgs/s is from the first create
// to the last completion, and instance-cpu-us/msg the CPU all instances spent
// for it, which for three should stay near one's. sim-cpu-us/msg is the
// simulator's CPU for the same messages: it shares the machine's cores with
// the instances and PostgreSQL (a provider would not), 70 to 100 µs a message
// of its net/http server on two cores.
func BenchmarkPostgresEndToEnd(b *testing.B) {
	bin := benchBinary(b)
	for _, instances := range []int{1, 3} {
		b.Run(fmt.Sprintf("instances=%d", instances), func(b *testing.B) {
			url := pgtest.Database(b)
			nurl := natsURL(b)
			ns := natsNamespace(b, nurl)
			b.Setenv("SMSBATCH_SMS_AUTH_TOKEN", "sim-secret-token-0123456789")
			simAddr := freeAddr(b)
			simProc := startCommand(b, "simulator", exec.Command(bin, "simulator", "--addr", simAddr, "--data-dir", b.TempDir(),
				"--sms-account-sid", "ACtest", "--sim-latency", "20ms", "--log-level", "warn"))
			waitListening(b, simAddr)
			var procs []*process
			var clients []*client
			for range instances {
				addr := freeAddr(b)
				args := append([]string{"serve", "--addr", addr, "--data-dir", b.TempDir(), "--api-keys", "acme:" + acmeKey,
					"--rate-unlimited", "--http-rate-limit", "-1", "--uploads-per-key", "0", "--log-level", "error"}, instanceArgs(url, nurl, ns, simAddr)...)
				p := startCommand(b, "smsbatch", exec.Command(bin, args...))
				waitListening(b, addr)
				c := &client{t: b, base: "http://" + addr, key: acmeKey}
				c.waitReady()
				procs, clients = append(procs, p), append(clients, c)
			}
			const batches, perBatch = 100, 200
			body := batchBody(recipients(perBatch), "normal")
			var wall time.Duration
			var cpu, simCPU float64
			sent := 0
			for range b.N {
				before := 0.0
				for _, p := range procs {
					before += cpuSeconds(b, p)
				}
				simBefore := cpuSeconds(b, simProc)
				start := time.Now()
				sent += sendSpread(clients, body, batches)
				wall += time.Since(start)
				for _, p := range procs {
					cpu += cpuSeconds(b, p)
				}
				cpu -= before
				simCPU += cpuSeconds(b, simProc) - simBefore
			}
			b.ReportMetric(simCPU/float64(sent)*1e6, "sim-cpu-us/msg")
			b.ReportMetric(float64(sent)/wall.Seconds(), "msgs/s")
			b.ReportMetric(cpu/float64(sent)*1e6, "instance-cpu-us/msg")
		})
	}
}
