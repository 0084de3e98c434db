package api

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/smsbatch/smsbatch/commands"
	"github.com/smsbatch/smsbatch/domain"
)

// createRequest is what POST /api/batch reads, less the recipients, which are
// streamed.
type createRequest struct {
	text *string
	// textProblem is what is wrong with the text's raw JSON, if anything.
	textProblem string
	options     createOptions
}

type createOptions struct {
	ScheduleTime *string         `json:"scheduleTime"`
	Priority     *string         `json:"priority"`
	AutoStart    *bool           `json:"autoStart"`
	ValidUntil   *string         `json:"validUntil"`
	QuietHours   *quietHoursOpts `json:"quietHours"`
	Timezone     *string         `json:"timezone"`
	// Name is kept raw, as the text is: its bytes are checked, not replaced.
	Name json.RawMessage `json:"name"`
}

type quietHoursOpts struct {
	Start string `json:"start"`
	End   string `json:"end"`
}

// createChecked is a create request once validated.
type createChecked struct {
	tmpl      domain.Template
	priority  domain.Priority
	schedule  *time.Time
	autoStart bool
	name      string
}

// recipientIn keeps its strings raw: encoding/json would silently replace bytes
// that are not UTF-8 with U+FFFD, and they must be refused instead.
type recipientIn struct {
	PhoneNumber json.RawMessage            `json:"phoneNumber"`
	Variables   map[string]json.RawMessage `json:"variables"`
}

// A scheduleTime must lie in this window around now. The past allows for clocks
// that differ a little (such a batch starts at once); a year ahead is further
// than any campaign is planned, and further is a typo such as 9999-12-31, which
// would hold a batch pending forever.
const (
	scheduleGrace   = 5 * time.Minute
	scheduleHorizon = 1 // year
)

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
	dryRun, err := queryBool(r, "dryRun")
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	w, body, release, err := s.beginUpload(w, r, p)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	defer release()
	spool := newSpool(s.cfg.SpoolDir)
	defer spool.close()

	key, err := idempotencyKey(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	// The body is fingerprinted as it streams by, for the idempotency key.
	fp := newFingerprint(r)
	req, count, probs, err := s.decodeCreate(io.TeeReader(body, fp), spool)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	c := s.checkCreate(req, count, probs)
	tmpl := c.tmpl
	validUntil, quiet := checkSending(req.options, c.schedule, probs)
	if tmpl.Text() != "" {
		// Variables are checked against the template once both are known (the
		// text may come after the recipients in the body), whatever else is
		// wrong: one answer lists every problem.
		for i, rcp := range readSpool(spool) {
			if rcp.err != nil {
				writeError(w, r, s.log, internalError("the upload could not be read back from the service's disk", rcp.err))
				return
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
	if dryRun {
		// Nothing is stored, so there is nothing for a key to guard.
		s.answerDryRun(w, r, c, spool, count)
		return
	}

	id, err := s.cfg.NewID()
	if err != nil {
		writeError(w, r, s.log, fmt.Errorf("new batch id: %w", err))
		return
	}
	create := func(w http.ResponseWriter) {
		res, err := s.cfg.Commands.CreateBatch(r.Context(), commands.CreateBatch{
			ID: id, Tenant: p.Tenant, Template: tmpl, Priority: c.priority,
			ScheduleTime: c.schedule, AutoStart: c.autoStart, Name: c.name,
			ValidUntil: validUntil, QuietHours: quiet,
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
			markAbandoned(w, err)
			writeError(w, r, s.log, err)
			return
		}
		s.started(r.Context(), res)
		w.Header().Set("Location", "/api/batch/"+id)
		st := s.statusAfter(r.Context(), p.Tenant, res)
		st.Name = c.name // the aggregate keeps no name, should the answer come from it
		writeJSON(w, http.StatusCreated, st)
	}
	if key == "" {
		create(w)
		return
	}
	// Only a valid request claims its key: a refused one stores nothing, and its
	// retry is refused the same way.
	// An earlier request with this key that stopped without an answer, and
	// whose batch exists, created it: it is answered with that batch.
	s.underKey(w, r, p.Tenant, key, fp.sum(), id, s.resumeCreate(r, p.Tenant), create)
}

// decodeCreate streams the body, spooling recipients. It returns an error for a
// body it cannot read at all, and collects per-field problems otherwise.
func (s *server) decodeCreate(body io.Reader, spool *spool) (createRequest, int, *problems, error) {
	var req createRequest
	probs := &problems{max: s.cfg.Limits.MaxDetails}
	dec := json.NewDecoder(body)
	dec.UseNumber()
	dec.DisallowUnknownFields()
	out := spoolWriters.Get().(*bufio.Writer)
	out.Reset(spool)
	defer func() { out.Reset(nil); spoolWriters.Put(out) }()
	seen := make(map[uint64]int)
	seed := maphash.MakeSeed()
	given := make(map[string]bool)
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
		if given[field] {
			probs.add(field, "given more than once")
		}
		given[field] = true
		switch field {
		case "text":
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return req, 0, nil, malformed(err, "text must be a string")
			}
			text, problem, ok := decodeString(raw)
			if !ok {
				return req, 0, nil, domain.Errorf(domain.EMALFORMED, "text must be a string")
			}
			req.text, req.textProblem = &text, problem
			if string(raw) == "null" {
				req.text = nil
			}
		case "options":
			if err := decodeOptions(dec, &req.options, probs); err != nil {
				return req, 0, nil, err
			}
		case "recipients":
			if err := expectDelim(dec, '[', "recipients must be an array"); err != nil {
				return req, 0, nil, err
			}
			// Every recipient is spooled, valid or not, so that the
			// variables of all of them can be checked once the template
			// is known.
			spool := func(i int, c *checkedRecipient, record []byte) error {
				addProblems(i, c, probs, seen, seed)
				if _, err := out.Write(record); err != nil {
					return internalError("the upload could not be written to the service's disk", fmt.Errorf("spool recipient: %w", err))
				}
				return nil
			}
			recipients := newRecipientChecker(s.cfg.DefaultRegion)
			defer recipients.stop()
			for dec.More() {
				var in recipientIn
				if err := dec.Decode(&in); err != nil {
					return req, 0, nil, malformed(err, fmt.Sprintf("recipients[%d] must be an object with phoneNumber (string) and variables (object of strings)", count))
				}
				if count++; count > s.cfg.Limits.MaxRecipients {
					return req, 0, nil, domain.Errorf(domain.ETOOLARGE, "a batch may have at most %d recipients", s.cfg.Limits.MaxRecipients)
				}
				if err := recipients.add(in, spool); err != nil {
					return req, 0, nil, err
				}
			}
			if err := recipients.flush(spool); err != nil {
				return req, 0, nil, err
			}
			recipients.stop()
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
	if err := expectEnd(dec); err != nil {
		return req, 0, nil, err
	}
	if err := out.Flush(); err != nil {
		return req, 0, nil, internalError("the upload could not be written to the service's disk", fmt.Errorf("spool recipients: %w", err))
	}
	return req, count, probs, nil
}

// optionsShape is what a malformed options object is answered with.
const optionsShape = "options must be an object with name (string), scheduleTime (string), priority (string), autoStart (boolean), validUntil (string), quietHours ({start, end}) and timezone (string)"

// optionNames are the fields of options, as a create's JSON names them.
var optionNames = []string{"name", "scheduleTime", "priority", "autoStart", "validUntil", "quietHours", "timezone"}

// decodeOptions decodes the options object into opts. A field it does not
// know is a problem listed with the others (as an unknown top-level field
// is), not a malformed body; anything else it cannot decode is malformed.
func decodeOptions(dec *json.Decoder, opts *createOptions, probs *problems) error {
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return malformed(err, optionsShape)
	}
	strict := json.NewDecoder(bytes.NewReader(raw))
	strict.DisallowUnknownFields()
	err := strict.Decode(opts)
	if err == nil {
		return nil
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(raw, &fields) != nil {
		return malformed(err, optionsShape)
	}
	unknown := slices.Sorted(func(yield func(string) bool) {
		for name := range fields {
			// encoding/json matches field names without regard to case.
			if !slices.ContainsFunc(optionNames, func(known string) bool { return strings.EqualFold(known, name) }) && !yield(name) {
				return
			}
		}
	})
	if len(unknown) == 0 {
		return malformed(err, optionsShape)
	}
	for _, name := range unknown {
		probs.add("options."+name, "unknown field; want "+strings.Join(optionNames, ", "))
	}
	*opts = createOptions{}
	if err := json.Unmarshal(raw, opts); err != nil {
		return malformed(err, optionsShape)
	}
	return nil
}

// addProblems adds what is wrong with recipient i, checked alone as c, and
// whether its number is an earlier recipient's, in the order a client reads
// them: the number, then the variables.
func addProblems(i int, c *checkedRecipient, probs *problems, seen map[uint64]int, seed maphash.Seed) {
	field := func() string { return "recipients[" + strconv.Itoa(i) + "]" }
	if c.phoneProblem != "" {
		probs.add(field()+".phoneNumber", c.phoneProblem)
	} else {
		// A second message to the same number costs money and annoys the customer:
		// refuse the batch rather than guess which was meant. Numbers are compared
		// by a 64-bit hash, which keeps a million of them in a few MiB.
		h := maphash.String(seed, c.phone)
		if first, dup := seen[h]; dup {
			probs.add(field()+".phoneNumber", fmt.Sprintf("%s is also recipients[%d]; each number may appear once", c.phone, first))
		} else {
			seen[h] = i
		}
	}
	for _, p := range c.varProblems {
		probs.add(field()+"."+p.Field, p.Problem)
	}
}

// checkCreate validates the template and options.
func (s *server) checkCreate(req createRequest, count int, probs *problems) (c createChecked) {
	var tmpl domain.Template
	switch {
	case req.textProblem != "":
		probs.add("text", req.textProblem)
	case req.text == nil:
		probs.add("text", "required")
	default:
		if err := domain.CheckText(*req.text); err != nil {
			probs.add("text", err.Error())
		} else if t, err := domain.NewTemplate(*req.text, s.cfg.Limits.Template); err != nil {
			probs.add("text", err.Error())
		} else {
			tmpl = t
		}
	}
	if count == 0 {
		probs.add("recipients", "at least one recipient is required")
	}
	c.tmpl = tmpl
	c.priority = domain.PriorityNormal
	if req.options.Priority != nil {
		p, err := domain.ParsePriority(*req.options.Priority)
		if err != nil || *req.options.Priority == "" {
			probs.add("options.priority", "must be high, normal or low; leave it out for normal")
		}
		c.priority = p
	}
	if req.options.ScheduleTime != nil && *req.options.ScheduleTime != "" {
		t, problem, past := checkSchedule(*req.options.ScheduleTime, time.Now())
		if past {
			problem += "; leave it out to send now"
		}
		if problem != "" {
			probs.add("options.scheduleTime", problem)
		} else {
			c.schedule = &t
		}
	}
	c.autoStart = true
	if req.options.AutoStart != nil {
		c.autoStart = *req.options.AutoStart
	}
	if len(req.options.Name) > 0 {
		name, problem, ok := decodeString(req.options.Name)
		switch {
		case !ok:
			probs.add("options.name", "must be a string")
		case problem != "":
			probs.add("options.name", problem)
		case domain.CheckName(name) != nil:
			probs.add("options.name", domain.CheckName(name).Error())
		default:
			c.name = name
		}
	}
	return c
}

// checkSchedule parses a scheduleTime and checks that it lies in the window
// around now; problem says what is wrong otherwise, and past whether it is
// too far in the past.
func checkSchedule(raw string, now time.Time) (t time.Time, problem string, past bool) {
	t, err := time.Parse(time.RFC3339, raw)
	switch {
	case err != nil:
		return t, "must be an RFC 3339 time such as 2026-12-01T09:00:00Z", false
	case t.Before(now.Add(-scheduleGrace)):
		return t, fmt.Sprintf("is more than %s in the past", scheduleGrace), true
	case t.After(now.AddDate(scheduleHorizon, 0, 0)):
		return t, "is more than a year ahead", false
	}
	return t, "", false
}

// checkSending validates the options that shape when messages go out: their
// validity and the recipients' quiet hours.
func checkSending(o createOptions, schedule *time.Time, probs *problems) (validUntil *time.Time, quiet *domain.QuietHours) {
	if o.ValidUntil != nil {
		t, err := time.Parse(time.RFC3339, *o.ValidUntil)
		now := time.Now()
		switch {
		case err != nil:
			probs.add("options.validUntil", "must be an RFC 3339 time such as 2026-12-01T18:00:00Z")
		case !t.After(now):
			probs.add("options.validUntil", "is already past: nothing would be sent")
		case schedule != nil && !t.After(*schedule):
			probs.add("options.validUntil", "is before the scheduleTime: nothing would be sent")
		case t.After(now.AddDate(scheduleHorizon, 0, 0)):
			probs.add("options.validUntil", "is more than a year ahead")
		default:
			validUntil = &t
		}
	}
	tz := ""
	if o.Timezone != nil {
		tz = *o.Timezone
		if o.QuietHours == nil {
			probs.add("options.timezone", "applies to quietHours: give quietHours too, or leave timezone out")
		} else if tz == "" {
			probs.add("options.timezone", "must be an IANA time zone such as America/New_York; leave it out to use each number's zone")
		}
	}
	if o.QuietHours != nil {
		q, err := domain.ParseQuietHours(o.QuietHours.Start, o.QuietHours.End, tz)
		if err != nil {
			field := "options.quietHours"
			if strings.HasPrefix(domain.ErrorMessage(err), "timezone") {
				field = "options.timezone"
			}
			probs.add(field, domain.ErrorMessage(err))
		} else {
			quiet = &q
		}
	}
	return validUntil, quiet
}

// scalarString returns a variable's value as text: a string as given, a number
// as written, a boolean as true or false; or what is wrong with it.
func scalarString(raw json.RawMessage) (string, string) {
	switch {
	case len(raw) == 0:
	case raw[0] == '"':
		v, problem, _ := decodeString(raw)
		return v, problem
	case string(raw) == "true" || string(raw) == "false":
		return string(raw), ""
	case raw[0] == '-' || '0' <= raw[0] && raw[0] <= '9':
		// Keep the number as written ("007" cannot occur in JSON, "1e3" can).
		return string(raw), ""
	}
	return "", "must be a string, number or boolean"
}

// decodeString decodes raw, one JSON value, as message text: ok is false when it
// is not a string (null and nothing read as ""), problem says why the string may
// not go into a message. Invalid UTF-8 is found on the raw bytes: encoding/json
// would turn it, and escapes of unpaired surrogates (\ud800), into U+FFFD.
func decodeString(raw json.RawMessage) (s, problem string, ok bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", "", true
	}
	if plain, ok := plainJSONString(raw); ok {
		s = plain
	} else if raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", "", false
	} else if !validJSONString(raw) {
		return "", "is not valid UTF-8", true
	}
	if err := domain.CheckText(s); err != nil {
		return "", err.Error(), true
	}
	return s, "", true
}

// plainJSONString returns the string raw holds when raw is a string literal
// with neither escapes nor bytes that are not UTF-8: its bytes between the
// quotes, as encoding/json would decode them, without its reflection (a
// million numbers and values in a large upload).
func plainJSONString(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", false
	}
	body := raw[1 : len(raw)-1]
	for _, b := range body {
		if b == '\\' || b == '"' || b < 0x20 {
			return "", false
		}
	}
	if !utf8.Valid(body) {
		return "", false
	}
	return string(body), true
}

// validJSONString reports whether raw, a JSON string literal the decoder
// accepted, holds only valid UTF-8 and no \u escape of an unpaired surrogate.
func validJSONString(raw []byte) bool {
	if !utf8.Valid(raw) {
		return false
	}
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' {
			continue
		}
		i++
		if i >= len(raw) || raw[i] != 'u' {
			continue // a one-character escape, now skipped
		}
		r, ok := hex4(raw[i+1:])
		if !ok {
			return false
		}
		i += 4
		switch {
		case utf16.IsSurrogate(r) && r < 0xdc00:
			// A high surrogate must be followed by an escaped low one.
			if i+2 >= len(raw) || raw[i+1] != '\\' || raw[i+2] != 'u' {
				return false
			}
			low, ok := hex4(raw[i+3:])
			if !ok || low < 0xdc00 || low > 0xdfff {
				return false
			}
			i += 6
		case utf16.IsSurrogate(r):
			return false
		}
	}
	return true
}

// hex4 reads the four hex digits of a \u escape.
func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	n, err := strconv.ParseUint(string(b[:4]), 16, 16)
	return rune(n), err == nil
}

// expectEnd reports anything after the request's JSON value, which a
// decoder's More misses when it is a closing '}' or ']'.
func expectEnd(dec *json.Decoder) error {
	switch _, err := dec.Token(); {
	case err == nil:
		return domain.Errorf(domain.EMALFORMED, "unexpected data after the JSON object: the body must be one object")
	case !errors.Is(err, io.EOF):
		return malformed(err, "unexpected data after the JSON object: the body must be one object")
	}
	return nil
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

// malformed turns a decoding error into the answer a client needs: too large,
// too slow, or not the JSON we expect. The decoder's message says where.
func malformed(err error, problem string) error {
	msg := "the request body is not valid JSON"
	if problem != "" {
		msg = problem
	}
	if err == nil {
		return domain.Errorf(domain.EMALFORMED, "%s", msg)
	}
	var appErr *domain.Error
	if errors.As(err, &appErr) {
		return err // the body's reader knows best (minRateBody)
	}
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return domain.Errorf(domain.ETOOLARGE, "the request body exceeds %d bytes", tooLarge.Limit)
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
