package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/projections"
)

// The campaign endpoints: a batch's recipients with their outcomes, the CSV
// export, retrying the failed recipients as a new batch, rescheduling a pending
// batch, and the dry run of a create.

// queryBool reads a boolean query parameter: absent, "false" or "0" is false,
// "true" or "1" true; anything else, an empty value too ("?dryRun", which
// some clients mean as true), is a 422 naming it.
func queryBool(r *http.Request, name string) (bool, error) {
	q := r.URL.Query()
	if !q.Has(name) {
		return false, nil
	}
	switch v := q.Get(name); v {
	case "false", "0":
		return false, nil
	case "true", "1":
		return true, nil
	}
	return false, invalidParam(name, "must be true or false")
}

func invalidParam(name, problem string) error {
	return &domain.Error{Code: domain.EINVALID, Message: "invalid query parameter",
		Details: []domain.FieldProblem{{Field: name, Problem: problem}}}
}

// dryRun is the answer to POST /api/batch?dryRun=true.
type dryRun struct {
	DryRun        bool            `json:"dryRun"`
	Name          string          `json:"name"`
	Priority      string          `json:"priority"`
	ScheduleTime  *time.Time      `json:"scheduleTime,omitempty"`
	AutoStart     bool            `json:"autoStart"`
	Total         int             `json:"total"`
	TotalSegments int             `json:"totalSegments"`
	Messages      []dryRunMessage `json:"messages"`
}

type dryRunMessage struct {
	Index       int    `json:"index"`
	PhoneNumber string `json:"phoneNumber"`
	Text        string `json:"text"`
	Encoding    string `json:"encoding"`
	Segments    int    `json:"segments"`
}

// dryRunMessages is how many rendered messages a dry run shows.
const dryRunMessages = 10

// answerDryRun renders every recipient's message of a valid create request,
// counting segments, and answers with the first few: what the batch would
// send and cost, with nothing stored.
func (s *server) answerDryRun(w http.ResponseWriter, r *http.Request, c createChecked, spool *spool, count int) {
	out := dryRun{DryRun: true, Name: c.name, Priority: string(c.priority), ScheduleTime: c.schedule,
		AutoStart: c.autoStart, Total: count, Messages: []dryRunMessage{}}
	for i, rcp := range readSpool(spool) {
		if rcp.err != nil {
			writeError(w, r, s.log, internalError("the upload could not be read back from the service's disk", rcp.err))
			return
		}
		text := c.tmpl.Render(c.tmpl.Values(rcp.Vars))
		enc, segments := domain.Segments(text)
		out.TotalSegments += segments
		if i < dryRunMessages {
			out.Messages = append(out.Messages, dryRunMessage{Index: i, PhoneNumber: rcp.Phone, Text: text, Encoding: string(enc), Segments: segments})
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// listFilters reads the list's ?status= and ?q=.
func listFilters(r *http.Request) (status, q string, err error) {
	status, q = r.URL.Query().Get("status"), r.URL.Query().Get("q")
	if status != "" && !slices.Contains([]string{"pending", "processing", "paused", "completed", "failed", "cancelled"}, status) {
		return "", "", invalidParam("status", "must be pending, processing, paused, completed, failed or cancelled")
	}
	if err := domain.CheckName(q); err != nil {
		return "", "", invalidParam("q", err.Error())
	}
	return status, q, nil
}

type recipientList struct {
	Recipients []projections.Recipient `json:"recipients"`
	NextCursor string                  `json:"nextCursor,omitempty"`
}

func (s *server) getRecipients(w http.ResponseWriter, r *http.Request) {
	p, _ := PrincipalFrom(r.Context())
	id, err := batchID(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	q, err := s.recipientQuery(r, p.Tenant, id)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	page, next, err := s.cfg.ReadModels.Recipients(r.Context(), q)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if page == nil {
		page = []projections.Recipient{}
	}
	writeJSON(w, http.StatusOK, recipientList{Recipients: page, NextCursor: next})
}

// recipientQuery reads the recipients query's parameters, naming the one
// that is wrong.
func (s *server) recipientQuery(r *http.Request, tenant, id string) (projections.RecipientQuery, error) {
	q := projections.RecipientQuery{Tenant: tenant, BatchID: id, Cursor: r.URL.Query().Get("cursor")}
	var err error
	if q.Limit, err = queryInt(r, "limit", 0, projections.MaxRecipientLimit); err != nil {
		return q, err
	}
	q.Status = r.URL.Query().Get("status")
	if q.Status != "" && !slices.Contains(projections.RecipientStatuses, q.Status) {
		return q, invalidParam("status", "must be one of "+strings.Join(projections.RecipientStatuses, ", "))
	}
	if q.Category = r.URL.Query().Get("category"); q.Category != "" {
		if _, err := domain.ParseErrorCategory(q.Category); err != nil {
			return q, invalidParam("category", err.Error())
		}
	}
	q.Phone, err = s.phoneFilter(r.URL.Query().Get("phone"))
	return q, err
}

// phoneFilter reads ?phone=: the beginning of an E.164 number ("+" and
// digits), matched as a prefix, or a whole number as a create takes it
// ("(415) 555-0100" in the default region), matched exactly. A "+" sent
// unencoded arrives as a space, and is read as the "+" it was.
func (s *server) phoneFilter(raw string) (string, error) {
	if raw == "" {
		return "", nil
	}
	if rest, ok := strings.CutPrefix(raw, " "); ok && projections.PhonePrefix("+"+rest) {
		raw = "+" + rest
	}
	if projections.PhonePrefix(raw) {
		return raw, nil
	}
	phone, err := domain.NormalizePhone(strings.TrimSpace(raw), s.cfg.DefaultRegion)
	if err != nil {
		return "", invalidParam("phone", "must be a phone number, or the beginning of one in E.164 form (+ and digits, + sent as %2B)")
	}
	return phone, nil
}

// exportColumns are the export's columns before the template's variables.
var exportColumns = []string{"index", "phoneNumber", "status", "category", "code", "attempts",
	"providerMessageId", "dispatchedAt", "outcomeAt", "delivery", "deliveredAt"}

// exportCSV streams every recipient of a batch with its outcome and
// variables, a page of 1,000 at a time: memory stays constant whatever the
// batch's size. The server's write timeout is made for small answers, so the
// export replaces it by a deadline that moves with every write (64 KiB at
// most): a long export goes on as long as the client reads, one that stops
// reading is cut off after the write timeout.
func (s *server) exportCSV(w http.ResponseWriter, r *http.Request) {
	p, _ := PrincipalFrom(r.Context())
	id, err := batchID(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if _, err := s.cfg.ReadModels.Batch(r.Context(), p.Tenant, id); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	b, err := s.cfg.Commands.Repository().Load(r.Context(), id)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	rc := http.NewResponseController(w)
	// A write that finds the socket's send buffer full waits until the kernel
	// frees a good part of it (a third and more), and that buffer grows to
	// 4 MiB: with it, a client reading steadily at hundreds of KB/s was cut
	// off by the per-write deadline below. A small buffer makes the deadline
	// measure what the client takes.
	if c, ok := r.Context().Value(connKey{}).(interface{ SetWriteBuffer(int) error }); ok {
		_ = c.SetWriteBuffer(exportSendBuffer)
	}
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="batch-`+id+`.csv"`)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	out := &movingDeadline{w: w, rc: rc, timeout: s.cfg.Timeouts.Write}
	err = s.writeExport(r.Context(), out, p.Tenant, id, b.Variables(), rc.Flush)
	if err != nil {
		// The answer has begun: a truncated body, not an error envelope, is
		// all the client can be told.
		s.log.WarnContext(r.Context(), "export stopped", "batch", id, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// exportSendBuffer is the socket send buffer an export asks for (Linux
// doubles it): about what a client must take per write timeout.
const exportSendBuffer = 256 << 10

// movingDeadline sets the connection's write deadline before every write, so
// that each write, not the whole answer, has the write timeout.
type movingDeadline struct {
	w       io.Writer
	rc      *http.ResponseController
	timeout time.Duration
}

func (m *movingDeadline) Write(p []byte) (int, error) {
	// Not every ResponseWriter reaches a connection (httptest's does not).
	_ = m.rc.SetWriteDeadline(time.Now().Add(m.timeout))
	return m.w.Write(p)
}

// writeExport writes the CSV of batch id to out, calling flushed after each
// page.
func (s *server) writeExport(ctx context.Context, out io.Writer, tenant, id string, variables []string, flushed func() error) error {
	buf := bufio.NewWriterSize(out, 64<<10)
	cw := csv.NewWriter(buf)
	row := append(slices.Clone(exportColumns), variables...)
	if err := cw.Write(row); err != nil {
		return err
	}
	values := recipientValues{h: s.cfg.Commands, batchID: id}
	q := projections.RecipientQuery{Tenant: tenant, BatchID: id, Limit: projections.MaxRecipientLimit}
	for {
		page, next, err := s.cfg.ReadModels.Recipients(ctx, q)
		if err != nil {
			return err
		}
		for _, rcp := range page {
			vals, err := values.of(ctx, rcp.Index)
			if err != nil {
				return err
			}
			row = exportRow(row[:0], rcp, vals, len(variables))
			if err := cw.Write(row); err != nil {
				return err
			}
		}
		cw.Flush()
		if err := cw.Error(); err != nil {
			return err
		}
		if err := buf.Flush(); err != nil {
			return err
		}
		if err := flushed(); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return err
		}
		if next == "" {
			return nil
		}
		q.Cursor = next
	}
}

const exportTime = "2006-01-02T15:04:05.000Z07:00"

func exportRow(row []string, r projections.Recipient, values []string, variables int) []string {
	t := func(p *time.Time) string {
		if p == nil {
			return ""
		}
		return p.UTC().Format(exportTime)
	}
	row = append(row, strconv.Itoa(r.Index), r.PhoneNumber, r.Status, r.Category, cell(r.Code), strconv.Itoa(r.Attempts),
		cell(r.ProviderMessageID), t(r.DispatchedAt), t(r.OutcomeAt), r.Delivery, t(r.DeliveredAt))
	for i := range variables {
		v := ""
		if i < len(values) {
			v = values[i]
		}
		row = append(row, cell(v))
	}
	return row
}

// cell keeps text that others gave (the uploader's variable values, the
// provider's codes and IDs) from being read as a formula by the spreadsheet
// that opens the export: one starting with = + - @, a tab or a carriage return
// gets a leading apostrophe, which spreadsheets show as text (OWASP's CSV
// injection advice). Phone numbers, ours in E.164, start with + by design and
// are left alone.
func cell(v string) string {
	if v != "" && strings.ContainsRune("=+-@\t\r", rune(v[0])) {
		return "'" + v
	}
	return v
}

// recipientValues reads recipients' stored values a page of the recipients
// stream at a time, keeping the last page read: callers go in index order.
type recipientValues struct {
	h       *commands.Handlers
	batchID string
	page    int
	loaded  bool
	list    []domain.Recipient
}

func (v *recipientValues) recipient(ctx context.Context, index int) (domain.Recipient, error) {
	page := index / domain.RecipientPageSize
	if !v.loaded || v.page != page {
		list, err := v.h.RecipientsPage(ctx, v.batchID, page)
		if err != nil {
			return domain.Recipient{}, err
		}
		v.page, v.list, v.loaded = page, list, true
	}
	i := index - page*domain.RecipientPageSize
	if i >= len(v.list) {
		return domain.Recipient{}, fmt.Errorf("recipient %d of %s is not stored", index, v.batchID)
	}
	return v.list[i], nil
}

func (v *recipientValues) of(ctx context.Context, index int) ([]string, error) {
	r, err := v.recipient(ctx, index)
	return r.Values, err
}

// retryFailed creates a batch with the template and options of batch {id}
// holding its recipients that failed for good (of ?category= when given),
// each with the variables it had. Retrying a batch none of whose recipients
// failed is a conflict: the batch's state does not allow it.
func (s *server) retryFailed(w http.ResponseWriter, r *http.Request) {
	p, _ := PrincipalFrom(r.Context())
	id, err := batchID(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	category := r.URL.Query().Get("category")
	if category != "" {
		if _, err := domain.ParseErrorCategory(category); err != nil {
			writeError(w, r, s.log, invalidParam("category", err.Error()))
			return
		}
	}
	key, err := idempotencyKey(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	newID, err := s.cfg.NewID()
	if err != nil {
		writeError(w, r, s.log, fmt.Errorf("new batch id: %w", err))
		return
	}
	run := func(w http.ResponseWriter) {
		res, name, err := s.createRetry(r.Context(), p.Tenant, id, newID, category)
		if err != nil {
			markAbandoned(w, err)
			writeError(w, r, s.log, err)
			return
		}
		s.started(r.Context(), res)
		w.Header().Set("Location", "/api/batch/"+newID)
		st := s.statusAfter(r.Context(), p.Tenant, res)
		st.Name, st.RetryOf = name, id
		writeJSON(w, http.StatusCreated, st)
	}
	if key == "" {
		run(w)
		return
	}
	s.underKey(w, r, p.Tenant, key, newFingerprint(r).sum(), newID, s.resumeCreate(r, p.Tenant), run)
}

// resumeCreate answers, in place of an earlier request with the same key that
// stopped without an answer, with the batch it created, if it did. If it did
// not, it fences that batch off before the retry creates its own under a new
// ID: the earlier request may still be running (a store failing over under its
// append), and must not store a second batch for the key. An error (the batch
// cannot be looked up) leaves the retry to come back: creating now could make
// that second batch.
func (s *server) resumeCreate(r *http.Request, tenant string) func(old *domain.IdempotencyRecord, w http.ResponseWriter) (bool, error) {
	return func(old *domain.IdempotencyRecord, w http.ResponseWriter) (bool, error) {
		ctx, id := r.Context(), old.Started.BatchID
		b, err := s.cfg.Commands.Repository().Load(ctx, id)
		if domain.ErrorCode(err) == domain.ENOTFOUND {
			err = s.cfg.Commands.AbandonCreate(ctx, id, tenant)
			if !errors.Is(err, eventstore.ErrConcurrency) {
				return false, err // fenced off (nil): the retry creates
			}
			// Stored just now, or fenced off by another retry.
			b, err = s.cfg.Commands.Repository().Load(ctx, id)
			if domain.ErrorCode(err) == domain.ENOTFOUND {
				return false, nil
			}
		}
		if err != nil {
			return false, fmt.Errorf("look up the batch of an earlier request with this Idempotency-Key: %w", err)
		}
		if b.Tenant() != tenant {
			return false, nil
		}
		w.Header().Set("Location", "/api/batch/"+b.ID())
		writeJSON(w, http.StatusCreated, s.statusAfter(ctx, tenant, commands.Result{Batch: b}))
		return true, nil
	}
}

// createRetry creates batch newID retrying the failed recipients of batch id.
//
// The recipients an earlier retry of the batch took are not taken again: each
// retry would text them once more. The earlier retries are those claimed in
// the batch's retries stream, read from the event store, not from the read
// models, which may not have applied a retry made a moment ago (on this
// instance or another). The claim of newID is appended at the revision those
// claims were read at, so a retry claimed meanwhile makes this one read them
// again and leave out what that one took. The retries the read models list
// count too: those made before retries were claimed have no claim.
func (s *server) createRetry(ctx context.Context, tenant, id, newID, category string) (commands.Result, string, error) {
	old, err := s.cfg.ReadModels.Batch(ctx, tenant, id)
	if err != nil {
		return commands.Result{}, "", err
	}
	if err := s.awaitFailures(ctx, tenant, id); err != nil {
		return commands.Result{}, "", err
	}
	tmpl, err := domain.NewTemplate(old.Text, s.cfg.Limits.Template)
	if err != nil {
		return commands.Result{}, "", domain.Errorf(domain.EINVALID, "the batch's template is over today's limits and cannot be sent again: %v", err)
	}
	q := projections.RecipientQuery{Tenant: tenant, BatchID: id, Status: projections.RecipientFailed,
		Category: category, Limit: projections.MaxRecipientLimit}
	var (
		keep  func([]projections.Recipient) []projections.Recipient
		first []projections.Recipient
		next  string
	)
	for attempt := 1; ; attempt++ {
		retries, err := s.cfg.Commands.RetriesOf(ctx, id)
		if err != nil {
			return commands.Result{}, "", err
		}
		retried, stored, err := s.cfg.Commands.TakenByRetries(ctx, retries, old.Retries, s.cfg.ReadYourWrites)
		if err != nil {
			return commands.Result{}, "", err
		}
		keep = func(page []projections.Recipient) []projections.Recipient {
			return slices.DeleteFunc(undelivered(page), func(r projections.Recipient) bool { return retried[r.PhoneNumber] })
		}
		if first, next, err = s.cfg.ReadModels.Recipients(ctx, q); err != nil {
			return commands.Result{}, "", err
		}
		first = keep(first)
		if len(first) == 0 && next == "" {
			what := "no recipient that failed for good"
			if category != "" {
				what = "no recipient that failed for good with category " + category
			}
			if len(stored) > 0 {
				what += " that an earlier retry (" + strings.Join(stored, ", ") + ") did not take"
			}
			return commands.Result{}, "", domain.Errorf(domain.ECONFLICT, "batch %s has %s: there is nothing to retry", id, what)
		}
		// When the recipients may be texted at all is the campaign's rule, not
		// its first run's: the retry keeps the quiet hours and the validity. Past
		// its validity, a retry would only end every recipient expired.
		if old.ValidUntil != nil && !old.ValidUntil.After(time.Now()) {
			return commands.Result{}, "", domain.Errorf(domain.ECONFLICT,
				"batch %s was valid until %s: its recipients may not be texted now", id, old.ValidUntil.UTC().Format(time.RFC3339))
		}
		err = s.cfg.Commands.ClaimRetry(ctx, retries, newID, tenant)
		if err == nil {
			break
		}
		if !errors.Is(err, eventstore.ErrConcurrency) {
			return commands.Result{}, "", err
		}
		if attempt == maxRetryClaims {
			return commands.Result{}, "", fmt.Errorf("%w: %w", domain.Errorf(domain.EUNAVAILABLE,
				"other retries of batch %s are being created at the same time; try again shortly", id), err)
		}
	}
	name := domain.RetryName(old.Name, id)
	taken := 0
	recipients := func(yield func(domain.Recipient, error) bool) {
		for r, err := range s.failedRecipients(ctx, q, first, next, keep) {
			taken++
			if !yield(r, err) {
				return
			}
		}
	}
	res, err := s.cfg.Commands.CreateBatch(ctx, commands.CreateBatch{
		ID: newID, Tenant: tenant, Template: tmpl, Priority: domain.Priority(old.Priority),
		AutoStart: old.AutoStart, Name: name, RetryOf: id, Recipients: recipients,
		ValidUntil: old.ValidUntil, QuietHours: old.QuietHours,
	})
	if err != nil {
		// Settle the claim at once, rather than leave the next retry to
		// wait for it: fenced off, the batch can never be stored and took
		// no one. (A batch stored after all, its answer lost, stays.)
		abandon := s.cfg.Commands.AbandonCreate(context.WithoutCancel(ctx), newID, tenant)
		if abandon != nil && !errors.Is(abandon, eventstore.ErrConcurrency) {
			s.log.WarnContext(ctx, "a failed retry's claim is left pending until its lease ends", "batch", id, "retry", newID, "err", abandon)
		}
	}
	if err != nil && taken == 0 {
		// Every failed recipient was delivered after all (pages past the
		// first can hold only those): the state, not the request, is why.
		return commands.Result{}, "", domain.Errorf(domain.ECONFLICT, "batch %s has no recipient that failed for good and was not delivered since: there is nothing to retry", id)
	}
	return res, name, err
}

// maxRetryClaims bounds how often a retry reads the earlier retries again
// after another claimed its place: each time, another retry was made, which
// leaves this one less to take.
const maxRetryClaims = 8

// failedRecipients yields the recipients of the pages of q, starting with the
// page first already read, with the values they were created with.
func (s *server) failedRecipients(ctx context.Context, q projections.RecipientQuery, first []projections.Recipient, next string,
	keep func([]projections.Recipient) []projections.Recipient) iter.Seq2[domain.Recipient, error] {
	return func(yield func(domain.Recipient, error) bool) {
		values := recipientValues{h: s.cfg.Commands, batchID: q.BatchID}
		page := first
		for {
			for _, f := range page {
				r, err := values.recipient(ctx, f.Index)
				if err == nil && r.Phone != f.PhoneNumber {
					err = fmt.Errorf("recipient %d of %s: stored as %s, read model says %s", f.Index, q.BatchID, r.Phone, f.PhoneNumber)
				}
				if err != nil {
					yield(domain.Recipient{}, err)
					return
				}
				if !yield(r, nil) {
					return
				}
			}
			if next == "" {
				return
			}
			q.Cursor = next
			var err error
			if page, next, err = s.cfg.ReadModels.Recipients(ctx, q); err != nil {
				yield(domain.Recipient{}, err)
				return
			}
			page = keep(page)
		}
	}
}

// undelivered drops the failed recipients the provider has since reported
// delivered (an earlier attempt, timed out on our side, went out after all):
// a retry would text them twice.
func undelivered(failed []projections.Recipient) []projections.Recipient {
	return slices.DeleteFunc(failed, func(r projections.Recipient) bool { return r.Delivery == projections.DeliveryDelivered })
}

// awaitFailures waits, up to the read-your-writes bound, until the read
// models hold every final failure the batch's aggregate has recorded, so that
// a retry right after the last failure leaves none out.
func (s *server) awaitFailures(ctx context.Context, tenant, id string) error {
	b, err := s.cfg.Commands.Repository().Load(ctx, id)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(s.cfg.ReadYourWrites)
	for {
		st, err := s.cfg.ReadModels.Batch(ctx, tenant, id)
		if err != nil {
			return err
		}
		if st.Progress.Failed >= b.Failed() {
			return nil
		}
		if time.Now().After(deadline) {
			return domain.Errorf(domain.EUNAVAILABLE, "the batch's results are still being recorded; try again shortly")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// maxScheduleBody bounds POST /api/v2/batch/{id}/schedule's body.
const maxScheduleBody = 4 << 10

type scheduleRequest struct {
	ScheduleTime *string `json:"scheduleTime"`
}

// reschedule sets when a pending batch starts, with the window of a create's
// scheduleTime.
func (s *server) reschedule(w http.ResponseWriter, r *http.Request) {
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
	fp := newFingerprint(r)
	body, err := io.ReadAll(io.TeeReader(http.MaxBytesReader(w, r.Body, maxScheduleBody), fp))
	if err != nil {
		writeError(w, r, s.log, malformed(err, ""))
		return
	}
	var req scheduleRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, r, s.log, malformed(err, `the body must be {"scheduleTime": "<RFC 3339 time>"}`))
		return
	}
	if err := expectEnd(dec); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if req.ScheduleTime == nil || *req.ScheduleTime == "" {
		writeError(w, r, s.log, &domain.Error{Code: domain.EINVALID, Message: "the schedule is invalid",
			Details: []domain.FieldProblem{{Field: "scheduleTime", Problem: "required"}}})
		return
	}
	at, problem, _ := checkSchedule(*req.ScheduleTime, time.Now())
	if problem != "" {
		writeError(w, r, s.log, &domain.Error{Code: domain.EINVALID, Message: "the schedule is invalid",
			Details: []domain.FieldProblem{{Field: "scheduleTime", Problem: problem}}})
		return
	}
	do := func(w http.ResponseWriter) {
		res, err := s.cfg.Commands.RescheduleBatch(r.Context(), commands.RescheduleBatch{
			Act: commands.Act{Tenant: p.Tenant, BatchID: id, By: p.KeyID}, ScheduleTime: at,
		})
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		writeJSON(w, http.StatusOK, s.statusAfter(r.Context(), p.Tenant, res))
	}
	if key == "" {
		do(w)
		return
	}
	s.underKey(w, r, p.Tenant, key, fp.sum(), "", nil, do)
}
