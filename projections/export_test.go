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

// ProjectedTypes are the event types Decode decodes.
func ProjectedTypes() []string {
	out := make([]string, 0, len(projected))
	for t := range projected {
		out = append(out, t)
	}
	return out
}
