package domain

import (
	"errors"
	"fmt"
)

// Application error codes. Callers branch on them; the HTTP layer maps each to one
// status in one table.
const (
	EMALFORMED    = "malformed"    // the request cannot be read (not JSON, wrong types)
	EINVALID      = "invalid"      // the request is well-formed but breaks a rule
	ENOTFOUND     = "not_found"    // no such batch, or not the caller's
	ECONFLICT     = "conflict"     // the batch's state does not allow it
	EUNAUTHORIZED = "unauthorized" // no or wrong credentials
	ETOOLARGE     = "too_large"    // over a documented limit
	ETOOSLOW      = "too_slow"     // the request arrived slower than the documented minimum rate
	ERATELIMITED  = "rate_limited" // too many requests
	EUNAVAILABLE  = "unavailable"  // a dependency is down; try again
	EINTERNAL     = "internal"     // a bug or an unexpected failure; never shown in detail
)

// FieldProblem says what is wrong with one field of a request.
type FieldProblem struct {
	Field   string `json:"field"`
	Problem string `json:"problem"`
}

// Error is an application error: a code callers branch on, a message safe to show
// the user, and per-field details.
type Error struct {
	Code    string
	Message string
	Details []FieldProblem
}

func (e *Error) Error() string {
	if len(e.Details) > 0 {
		return fmt.Sprintf("%s: %s (%s: %s)", e.Code, e.Message, e.Details[0].Field, e.Details[0].Problem)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// Errorf returns an *Error with the code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, or EINTERNAL.
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// ErrorMessage returns the user-safe message of err, or a generic one for
// internal errors, whose text may hold anything.
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}
