// Package processors holds smsbatch's send processor: a Watermill router whose
// handlers turn batch lifecycle events into work messages and work messages into
// fenced, rate-limited sends; the forwarder that feeds it from the event store;
// the scheduler and recovery of batches a crashed instance left behind.
package processors

import (
	"context"
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
	// MaxAttempts bounds the tries of one message for retryable failures that
	// are not the provider's outage (those never fail a message); default 5.
	MaxAttempts int
	// BreakerThreshold is how many sends in a row may fail on the provider's
	// side (unavailable, unreachable, timeout, 429) before sending is held;
	// default 5. BreakerProbeAfter is how long it is held before one probe;
	// default 5s.
	BreakerThreshold  int
	BreakerProbeAfter time.Duration
	// Backoff between attempts: exponential from BackoffInitial (default 500ms),
	// doubling, capped at BackoffMax (default 30s), with ±50% jitter.
	BackoffInitial, BackoffMax time.Duration
	// StallTimeout: a processing batch with no event for this long is handed a new
	// work message by recovery; default 15s.
	StallTimeout time.Duration
	// RecoveryInterval is how often recovery and the scheduler look; default 1s.
	RecoveryInterval time.Duration
	// RecoverAtStart hands every processing batch a work message once the
	// forwarder has caught up at start. Right for a transport that loses work
	// messages on restart (GoChannel); over a durable broker the work messages
	// survive and stall recovery covers the rest, so a joining instance does not
	// take batches over from instances that are working them.
	RecoverAtStart bool
	// StartPoint, when set, gives the forwarder the unfinished batches at a
	// position of the log, so that it follows the log from there: start-up does
	// not grow with history. Without it the forwarder reads the log from its
	// start.
	StartPoint StartPoint

	// Instance names this process in the dispatches it records; default a new
	// UUID at every start.
	Instance string
	// Gone reports whether the instance of that name is known to have stopped,
	// so that the messages it left in flight may be sent again before their
	// deadline. Optional: without it only deadlines tell. An embedded store held
	// by one process at a time can say every other instance is gone.
	Gone func(instance string) bool
	// DeadlineMargin is added to a dispatch's deadline for clocks that differ
	// between instances; default 2s.
	DeadlineMargin time.Duration
	// StateIdle is how long the state of a batch nobody sends for here is kept
	// (its pace and template); default 30s.
	StateIdle time.Duration
	// CachedRecipients bounds the recipients kept in memory, a page at a time,
	// across all batches; default 256,000 (about 256 full pages, or a thousand
	// batches of 256).
	CachedRecipients int
	// TenantMaxRate caps the messages a second of all of a tenant's batches
	// together, across instances; 0 is off. Each batch's share is in proportion
	// to its priority's rate and never above it. Shares gives the shares; a
	// batch's first send waits CapWarmup so that every instance has seen it.
	TenantMaxRate float64
	Shares        TenantShares
	CapWarmup     time.Duration
	// Suppressed reports whether a tenant's recipient opted out: such a
	// recipient is never sent, its message ends skipped (opted_out). Optional.
	// It is asked for every message about to be dispatched, so it must be cheap.
	Suppressed func(ctx context.Context, tenant, phone string) (bool, error)

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
	if c.BreakerThreshold <= 0 {
		c.BreakerThreshold = 5
	}
	if c.BreakerProbeAfter <= 0 {
		c.BreakerProbeAfter = 5 * time.Second
	}
	if c.DeadlineMargin <= 0 {
		c.DeadlineMargin = 2 * time.Second
	}
	if c.StateIdle <= 0 {
		c.StateIdle = 30 * time.Second
	}
	if c.CachedRecipients <= 0 {
		c.CachedRecipients = 256 * domain.RecipientPageSize
	}
	if c.CapWarmup <= 0 {
		c.CapWarmup = time.Second
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

// TenantShares tells how a tenant's rate cap is shared among its batches.
type TenantShares interface {
	// Share is the rate batchID may send at, own when the cap does not bind.
	Share(tenant, batchID string, own float64) float64
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
	if c.TenantMaxRate > 0 && c.Shares == nil {
		errs = append(errs, errors.New("TenantMaxRate needs Shares"))
	}
	if c.BackoffMax > 0 && c.BackoffInitial > c.BackoffMax {
		errs = append(errs, fmt.Errorf("BackoffInitial %s exceeds BackoffMax %s", c.BackoffInitial, c.BackoffMax))
	}
	return errors.Join(errs...)
}
