package api

import (
	"context"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/projections"
)

func newBatchID() (string, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return "", err
	}
	return id.String(), nil
}

// batchID returns the {id} of the path. A malformed ID cannot name a batch, so it
// is a 404 like any unknown batch.
func batchID(r *http.Request) (string, error) {
	id := chi.URLParam(r, "id")
	if _, err := uuid.Parse(id); err != nil {
		return "", domain.Errorf(domain.ENOTFOUND, "batch not found")
	}
	return id, nil
}

func (s *server) getBatch(w http.ResponseWriter, r *http.Request) {
	p, _ := PrincipalFrom(r.Context())
	id, err := batchID(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	st, err := s.cfg.ReadModels.Batch(r.Context(), p.Tenant, id)
	if domain.ErrorCode(err) == domain.ENOTFOUND {
		// The read models may not have caught up with a batch just created (the
		// create answered 201 from the aggregate): a batch that exists is never
		// a 404.
		b, lerr := s.cfg.Commands.Repository().Load(r.Context(), id)
		switch {
		case lerr == nil && b.Tenant() == p.Tenant:
			st, err = s.aggregateStatus(r.Context(), b), nil
		case lerr != nil && domain.ErrorCode(lerr) != domain.ENOTFOUND:
			// The event store cannot tell whether it exists (damaged, out of
			// reach): say so rather than 404.
			err = lerr
		}
	}
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

type batchList struct {
	Batches    []projections.BatchStatus `json:"batches"`
	NextCursor string                    `json:"nextCursor,omitempty"`
}

func (s *server) listBatches(w http.ResponseWriter, r *http.Request) {
	p, _ := PrincipalFrom(r.Context())
	limit, err := queryInt(r, "limit", 0, 100)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	status, q, err := listFilters(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	page, next, err := s.cfg.ReadModels.Batches(r.Context(), projections.ListQuery{
		Tenant: p.Tenant, Limit: limit, Cursor: r.URL.Query().Get("cursor"), Status: status, Q: q,
	})
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if page == nil {
		page = []projections.BatchStatus{}
	}
	writeJSON(w, http.StatusOK, batchList{Batches: page, NextCursor: next})
}

func (s *server) getAnalytics(w http.ResponseWriter, r *http.Request) {
	p, _ := PrincipalFrom(r.Context())
	id, err := batchID(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	a, err := s.cfg.ReadModels.Analytics(r.Context(), p.Tenant, id)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

type errorList struct {
	Errors     []projections.ErrorEntry `json:"errors"`
	NextCursor string                   `json:"nextCursor,omitempty"`
}

func (s *server) getErrors(w http.ResponseWriter, r *http.Request) {
	p, _ := PrincipalFrom(r.Context())
	id, err := batchID(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	limit, err := queryInt(r, "limit", 0, 1000)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	category := r.URL.Query().Get("category")
	if category != "" {
		if _, err := domain.ParseErrorCategory(category); err != nil {
			writeError(w, r, s.log, &domain.Error{Code: domain.EINVALID, Message: "unknown error category",
				Details: []domain.FieldProblem{{Field: "category", Problem: err.Error()}}})
			return
		}
	}
	page, next, err := s.cfg.ReadModels.Errors(r.Context(), projections.ErrorQuery{
		Tenant: p.Tenant, BatchID: id, Category: category, Limit: limit, Cursor: r.URL.Query().Get("cursor"),
	})
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if page == nil {
		page = []projections.ErrorEntry{}
	}
	writeJSON(w, http.StatusOK, errorList{Errors: page, NextCursor: next})
}

// act runs a command on the batch of the path and answers with its new status.
func (s *server) act(run func(context.Context, commands.Act) (commands.Result, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, _ := PrincipalFrom(r.Context())
		id, err := batchID(r)
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		key, err := idempotencyKey(r)
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		do := func(w http.ResponseWriter) {
			res, err := run(r.Context(), commands.Act{Tenant: p.Tenant, BatchID: id, By: p.KeyID})
			if err != nil {
				writeError(w, r, s.log, err)
				return
			}
			s.started(r.Context(), res)
			writeJSON(w, http.StatusOK, s.statusAfter(r.Context(), p.Tenant, res))
		}
		if key == "" {
			do(w)
			return
		}
		// A lifecycle command has no body: method and path make the request.
		s.underKey(w, r, p.Tenant, key, newFingerprint(r).sum(), "", nil, do)
	}
}

// started tells Config.Started of a batch the request just started or resumed:
// its last event is then the BatchStarted or BatchResumed.
func (s *server) started(ctx context.Context, res commands.Result) {
	if s.cfg.Started == nil || res.Batch == nil || res.Batch.Status() != domain.StatusProcessing || res.Batch.Version() == 0 {
		return
	}
	s.cfg.Started(ctx, res.Batch.ID(), res.Batch.Version()-1)
}

// statusAfter is the batch's status once the read models include a command's
// events. If they are slow, the status is built from the aggregate instead, so the
// caller always sees the effect of its command.
func (s *server) statusAfter(ctx context.Context, tenant string, res commands.Result) projections.BatchStatus {
	wctx, cancel := context.WithTimeout(ctx, s.cfg.ReadYourWrites)
	defer cancel()
	if err := s.cfg.Projections.WaitFor(wctx, res.Position); err == nil {
		if st, err := s.cfg.ReadModels.Batch(ctx, tenant, res.Batch.ID()); err == nil {
			return st
		}
	}
	return s.aggregateStatus(ctx, res.Batch)
}

// aggregateStatus is statusFromAggregate with what the aggregate does not
// keep read from the batch's creation: a status without its name would show
// the batch unnamed while the read models lag.
func (s *server) aggregateStatus(ctx context.Context, b *domain.Batch) projections.BatchStatus {
	st := statusFromAggregate(b)
	if c, err := s.cfg.Commands.Creation(ctx, b.ID()); err == nil {
		st.Name, st.RetryOf = c.Name, c.RetryOf
	}
	return st
}

func statusFromAggregate(b *domain.Batch) projections.BatchStatus {
	st := projections.BatchStatus{
		ID: b.ID(), Tenant: b.Tenant(), Text: b.Text(), Status: string(b.Status()), Priority: string(b.Priority()),
		CreatedAt: b.CreatedAt(), UpdatedAt: b.LastEventAt(), Revision: max(b.Version(), 1) - 1, AutoStart: b.AutoStart(),
		Progress: projections.Progress{
			Total: b.Total(), Pending: len(b.Outstanding()), Completed: b.Sent(), Failed: b.Failed(), Skipped: b.Skipped(), Waiting: b.Waiting(),
		},
	}
	if t := b.ScheduleTime(); !t.IsZero() {
		st.ScheduleTime = &t
	}
	if h := b.Hold(); h.Reason != "" && b.Status() == domain.StatusProcessing {
		st.Hold = &projections.Hold{Reason: h.Reason, Since: h.Since}
	}
	if t := b.ValidUntil(); !t.IsZero() {
		st.ValidUntil = &t
	}
	if q, ok := b.QuietHours(); ok {
		st.QuietHours = &q
	}
	if r := b.CappedRate(); r > 0 && b.Status() == domain.StatusProcessing {
		st.RateCap = &projections.RateCap{Rate: r}
	}
	if outcomes := b.Sent() + b.Failed(); outcomes > 0 {
		st.Metrics.SuccessRate = float64(b.Sent()) / float64(outcomes)
	}
	if !b.PausedAt().IsZero() {
		st.PauseInfo = &projections.PauseInfo{PauseTime: b.PausedAt()}
		if t := b.ResumedAt(); t.After(b.PausedAt()) {
			st.PauseInfo.ResumeTime = &t
		}
	}
	return st
}

func queryInt(r *http.Request, name string, minimum, maximum int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < minimum || n > maximum {
		return 0, &domain.Error{Code: domain.EINVALID, Message: "invalid query parameter",
			Details: []domain.FieldProblem{{Field: name, Problem: "must be a whole number from " + strconv.Itoa(minimum) + " to " + strconv.Itoa(maximum)}}}
	}
	return n, nil
}
