// Package processors holds smsbatch's send processor: a Watermill router whose
// handlers turn batch lifecycle events into work messages and work messages into
// fenced, rate-limited sends; the forwarder that feeds it from the event store;
// the scheduler and recovery of batches a crashed instance left behind.
package processors

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/processors/sms"
)

// Config configures the send processor.
type Config struct {
	// Commands runs the batch commands (required).
	Commands *commands.Handlers
	// Store is the event store the recipients are read from (required).
	Store eventstore.Store
	// Provider sends the messages (required).
	Provider sms.Provider

	// Rates per priority; default domain.DefaultRates. Unlimited lifts the limit.
	Rates     domain.Rates
	Unlimited bool
	// MaxInFlight bounds a batch's messages without an answer; default 5.
	MaxInFlight int
	// SliceDuration is how long one work message sends for; default 2s.
	SliceDuration time.Duration
	// SendTimeout bounds one call to the provider; default 5s.
	SendTimeout time.Duration
	// MaxAttempts bounds the tries of one message for retryable failures; default 5.
	MaxAttempts int
	// Backoff between attempts: exponential from BackoffInitial (default 500ms),
	// doubling, capped at BackoffMax (default 30s), with ±50% jitter.
	BackoffInitial, BackoffMax time.Duration
	// StallTimeout: a processing batch with no event for this long is handed a new
	// work message by recovery; default 15s.
	StallTimeout time.Duration
	// RecoveryInterval is how often recovery and the scheduler look; default 1s.
	RecoveryInterval time.Duration

	Metrics *Metrics
	Logger  *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if c.Rates == (domain.Rates{}) {
		c.Rates = domain.DefaultRates
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 5
	}
	if c.SliceDuration <= 0 {
		c.SliceDuration = 2 * time.Second
	}
	if c.SendTimeout <= 0 {
		c.SendTimeout = 5 * time.Second
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 5
	}
	if c.BackoffInitial <= 0 {
		c.BackoffInitial = 500 * time.Millisecond
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = 30 * time.Second
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = 15 * time.Second
	}
	if c.RecoveryInterval <= 0 {
		c.RecoveryInterval = time.Second
	}
	if c.Metrics == nil {
		c.Metrics = NewMetrics(nil)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate reports every missing or unusable setting.
func (c Config) Validate() error {
	var errs []error
	if c.Commands == nil {
		errs = append(errs, errors.New("missing Commands"))
	}
	if c.Store == nil {
		errs = append(errs, errors.New("missing Store"))
	}
	if c.Provider == nil {
		errs = append(errs, errors.New("missing Provider"))
	}
	if err := c.Rates.Validate(); err != nil && c.Rates != (domain.Rates{}) {
		errs = append(errs, err)
	}
	if c.BackoffMax > 0 && c.BackoffInitial > c.BackoffMax {
		errs = append(errs, fmt.Errorf("BackoffInitial %s exceeds BackoffMax %s", c.BackoffInitial, c.BackoffMax))
	}
	return errors.Join(errs...)
}
