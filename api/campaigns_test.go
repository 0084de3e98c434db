package api

import (
	"net/http"
	"strings"
	"testing"

	"github.com/smsbatch/smsbatch/domain"
)

// A name follows the text rules and is at most 200 characters; a bad one is
// refused naming options.name, along with every other problem.
func TestBatchNameRules(t *testing.T) {
	env := newAPI(t, nil)
	for _, tc := range []struct{ what, options string }{
		{"201 characters", `{"name": "` + strings.Repeat("é", domain.MaxNameLength+1) + `"}`},
		{"invalid UTF-8", "{\"name\": \"Spring \xff\"}"},
		{"an unpaired surrogate", `{"name": "Spring \ud800"}`},
		{"a control character", `{"name": "Spring\u0007"}`},
		{"a number", `{"name": 12}`},
	} {
		a := env.do("POST", "/api/batch", testKey, createBody(`"Hi {{name}}"`, tc.options))
		if a.Code != http.StatusUnprocessableEntity {
			t.Fatalf("name of %s: %d %s, want 422", tc.what, a.Code, a.Body)
		}
		if e := a.envelope(t); !e.names("options.name") {
			t.Fatalf("name of %s: %+v, want options.name named", tc.what, e.Error)
		}
	}
	// With another problem, both are listed.
	a := env.do("POST", "/api/batch", testKey, `{"text": "Hi {{name}}", "recipients": [{"phoneNumber": "nope"}], "options": {"name": 1}}`)
	if e := a.envelope(t); !e.names("options.name") || !e.names("recipients[0].phoneNumber") || !e.names("recipients[0].variables.name") {
		t.Fatalf("%v, want the name, the number and the variable", e.fields())
	}
	if n := env.events(t); n != 0 {
		t.Fatalf("refused batches left %d events", n)
	}
	long := strings.Repeat("ü", domain.MaxNameLength)
	if a := env.do("POST", "/api/batch", testKey, createBody(`"Hi {{name}}"`, `{"name": "`+long+`"}`)); a.Code != http.StatusCreated || !strings.Contains(a.Body.String(), `"name":"`+long+`"`) {
		t.Fatalf("a name of 200 characters: %d %s", a.Code, a.Body)
	}
}
