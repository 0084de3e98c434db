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
