package projections

import (
	"time"

	"github.com/cenkalti/backoff/v5"
)

// WithFastRetry returns cfg with retries a few milliseconds apart, so that tests
// of failures do not wait for the real backoff.
func WithFastRetry(cfg RunnerConfig) RunnerConfig {
	cfg.backOff = func() backoff.BackOff { return backoff.NewConstantBackOff(5 * time.Millisecond) }
	return cfg
}
