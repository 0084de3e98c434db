package main

import "runtime"

// procsPerCore is how many of the Go runtime's processors (GOMAXPROCS) serve
// runs for each core when a store is a bbolt file, unless told otherwise.
//
// A batch's sends are timers, each firing on one of the processors. bbolt
// writes and syncs its pages in blocking system calls, and a processor whose
// thread is in one keeps its goroutines and timers until the runtime takes it
// back; another may be held by a long apply or the collector's marking until
// preempted, after up to 10 ms. With one processor a core, sends due meanwhile
// start late, and a send's lateness carries to the sends a second after it
// (processors/pace.go). With two a core the kernel, which switches threads
// every few milliseconds, runs the due send on the same cores. With PostgreSQL
// holding both stores the process waits on the network, which holds no
// processor, and more processors only cost CPU. The figures are in
// docs/ARCHITECTURE.md, "Two processors a core on the embedded stores".
const procsPerCore = 2

// tuneProcs sets the processors serve runs with (procsFor).
func tuneProcs(cfg Config, getenv func(string) string) {
	embedded := cfg.EventStore == "bolt" || cfg.ReadStore == "bolt"
	if n := procsFor(getenv("GOMAXPROCS") != "", embedded, runtime.GOMAXPROCS(0), runtime.NumCPU()); n != runtime.GOMAXPROCS(0) {
		runtime.GOMAXPROCS(n)
	}
}

// procsFor is the processors to run with: set says the GOMAXPROCS variable
// chose them, embedded that a store is a bbolt file, defaults is the
// runtime's choice, and cores the CPUs the process may run on. A default
// below the cores is a CPU quota (a container's limit, rounded up): more
// threads than the quota would let the kernel throttle the whole process for
// the rest of each period, so it stands, as a choice made with GOMAXPROCS
// does. A default at the cores can use them all already, so twice as many
// processors use no more CPU than the quota allowed before.
func procsFor(set, embedded bool, defaults, cores int) int {
	if set || !embedded || defaults < cores {
		return defaults
	}
	return cores * procsPerCore
}
