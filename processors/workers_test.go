package processors

import (
	"bytes"
	"runtime"
	"strconv"
	"testing"
	"time"
)

// goroutineID is the calling goroutine's number, from its stack header.
func goroutineID() int {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	buf, _ = bytes.CutPrefix(buf, []byte("goroutine "))
	id, _ := strconv.Atoi(string(buf[:bytes.IndexByte(buf, ' ')]))
	return id
}

// Every function handed over runs at once, however many are running: sends
// are never queued behind others.
func TestWorkersRunEveryFunctionAtOnce(t *testing.T) {
	w := newWorkers()
	defer w.stop()
	const n = 50
	started, release := make(chan int, n), make(chan struct{})
	for range n {
		w.Go(func() {
			started <- goroutineID()
			<-release
		})
	}
	ids := map[int]bool{}
	for range n {
		select {
		case id := <-started:
			ids[id] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d functions started; the others wait", len(ids), n)
		}
	}
	close(release)
	if len(ids) != n {
		t.Fatalf("%d functions ran on %d goroutines at once", n, len(ids))
	}
}

// A function handed over once a worker is idle runs on that worker, whose
// stack has grown already; stop ends the idle workers.
func TestWorkersReuseAnIdleOneAndStop(t *testing.T) {
	before := runtime.NumGoroutine()
	w := newWorkers()
	first := make(chan int, 1)
	w.Go(func() { first <- goroutineID() })
	worker := <-first
	reused := false
	for deadline := time.Now().Add(5 * time.Second); !reused && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond) // for the worker to wait again
		next := make(chan int, 1)
		w.Go(func() { next <- goroutineID() })
		reused = <-next == worker
	}
	if !reused {
		t.Fatal("no function ran on the idle worker")
	}
	w.stop()
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > before; {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after stop, %d before the workers", runtime.NumGoroutine(), before)
		}
		time.Sleep(time.Millisecond)
	}
}
