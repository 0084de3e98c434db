package api

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/internal/pgerr"
)

// TestStorageFailuresAreA503 holds one mapping for every store: whether the event
// store or the read models are out of reach, or the disk is full, the client gets
// the same 503 `unavailable` with Retry-After; a damaged event store is a 503 that
// says so; a bug stays a 500 that tells nothing.
func TestStorageFailuresAreA503(t *testing.T) {
	eventStoreDown := fmt.Errorf("commands: load batch: %w", pgerr.Classify(&pgconn.PgError{Code: "57P01"}))
	readModelsDown := fmt.Errorf("postgres projections: batch: %w", pgerr.Classify(&pgconn.PgError{Code: "08006"}))
	diskFull := fmt.Errorf("bolt: append to batch-x: commit: the disk is full: %w: %w", eventstore.ErrUnavailable, syscall.ENOSPC)
	corrupt := fmt.Errorf("bolt: read stream batch-x: event 7: %w: checksum mismatch", eventstore.ErrCorrupt)
	for _, c := range []struct {
		name       string
		err        error
		status     int
		code       string
		retryAfter string
		says       string
	}{
		{"event store down", eventStoreDown, 503, domain.EUNAVAILABLE, "1", "storage is unavailable"},
		{"read models down", readModelsDown, 503, domain.EUNAVAILABLE, "1", "storage is unavailable"},
		{"disk full", diskFull, 503, domain.EUNAVAILABLE, "30", "storage is full"},
		{"damaged event store", corrupt, 503, domain.EUNAVAILABLE, "", "the event store is damaged"},
		{"not found", domain.Errorf(domain.ENOTFOUND, "batch not found"), 404, domain.ENOTFOUND, "", "batch not found"},
		{"a bug", fmt.Errorf("nil map: %w", syscall.EINVAL), 500, domain.EINTERNAL, "", "internal error"},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			writeError(w, httptest.NewRequest("GET", "/api/batch/x", nil), slog.New(slog.DiscardHandler), c.err)
			var body errorBody
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
				t.Fatalf("%d %s: %v", w.Code, w.Body, err)
			}
			if w.Code != c.status || body.Error.Code != c.code || w.Header().Get("Retry-After") != c.retryAfter ||
				!strings.Contains(body.Error.Message, c.says) {
				t.Errorf("answer %d %+v, Retry-After %q; want %d %s saying %q, Retry-After %q",
					w.Code, body.Error, w.Header().Get("Retry-After"), c.status, c.code, c.says, c.retryAfter)
			}
			if strings.Contains(w.Body.String(), "checksum") || strings.Contains(w.Body.String(), "57P01") {
				t.Errorf("the answer shows the internal error: %s", w.Body)
			}
			if w.Code == http.StatusServiceUnavailable && w.Header().Get("Content-Type") != "application/json" {
				t.Errorf("503 without the JSON envelope")
			}
		})
	}
}
