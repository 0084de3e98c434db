package eventstore

import (
	"time"

	"github.com/cenkalti/backoff/v5"
)

// FastFollower shortens a follower's waits between retries and sets its clock,
// for tests.
func FastFollower(cfg *FollowerConfig, now func() time.Time) {
	cfg.Backoff = func() backoff.BackOff { return backoff.NewConstantBackOff(5 * time.Millisecond) }
	cfg.now = now
}

// TailJoined is how many followers wait on the tail's wait in progress
// besides the one that asked the store.
func TailJoined(t *Tail) int {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if t.wait == nil {
		return 0
	}
	return t.wait.joined
}

// TailExtend is what a read on from the run's end does to the run.
func TailExtend(t *Tail, from Position, events []Event) { t.extend(from, events) }
