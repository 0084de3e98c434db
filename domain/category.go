package domain

import "fmt"

// ErrorCategory classifies why a send attempt failed. Categories decide whether a
// recipient is retried (Retryable) or failed at once.
type ErrorCategory string

// The error categories. Their string values appear in the API and in events, so
// they never change.
const (
	CategoryInvalidNumber       ErrorCategory = "invalid_number"
	CategoryUnroutable          ErrorCategory = "unroutable"
	CategoryBlocked             ErrorCategory = "blocked"
	CategoryNotSMSCapable       ErrorCategory = "not_sms_capable"
	CategoryRateLimited         ErrorCategory = "rate_limited"
	CategoryProviderUnavailable ErrorCategory = "provider_unavailable"
	CategoryTimeout             ErrorCategory = "timeout"
	CategoryUnknown             ErrorCategory = "unknown"
	// The reasons a message is skipped (MessageSkipped): neither sent nor failed.
	CategoryOptedOut  ErrorCategory = "opted_out" // the recipient asked not to be sent to
	CategoryExpired   ErrorCategory = "expired"   // the message's validity ran out first
	CategoryCancelled ErrorCategory = "cancelled" // the batch was cancelled (or failed) before the message's retry
)

// Categories lists every category, in the order the API documents them.
var Categories = []ErrorCategory{
	CategoryInvalidNumber, CategoryUnroutable, CategoryBlocked, CategoryNotSMSCapable,
	CategoryRateLimited, CategoryProviderUnavailable, CategoryTimeout, CategoryUnknown,
	CategoryOptedOut, CategoryExpired, CategoryCancelled,
}

// Retryable reports whether a failure of this category may succeed when tried again:
// the provider was busy, down or slow. Everything about the recipient itself is
// permanent. Unknown errors are retried: giving up on a message that would have
// gone through is the worse mistake, and the attempt limit bounds the cost.
func (c ErrorCategory) Retryable() bool {
	switch c {
	case CategoryRateLimited, CategoryProviderUnavailable, CategoryTimeout, CategoryUnknown:
		return true
	default:
		return false
	}
}

// Outage reports whether a failure of this category says something about the
// provider rather than the recipient: it was down, unreachable, slow or busy. Such
// failures do not use up a recipient's attempts: an outage must never fail a
// recipient for good. They trip the provider's circuit breaker instead, which
// holds the batches until the provider answers again.
func (c ErrorCategory) Outage() bool {
	switch c {
	case CategoryRateLimited, CategoryProviderUnavailable, CategoryTimeout:
		return true
	default:
		return false
	}
}

// ParseErrorCategory returns the category named s.
func ParseErrorCategory(s string) (ErrorCategory, error) {
	for _, c := range Categories {
		if string(c) == s {
			return c, nil
		}
	}
	return "", fmt.Errorf("unknown error category %q", s)
}
