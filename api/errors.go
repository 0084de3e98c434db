package api

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

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
// answered with a generic message: their text may hold anything.
func writeError(w http.ResponseWriter, r *http.Request, logger *slog.Logger, err error) {
	if errors.Is(err, eventstore.ErrUnavailable) && domain.ErrorCode(err) == domain.EINTERNAL {
		// A store restarting or out of reach: the client should try again, and
		// nothing it sent was wrong.
		logger.WarnContext(r.Context(), "store unavailable", "method", r.Method, "path", r.URL.Path, "err", err)
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: errorPayload{
			Code: domain.EUNAVAILABLE, Message: "the service's storage is unavailable; try again shortly"}})
		return
	}
	code := domain.ErrorCode(err)
	status, ok := statusOf[code]
	if !ok {
		status = http.StatusInternalServerError
	}
	var details []domain.FieldProblem
	var appErr *domain.Error
	if errors.As(err, &appErr) {
		details = appErr.Details
	}
	if status >= 500 {
		logger.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, status, errorBody{Error: errorPayload{Code: code, Message: domain.ErrorMessage(err), Details: details}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}
