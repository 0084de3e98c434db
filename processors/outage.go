package processors

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/processors/sms"
)

// outage is this instance's view of the provider's health: a circuit breaker
// (sony/gobreaker) over every send. Failures on the provider's side (it is
// down, unreachable, slow or busy) trip it after BreakerThreshold in a row;
// failures about a recipient do not count. While it is open nothing is
// dispatched, and the batches that would have sent are marked held with the
// reason; after BreakerProbeAfter one send goes out as a probe, and its success
// closes the breaker and the batches send again. Outage failures never use up
// a recipient's attempts (domain.ErrorCategory.Outage), so an outage delays
// recipients but never fails them.
type outage struct {
	cb  *gobreaker.TwoStepCircuitBreaker[struct{}]
	now func() time.Time

	mu       sync.Mutex
	openedAt time.Time
	probe    time.Duration
}

func newOutage(cfg Config, log *slog.Logger, metrics *Metrics) *outage {
	o := &outage{now: cfg.Now, probe: cfg.BreakerProbeAfter}
	o.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        "sms-provider",
		MaxRequests: 1,
		Timeout:     cfg.BreakerProbeAfter,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= uint32(cfg.BreakerThreshold)
		},
		IsSuccessful: func(err error) bool {
			return err == nil || !sms.Classify(err).Category.Outage()
		},
		// A send cut short by our own shutdown says nothing about the provider.
		IsExcluded: func(err error) bool { return errors.Is(err, context.Canceled) },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			o.mu.Lock()
			if to == gobreaker.StateOpen {
				o.openedAt = o.now()
			}
			o.mu.Unlock()
			metrics.ProviderCircuitOpen.Set(map[bool]float64{true: 1}[to != gobreaker.StateClosed])
			switch {
			case to == gobreaker.StateClosed:
				log.Info("sms provider answers again; held batches resume")
			case from == gobreaker.StateClosed:
				log.Warn("sms provider failing on its side; holding batches and probing", "probe_every", cfg.BreakerProbeAfter)
			default:
				log.Debug("sms provider probe", "breaker", to.String())
			}
		},
	})
	return o
}

// closed reports whether sends flow normally.
func (o *outage) closed() bool { return o.cb.State() == gobreaker.StateClosed }

// admits reports whether a dispatch may be decided now: the breaker is closed,
// or half-open without its probe yet.
func (o *outage) admits() bool {
	switch o.cb.State() {
	case gobreaker.StateClosed:
		return true
	case gobreaker.StateHalfOpen:
		return o.cb.Counts().Requests == 0
	default:
		return false
	}
}

// probeAt is when an open breaker lets a probe through.
func (o *outage) probeAt() time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.openedAt.Add(o.probe)
}

// allow asks to send; done must be called with the send's error.
func (o *outage) allow() (done func(error), ok bool) {
	done, err := o.cb.Allow()
	return done, err == nil
}

// markHold records on b whether it is held by the provider's outage as seen
// from here: held when the breaker is not closed, released when it is.
func (o *outage) markHold(b *domain.Batch, now time.Time) {
	switch {
	case b.Status() != domain.StatusProcessing:
	case o.closed():
		b.Unhold(now)
	default:
		b.HoldFor(now, domain.HoldReasonProviderOutage)
	}
}

// holdStale reports whether b's recorded hold disagrees with the breaker.
func (o *outage) holdStale(b *domain.Batch) bool {
	if b.Status() != domain.StatusProcessing {
		return false
	}
	return (b.Hold().Reason == "") != o.closed()
}
