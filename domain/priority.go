package domain

import (
	"fmt"
	"time"
)

// Priority orders batches and sets their sending rate.
type Priority string

// The priorities. Normal is the default.
const (
	PriorityHigh   Priority = "high"
	PriorityNormal Priority = "normal"
	PriorityLow    Priority = "low"
)

// ParsePriority returns the priority named s; an empty s is Normal.
func ParsePriority(s string) (Priority, error) {
	switch Priority(s) {
	case "":
		return PriorityNormal, nil
	case PriorityHigh, PriorityNormal, PriorityLow:
		return Priority(s), nil
	}
	return "", fmt.Errorf("unknown priority %q: want high, normal or low", s)
}

// Rates holds the messages per second each priority sends at.
type Rates struct {
	High, Normal, Low float64
}

// DefaultRates are the rates a batch sends at unless configured otherwise.
var DefaultRates = Rates{High: 8, Normal: 5, Low: 2}

// For returns the rate of priority p, in messages per second.
func (r Rates) For(p Priority) float64 {
	switch p {
	case PriorityHigh:
		return r.High
	case PriorityLow:
		return r.Low
	default:
		return r.Normal
	}
}

// Interval is the time between two sends at the rate of priority p.
func (r Rates) Interval(p Priority) time.Duration {
	rate := r.For(p)
	if rate <= 0 {
		return 0
	}
	return time.Duration(float64(time.Second) / rate)
}

// Validate reports rates that cannot be used.
func (r Rates) Validate() error {
	if r.High <= 0 || r.Normal <= 0 || r.Low <= 0 {
		return fmt.Errorf("rates must be positive, got high=%v normal=%v low=%v", r.High, r.Normal, r.Low)
	}
	return nil
}
