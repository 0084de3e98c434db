package api

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/eventstore"
	"github.com/smsbatch/smsbatch/projections"
)

// A second JSON value after the request object is not the documented body: a
// 400 with the envelope, never a panic, and nothing stored.
func TestDataAfterTheRequestObjectIsMalformed(t *testing.T) {
	env := newAPI(t, nil)
	valid := createBody(`"Hi {{name}}"`, "")
	for _, body := range []string{
		valid + " 1",
		valid + "{}",
		valid + ` "x"`,
		valid + " null",
		valid + " [",
		valid + " }",
		"{}0",
		"{} {}",
		`{"text": "Hi"} true`,
	} {
		t.Run(body[max(0, len(body)-12):], func(t *testing.T) {
			a := env.do("POST", "/api/batch", testKey, body)
			if a.Code != http.StatusBadRequest {
				t.Fatalf("%q: %d %s, want 400", body, a.Code, a.Body)
			}
			if e := a.envelope(t); e.Error.Code != domain.EMALFORMED {
				t.Fatalf("%q: code %s, want malformed", body, e.Error.Code)
			}
		})
	}
	if n := env.events(t); n != 0 {
		t.Fatalf("malformed bodies left %d events", n)
	}
	// Whitespace after the object is not data.
	if a := env.do("POST", "/api/batch", testKey, valid+" \n\t "); a.Code != http.StatusCreated {
		t.Fatalf("trailing whitespace: %d %s, want 201", a.Code, a.Body)
	}
}

// Text that is not valid UTF-8, or holds control characters other than newline
// and tab, is refused naming its field: encoding/json would otherwise turn bad
// bytes into U+FFFD and the message would go out damaged.
func TestBadTextIsRefusedNamingTheField(t *testing.T) {
	env := newAPI(t, nil)
	rcp := func(phone, vars string) string {
		return `{"text": "Hi {{name}}", "recipients": [{"phoneNumber": ` + phone + `, "variables": ` + vars + `}]}`
	}
	tests := []struct {
		name, body, field string
	}{
		{"invalid UTF-8 in the text", createBody("\"Hi \xff{{name}}\"", ""), "text"},
		{"truncated UTF-8 in the text", createBody("\"Hi \xe2\x82{{name}}\"", ""), "text"},
		{"unpaired surrogate in the text", createBody(`"Hi \ud800 {{name}}"`, ""), "text"},
		{"unpaired low surrogate in the text", createBody(`"Hi \udc00 {{name}}"`, ""), "text"},
		{"NUL in the text", createBody(`"Hi \u0000{{name}}"`, ""), "text"},
		{"carriage return in the text", createBody(`"Hi\r\n{{name}}"`, ""), "text"},
		{"DEL in the text", createBody("\"Hi \x7f{{name}}\"", ""), "text"},
		{"C1 control in the text", createBody(`"Hi \u0085{{name}}"`, ""), "text"},
		{"invalid UTF-8 in a variable", rcp(`"+14155550100"`, "{\"name\": \"A\xffda\"}"), "recipients[0].variables.name"},
		{"unpaired surrogate in a variable", rcp(`"+14155550100"`, `{"name": "\udfff"}`), "recipients[0].variables.name"},
		{"control character in a variable", rcp(`"+14155550100"`, `{"name": "A\u0007da"}`), "recipients[0].variables.name"},
		{"control character in an unused variable", rcp(`"+14155550100"`, `{"name": "Ada", "note": "x\u0000"}`), "recipients[0].variables.note"},
		{"invalid UTF-8 in a variable name", rcp(`"+14155550100"`, "{\"name\": \"Ada\", \"n\xffote\": \"x\"}"), "recipients[0].variables"},
		{"control character in a variable name", rcp(`"+14155550100"`, `{"name": "Ada", "n\u0000": "x"}`), "recipients[0].variables"},
		{"invalid UTF-8 in a phone number", rcp("\"+1415555\xff0100\"", `{"name": "Ada"}`), "recipients[0].phoneNumber"},
		{"NUL in a phone number", rcp(`"+1415\u00005550100"`, `{"name": "Ada"}`), "recipients[0].phoneNumber"},
		{"escape in a phone number", rcp(`"+1415\u001b5550100"`, `{"name": "Ada"}`), "recipients[0].phoneNumber"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := env.do("POST", "/api/batch", testKey, tt.body)
			if a.Code != http.StatusUnprocessableEntity {
				t.Fatalf("%d %s, want 422", a.Code, a.Body)
			}
			if e := a.envelope(t); e.Error.Code != domain.EINVALID || !e.names(tt.field) {
				t.Fatalf("%+v, want invalid naming %s", e.Error, tt.field)
			}
		})
	}
	if n := env.events(t); n != 0 {
		t.Fatalf("refused batches left %d events", n)
	}
	// Newline and tab are text; so are characters outside the BMP, written raw or
	// as a surrogate pair.
	ok := `{"text": "Hi {{name}},\n\tyour order 😀 \ud83d\ude00 shipped", "recipients": [{"phoneNumber": "+14155550100", "variables": {"name": "Ada\tLovelace\n😀"}}]}`
	if a := env.do("POST", "/api/batch", testKey, ok); a.Code != http.StatusCreated {
		t.Fatalf("newline and tab: %d %s, want 201", a.Code, a.Body)
	}
}

// scheduleTime must lie between 5 minutes in the past and one year ahead; an
// empty priority is not the default one.
func TestScheduleWindowAndEmptyPriority(t *testing.T) {
	env := newAPI(t, nil)
	on := func(when time.Time) string {
		return `{"scheduleTime": "` + when.UTC().Format(time.RFC3339) + `", "autoStart": false}`
	}
	at := func(d time.Duration) string { return on(time.Now().Add(d)) }
	refused := []struct{ name, options, field string }{
		{"the end of time", `{"scheduleTime": "9999-12-31T23:59:59Z"}`, "options.scheduleTime"},
		{"year zero", `{"scheduleTime": "0000-01-01T00:00:00Z"}`, "options.scheduleTime"},
		{"ten minutes ago", at(-10 * time.Minute), "options.scheduleTime"},
		// By the calendar: 366 days is a year, no more, when the year ahead
		// holds a 29 February (from 1 March 2027 to 29 February 2028).
		{"a year and a day ahead", on(time.Now().AddDate(1, 0, 1)), "options.scheduleTime"},
		{"empty priority", `{"priority": ""}`, "options.priority"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			a := env.do("POST", "/api/batch", testKey, createBody(`"Hi {{name}}"`, tt.options))
			if a.Code != http.StatusUnprocessableEntity {
				t.Fatalf("%d %s, want 422", a.Code, a.Body)
			}
			if e := a.envelope(t); !e.names(tt.field) {
				t.Fatalf("%+v does not name %s", e.Error, tt.field)
			}
		})
	}
	if n := env.events(t); n != 0 {
		t.Fatalf("refused batches left %d events", n)
	}
	for _, options := range []string{at(-time.Minute), at(364 * 24 * time.Hour), `{"priority": null}`, `{"scheduleTime": ""}`} {
		if a := env.do("POST", "/api/batch", testKey, createBody(`"Hi {{name}}"`, options)); a.Code != http.StatusCreated {
			t.Fatalf("options %s: %d %s, want 201", options, a.Code, a.Body)
		}
	}
}

// One answer lists every problem of a request: a bad number does not hide a
// missing variable in another recipient, nor a bad option.
func TestEveryProblemIsReportedInOneAnswer(t *testing.T) {
	env := newAPI(t, nil)
	body := `{"text": "Hi {{name}}", "recipients": [
		{"phoneNumber": "12", "variables": {"name": "Ada"}},
		{"phoneNumber": "+14155550101", "variables": {}},
		{"phoneNumber": "+14155550102", "variables": {"name": "x\u0000"}}
	], "options": {"priority": "urgent"}}`
	a := env.do("POST", "/api/batch", testKey, body)
	if a.Code != http.StatusUnprocessableEntity {
		t.Fatalf("%d %s, want 422", a.Code, a.Body)
	}
	e := a.envelope(t)
	for _, field := range []string{"recipients[0].phoneNumber", "recipients[1].variables.name", "recipients[2].variables.name", "options.priority"} {
		if !e.names(field) {
			t.Errorf("details %v do not name %s", e.fields(), field)
		}
	}
	if !strings.Contains(e.Error.Message, "4 problem") {
		t.Errorf("message %q, want it to count 4 problems", e.Error.Message)
	}
}

// Every JSON answer tells browsers not to sniff it, as the dashboard's do.
func TestJSONAnswersAreNotSniffed(t *testing.T) {
	env := newAPI(t, nil)
	requests := []struct{ method, path, key, body string }{
		{"GET", "/healthz", "", ""},
		{"GET", "/readyz", "", ""},
		{"GET", "/api/batch", testKey, ""},
		{"GET", "/api/batch", "", ""},
		{"GET", "/api/batch/0193a0d0-0000-7000-8000-000000000000", testKey, ""},
		{"DELETE", "/api/batch", testKey, ""},
		{"GET", "/no/such/endpoint", testKey, ""},
		{"POST", "/api/batch", testKey, createBody(`"Hi {{name}}"`, "")},
		{"POST", "/api/batch", testKey, `{"text": 5}`},
		{"POST", "/api/batch", testKey, `{"recipients": []}`},
	}
	for _, r := range requests {
		a := env.do(r.method, r.path, r.key, r.body)
		if got := a.Header().Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("%s %s (%d): X-Content-Type-Options %q, want nosniff", r.method, r.path, a.Code, got)
		}
		if ct := a.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s %s (%d): Content-Type %q", r.method, r.path, a.Code, ct)
		}
	}
}

// failingStore fails every append with err.
type failingStore struct {
	eventstore.Store
	err error
}

func (s failingStore) Append(context.Context, string, eventstore.ExpectedRevision, []eventstore.EventData) (eventstore.AppendResult, error) {
	return eventstore.AppendResult{}, s.err
}

// failingReadModels fails every list with err.
type failingReadModels struct {
	projections.Store
	err error
}

func (s failingReadModels) Batches(context.Context, projections.ListQuery) ([]projections.BatchStatus, string, error) {
	return nil, "", s.err
}

// Storage that is down or full is a 503 naming the cause, with Retry-After:
// nothing the client sent was wrong, and trying later may work.
func TestStorageOutagesAre503WithRetryAfter(t *testing.T) {
	tests := []struct {
		name   string
		append error
		list   error
		want   string // in the message
	}{
		{"event store unreachable", fmt.Errorf("append: %w: dial tcp: connection refused", eventstore.ErrUnavailable), nil, "unavailable"},
		{"event store disk full", fmt.Errorf("append: write events.db: %w", syscall.ENOSPC), nil, "full"},
		{"event store over quota", fmt.Errorf("append: write events.db: %w", syscall.EDQUOT), nil, "full"},
		{"read models unavailable", nil, domain.Errorf(domain.EUNAVAILABLE, "the read models are unavailable"), "unavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newAPI(t, func(cfg *Config, es eventstore.Store) eventstore.Store {
				if tt.list != nil {
					cfg.ReadModels = failingReadModels{cfg.ReadModels, tt.list}
				}
				if tt.append != nil {
					return failingStore{es, tt.append}
				}
				return nil
			})
			a := env.do("POST", "/api/batch", testKey, createBody(`"Hi {{name}}"`, ""))
			if tt.list != nil {
				a = env.do("GET", "/api/batch", testKey, "")
			}
			if a.Code != http.StatusServiceUnavailable {
				t.Fatalf("%d %s, want 503", a.Code, a.Body)
			}
			e := a.envelope(t)
			if e.Error.Code != domain.EUNAVAILABLE || !strings.Contains(e.Error.Message, tt.want) {
				t.Fatalf("%+v, want unavailable saying %q", e.Error, tt.want)
			}
			if a.Header().Get("Retry-After") == "" {
				t.Fatal("no Retry-After")
			}
			if strings.Contains(e.Error.Message, "events.db") || strings.Contains(e.Error.Message, "dial tcp") {
				t.Fatalf("message %q shows internal detail", e.Error.Message)
			}
		})
	}
}

// An upload's spool file is gone as soon as the request is answered, whatever
// the answer, and never shows in the spool directory: a process killed
// mid-upload leaves nothing behind either.
func TestUploadsLeaveNoSpoolFile(t *testing.T) {
	env := newAPI(t, nil)
	for _, body := range []string{createBody(`"Hi {{name}}"`, ""), createBody(`"Hi {{name"`, ""), `{"recipients": [{"phoneNumber": "+14155550100"}`} {
		env.do("POST", "/api/batch", testKey, body)
		if files := env.spoolFiles(t); len(files) != 0 {
			t.Fatalf("spool directory holds %v", files)
		}
	}
}

// CleanSpoolDir makes the directory and removes what earlier runs left, and
// nothing else.
func TestCleanSpoolDirRemovesLeftoverUploads(t *testing.T) {
	dir := t.TempDir() + "/uploads"
	if n, err := CleanSpoolDir(dir); err != nil || n != 0 {
		t.Fatalf("new directory: %d, %v", n, err)
	}
	for _, name := range []string{"smsbatch-upload-1.jsonl", "smsbatch-upload-2.jsonl", "keep.txt"} {
		if err := writeFile(dir+"/"+name, "x"); err != nil {
			t.Fatal(err)
		}
	}
	n, err := CleanSpoolDir(dir)
	if err != nil || n != 2 {
		t.Fatalf("removed %d, %v; want 2", n, err)
	}
	env := &apiEnv{spool: dir}
	if files := env.spoolFiles(t); !slices.Equal(files, []string{"keep.txt"}) {
		t.Fatalf("left %v, want only keep.txt", files)
	}
}

// A large upload's numbers are checked on every core, yet its problems come
// in recipient order and every recipient keeps its own number and variables.
func TestLargeUploadKeepsItsOrder(t *testing.T) {
	env := newAPI(t, nil)
	const n = 3000
	recipient := func(i int) string {
		return fmt.Sprintf(`{"phoneNumber": "+1415%07d", "variables": {"name": "N%d"}}`, 2000000+i, i)
	}
	build := func(bad map[int]string) string {
		var b strings.Builder
		b.WriteString(`{"text": "Hi {{name}}", "recipients": [`)
		for i := range n {
			if i > 0 {
				b.WriteString(",")
			}
			if r, ok := bad[i]; ok {
				b.WriteString(r)
			} else {
				b.WriteString(recipient(i))
			}
		}
		b.WriteString(`], "options": {"autoStart": false}}`)
		return b.String()
	}
	bad := map[int]string{
		3:    `{"phoneNumber": "12", "variables": {"name": "x"}}`,
		700:  `{"phoneNumber": "+1 415 CALL NOW", "variables": {"name": "x"}}`,
		1500: `{"phoneNumber": 5, "variables": {"name": "x"}}`,
		2999: strings.Replace(recipient(10), `"N10"`, `"again"`, 1), // recipient 10's number
	}
	a := env.do("POST", "/api/batch", testKey, build(bad))
	if a.Code != http.StatusUnprocessableEntity {
		t.Fatalf("%d %s, want 422", a.Code, a.Body)
	}
	e := a.envelope(t)
	want := []string{"recipients[3].phoneNumber", "recipients[700].phoneNumber", "recipients[1500].phoneNumber", "recipients[2999].phoneNumber"}
	if got := e.fields(); !slices.Equal(got, want) {
		t.Fatalf("details name %v, want %v in this order", got, want)
	}
	if p := e.Error.Details[3].Problem; !strings.Contains(p, "recipients[10]") {
		t.Errorf("the duplicate's problem %q does not name recipients[10]", p)
	}

	a = env.do("POST", "/api/batch", testKey, build(nil))
	if a.Code != http.StatusCreated {
		t.Fatalf("%d %s", a.Code, a.Body)
	}
	events, err := env.es.ReadAll(t.Context(), eventstore.Start, 100)
	if err != nil {
		t.Fatal(err)
	}
	next := 0
	for _, se := range events {
		p, ok := decodeOrFail(t, se).(domain.RecipientsPageAdded)
		if !ok {
			continue
		}
		for k, r := range p.Recipients {
			i := p.First + k
			if i != next || r.Phone != fmt.Sprintf("+1415%07d", 2000000+i) || len(r.Values) != 1 || r.Values[0] != fmt.Sprintf("N%d", i) {
				t.Fatalf("recipient %d (want %d) stored as %+v", i, next, r)
			}
			next++
		}
	}
	if next != n {
		t.Fatalf("%d recipients stored, want %d", next, n)
	}
}

func decodeOrFail(t *testing.T, se eventstore.Event) domain.Event {
	t.Helper()
	e, err := domain.DecodeEvent(se.Type, se.Data)
	if err != nil {
		t.Fatal(err)
	}
	return e
}
