package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"syscall"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
)

// statusOf is the one table mapping application error codes to HTTP statuses.
var statusOf = map[string]int{
	domain.EMALFORMED:    http.StatusBadRequest,
	domain.EINVALID:      http.StatusUnprocessableEntity,
	domain.EUNAUTHORIZED: http.StatusUnauthorized,
	domain.ENOTFOUND:     http.StatusNotFound,
	domain.ECONFLICT:     http.StatusConflict,
	domain.ETOOLARGE:     http.StatusRequestEntityTooLarge,
	domain.ETOOSLOW:      http.StatusRequestTimeout,
	domain.ERATELIMITED:  http.StatusTooManyRequests,
	domain.EUNAVAILABLE:  http.StatusServiceUnavailable,
	domain.EINTERNAL:     http.StatusInternalServerError,
}

// errorBody is the JSON shape of every error answer.
type errorBody struct {
	Error errorPayload `json:"error"`
}

type errorPayload struct {
	Code    string                `json:"code"`
	Message string                `json:"message"`
	Details []domain.FieldProblem `json:"details,omitempty"`
}

// writeError answers with err's status and code. Internal errors are logged and
// answered with their *domain.Error's message if they carry one (it names the
// cause), else a generic one: their own text may hold anything.
func writeError(w http.ResponseWriter, r *http.Request, logger *slog.Logger, err error) {
	code := domain.ErrorCode(err)
	message := domain.ErrorMessage(err)
	retryAfter := "1"
	if code == domain.EINTERNAL {
		if fault, wait := storageFault(err); fault != "" {
			code, message, retryAfter = domain.EUNAVAILABLE, fault, wait
		}
	}
	status, ok := statusOf[code]
	if !ok {
		status = http.StatusInternalServerError
	}
	var details []domain.FieldProblem
	var appErr *domain.Error
	if errors.As(err, &appErr) {
		details = appErr.Details
	}
	switch {
	case status == http.StatusServiceUnavailable:
		// Nothing the client sent was wrong: the same request may work later.
		w.Header().Set("Retry-After", retryAfter)
		logger.WarnContext(r.Context(), "request failed: unavailable", "method", r.Method, "path", r.URL.Path, "err", err)
	case status >= 500:
		logger.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, status, errorBody{Error: errorPayload{Code: code, Message: message, Details: details}})
}

// storageFault names the cause when err says storage is out of reach or full,
// with the Retry-After to answer; "" otherwise.
func storageFault(err error) (message, retryAfter string) {
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return "the service's storage is full; try again later", "30"
	case errors.Is(err, eventstore.ErrUnavailable):
		return "the service's storage is unavailable; try again shortly", "1"
	}
	return "", ""
}

// internalError marks err as the service's own failure with a message that names
// the cause without its details, which are only logged.
func internalError(message string, err error) error {
	return fmt.Errorf("%w: %w", &domain.Error{Code: domain.EINTERNAL, Message: message}, err)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	// Error messages echo bits of the request; a browser must never render an
	// answer as anything but JSON.
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}
