package processors

import (
	"sync"
	"time"
)

// workers runs functions on goroutines kept between them, so that a send
// starts on a stack already grown to what sending takes. A send through the
// HTTP provider goes deep into net/http, and on a goroutine of its own its
// stack grew, by copying, on every send: 5% of an instance's CPU with the rate
// lifted. A function handed to Go runs at once, on an idle worker or on a new
// one when none is idle: there is no bound and no queue (the slices bound
// what is in flight). A worker idle for workerIdle ends, and every idle one
// once stop is called.
type workers struct {
	jobs     chan func()
	quit     chan struct{}
	stopOnce sync.Once
}

// workerIdle is how long a worker waits for its next function before it ends.
const workerIdle = 5 * time.Second

func newWorkers() *workers {
	return &workers{jobs: make(chan func()), quit: make(chan struct{})}
}

// Go runs f on an idle worker, or on a new one.
func (w *workers) Go(f func()) {
	select {
	case w.jobs <- f:
	default:
		go w.run(f)
	}
}

// stop ends the idle workers, and each busy one once its function returns.
func (w *workers) stop() { w.stopOnce.Do(func() { close(w.quit) }) }

func (w *workers) run(f func()) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		f()
		f = nil // an idle worker holds nothing of the send it ran
		idle.Reset(workerIdle)
		select {
		case f = <-w.jobs:
		case <-idle.C:
			return
		case <-w.quit:
			return
		}
	}
}
