package projections

import (
	"cmp"
	"encoding/base64"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/smsbatch/smsbatch/domain"
)

// Query validation and cursors, shared by the stores so that a cursor means the
// same whichever store serves it. Cursors are opaque to callers: base64 of a
// versioned key, checked on the way in so that a damaged one is EINVALID.

// Page size limits of the queries.
const (
	DefaultListLimit  = 20
	MaxListLimit      = 100
	DefaultErrorLimit = 100
	MaxErrorLimit     = 1000
)

const (
	listCursorPrefix  = "b1:"
	errorCursorPrefix = "e1:"
)

// ListKey is where a batch sits in its tenant's list: newest first, by CreatedAt
// then ID, both descending, so that batches created at the same instant still
// have one order to page through.
type ListKey struct {
	CreatedAt time.Time
	ID        string
}

// KeyOf returns b's place in the list.
func KeyOf(b BatchStatus) ListKey { return ListKey{CreatedAt: b.CreatedAt, ID: b.ID} }

// Compare returns -1 when k is listed before o (k is newer), +1 when after, 0 when equal.
func (k ListKey) Compare(o ListKey) int {
	if c := o.CreatedAt.Compare(k.CreatedAt); c != 0 {
		return c
	}
	return cmp.Compare(o.ID, k.ID)
}

// Cursor returns the cursor of the page that follows the batch at k.
func (k ListKey) Cursor() string {
	raw := listCursorPrefix + strconv.FormatInt(k.CreatedAt.UnixNano(), 10) + ":" + k.ID
	return base64.RawURLEncoding.EncodeToString([]byte(raw))
}

// ListPage is a validated ListQuery.
type ListPage struct {
	Limit int
	// After is the last batch of the previous page; nil for the first page.
	After *ListKey
	// Status is the status filter; Q the name or ID prefix, lower-cased (see
	// FoldName). Empty for none.
	Status, Q string
}

// MaxListQueryLength bounds ListQuery.Q: no longer than a name.
const MaxListQueryLength = domain.MaxNameLength

// FoldName is a name as the list's name filter compares it: lower-cased, so
// that the filter ignores case, the same way in every store.
func FoldName(name string) string { return strings.ToLower(name) }

// Matches reports whether a batch of that status, folded name (FoldName) and
// ID passes the page's filters.
func (p ListPage) Matches(status, foldedName, id string) bool {
	if p.Status != "" && status != p.Status {
		return false
	}
	return p.Q == "" || strings.HasPrefix(foldedName, p.Q) || strings.HasPrefix(id, p.Q)
}

var batchStatuses = []domain.Status{domain.StatusPending, domain.StatusProcessing, domain.StatusPaused,
	domain.StatusCompleted, domain.StatusFailed, domain.StatusCancelled}

// Page validates q: a Limit outside 0..MaxListLimit, an unknown status, a Q
// that is not valid text or longer than a name, or a cursor this package did
// not make is EINVALID.
func (q ListQuery) Page() (ListPage, error) {
	limit, err := pageLimit(q.Limit, DefaultListLimit, MaxListLimit)
	if err != nil {
		return ListPage{}, err
	}
	page := ListPage{Limit: limit, Status: q.Status, Q: FoldName(q.Q)}
	if q.Status != "" && !slices.Contains(batchStatuses, domain.Status(q.Status)) {
		return ListPage{}, domain.Errorf(domain.EINVALID, "unknown batch status %q", q.Status)
	}
	if err := domain.CheckName(q.Q); err != nil {
		return ListPage{}, domain.Errorf(domain.EINVALID, "q: %v", err)
	}
	if q.Cursor == "" {
		return page, nil
	}
	raw, ok := decodeCursor(q.Cursor, listCursorPrefix)
	nanos, id, found := strings.Cut(raw, ":")
	if !ok || !found || id == "" {
		return ListPage{}, badCursor()
	}
	n, err := strconv.ParseInt(nanos, 10, 64)
	if err != nil {
		return ListPage{}, badCursor()
	}
	page.After = &ListKey{CreatedAt: time.Unix(0, n).UTC(), ID: id}
	return page, nil
}

// ErrorCursor returns the cursor of the page that follows e.
func ErrorCursor(e ErrorEntry) string {
	return base64.RawURLEncoding.EncodeToString([]byte(errorCursorPrefix + strconv.Itoa(e.Index)))
}

// ErrorPage is a validated ErrorQuery.
type ErrorPage struct {
	Limit int
	// Category is a known category, or empty for all.
	Category string
	// AfterIndex is the last recipient of the previous page; -1 for the first page.
	AfterIndex int
}

// Page validates q: a Limit outside 0..MaxErrorLimit, an unknown category or a
// cursor this package did not make is EINVALID.
func (q ErrorQuery) Page() (ErrorPage, error) {
	limit, err := pageLimit(q.Limit, DefaultErrorLimit, MaxErrorLimit)
	if err != nil {
		return ErrorPage{}, err
	}
	page := ErrorPage{Limit: limit, AfterIndex: -1}
	if q.Category != "" {
		c, err := domain.ParseErrorCategory(q.Category)
		if err != nil {
			return ErrorPage{}, domain.Errorf(domain.EINVALID, "unknown error category %q", q.Category)
		}
		page.Category = string(c)
	}
	if q.Cursor == "" {
		return page, nil
	}
	raw, ok := decodeCursor(q.Cursor, errorCursorPrefix)
	if !ok {
		return ErrorPage{}, badCursor()
	}
	index, err := strconv.Atoi(raw)
	if err != nil || index < 0 || index > maxCursorIndex {
		return ErrorPage{}, badCursor()
	}
	page.AfterIndex = index
	return page, nil
}

func pageLimit(limit, def, maximum int) (int, error) {
	switch {
	case limit == 0:
		return def, nil
	case limit < 0 || limit > maximum:
		return 0, domain.Errorf(domain.EINVALID, "limit must be between 1 and %d", maximum)
	}
	return limit, nil
}

func decodeCursor(cursor, prefix string) (string, bool) {
	raw, err := base64.RawURLEncoding.DecodeString(cursor)
	if err != nil {
		return "", false
	}
	return strings.CutPrefix(string(raw), prefix)
}

func badCursor() error { return domain.Errorf(domain.EINVALID, "invalid cursor") }
