// Package sms defines how smsbatch hands a message to an SMS provider and how a
// provider's failures are classified. Adapters live in sub-packages: simulator
// (the built-in provider of the embedded default and the tests) and httpprovider.
package sms

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/smsbatch/smsbatch/domain"
)

// Message is one SMS to send.
type Message struct {
	// IdempotencyKey is "<batchID>:<index>". A provider that honours it delivers a
	// message once however often it is sent with the same key.
	IdempotencyKey string
	// To is the recipient in E.164.
	To string
	// Body is the rendered text.
	Body string
	// BatchID and Index name the message, so that a provider that reports
	// delivery (a status callback) can say which message it reports on.
	BatchID string
	Index   int
}

// Receipt is the provider's answer to an accepted message.
type Receipt struct {
	// ProviderID is the provider's identifier of the message.
	ProviderID string
	// Duplicate is true when the provider recognised the idempotency key and did not
	// send again.
	Duplicate bool
}

// Provider sends SMS messages.
type Provider interface {
	// Send hands msg to the provider. A failure is returned as *Error where the
	// provider said why; any other error is classified by Classify.
	Send(ctx context.Context, msg Message) (Receipt, error)
}

type departureKey struct{}

// WithDeparture returns ctx carrying f, which a provider's Send calls at the
// moment the message leaves for the provider (Departed): the sender paces its
// next sends from it, by its own clock. The time taken before the call can be
// some milliseconds earlier on a busy process.
func WithDeparture(ctx context.Context, f func()) context.Context {
	return context.WithValue(ctx, departureKey{}, f)
}

// Departed tells the sender that the message of this Send leaves now: for a
// provider in the process, when it takes the message; over HTTP, when the
// request has been written. Calling it is optional, and harmless without a
// sender that asked.
func Departed(ctx context.Context) {
	if f, ok := ctx.Value(departureKey{}).(func()); ok {
		f()
	}
}

// Error is a send failure the provider explained.
type Error struct {
	Category domain.ErrorCategory
	// Code is the provider's own error code, e.g. "21211".
	Code string
	// Message is the provider's explanation, safe to show to users.
	Message string
	// RetryAfter is how long the provider asked us to wait (429 Retry-After); 0 if it did not say.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	return fmt.Sprintf("sms: %s (code %s): %s", e.Category, e.Code, e.Message)
}

// Classify turns any send error into an *Error: provider errors keep their category,
// deadlines become timeouts, network failures make the provider unavailable, and
// anything else is unknown.
func Classify(err error) *Error {
	var se *Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &se):
		return se
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Category: domain.CategoryTimeout, Code: "timeout", Message: "the provider did not answer in time"}
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		if netErr.Timeout() {
			return &Error{Category: domain.CategoryTimeout, Code: "timeout", Message: "the provider did not answer in time"}
		}
		return &Error{Category: domain.CategoryProviderUnavailable, Code: "network", Message: "the provider could not be reached"}
	}
	return &Error{Category: domain.CategoryUnknown, Code: "unknown", Message: "the provider failed without explanation"}
}
