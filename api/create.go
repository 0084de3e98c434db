package api

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"iter"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
)

// createRequest is what POST /api/batch reads, less the recipients, which are
// streamed.
type createRequest struct {
	text    *string
	options createOptions
}

type createOptions struct {
	ScheduleTime *string `json:"scheduleTime"`
	Priority     *string `json:"priority"`
	AutoStart    *bool   `json:"autoStart"`
}

type recipientIn struct {
	PhoneNumber string                     `json:"phoneNumber"`
	Variables   map[string]json.RawMessage `json:"variables"`
}

// spooled is one recipient as kept in the spool file between validation and storage.
type spooled struct {
	Phone string            `json:"p"`
	Vars  map[string]string `json:"v,omitempty"`
}

// problems collects per-field problems up to a limit, counting the rest.
type problems struct {
	max   int
	list  []domain.FieldProblem
	total int
}

func (p *problems) add(field, problem string) {
	p.total++
	if len(p.list) < p.max {
		p.list = append(p.list, domain.FieldProblem{Field: field, Problem: problem})
	}
}

func (p *problems) full() bool { return p.total >= p.max }

func (p *problems) err() error {
	if p.total == 0 {
		return nil
	}
	msg := fmt.Sprintf("the batch has %d problem(s); nothing was stored", p.total)
	if p.total > len(p.list) {
		msg += fmt.Sprintf(" (the first %d are listed)", len(p.list))
	}
	return &domain.Error{Code: domain.EINVALID, Message: msg, Details: p.list}
}

// createBatch reads the body as a stream: each recipient is decoded, normalised
// and written to a spool file, so a million recipients never sit in memory at
// once. Only when every recipient and option is valid is anything stored.
func (s *server) createBatch(w http.ResponseWriter, r *http.Request) {
	p, _ := PrincipalFrom(r.Context())
	spool, err := os.CreateTemp(s.cfg.SpoolDir, "smsbatch-upload-*.jsonl")
	if err != nil {
		writeError(w, r, s.log, fmt.Errorf("create spool file: %w", err))
		return
	}
	defer func() {
		spool.Close()
		os.Remove(spool.Name())
	}()

	body := http.MaxBytesReader(w, r.Body, s.cfg.Limits.MaxBodyBytes)
	req, count, probs, err := s.decodeCreate(body, spool)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	tmpl, priority, schedule, autoStart := s.checkCreate(req, count, probs)
	if probs.total == 0 {
		// Variables are checked against the template once both are known: the
		// text may come after the recipients in the body.
		for i, rcp := range readSpool(spool) {
			if probs.full() {
				break
			}
			for _, fp := range tmpl.CheckVariables(rcp.Vars, s.cfg.Limits.Variables) {
				probs.add(fmt.Sprintf("recipients[%d].%s", i, fp.Field), fp.Problem)
			}
		}
	}
	if err := probs.err(); err != nil {
		writeError(w, r, s.log, err)
		return
	}

	id, err := s.cfg.NewID()
	if err != nil {
		writeError(w, r, s.log, fmt.Errorf("new batch id: %w", err))
		return
	}
	res, err := s.cfg.Commands.CreateBatch(r.Context(), commands.CreateBatch{
		ID: id, Tenant: p.Tenant, Template: tmpl, Priority: priority,
		ScheduleTime: schedule, AutoStart: autoStart,
		Recipients: func(yield func(domain.Recipient, error) bool) {
			for _, rcp := range readSpool(spool) {
				if rcp.err != nil {
					yield(domain.Recipient{}, rcp.err)
					return
				}
				if !yield(domain.Recipient{Phone: rcp.Phone, Values: tmpl.Values(rcp.Vars)}, nil) {
					return
				}
			}
		},
	})
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	s.started(r.Context(), res)
	w.Header().Set("Location", "/api/batch/"+id)
	writeJSON(w, http.StatusCreated, s.statusAfter(r.Context(), p.Tenant, res))
}

// decodeCreate streams the body, spooling recipients. It returns an error for a
// body it cannot read at all, and collects per-field problems otherwise.
func (s *server) decodeCreate(body io.Reader, spool *os.File) (createRequest, int, *problems, error) {
	var req createRequest
	probs := &problems{max: s.cfg.Limits.MaxDetails}
	dec := json.NewDecoder(body)
	dec.UseNumber()
	dec.DisallowUnknownFields()
	out := bufio.NewWriterSize(spool, 256<<10)
	enc := json.NewEncoder(out)
	seen := make(map[uint64]int)
	seed := maphash.MakeSeed()
	count := 0

	if err := expectDelim(dec, '{', "the request body must be a JSON object"); err != nil {
		return req, 0, nil, err
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return req, 0, nil, malformed(err, "")
		}
		field, _ := tok.(string)
		switch field {
		case "text":
			var text string
			if err := dec.Decode(&text); err != nil {
				return req, 0, nil, malformed(err, "text must be a string")
			}
			req.text = &text
		case "options":
			if err := dec.Decode(&req.options); err != nil {
				return req, 0, nil, malformed(err, "options must be an object with scheduleTime (string), priority (string) and autoStart (boolean)")
			}
		case "recipients":
			if err := expectDelim(dec, '[', "recipients must be an array"); err != nil {
				return req, 0, nil, err
			}
			for dec.More() {
				var in recipientIn
				if err := dec.Decode(&in); err != nil {
					return req, 0, nil, malformed(err, fmt.Sprintf("recipients[%d] must be an object with phoneNumber (string) and variables (object of strings)", count))
				}
				if count++; count > s.cfg.Limits.MaxRecipients {
					return req, 0, nil, domain.Errorf(domain.ETOOLARGE, "a batch may have at most %d recipients", s.cfg.Limits.MaxRecipients)
				}
				rcp := s.checkRecipient(count-1, in, probs, seen, seed)
				if probs.total == 0 {
					if err := enc.Encode(rcp); err != nil {
						return req, 0, nil, fmt.Errorf("spool recipient: %w", err)
					}
				}
			}
			if err := expectDelim(dec, ']', "recipients must be an array"); err != nil {
				return req, 0, nil, err
			}
		default:
			probs.add(field, "unknown field; want text, recipients and options")
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return req, 0, nil, malformed(err, "")
			}
		}
	}
	if err := expectDelim(dec, '}', "the request body must be a JSON object"); err != nil {
		return req, 0, nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return req, 0, nil, malformed(err, "unexpected data after the JSON object")
	}
	if err := out.Flush(); err != nil {
		return req, 0, nil, fmt.Errorf("spool recipients: %w", err)
	}
	return req, count, probs, nil
}

// checkRecipient normalises one recipient's number and variables, adding problems.
func (s *server) checkRecipient(i int, in recipientIn, probs *problems, seen map[uint64]int, seed maphash.Seed) spooled {
	field := "recipients[" + strconv.Itoa(i) + "]"
	phone, err := domain.NormalizePhone(in.PhoneNumber, s.cfg.DefaultRegion)
	if err != nil {
		probs.add(field+".phoneNumber", err.Error())
	} else {
		// A second message to the same number costs money and annoys the customer:
		// refuse the batch rather than guess which was meant. Numbers are compared
		// by a 64-bit hash, which keeps a million of them in a few MiB.
		h := maphash.String(seed, phone)
		if first, dup := seen[h]; dup {
			probs.add(field+".phoneNumber", fmt.Sprintf("%s is also recipients[%d]; each number may appear once", phone, first))
		} else {
			seen[h] = i
		}
	}
	vars := make(map[string]string, len(in.Variables))
	for name, raw := range in.Variables {
		v, ok := scalarString(raw)
		if !ok {
			probs.add(field+".variables."+name, "must be a string, number or boolean")
			continue
		}
		vars[name] = v
	}
	return spooled{Phone: phone, Vars: vars}
}

// checkCreate validates the template and options.
func (s *server) checkCreate(req createRequest, count int, probs *problems) (tmpl domain.Template, priority domain.Priority, schedule *time.Time, autoStart bool) {
	if req.text == nil {
		probs.add("text", "required")
	} else if t, err := domain.NewTemplate(*req.text, s.cfg.Limits.Template); err != nil {
		probs.add("text", err.Error())
	} else {
		tmpl = t
	}
	if count == 0 {
		probs.add("recipients", "at least one recipient is required")
	}
	var err error
	priority = domain.PriorityNormal
	if req.options.Priority != nil {
		if priority, err = domain.ParsePriority(*req.options.Priority); err != nil {
			probs.add("options.priority", "must be high, normal or low")
		}
	}
	if req.options.ScheduleTime != nil && *req.options.ScheduleTime != "" {
		t, err := time.Parse(time.RFC3339, *req.options.ScheduleTime)
		if err != nil {
			probs.add("options.scheduleTime", "must be an RFC 3339 time such as 2026-12-01T09:00:00Z")
		} else {
			schedule = &t
		}
	}
	autoStart = true
	if req.options.AutoStart != nil {
		autoStart = *req.options.AutoStart
	}
	return tmpl, priority, schedule, autoStart
}

type spoolItem struct {
	spooled
	err error
}

// readSpool reads the spool file from its start.
func readSpool(f *os.File) iter.Seq2[int, spoolItem] {
	return func(yield func(int, spoolItem) bool) {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			yield(0, spoolItem{err: fmt.Errorf("rewind spool: %w", err)})
			return
		}
		dec := json.NewDecoder(bufio.NewReaderSize(f, 256<<10))
		for i := 0; ; i++ {
			var item spoolItem
			if err := dec.Decode(&item.spooled); errors.Is(err, io.EOF) {
				return
			} else if err != nil {
				item.err = fmt.Errorf("read spool: %w", err)
			}
			if !yield(i, item) || item.err != nil {
				return
			}
		}
	}
}

func scalarString(raw json.RawMessage) (string, bool) {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", false
	}
	switch v := v.(type) {
	case string:
		return v, true
	case float64:
		// Keep the number as written ("007" cannot occur in JSON, "1e3" can).
		return string(raw), true
	case bool:
		return strconv.FormatBool(v), true
	}
	return "", false
}

func expectDelim(dec *json.Decoder, want json.Delim, problem string) error {
	tok, err := dec.Token()
	if err != nil {
		return malformed(err, problem)
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return domain.Errorf(domain.EMALFORMED, "%s", problem)
	}
	return nil
}

// malformed turns a decoding error into the answer a client needs: too large, or
// not the JSON we expect. The decoder's message says where.
func malformed(err error, problem string) error {
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return domain.Errorf(domain.ETOOLARGE, "the request body exceeds %d bytes", tooLarge.Limit)
	}
	msg := "the request body is not valid JSON"
	if problem != "" {
		msg = problem
	}
	var syntax *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		msg = fmt.Sprintf("the request body is not valid JSON (at byte %d)", syntax.Offset)
	case errors.As(err, &typeErr):
		if typeErr.Field != "" {
			msg = fmt.Sprintf("%s (field %s has the wrong type)", msg, typeErr.Field)
		}
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		msg = "the request body ends too early"
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		// The decoder names the client's own field, nothing else.
		msg = fmt.Sprintf("%s (%s)", msg, strings.TrimPrefix(err.Error(), "json: "))
	}
	return domain.Errorf(domain.EMALFORMED, "%s", msg)
}

// CleanSpoolDir is not written yet.
func CleanSpoolDir(dir string) (int, error) { return 0, nil }
