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

// storageErrors are the store ports' sentinels a request may fail with through no
// fault of the client, as the application error it is shown, with the Retry-After
// to send. They apply only to errors that carry no application code, whichever
// store (events or read models) they come from.
var storageErrors = []struct {
	sentinel   error
	shown      *domain.Error
	retryAfter string
}{
	// Damaged data does not heal by waiting: an operator must repair the store.
	{eventstore.ErrCorrupt, &domain.Error{Code: domain.EUNAVAILABLE,
		Message: "the event store is damaged; the service takes no requests that need it until an operator repairs it"}, ""},
	// A store restarting, out of reach or out of disk space.
	{eventstore.ErrUnavailable, &domain.Error{Code: domain.EUNAVAILABLE,
		Message: "the service's storage is unavailable; try again shortly"}, "1"},
}

// writeError answers with err's status and code. Internal errors are logged and
// answered with their *domain.Error's message if they carry one (it names the
// cause), else a generic one: their own text may hold anything.
func writeError(w http.ResponseWriter, r *http.Request, logger *slog.Logger, err error) {
	shown, retryAfter := shownError(err)
	status, ok := statusOf[shown.Code]
	if !ok {
		status = http.StatusInternalServerError
	}
	switch {
	case status == http.StatusServiceUnavailable:
		// Nothing the client sent was wrong: the same request may work later,
		// unless the store is damaged, which waiting does not mend.
		if retryAfter == "" && !errors.Is(err, eventstore.ErrCorrupt) {
			retryAfter = "1"
		}
		logger.WarnContext(r.Context(), "request failed: unavailable", "method", r.Method, "path", r.URL.Path, "err", err)
	case status >= 500:
		logger.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	if retryAfter != "" {
		w.Header().Set("Retry-After", retryAfter)
	}
	writeJSON(w, status, errorBody{Error: errorPayload{Code: shown.Code, Message: shown.Message, Details: shown.Details}})
}

// shownError is what a client is told about err: its application error, the
// storage condition it wraps, the cause an internal error names, or a generic
// internal error (its own text may hold anything), with the Retry-After to send.
func shownError(err error) (shown *domain.Error, retryAfter string) {
	var app *domain.Error
	if errors.As(err, &app) && app.Code != domain.EINTERNAL {
		return app, ""
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return &domain.Error{Code: domain.EUNAVAILABLE, Message: "the service's storage is full; try again later"}, "30"
	}
	for _, s := range storageErrors {
		if errors.Is(err, s.sentinel) {
			return s.shown, s.retryAfter
		}
	}
	if app != nil {
		return app, "" // an internal error whose message names the cause
	}
	return &domain.Error{Code: domain.EINTERNAL, Message: domain.ErrorMessage(err)}, ""
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
